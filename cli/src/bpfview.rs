//! The node's pinned maps, read without creating anything: `inspect`, `metrics` and `doctor`
//! must not pin maps on a node that has none.

use serde_json::{json, Value};
use std::net::IpAddr;

/// What the pinned maps hold.
pub struct View {
    pub counters: bpf::Counters,
    /// (network id, address, entry)
    pub endpoints: Vec<(u64, IpAddr, bpf::Endpoint)>,
    pub devices: Vec<(u32, bpf::Device)>,
    pub managed: Vec<(u64, bpf::Managed)>,
}

const MAPS: [&str; 4] = [
    bpf::MAP_ENDPOINTS,
    bpf::MAP_DEVICES,
    bpf::MAP_COUNTERS,
    bpf::MAP_MANAGED,
];

/// Are all of weft's maps pinned under `root`?
pub fn pinned(root: &bpf::PinRoot) -> bool {
    MAPS.iter().all(|m| root.path().join(m).exists())
}

/// `Ok(None)` when the maps are not (all) pinned under `root`.
pub fn read(root: &bpf::PinRoot) -> anyhow::Result<Option<View>> {
    if !pinned(root) {
        return Ok(None);
    }
    let maps = bpf::Maps::open_or_create(root)?;
    Ok(Some(View {
        counters: maps.counters()?,
        endpoints: maps.endpoints.list()?,
        devices: maps.devices.list()?,
        managed: maps.managed.list()?,
    }))
}

/// The counters by name, as the BPF header names them.
pub fn counters(c: &bpf::Counters) -> Vec<(&'static str, u64)> {
    vec![
        ("redirected_packets", c.redirected_packets),
        ("redirected_bytes", c.redirected_bytes),
        ("passed_packets", c.passed_packets),
        ("passed_bytes", c.passed_bytes),
        ("pass_not_ip", c.pass_not_ip),
        ("pass_multicast", c.pass_multicast),
        ("pass_no_endpoint", c.pass_no_endpoint),
        ("pass_ttl", c.pass_ttl),
        ("pass_l2_mismatch", c.pass_l2_mismatch),
        ("pass_malformed", c.pass_malformed),
        ("pass_hairpin", c.pass_hairpin),
        ("pass_no_device", c.pass_no_device),
    ]
}

pub fn counters_json(c: &bpf::Counters) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in counters(c) {
        m.insert(k.into(), json!(v));
    }
    Value::Object(m)
}

pub fn mac(m: &[u8; 6]) -> String {
    host::link::format_mac(m)
}
