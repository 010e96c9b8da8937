//! `weft ipam release-node NODE`: frees the etcd blocks of a node that is gone for good, for
//! every etcd-backed weft-ipam network (those the conf dir configures, or the one config file
//! given). The node's addresses lived in its own pool files, which went with it; only its block
//! claims in etcd outlive it and keep those addresses from every other node.

use crate::node::Node;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use weft_ipam::config::{Config, StoreConfig};
use weft_ipam::store::etcd::EtcdStore;

/// `(network, ipam section)` pairs from one config file.
fn sections_of(file: &Path) -> Result<Vec<(String, serde_json::Value)>> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(file).with_context(|| format!("read {}", file.display()))?,
    )
    .with_context(|| format!("{} is not JSON", file.display()))?;
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    let plugins = v["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![v.clone()]);
    Ok(plugins
        .into_iter()
        .filter(|p| p["ipam"]["type"] == "weft-ipam")
        .map(|p| (name.clone(), p["ipam"].clone()))
        .collect())
}

pub fn release_node(
    node: &Node,
    gone: &str,
    config: Option<&Path>,
    force: bool,
) -> Result<Vec<String>> {
    let sections = match config {
        Some(f) => sections_of(f)?,
        None => crate::state::weft_ipam_sections(node),
    };
    let mut report = Vec::new();
    let mut seen = Vec::new();
    for (name, ipam) in sections {
        let obj = ipam
            .as_object()
            .ok_or_else(|| anyhow!("ipam section of {name} is not an object"))?;
        let cfg = Config::from_ipam(obj, &name).map_err(|e| anyhow!("{name}: {}", e))?;
        let StoreConfig::Etcd(etcd) = &cfg.store else {
            continue;
        };
        let key = (
            cfg.network.clone(),
            etcd.endpoints.clone(),
            etcd.prefix.clone(),
        );
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let store = EtcdStore::new(etcd, &cfg.network).map_err(|e| anyhow!("{}", e))?;
        let me = weft_ipam::store::etcd::node_name().map_err(|e| anyhow!("{}", e))?;
        if me == gone && !force {
            bail!("{gone} is this node: its blocks serve its pods; refusing (--force overrides)");
        }
        let keys = store
            .release_node_blocks(gone)
            .map_err(|e| anyhow!("network {}: {}", cfg.network, e))?;
        if keys.is_empty() {
            report.push(format!(
                "network {}: node {gone} holds no block",
                cfg.network
            ));
        }
        for k in keys {
            report.push(format!("network {}: released {k}", cfg.network));
        }
    }
    if seen.is_empty() {
        bail!("no etcd-backed weft-ipam network configured (give --config FILE)");
    }
    Ok(report)
}
