//! `weft gc`: reclaims what no live pod owns, across weft's plugins, reporting every item.
//!
//! - kmesh-cni: a record whose netns is gone, or whose host veth is gone or now another link,
//!   belongs to a pod torn down without a DEL. It is undone exactly like a DEL
//!   (`kmesh_cni::fastpath::detach`: entries removed only while they still carry its owner).
//! - weft-sriov: a record whose netns is gone, or is now another netns (its cookie differs),
//!   belongs to a pod torn down without a DEL. Its VF is taken back exactly like a DEL
//!   (`weft_sriov::reclaim`: PF-side settings restored, the netdev back under its original name,
//!   only while the VF is still this attachment's).
//! - weft-ipam: a reservation names only `(network, containerID, ifname)`, nothing that proves
//!   the pod is gone. It is freed only with proof: the kmesh-cni or weft-sriov record of the
//!   same attachment was just reclaimed because its pod is gone. Every other reservation is
//!   reported and kept (the runtime's own CNI GC, which knows the valid attachments, frees the
//!   rest per network).
//!   Nothing of another network is touched: a reservation is freed only under its own owner.

use crate::node::Node;
use crate::state::{self, Liveness};
use anyhow::{anyhow, Result};
use conf::AttachmentKey;
use std::collections::HashSet;
use weft_ipam::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub plugin: &'static str,
    pub what: String,
    pub action: String,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<10} {:<58} {}", self.plugin, self.what, self.action)
    }
}

pub fn run(node: &Node, dry_run: bool) -> Result<(Vec<Item>, bool)> {
    let mut gc = Gc {
        dry_run,
        items: Vec::new(),
        ok: true,
        dead: HashSet::new(),
    };
    let store = node.kmesh_store();
    let _lock = if store.dir().exists() {
        Some(
            store
                .lock()
                .map_err(|e| anyhow!("lock {}: {e}", store.dir().display()))?,
        )
    } else {
        None
    };
    let configured = node.bpf_root();
    gc.reclaim(
        "kmesh-cni",
        state::kmesh_records(node),
        |_| String::new(),
        state::liveness,
        |key, rec| {
            kmesh_cni::fastpath::detach(&store, key, &configured, rec)
                .map(|()| String::new())
                .map_err(|e| e.to_string())
        },
    );
    drop(_lock);
    gc.reclaim(
        "weft-sriov",
        state::sriov_records(node),
        |rec| format!(" VF {}", rec.pci),
        state::sriov_liveness,
        |key, _| {
            weft_sriov::reclaim(node.sriov_store(), key)
                .map(|()| ", VF restored".to_string())
                .map_err(|e| e.to_string())
        },
    );
    let Gc {
        mut items,
        mut ok,
        dead,
        ..
    } = gc;
    for pool in state::ipam_pools(node) {
        let Ok(reservations) = &pool.reservations else {
            items.push(Item {
                plugin: "weft-ipam",
                what: format!("pool {} ({})", pool.network, pool.store),
                action: format!(
                    "kept: unreadable ({})",
                    pool.reservations
                        .as_ref()
                        .err()
                        .cloned()
                        .unwrap_or_default()
                ),
            });
            continue;
        };
        for (ip, owner) in reservations {
            let what = format!("{ip} held by {owner} ({})", pool.store);
            let proven = dead.iter().any(|k| k == owner);
            let action = if !proven {
                "kept: no proof its pod is gone".to_string()
            } else if dry_run {
                "would free: its pod's record was stale".to_string()
            } else {
                match pool.open().map(|s| s.release(owner)) {
                    Some(Ok(freed)) if !freed.is_empty() => {
                        "freed: its pod's record was stale".to_string()
                    }
                    Some(Ok(_)) => "already free".to_string(),
                    Some(Err(e)) => {
                        ok = false;
                        format!("FAILED to free: {}", e)
                    }
                    None => "kept: invalid pool name".to_string(),
                }
            };
            items.push(Item {
                plugin: "weft-ipam",
                what,
                action,
            });
        }
    }
    Ok((items, ok))
}

/// One gc pass: what it did, whether everything it tried worked, and the attachments just proven
/// gone (the proof that frees their weft-ipam addresses).
struct Gc {
    dry_run: bool,
    items: Vec<Item>,
    ok: bool,
    dead: HashSet<AttachmentKey>,
}

impl Gc {
    /// One plugin's records: each whose pod is gone is undone by `undo` (the plugin's own DEL
    /// path; `Ok` carries what to add to "reclaimed: …"), and its key becomes proof for freeing
    /// its addresses. `detail` adds to the item's name what only a readable record knows.
    fn reclaim<T>(
        &mut self,
        plugin: &'static str,
        records: Vec<state::Stored<T>>,
        detail: impl Fn(&T) -> String,
        liveness: impl Fn(&T) -> Liveness,
        mut undo: impl FnMut(&AttachmentKey, &T) -> std::result::Result<String, String>,
    ) {
        for r in records {
            let what = format!("{} ({})", r.key, net_or_legacy(&r.key));
            let rec = match &r.record {
                Ok(rec) => rec,
                Err(e) => {
                    self.items.push(Item {
                        plugin,
                        what,
                        action: format!("kept: unreadable record ({e})"),
                    });
                    continue;
                }
            };
            let what = format!("{what}{}", detail(rec));
            let live = liveness(rec);
            let action = if live == Liveness::Alive {
                "kept: pod alive".to_string()
            } else if self.dry_run {
                self.dead.insert(r.key.clone());
                format!("would reclaim: {}", live.as_str())
            } else {
                match undo(&r.key, rec) {
                    Ok(done) => {
                        self.dead.insert(r.key.clone());
                        format!("reclaimed: {}{done}", live.as_str())
                    }
                    Err(e) => {
                        self.ok = false;
                        format!("FAILED to reclaim ({}): {e}", live.as_str())
                    }
                }
            };
            self.items.push(Item {
                plugin,
                what,
                action,
            });
        }
    }
}

fn net_or_legacy(key: &AttachmentKey) -> String {
    match key.network() {
        Some(n) => format!("network {n}"),
        None => "legacy record".into(),
    }
}
