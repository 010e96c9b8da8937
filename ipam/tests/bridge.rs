//! weft-ipam as the IPAM delegate of the Debian reference `bridge` plugin, in real network
//! namespaces: the bridge execs weft-ipam from CNI_PATH exactly as in production.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use weft_ipam::store::file::FileStore;

fn prerequisites() -> bool {
    integration::prereq::require_netns_env()
}

fn bridge_plugin() -> &'static Path {
    Path::new(integration::prereq::program("/usr/lib/cni/bridge"))
}

fn bridge_conf(version: &str, bridge: &str, store: &Path, n: u8) -> Value {
    json!({
        "cniVersion": version, "name": format!("br-net-{n}"), "type": "bridge",
        "bridge": bridge, "isGateway": true, "ipMasq": false,
        "ipam": {"type": "weft-ipam", "range": format!("10.77.{n}.0/24"),
                 "ipRanges": [{"range": format!("fd77:{n}::/120")}],
                 "store": {"type": "file", "dir": store}}
    })
}

#[test]
fn bridge_with_weft_ipam_every_version_dual_stack() {
    if !prerequisites() {
        return;
    }
    // Debian 12's bridge (plugins 1.1.1) speaks up to 1.0.0; 1.1.0 (and STATUS/GC) is covered by
    // tests/verbs.rs, which execs weft-ipam directly. Ask the bridge rather than hard-coding.
    let ver = Call::node_wide("VERSION")
        .run(bridge_plugin(), &json!({"cniVersion": "0.3.0"}))
        .ok()
        .json();
    let supported: Vec<&str> = VERSIONS
        .iter()
        .copied()
        .filter(|v| {
            ver["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == v)
        })
        .collect();
    assert!(supported.len() >= 4, "bridge supports {ver}");
    let store = state_dir();
    for (i, v) in supported.iter().enumerate() {
        let n = 10 + i as u8;
        let br = unique("wbr");
        let _br_guard = link_guard(&br);
        let conf = bridge_conf(v, &br, store.path(), n);
        let bridge = bridge_plugin();
        let (ns1, ns2) = (Netns::new("wipam"), Netns::new("wipam"));
        let add = |ns: &Netns, id: &str| {
            Call::new("ADD", id)
                .netns(Some(ns.path_str()))
                .run(bridge, &conf)
        };
        let r1 = add(&ns1, "c1").ok().json();
        let r2 = add(&ns2, "c2").ok().json();
        assert_eq!(r1["cniVersion"], *v);
        let ips1 = result_ips(&r1);
        let ips2 = result_ips(&r2);
        assert_eq!(
            ips1,
            vec![format!("10.77.{n}.2"), format!("fd77:{n}::2")],
            "{v}: {r1}"
        );
        assert_eq!(
            ips2,
            vec![format!("10.77.{n}.3"), format!("fd77:{n}::3")],
            "{v}: {r2}"
        );
        // The addresses are really configured in each netns.
        for (ns, ips) in [(&ns1, &ips1), (&ns2, &ips2)] {
            let shown = ns.addrs("eth0");
            for ip in ips.iter() {
                assert!(
                    shown.contains(&format!("{ip}/")),
                    "{v}: {ip} not on eth0 in {}: {shown}",
                    ns.name()
                );
            }
        }
        if *v >= "0.4.0" {
            for (ns, id, res) in [(&ns1, "c1", &r1), (&ns2, "c2", &r2)] {
                let mut c = conf.clone();
                c["prevResult"] = res.clone();
                Call::new("CHECK", id)
                    .netns(Some(ns.path_str()))
                    .run(bridge, &c)
                    .ok();
            }
        }
        for (ns, id) in [(&ns1, "c1"), (&ns2, "c2")] {
            Call::new("DEL", id)
                .netns(Some(ns.path_str()))
                .run(bridge, &conf)
                .ok();
        }
        let pool = FileStore::new(store.path(), &format!("br-net-{n}"))
            .unwrap()
            .list()
            .unwrap();
        assert!(
            pool.map.is_empty(),
            "{v}: DEL through bridge freed everything: {pool:?}"
        );
        // A freed address is handed out again (lowest free).
        let ns3 = Netns::new("wipam");
        let r3 = add(&ns3, "c3").ok().json();
        assert_eq!(result_ips(&r3)[0], format!("10.77.{n}.2"));
        Call::new("DEL", "c3")
            .netns(Some(ns3.path_str()))
            .run(bridge, &conf)
            .ok();
    }
}
