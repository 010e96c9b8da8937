//! Small fixtures for weft-ipam's black-box tests: exec a CNI plugin binary with CNI_* env,
//! and Drop guards for netns and links. Prerequisites: `integration::prereq` (the one list).
#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
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

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} stderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
    /// Asserts a CNI error with `code` and returns its message.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "expected error {code}, got success: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong error: {v}");
        v["msg"].as_str().unwrap().to_string()
    }
}

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

    pub fn command(&self, plugin: &Path) -> Command {
        let mut c = Command::new(plugin);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", &self.command)
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.container_id.is_empty() {
            c.env("CNI_CONTAINERID", &self.container_id)
                .env("CNI_IFNAME", &self.ifname);
        }
        if let Some(n) = &self.netns {
            c.env("CNI_NETNS", n);
        }
        if let Some(a) = &self.args {
            c.env("CNI_ARGS", a);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, plugin: &Path, conf: &Value) -> Out {
        let mut child = self.command(plugin).spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .expect("write stdin");
        let o = child.wait_with_output().expect("wait plugin");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
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

fn ip(args: &[&str]) -> std::process::Output {
    integration::proc::command("ip")
        .args(args)
        .output()
        .expect("run ip")
}

/// A named network namespace, deleted on drop (which also removes veths inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("wipam-");
        let o = ip(&["netns", "add", &name]);
        assert!(
            o.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Netns { name }
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    /// `ip -o addr show dev <ifname>` inside the namespace.
    pub fn addrs(&self, ifname: &str) -> String {
        let o = ip(&["-n", &self.name, "-o", "addr", "show", "dev", ifname]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A host link (the bridge the plugin creates), deleted on drop.
pub struct Link(pub String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
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
