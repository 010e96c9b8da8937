//! Prometheus text exposition (format 0.0.4) of what the agent sees: the fast-path counters by
//! reason, attachments, records, IPAM pool usage per network, and the agent's own activity.

use crate::bpfview;
use crate::node::Node;
use crate::state;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The agent's own counters, shared between the reconcile loop and the HTTP thread.
#[derive(Debug, Default)]
pub struct Agent {
    pub ready: AtomicBool,
    pub chain_present: AtomicBool,
    pub reconciles: AtomicU64,
    pub rechains: AtomicU64,
    pub reattached: AtomicU64,
    pub errors: AtomicU64,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
                .collect();
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

/// Renders every metric; reads the node's state each time (a scrape is rare and cheap).
pub fn render(node: &Node, agent: &Agent) -> String {
    let mut o = Out(String::new());
    let flag = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed));
    o.family(
        "weft_agent_ready",
        "gauge",
        "1 once the chain is in place and existing pods were re-attached.",
    );
    o.sample("weft_agent_ready", &[], flag(&agent.ready));
    o.family(
        "weft_chain_present",
        "gauge",
        "1 while kmesh-cni is chained into the primary CNI config.",
    );
    o.sample("weft_chain_present", &[], flag(&agent.chain_present));
    for (name, help, v) in [
        (
            "weft_reconciles_total",
            "Reconcile passes (inotify events and periodic).",
            &agent.reconciles,
        ),
        (
            "weft_rechains_total",
            "Times the agent had to put kmesh-cni back into the primary config.",
            &agent.rechains,
        ),
        (
            "weft_reattached_total",
            "Pods whose fast path the agent re-attached from their records.",
            &agent.reattached,
        ),
        (
            "weft_reconcile_errors_total",
            "Reconcile passes that failed.",
            &agent.errors,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], v.load(Ordering::Relaxed));
    }

    let root = node.bpf_root();
    let pin = node.pin_root.display().to_string();
    match bpfview::read(&root) {
        Ok(Some(v)) => {
            o.family(
                "weft_fastpath_packets_total",
                "counter",
                "Packets the fast-path program saw, by path taken.",
            );
            o.sample(
                "weft_fastpath_packets_total",
                &[("path", "redirected"), ("pin_root", &pin)],
                v.counters.redirected_packets,
            );
            o.sample(
                "weft_fastpath_packets_total",
                &[("path", "passed"), ("pin_root", &pin)],
                v.counters.passed_packets,
            );
            o.family(
                "weft_fastpath_bytes_total",
                "counter",
                "Bytes the fast-path program saw, by path taken.",
            );
            o.sample(
                "weft_fastpath_bytes_total",
                &[("path", "redirected"), ("pin_root", &pin)],
                v.counters.redirected_bytes,
            );
            o.sample(
                "weft_fastpath_bytes_total",
                &[("path", "passed"), ("pin_root", &pin)],
                v.counters.passed_bytes,
            );
            o.family(
                "weft_fastpath_passed_packets_total",
                "counter",
                "Packets handed to the normal path, by reason.",
            );
            for (name, value) in bpfview::counters(&v.counters) {
                if let Some(reason) = name.strip_prefix("pass_") {
                    o.sample(
                        "weft_fastpath_passed_packets_total",
                        &[("reason", reason), ("pin_root", &pin)],
                        value,
                    );
                }
            }
            o.family(
                "weft_bpf_map_entries",
                "gauge",
                "Entries in weft's pinned maps.",
            );
            o.sample(
                "weft_bpf_map_entries",
                &[("map", "endpoints")],
                v.endpoints.len(),
            );
            o.sample(
                "weft_bpf_map_entries",
                &[("map", "devices")],
                v.devices.len(),
            );
            o.sample(
                "weft_bpf_map_entries",
                &[("map", "managed")],
                v.managed.len(),
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the pinned maps for metrics"),
    }

    let mut attachments: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut records: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for r in state::sriov_records(node) {
        let net = r.key.network().unwrap_or("(legacy)").to_owned();
        *records.entry((weft_sriov::PLUGIN_NAME, net)).or_default() += 1;
    }
    for r in state::kmesh_records(node) {
        let net = r.key.network().unwrap_or("(legacy)").to_owned();
        *records
            .entry((kmesh_cni::PLUGIN_NAME, net.clone()))
            .or_default() += 1;
        if let Ok(rec) = &r.record {
            let mode = serde_json::to_value(rec.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let st = serde_json::to_value(rec.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *attachments.entry((net, mode, st)).or_default() += 1;
        }
    }
    o.family(
        "weft_records",
        "gauge",
        "Attachment records kept by each weft plugin, per network.",
    );
    for ((plugin, net), n) in &records {
        o.sample("weft_records", &[("plugin", plugin), ("network", net)], n);
    }
    o.family(
        "weft_attachments",
        "gauge",
        "kmesh-cni attachments by network, attach mode and state.",
    );
    for ((net, mode, st), n) in &attachments {
        o.sample(
            "weft_attachments",
            &[("network", net), ("mode", mode), ("state", st)],
            n,
        );
    }

    let sizes = pool_sizes(node);
    o.family(
        "weft_ipam_addresses_used",
        "gauge",
        "Addresses weft-ipam holds, per pool network and store.",
    );
    let mut used: BTreeMap<String, u64> = BTreeMap::new();
    for p in state::ipam_pools(node) {
        let n = p.reservations.as_ref().map_or(0, Vec::len) as u64;
        *used.entry(p.network.clone()).or_default() += n;
        o.sample(
            "weft_ipam_addresses_used",
            &[("network", &p.network), ("store", &p.store)],
            n,
        );
    }
    o.family(
        "weft_ipam_addresses_total",
        "gauge",
        "Allocatable addresses of each weft-ipam pool the conf dir configures.",
    );
    for (net, total) in &sizes {
        o.sample("weft_ipam_addresses_total", &[("network", net)], total);
    }
    o.0
}

/// Allocatable addresses per weft-ipam pool named in the conf dir's configs.
fn pool_sizes(node: &Node) -> BTreeMap<String, u128> {
    let mut out = BTreeMap::new();
    for (name, ipam) in state::weft_ipam_sections(node) {
        let Some(obj) = ipam.as_object() else {
            continue;
        };
        let Ok(cfg) = weft_ipam::config::Config::from_ipam(obj, &name) else {
            continue;
        };
        let total: u128 = cfg
            .ranges
            .iter()
            .map(|r| {
                weft_ipam::range::to_u128(r.end).saturating_sub(weft_ipam::range::to_u128(r.start))
                    + 1
            })
            .sum();
        out.insert(cfg.network, total);
    }
    out
}
