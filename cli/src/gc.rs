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
//!   same attachment was just reclaimed because its pod is gone. Every other reservation is reported and kept
//!   (the runtime's own CNI GC, which knows the valid attachments, frees the rest per network).
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
    let mut items = Vec::new();
    let mut ok = true;
    let mut dead: HashSet<AttachmentKey> = HashSet::new();
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
    for r in state::kmesh_records(node) {
        let what = format!("{} ({})", r.key, net_or_legacy(&r.key));
        let rec = match &r.record {
            Ok(rec) => rec,
            Err(e) => {
                items.push(Item {
                    plugin: "kmesh-cni",
                    what,
                    action: format!("kept: unreadable record ({e})"),
                });
                continue;
            }
        };
        let live = state::liveness(rec);
        if live == Liveness::Alive {
            items.push(Item {
                plugin: "kmesh-cni",
                what,
                action: "kept: pod alive".into(),
            });
            continue;
        }
        let action = if dry_run {
            format!("would reclaim: {}", live.as_str())
        } else {
            match kmesh_cni::fastpath::detach(&store, &r.key, &configured, rec) {
                Ok(()) => {
                    dead.insert(r.key.clone());
                    format!("reclaimed: {}", live.as_str())
                }
                Err(e) => {
                    ok = false;
                    format!("FAILED to reclaim ({}): {}", live.as_str(), e)
                }
            }
        };
        if dry_run {
            dead.insert(r.key.clone());
        }
        items.push(Item {
            plugin: "kmesh-cni",
            what,
            action,
        });
    }
    drop(_lock);
    ok &= reclaim_sriov(node, dry_run, &mut items, &mut dead);
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

/// weft-sriov's records: the VF of every attachment whose pod is gone is taken back. Returns
/// false when one could not be.
fn reclaim_sriov(
    node: &Node,
    dry_run: bool,
    items: &mut Vec<Item>,
    dead: &mut HashSet<AttachmentKey>,
) -> bool {
    let mut ok = true;
    for r in state::sriov_records(node) {
        let what = format!("{} ({})", r.key, net_or_legacy(&r.key));
        let rec = match &r.record {
            Ok(rec) => rec,
            Err(e) => {
                items.push(Item {
                    plugin: "weft-sriov",
                    what,
                    action: format!("kept: unreadable record ({e})"),
                });
                continue;
            }
        };
        let what = format!("{what} VF {}", rec.pci);
        let live = state::sriov_liveness(rec);
        let action = if live == Liveness::Alive {
            "kept: pod alive".to_string()
        } else if dry_run {
            dead.insert(r.key.clone());
            format!("would reclaim: {}", live.as_str())
        } else {
            match weft_sriov::reclaim(node.sriov_store(), &r.key) {
                Ok(()) => {
                    dead.insert(r.key.clone());
                    format!("reclaimed: {}, VF restored", live.as_str())
                }
                Err(e) => {
                    ok = false;
                    format!("FAILED to reclaim ({}): {}", live.as_str(), e)
                }
            }
        };
        items.push(Item {
            plugin: "weft-sriov",
            what,
            action,
        });
    }
    ok
}

fn net_or_legacy(key: &AttachmentKey) -> String {
    match key.network() {
        Some(n) => format!("network {n}"),
        None => "legacy record".into(),
    }
}
