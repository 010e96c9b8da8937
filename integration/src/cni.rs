//! Talking CNI to a binary: direct exec with an explicit environment and stdin (what a runtime
//! does), and through the libcni cnitool with a conflist written to a temp NETCONFPATH.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::plugins::CniPath;
use crate::proc::{self, Output, Usage};

/// Every spec version weft supports, oldest first, as VERSION must list them.
pub const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The `CNI_*` environment of one plugin call. Only these variables (plus a fixed PATH, which
/// bridge & co. need to find iptables) reach the plugin: nothing leaks in from the test runner.
#[derive(Debug, Clone, Default)]
pub struct PluginEnv {
    vars: BTreeMap<String, String>,
}

impl PluginEnv {
    /// Only `CNI_COMMAND`.
    pub fn command(command: &str) -> Self {
        PluginEnv::default().set("CNI_COMMAND", command)
    }

    /// The full environment of an ADD/DEL/CHECK as libcni sends it.
    pub fn verb(command: &str, container_id: &str, netns: &str, ifname: &str, path: &str) -> Self {
        PluginEnv::command(command)
            .set("CNI_CONTAINERID", container_id)
            .set("CNI_NETNS", netns)
            .set("CNI_IFNAME", ifname)
            .set("CNI_PATH", path)
    }

    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.vars.remove(key);
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Puts exactly these variables (and a fixed PATH) into `cmd`'s environment.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env_clear().env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        cmd.envs(&self.vars);
    }
}

/// Exec a plugin binary with `env` and `stdin`; returns its output and resource usage.
#[track_caller]
pub fn exec_plugin_measured(bin: &Path, env: &PluginEnv, stdin: &[u8]) -> (Output, Usage) {
    let mut cmd = Command::new(bin);
    env.apply(&mut cmd);
    proc::run(&mut cmd, stdin).unwrap_or_else(|e| panic!("cannot exec {}: {e}", bin.display()))
}

/// Exec a plugin binary with `env` and `stdin`.
#[track_caller]
pub fn exec_plugin(bin: &Path, env: &PluginEnv, stdin: &[u8]) -> Output {
    exec_plugin_measured(bin, env, stdin).0
}

/// Whether `out` is a CNI error as the spec wants it: non-zero exit and a JSON object on stdout
/// with a string `cniVersion`, the expected numeric `code` and a non-empty `msg`.
pub fn check_cni_error(out: &Output, code: u64, what: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{what}: {why}:\n{}", out.describe()));
    if out.success() {
        return fail("expected failure, got success");
    }
    if out.stdout.trim().is_empty() {
        return fail("error with empty stdout");
    }
    let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else {
        return fail("error is not JSON");
    };
    if v["cniVersion"].as_str().is_none_or(str::is_empty) {
        return fail("error lacks cniVersion");
    }
    if v["msg"].as_str().is_none_or(str::is_empty) {
        return fail("error lacks msg");
    }
    if v["code"].as_u64() != Some(code) {
        return fail(&format!("expected code {code}"));
    }
    Ok(())
}

/// Panicking form of `check_cni_error`.
#[track_caller]
pub fn assert_cni_error(out: &Output, code: u64, what: &str) {
    if let Err(e) = check_cni_error(out, code, what) {
        panic!("{e}");
    }
}

/// The libcni client with its own NETCONFPATH and result cache (both temp dirs, removed on
/// drop), so tests never read /etc/cni/net.d nor leave files in /var/lib/cni.
pub struct Cnitool {
    bin: PathBuf,
    netconf_dir: TempDir,
    cache_dir: TempDir,
    cni_path: String,
    env: BTreeMap<String, String>,
}

impl Cnitool {
    /// Builds cnitool if needed (see `plugins::cnitool`).
    #[track_caller]
    pub fn new(cni_path: &CniPath) -> Self {
        let tmp = |prefix: &str| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("create temp dir")
        };
        Cnitool {
            bin: crate::plugins::cnitool(),
            netconf_dir: tmp("weft-netconf-"),
            cache_dir: tmp("weft-cni-cache-"),
            cni_path: cni_path.path_str().to_owned(),
            env: BTreeMap::new(),
        }
    }

    /// Use the plugins in `cni_path` from now on (an in-place upgrade of the binaries: the
    /// configs and libcni's result cache stay).
    pub fn set_cni_path(&mut self, cni_path: &CniPath) -> &mut Self {
        self.cni_path = cni_path.path_str().to_owned();
        self
    }

    /// Set an extra variable for every call: CNI_IFNAME, CNI_ARGS, CAP_ARGS, CNI_CONTAINERID.
    pub fn set_env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Write `<NETCONFPATH>/<file_name>`; `conf` is a conflist (or single .conf) with a `name`.
    pub fn write_conf(&self, file_name: &str, conf: &Value) -> PathBuf {
        let path = self.netconf_dir.path().join(file_name);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(conf).expect("serialize conf"),
        )
        .expect("write conf");
        path
    }

    /// Write `<name>.conflist`.
    pub fn write_conflist(&self, conf: &Value) -> PathBuf {
        let name = conf["name"].as_str().expect("conflist has a name");
        self.write_conf(&format!("{name}.conflist"), conf)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NETCONFPATH", self.netconf_dir.path())
            .env("CNI_CACHE_DIR", self.cache_dir.path())
            .env("CNI_PATH", &self.cni_path)
            .envs(&self.env);
        cmd
    }

    /// `cnitool <verb> <net> <netns>` with wall time and peak RSS of the whole tree.
    #[track_caller]
    pub fn run_measured(&self, verb: &str, net: &str, netns: &Path) -> (Output, Usage) {
        let mut cmd = self.command();
        cmd.arg(verb).arg(net).arg(netns);
        proc::run(&mut cmd, b"").expect("exec cnitool")
    }

    #[track_caller]
    pub fn run(&self, verb: &str, net: &str, netns: &Path) -> Output {
        self.run_measured(verb, net, netns).0
    }

    #[track_caller]
    pub fn add(&self, net: &str, netns: &Path) -> Output {
        self.run("add", net, netns)
    }

    #[track_caller]
    pub fn check(&self, net: &str, netns: &Path) -> Output {
        self.run("check", net, netns)
    }

    #[track_caller]
    pub fn del(&self, net: &str, netns: &Path) -> Output {
        self.run("del", net, netns)
    }

    /// `cnitool version <plugin-type>` (libcni GetVersionInfo).
    #[track_caller]
    pub fn version(&self, plugin_type: &str) -> Output {
        let mut cmd = self.command();
        cmd.arg("version").arg(plugin_type);
        proc::run(&mut cmd, b"").expect("exec cnitool").0
    }
}

/// The reference `bridge` with host-local IPAM on `subnet` (data in `ipam_dir`): the main plugin
/// the chains and benches start with; bridge creates the bridge device on first ADD.
pub fn bridge_plugin(bridge: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [[{"subnet": subnet}]],
        },
    })
}

/// A 1.0.0 conflist (what Debian's libcni 1.1.2 and reference plugins speak).
pub fn conflist(name: &str, plugins: &[Value]) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins})
}

/// Replace the value at each JSON pointer that exists with `"<masked>"`. Used to blank out the
/// few result fields that are random by design before comparing two results.
pub fn mask(value: &mut Value, pointers: &[String]) {
    for p in pointers {
        if let Some(v) = value.pointer_mut(p) {
            *v = Value::String("<masked>".into());
        }
    }
}
