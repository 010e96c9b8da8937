//! A private stand-in for a node: its own bin dir, conf dir, state dir and (for the tests that
//! attach programs) its own pin root on bpffs, all removed on drop, also when a test fails. No
//! test touches /opt/cni/bin, /etc/cni/net.d, /var/lib/cni or /sys/fs/bpf/weft.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use integration::plugins::{bin_dir, weft_binary};
use integration::proc::{run, Output};
use tempfile::TempDir;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestNode {
    _tmp: TempDir,
    pub bin: PathBuf,
    pub conf: PathBuf,
    pub state: PathBuf,
    pub pin_root: PathBuf,
}

impl TestNode {
    /// Directories under one temp dir; the pin root is a path that nothing creates unless a
    /// test attaches programs (see [`TestNode::with_bpffs`]).
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("weft-node-")
            .tempdir()
            .expect("temp dir");
        let bin = tmp.path().join("opt/cni/bin");
        let conf = tmp.path().join("etc/cni/net.d");
        let state = tmp.path().join("var/lib/cni");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        TestNode {
            pin_root: tmp.path().join("pins"),
            _tmp: tmp,
            bin,
            conf,
            state,
        }
    }

    /// Like [`TestNode::new`] with a private pin root on /sys/fs/bpf.
    pub fn with_bpffs() -> Self {
        let mut n = Self::new();
        n.pin_root = PathBuf::from("/sys/fs/bpf").join(unique("weft-cli-it"));
        let _ = std::fs::remove_dir_all(&n.pin_root);
        n
    }

    pub fn pin_root_str(&self) -> &str {
        self.pin_root.to_str().unwrap()
    }

    /// `weft <args> --bin-dir .. --conf-dir .. --state-dir .. --pin-root ..`, plugins taken from
    /// the build dir and the reference plugins from /usr/lib/cni.
    pub fn weft_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(weft_binary("weft"));
        c.args(args)
            .arg("--bin-dir")
            .arg(&self.bin)
            .arg("--conf-dir")
            .arg(&self.conf)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--plugin-dir")
            .arg("/usr/lib/cni");
        c.env_remove("WEFT_STATE_DIR");
        c
    }

    pub fn weft(&self, args: &[&str]) -> Output {
        run(&mut self.weft_command(args), b"").expect("run weft").0
    }

    /// `weft install` from the build dir.
    pub fn install(&self, extra: &[&str]) -> Output {
        let src = bin_dir();
        let mut args = vec!["install", "--source-dir", src.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.weft(&args)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.conf.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.conf.join(name)).unwrap()
    }

    /// Every file under the node's directories with its bytes, for "changes no byte".
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for dir in [&self.bin, &self.conf, &self.state] {
            walk(dir, &mut out);
        }
        out
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if self.pin_root.starts_with("/sys/fs/bpf") {
            let _ = std::fs::remove_dir_all(&self.pin_root);
        }
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

/// The plugins of a conflist file as JSON.
pub fn plugins(text: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(text).expect("conflist JSON");
    v["plugins"].as_array().cloned().unwrap_or_default()
}

pub mod deploy;

pub const KMESH_ENTRY_TYPE: &str = "kmesh-cni";
