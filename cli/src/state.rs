//! What weft's plugins keep on the node, read back: kmesh-cni records (every network and the
//! legacy location), weft-sriov records, weft-ipam reservations (file store and the etcd
//! store's node-local pools), and whether the pod each one belongs to is still alive.

use crate::node::Node;
use conf::AttachmentKey;
use kmesh_cni::record::Record;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weft_ipam::store::file::FileStore;

/// One plugin record as stored: its key, and the record or why it cannot be read.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub key: AttachmentKey,
    pub record: Result<T, String>,
}

pub type KmeshRecord = Stored<Record>;
pub type SriovRecord = Stored<weft_sriov::record::Record>;

/// The records of `keys` in `store`; a key whose file vanished meanwhile is skipped.
fn read_all<T: serde::de::DeserializeOwned>(
    store: &host::RecordStore,
    keys: Vec<AttachmentKey>,
) -> Vec<Stored<T>> {
    keys.into_iter()
        .filter_map(|key| match store.read::<T>(&key) {
            Ok(Some(r)) => Some(Stored { key, record: Ok(r) }),
            Ok(None) => None,
            Err(e) => Some(Stored {
                key,
                record: Err(e.to_string()),
            }),
        })
        .collect()
}

/// Names of the subdirectories of `dir` that can be network names.
fn networks_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| conf::env::validate_network_name(n).is_ok())
        .collect();
    out.sort();
    out
}

/// Every kmesh-cni record, network by network, then the legacy ones.
pub fn kmesh_records(node: &Node) -> Vec<KmeshRecord> {
    let store = node.kmesh_store();
    let mut keys: Vec<AttachmentKey> = Vec::new();
    for net in networks_in(store.dir()) {
        keys.extend(store.keys(&net).unwrap_or_default());
    }
    keys.extend(store.legacy_keys().unwrap_or_default());
    read_all(&store, keys)
}

/// Every weft-sriov record, network by network (its per-VF owner files live in `_vf`, which
/// is not a network name, so they are not listed).
pub fn sriov_records(node: &Node) -> Vec<SriovRecord> {
    let store = node.sriov_store();
    read_all(&store, store.all_keys().unwrap_or_default())
}

/// Is the pod of a weft-sriov record still there: the netns it names exists and is the same
/// netns (its cookie; a path can be reused by a new pod).
pub fn sriov_liveness(r: &weft_sriov::record::Record) -> Liveness {
    if !host::netns_exists(&r.netns) {
        Liveness::NetnsGone
    } else if r.netns_alive() {
        Liveness::Alive
    } else {
        Liveness::NetnsReplaced
    }
}

/// Is the pod of `r` still there: its netns exists and its host veth has the same name and
/// index?
pub fn liveness(r: &Record) -> Liveness {
    let netns = host::netns_exists(Path::new(&r.netns));
    let veth =
        matches!(host::link_by_index(None, r.host_ifindex), Ok(Some(l)) if l.name == r.host_veth);
    match (netns, veth) {
        (true, true) => Liveness::Alive,
        (false, _) => Liveness::NetnsGone,
        (true, false) => Liveness::VethGone,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    NetnsGone,
    /// The netns path exists but is another netns than the pod's (weft-sriov: cookie differs).
    NetnsReplaced,
    VethGone,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::NetnsGone => "netns gone",
            Liveness::NetnsReplaced => "netns replaced",
            Liveness::VethGone => "veth gone",
        }
    }
}

/// One IPAM pool file: which store, which network, and its reservations.
#[derive(Debug, Clone)]
pub struct IpamPool {
    /// `file` or `etcd:<node>`.
    pub store: String,
    /// The pool's namespace (`network_name`, else the CNI network name).
    pub network: String,
    /// The store directory the pool lives under.
    pub store_dir: PathBuf,
    pub reservations: Result<Vec<(IpAddr, AttachmentKey)>, String>,
}

impl IpamPool {
    pub fn open(&self) -> Option<FileStore> {
        FileStore::new(&self.store_dir, &self.network).ok()
    }
}

fn pool_of(store: String, store_dir: &Path, network: &str) -> Option<IpamPool> {
    if !store_dir.join(network).join("pool").exists() {
        return None;
    }
    let fs = FileStore::new(store_dir, network).ok()?;
    Some(IpamPool {
        store,
        network: network.to_owned(),
        store_dir: store_dir.to_path_buf(),
        reservations: fs
            .list()
            .map(|p| p.map.into_iter().collect())
            .map_err(|e| e.to_string()),
    })
}

/// Every weft-ipam pool under the default store dir (`<state>/weft-ipam`) and the store dirs the
/// conf dir's configs name.
pub fn ipam_pools(node: &Node) -> Vec<IpamPool> {
    let mut dirs = vec![node.ipam_dir()];
    for d in configured_store_dirs(node) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        for net in networks_in(&dir) {
            out.extend(pool_of("file".into(), &dir, &net));
        }
        let etcd = dir.join("_etcd");
        for n in networks_in(&etcd) {
            let node_dir = etcd.join(&n);
            for net in networks_in(&node_dir) {
                out.extend(pool_of(format!("etcd:{n}"), &node_dir, &net));
            }
        }
    }
    out
}

/// `ipam.store.dir` of every weft-ipam plugin in the conf dir's configs.
fn configured_store_dirs(node: &Node) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (_, ipam) in weft_ipam_sections(node) {
        if let Some(d) = ipam["store"]["dir"].as_str() {
            out.push(PathBuf::from(d));
        }
    }
    out
}

/// `(network name, ipam section)` of every weft-ipam plugin in the conf dir's configs.
pub fn weft_ipam_sections(node: &Node) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for f in crate::chain::config_files(&node.conf_dir).unwrap_or_default() {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let plugins = match v["plugins"].as_array() {
            Some(p) => p.clone(),
            None => vec![v.clone()],
        };
        for p in plugins {
            if p["ipam"]["type"] == "weft-ipam" {
                out.push((name.clone(), p["ipam"].clone()));
            }
        }
    }
    out
}

/// How many attachments still use each plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub kmesh_records: usize,
    pub ipam_reservations: usize,
    pub sriov_records: usize,
}

impl Usage {
    pub fn users_of(&self, plugin: &str) -> usize {
        match plugin {
            "kmesh-cni" => self.kmesh_records,
            "weft-ipam" => self.ipam_reservations,
            "weft-sriov" => self.sriov_records,
            _ => 0,
        }
    }
}

pub fn usage(node: &Node) -> Usage {
    let sriov_records = node.sriov_store().all_keys().map_or(0, |k| k.len());
    Usage {
        kmesh_records: kmesh_records(node).len(),
        ipam_reservations: ipam_pools(node)
            .iter()
            .map(|p| p.reservations.as_ref().map_or(0, Vec::len))
            .sum(),
        sriov_records,
    }
}
