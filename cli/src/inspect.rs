//! `weft inspect`: every weft attachment on the node in one table (kmesh-cni records, their BPF
//! attachment and map entries, weft-sriov records and their VFs, the IPAM reservations of the
//! same attachment), then whatever is left over that no attachment accounts for.

use crate::bpfview;
use crate::node::Node;
use crate::state;
use anyhow::Result;
use conf::AttachmentKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One attachment as every plugin sees it.
#[derive(Debug, Clone, Default)]
struct Row {
    network: String,
    container: String,
    ifname: String,
    pod: String,
    /// The host veth (kmesh-cni) or the VF (weft-sriov).
    device: String,
    mode: String,
    fast_path: String,
    addrs: BTreeMap<IpAddr, Vec<&'static str>>,
    enrolled: String,
}

/// One row per attachment, in (network, container, ifname) order.
type Rows = BTreeMap<(String, String, String), Row>;

/// The row of the attachment `key`, created empty the first time a plugin names it.
fn row_of<'a>(rows: &'a mut Rows, key: &AttachmentKey) -> &'a mut Row {
    let network = key.network().unwrap_or("(legacy)").to_owned();
    let (container, ifname) = (key.container_id().to_owned(), key.ifname().to_owned());
    rows.entry((network.clone(), container.clone(), ifname.clone()))
        .or_insert_with(|| Row {
            network,
            container,
            ifname,
            ..Row::default()
        })
}

pub struct Inspection {
    pub json: Value,
    pub text: String,
}

pub fn run(node: &Node) -> Result<Inspection> {
    let root = node.bpf_root();
    let view = bpfview::read(&root)?;
    let mut rows: Rows = BTreeMap::new();
    let mut claimed_eps: Vec<(u64, IpAddr)> = Vec::new();
    let mut records_json = Vec::new();
    for r in state::kmesh_records(node) {
        let row = row_of(&mut rows, &r.key);
        match &r.record {
            Err(e) => {
                row.fast_path = format!("unreadable record: {e}");
                records_json.push(json!({"key": r.key.to_string(), "error": e}));
            }
            Ok(rec) => {
                let live = state::liveness(rec);
                row.pod = live.as_str().into();
                row.device = format!("{}#{}", rec.host_veth, rec.host_ifindex);
                row.mode = serde_json::to_value(rec.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let problems = if bpfview::pinned(&rec.pin_root(&root)) {
                    kmesh_cni::fastpath::verify(&root, rec)
                        .map_err(|e| e.to_string())
                        .unwrap_or_else(|e| vec![e])
                } else {
                    vec![]
                };
                row.fast_path = if !bpfview::pinned(&rec.pin_root(&root)) {
                    "maps not pinned".into()
                } else if problems.is_empty() {
                    "attached".into()
                } else {
                    format!("MISSING: {}", problems.join("; "))
                };
                for ep in &rec.endpoints {
                    row.addrs.entry(ep.ip).or_default().push("map");
                    claimed_eps.push((rec.network_id, ep.ip));
                }
                row.enrolled = match rec.netns_cookie {
                    Some(c) => format!("yes (cookie {c})"),
                    None => "no".into(),
                };
                records_json.push(json!({
                    "key": r.key.to_string(),
                    "network": rec.network, "netns": rec.netns, "pod": live.as_str(),
                    "host_veth": rec.host_veth, "host_ifindex": rec.host_ifindex,
                    "mode": rec.mode, "state": rec.state, "attachment": rec.attachment,
                    "endpoints": rec.endpoints.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(),
                    "netns_cookie": rec.netns_cookie, "problems": problems,
                }));
            }
        }
    }
    let mut sriov_json = Vec::new();
    for r in state::sriov_records(node) {
        let row = row_of(&mut rows, &r.key);
        match &r.record {
            Err(e) => {
                row.device = format!("unreadable weft-sriov record: {e}");
                sriov_json.push(json!({"key": r.key.to_string(), "error": e}));
            }
            Ok(rec) => {
                let live = state::sriov_liveness(rec);
                row.pod = live.as_str().into();
                row.device = format!("VF {}", rec.pci);
                row.mode = match &rec.mode {
                    weft_sriov::record::Mode::Netdev { .. } => "sriov netdev".into(),
                    weft_sriov::record::Mode::Dpdk { driver } => format!("sriov {driver}"),
                };
                if row.fast_path.is_empty() {
                    row.fast_path = "-".into();
                }
                sriov_json.push(json!({
                    "key": r.key.to_string(),
                    "network": rec.network, "netns": rec.netns, "pod": live.as_str(),
                    "pci": rec.pci.as_str(), "pf_pci": rec.pf_pci.as_str(), "pf": rec.pf,
                    "vf_index": rec.vf_index, "device": rec.device(), "mode": rec.mode,
                    "pf_settings": rec.pf_settings,
                }));
            }
        }
    }
    let mut pools_json = Vec::new();
    for pool in state::ipam_pools(node) {
        let mut list = Vec::new();
        if let Ok(res) = &pool.reservations {
            for (ip, owner) in res {
                let row = row_of(&mut rows, owner);
                if row.pod.is_empty() {
                    // Only a reservation: nothing here says whether its pod lives.
                    row.pod = "?".into();
                }
                if row.fast_path.is_empty() {
                    row.fast_path = "-".into();
                }
                row.addrs.entry(*ip).or_default().push("ipam");
                list.push(json!({"address": ip.to_string(), "owner": owner.to_string()}));
            }
        }
        pools_json.push(json!({
            "store": pool.store, "network": pool.network, "dir": pool.store_dir,
            "reservations": list,
            "error": pool.reservations.as_ref().err(),
        }));
    }
    let mut orphans = Vec::new();
    let mut eps_json = Vec::new();
    if let Some(v) = &view {
        for (net, ip, ep) in &v.endpoints {
            let claimed = claimed_eps.contains(&(*net, *ip));
            eps_json.push(json!({
                "network_id": format!("{net:016x}"), "address": ip.to_string(),
                "ifindex": ep.ifindex, "routed": ep.routed(), "owner": format!("{:016x}", ep.owner),
                "pod_mac": bpfview::mac(&ep.pod_mac), "recorded": claimed,
            }));
            if !claimed {
                orphans.push(format!(
                    "endpoint {ip} (network {net:016x}) -> ifindex {} without a record",
                    ep.ifindex
                ));
            }
        }
    }

    let mut text = String::new();
    text.push_str(&format!(
        "weft on this node: bin {}  conf {}  state {}  pins {}\n",
        node.bin_dir.display(),
        node.conf_dir.display(),
        node.state_dir.display(),
        node.pin_root.display()
    ));
    match &view {
        Some(v) => {
            let c = &v.counters;
            text.push_str(&format!(
                "fast path: {} redirected ({} B), {} passed ({} B): not-ip {}, multicast {}, no-endpoint {}, ttl {}, l2-mismatch {}, malformed {}, hairpin {}, no-device {}\n",
                c.redirected_packets, c.redirected_bytes, c.passed_packets, c.passed_bytes,
                c.pass_not_ip, c.pass_multicast, c.pass_no_endpoint, c.pass_ttl,
                c.pass_l2_mismatch, c.pass_malformed, c.pass_hairpin, c.pass_no_device
            ));
            text.push_str(&format!(
                "maps: {} endpoint(s), {} device(s), {} enrolled\n",
                v.endpoints.len(),
                v.devices.len(),
                v.managed.len()
            ));
        }
        None => text.push_str("fast path: no maps pinned (no pod attached since boot)\n"),
    }
    text.push('\n');
    let header = [
        "NETWORK",
        "CONTAINER",
        "IF",
        "POD",
        "DEVICE",
        "MODE",
        "FAST PATH",
        "ADDRESSES",
        "ENROLLED",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for row in rows.values() {
        let addrs: Vec<String> = row
            .addrs
            .iter()
            .map(|(ip, src)| format!("{ip}[{}]", src.join(",")))
            .collect();
        table.push(vec![
            row.network.clone(),
            short(&row.container),
            row.ifname.clone(),
            or_dash(&row.pod),
            or_dash(&row.device),
            or_dash(&row.mode),
            or_dash(&row.fast_path),
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(" ")
            },
            or_dash(&row.enrolled),
        ]);
    }
    if rows.is_empty() {
        text.push_str(
            "no attachments: no kmesh-cni or weft-sriov record and no weft-ipam reservation\n",
        );
    } else {
        text.push_str(&render_table(&table));
        text.push_str("ADDRESSES: [map] endpoints entry recorded by kmesh-cni, [ipam] weft-ipam reservation\n");
    }
    for o in &orphans {
        text.push_str(&format!("leftover: {o}\n"));
    }
    let json = json!({
        "bin_dir": node.bin_dir, "conf_dir": node.conf_dir, "state_dir": node.state_dir,
        "pin_root": node.pin_root,
        "counters": view.as_ref().map(|v| bpfview::counters_json(&v.counters)),
        "kmesh_cni": records_json,
        "weft_sriov": sriov_json,
        "ipam": pools_json,
        "bpf_endpoints": eps_json,
        "leftovers": orphans,
    });
    Ok(Inspection { json, text })
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// Container IDs are 64 hex digits from real runtimes: 12 are enough to tell them apart.
fn short(id: &str) -> String {
    if id.len() > 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_owned()
    } else {
        id.to_owned()
    }
}

/// Left-aligned columns separated by two spaces.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}
