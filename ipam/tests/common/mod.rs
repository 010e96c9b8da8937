//! Small fixtures for weft-ipam's black-box tests: exec a CNI plugin binary with CNI_* env,
//! and Drop guards for netns and links. Prerequisites: `integration::prereq` (the one list).
#![allow(dead_code)]

use integration::cni::{exec_plugin, PluginEnv};
use integration::fixtures::netns::{HostLink, TestNetns};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

pub fn ipam_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-ipam"))
}

/// CNI_PATH that finds weft-ipam first, then the Debian reference plugins.
pub fn cni_path() -> String {
    format!("{}:/usr/lib/cni", ipam_bin().parent().unwrap().display())
}

/// What one exec printed and how it ended (the kit's process output, with `ok()`/`err(code)`).
pub type Out = integration::proc::Output;

/// One CNI request: env + stdin for one exec.
#[derive(Clone, Debug)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<String>,
    pub args: Option<String>,
    pub env: Vec<(String, String)>,
}

impl Call {
    /// A verb that names no container (STATUS, GC, VERSION): no CNI_CONTAINERID, CNI_IFNAME
    /// or CNI_NETNS.
    pub fn node_wide(command: &str) -> Call {
        Call {
            container_id: String::new(),
            netns: None,
            ..Call::new(command, "")
        }
    }

    pub fn new(command: &str, container_id: &str) -> Call {
        Call {
            command: command.into(),
            container_id: container_id.into(),
            ifname: "eth0".into(),
            netns: Some("/proc/self/ns/net".into()),
            args: None,
            env: Vec::new(),
        }
    }
    pub fn ifname(mut self, i: &str) -> Call {
        self.ifname = i.into();
        self
    }
    pub fn netns(mut self, n: Option<&str>) -> Call {
        self.netns = n.map(str::to_string);
        self
    }
    pub fn args(mut self, a: &str) -> Call {
        self.args = Some(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Call {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The exec environment of this call, as libcni sets it (the kit's [`PluginEnv`]).
    pub fn plugin_env(&self) -> PluginEnv {
        let mut env = PluginEnv::command(&self.command).set("CNI_PATH", &cni_path());
        if !self.container_id.is_empty() {
            env = env
                .set("CNI_CONTAINERID", &self.container_id)
                .set("CNI_IFNAME", &self.ifname);
        }
        if let Some(n) = &self.netns {
            env = env.set("CNI_NETNS", n);
        }
        if let Some(a) = &self.args {
            env = env.set("CNI_ARGS", a);
        }
        for (k, v) in &self.env {
            env = env.set(k, v);
        }
        env
    }

    /// `Command` of this call (for tests that spawn and kill the plugin themselves).
    pub fn command(&self, plugin: &Path) -> Command {
        let mut c = Command::new(plugin);
        self.plugin_env().apply(&mut c);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn run(&self, plugin: &Path, conf: &Value) -> Out {
        exec_plugin(plugin, &self.plugin_env(), conf.to_string().as_bytes())
    }

    pub fn ipam(&self, conf: &Value) -> Out {
        self.run(&ipam_bin(), conf)
    }
}

/// Unique short names (ifnames are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{:x}{}",
        std::process::id() & 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The kit's netns fixture; what these tests ask of it.
pub type Netns = TestNetns;

pub trait NetnsExt {
    /// `ip -o addr show dev <ifname>` inside the namespace.
    fn addrs(&self, ifname: &str) -> String;
}

impl NetnsExt for TestNetns {
    fn addrs(&self, ifname: &str) -> String {
        self.ip(&["-o", "addr", "show", "dev", ifname]).stdout
    }
}

/// A host link (the bridge the plugin creates), deleted on drop.
pub fn link_guard(name: &str) -> HostLink {
    HostLink::adopt(name)
}

/// The store directory of one test: WEFT_STATE_DIR-style parent in a tempdir.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("weft-ipam-test")
        .tempdir()
        .unwrap()
}

/// IPs (without prefix) listed in a result.
pub fn result_ips(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    i["address"]
                        .as_str()
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}
