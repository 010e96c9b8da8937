//! The node weft manages: where the runtime finds plugins and configs, where the plugins keep
//! state and pins, and what weft's install left there (the manifest).

use crate::fsx;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/weft";
/// Where runtimes other than containerd also look for plugins (podman: /usr/lib/cni, ...).
pub const EXTRA_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/usr/libexec/cni"];

/// The plugin binaries weft ships, in install order. `weft` itself is the operator tool, not a
/// plugin: it does not go into the CNI bin dir.
pub const PLUGINS: &[&str] = &["kmesh-cni", "weft-ipam", "weft-sriov"];

/// The capability containerd and CRI-O fill with the pod's annotations.
pub const ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

/// Paths of one node (or of a test's private stand-in for one).
#[derive(Debug, Clone)]
pub struct Node {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The parent of every plugin's state (`/var/lib/cni`).
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    /// Where plugin binaries are searched to ask their VERSION: the bin dir first.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Node {
    pub fn new(
        bin_dir: PathBuf,
        conf_dir: PathBuf,
        state_dir: PathBuf,
        pin_root: PathBuf,
        extra_plugin_dirs: &[PathBuf],
    ) -> Node {
        let mut plugin_dirs = vec![bin_dir.clone()];
        plugin_dirs.extend(extra_plugin_dirs.iter().cloned());
        Node {
            bin_dir,
            conf_dir,
            state_dir,
            pin_root,
            plugin_dirs,
        }
    }

    /// The kmesh-cni entry weft chains: only what the plugin needs, plus `pinRoot` when it is
    /// not the plugin's default.
    pub fn entry(&self) -> Value {
        let mut e = json!({"type": "kmesh-cni", "capabilities": {ANNOTATIONS: true}});
        if self.pin_root != Path::new(DEFAULT_PIN_ROOT) {
            e["pinRoot"] = json!(self.pin_root);
        }
        e
    }

    pub fn weft_state(&self) -> PathBuf {
        self.state_dir.join("weft")
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.weft_state().join("install.json")
    }

    pub fn kmesh_store(&self) -> host::RecordStore {
        kmesh_cni::record::store(&self.state_dir.join(kmesh_cni::PLUGIN_NAME))
    }

    pub fn sriov_store(&self) -> host::RecordStore {
        host::RecordStore::new(self.state_dir.join(weft_sriov::PLUGIN_NAME))
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("weft-ipam")
    }

    pub fn bpf_root(&self) -> bpf::PinRoot {
        bpf::PinRoot::new(&self.pin_root)
    }
}

/// One binary install placed in the bin dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    pub name: String,
    /// Fingerprint of what weft wrote.
    pub fingerprint: String,
    /// The file that was there before the first install, kept under `<state>/weft/backup/`.
    pub backup: Option<PathBuf>,
}

/// How weft put kmesh-cni into one config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Chained {
    /// The entry was appended to the primary's own conflist at `path`.
    Spliced { path: PathBuf },
    /// A single-plugin `.conf`/`.json` at `original` was upgraded to the conflist `path`; the
    /// original was renamed to `backup` (same directory: its bytes, mode and owner unchanged).
    Upgraded {
        path: PathBuf,
        original: PathBuf,
        backup: PathBuf,
    },
    /// No primary existed: weft wrote its own default conflist at `path`.
    Default { path: PathBuf },
}

impl Chained {
    pub fn path(&self) -> &Path {
        match self {
            Chained::Spliced { path }
            | Chained::Upgraded { path, .. }
            | Chained::Default { path } => path,
        }
    }
}

/// What `weft install` did, so that `weft uninstall` undoes exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub binaries: Vec<Binary>,
    /// The exact kmesh-cni entry weft inserted.
    pub entry: Option<Value>,
    pub chained: Vec<Chained>,
    /// Paths that did not exist before the first install (directories, state, pins): uninstall
    /// may remove them once nothing uses them.
    pub absent_before: Vec<PathBuf>,
}

impl Manifest {
    pub fn load(node: &Node) -> Result<Option<Manifest>> {
        let path = node.manifest_path();
        match fsx::read_optional(&path)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("install manifest {} is corrupt", path.display())),
        }
    }

    /// Writes the manifest if it changed (a second install changes no byte).
    pub fn save(&self, node: &Node) -> Result<()> {
        let path = node.manifest_path();
        let mut bytes = serde_json::to_vec_pretty(self).expect("plain data");
        bytes.push(b'\n');
        if fsx::read_optional(&path)?.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        std::fs::create_dir_all(node.weft_state())
            .with_context(|| format!("create {}", node.weft_state().display()))?;
        fsx::write_atomic(&path, &bytes, fsx::Attrs::root(0o600))
    }

    pub fn record_chain(&mut self, c: Chained) {
        if !self.chained.contains(&c) {
            // An upgrade of the same file replaces the older record of it.
            self.chained.retain(|o| o.path() != c.path());
            self.chained.push(c);
        }
    }

    pub fn note_absent(&mut self, path: &Path) {
        if !path.exists() && !self.absent_before.iter().any(|p| p == path) {
            self.absent_before.push(path.to_path_buf());
        }
    }

    pub fn was_absent(&self, path: &Path) -> bool {
        self.absent_before.iter().any(|p| p == path)
    }
}
