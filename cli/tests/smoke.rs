//! `weft smoke` (what install.sh ends with) on a stand-in node: two pods through the installed
//! chain (reference bridge + host-local, kmesh-cni), pinged, CHECKed, DELeted, cleaned up.

mod common;

use common::{unique, TestNode};
use integration::fixtures::netns::{host_link_exists, unique_ifname};
use integration::plugins::bin_dir;
use integration::prereq::{require, require_netns_env};
use serde_json::json;

#[test]
fn smoke_networks_two_pods_through_the_installed_chain_and_cleans_up() {
    if !(require_netns_env() && require(&["ping"])) {
        return;
    }
    let node = TestNode::with_bpffs();
    let bridge = unique_ifname("wsb");
    let data = tempfile::tempdir().unwrap();
    let octet = (std::process::id() % 200) as u8 + 20;
    let conf = json!({
        "cniVersion": "1.0.0", "name": unique("wsmoke"),
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": true,
                     "ipam": {"type": "host-local", "subnet": format!("10.239.{octet}.0/24"),
                              "dataDir": data.path()}}]
    });
    node.write(
        "10-prim.conflist",
        &serde_json::to_string_pretty(&conf).unwrap(),
    );
    let src = bin_dir();
    node.weft(&["install", "--source-dir", src.to_str().unwrap()])
        .assert_success("install");
    let out = node.weft(&["smoke"]);
    out.assert_success("weft smoke");
    let s = &out.stdout;
    for want in [
        "ADD ok",
        "CHECK ok",
        "ping a->b and b->a ok",
        "DEL ok",
        "fast path tc on", // mode auto: clsact + cls_bpf, the cheaper attach
    ] {
        assert!(s.contains(want), "{want:?} missing:\n{s}");
    }
    let redirected: u64 = s
        .split("redirected ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(redirected > 0, "{s}");
    assert!(
        !host_link_exists(&bridge),
        "the bridge the smoke test created is gone"
    );
    let records = node.state.join("kmesh-cni");
    let left: Vec<_> = walkdir(&records)
        .into_iter()
        .filter(|p| p.contains(':'))
        .collect();
    assert!(left.is_empty(), "records left: {left:?}");
    let netns = integration::proc::cmd("ip", &["netns", "list"]).stdout;
    assert!(!netns.contains("weft-smoke-"), "netns left: {netns}");
}

fn walkdir(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walkdir(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
