//! bridge (+ host-local IPAM) chained with kmesh-cni, driven through libcni (cnitool) at every
//! conflist version libcni 1.1.2 speaks. kmesh-cni must hand the bridge result through
//! unchanged, in the conflist's version, and ADD/CHECK/DEL must behave like bridge alone.

mod common;

use std::net::IpAddr;
use std::path::Path;

use integration::cni::Cnitool;
use integration::fixtures::bpffs::Isolation;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::fixtures::pods::masked;
use integration::plugins::CniPath;
use integration::prereq::require_netns_env;
use serde_json::json;
use tempfile::TempDir;

/// IP reservations host-local holds in `<dataDir>/<network>/`: one file per IP, named by it
/// (besides its `lock` and `last_reserved_ip.N` files).
fn reservations(data_dir: &Path, network: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(network)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
}

fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    parse(version) >= parse(min)
}

fn chain_at(version: &str, octet: u8) {
    if !require_netns_env() {
        return;
    }
    // Dropped last: kmesh-cni pins and records go to this test's own root and state dir.
    let iso = Isolation::new();
    let cni_path = CniPath::new();
    cni_path.plugin("kmesh-cni");
    let ns = TestNetns::new("weft-chain");
    // bridge creates the bridge on first ADD and never deletes it: the guard does.
    let bridge = HostLink::adopt(&unique_ifname("wbr"));
    let mut tool = Cnitool::new(&cni_path);
    tool.set_env(
        "CNI_CONTAINERID",
        &format!("weft-chain-{}-{octet}", std::process::id()),
    );
    tool.set_env("WEFT_STATE_DIR", iso.state_dir());
    let bridge_plugin = |data_dir: &TempDir| {
        json!({
            "type": "bridge",
            "bridge": bridge.name(),
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "subnet": format!("10.231.{octet}.0/24"),
                "dataDir": data_dir.path(),
            }
        })
    };

    // Reference: bridge alone, same netns path, container ID, bridge and a fresh dataDir, so it
    // hands out the same IP the chain will get.
    let ref_data = TempDir::new().unwrap();
    tool.write_conflist(&json!({
        "cniVersion": version, "name": "weft-ref", "plugins": [bridge_plugin(&ref_data)]
    }));
    let reference = tool.add("weft-ref", ns.path());
    reference.assert_success("bridge alone ADD");
    let reference = reference.json();
    tool.del("weft-ref", ns.path())
        .assert_success("bridge alone DEL");
    assert!(!ns.link_exists("eth0"), "bridge alone DEL left eth0");

    let data = TempDir::new().unwrap();
    tool.write_conflist(&json!({
        "cniVersion": version,
        "name": "weft-chain",
        "plugins": [bridge_plugin(&data), iso.plugin_conf(json!({}))]
    }));

    // ADD
    let out = tool.add("weft-chain", ns.path());
    out.assert_success("chain ADD");
    let result = out.json();
    assert_eq!(
        masked(&result, Some(bridge.name())),
        masked(&reference, Some(bridge.name())),
        "chain result differs from bridge alone at {version}"
    );
    assert_eq!(result["cniVersion"], version, "result version");
    let ips = result["ips"].as_array().expect("result has ips");
    assert!(!ips.is_empty(), "result has no IPs: {result}");
    for ip in ips {
        assert_eq!(
            ip.get("version").is_some(),
            !version_at_least(version, "1.0.0"),
            "ips[].version must be present below 1.0.0 and absent from it: {ip}"
        );
    }
    let eth0 = result["interfaces"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["name"] == "eth0"))
        .unwrap_or_else(|| panic!("no eth0 in result: {result}"));
    assert_eq!(eth0["sandbox"], ns.path_str(), "eth0 sandbox");
    assert!(ns.link_exists("eth0"), "ADD did not create eth0");
    let address = ips[0]["address"].as_str().unwrap();
    let ns_addrs = ns.must(&["-o", "addr", "show", "dev", "eth0"]).stdout;
    assert!(
        ns_addrs.contains(address),
        "eth0 lacks {address}: {ns_addrs}"
    );
    assert_eq!(
        reservations(data.path(), "weft-chain").len(),
        1,
        "host-local reservation"
    );
    assert_eq!(iso.records().len(), 1, "ADD wrote no kmesh-cni record");

    // CHECK: libcni refuses it below 0.4.0 before any plugin runs.
    let check = tool.check("weft-chain", ns.path());
    if version_at_least(version, "0.4.0") {
        check.assert_success("chain CHECK");
        assert!(check.stdout.is_empty(), "CHECK printed: {}", check.stdout);
    } else {
        assert!(!check.success(), "CHECK at {version} must be refused");
        assert!(
            check.stderr.contains("does not support the CHECK command"),
            "unexpected CHECK refusal: {}",
            check.describe()
        );
    }

    // DEL undoes everything; a second DEL has nothing left to undo and still succeeds.
    tool.del("weft-chain", ns.path())
        .assert_success("chain DEL");
    assert!(!ns.link_exists("eth0"), "DEL left eth0 in the netns");
    assert_eq!(
        reservations(data.path(), "weft-chain"),
        Vec::<String>::new(),
        "DEL left a host-local reservation"
    );
    assert_eq!(
        iso.records(),
        Vec::<String>::new(),
        "DEL left a kmesh-cni record"
    );
    assert_eq!(
        iso.attached(),
        Vec::<String>::new(),
        "DEL left a program attached"
    );
    tool.del("weft-chain", ns.path())
        .assert_success("second chain DEL");
}

#[test]
fn chain_bridge_kmesh_0_3_0() {
    chain_at("0.3.0", 30);
}

#[test]
fn chain_bridge_kmesh_0_3_1() {
    chain_at("0.3.1", 31);
}

#[test]
fn chain_bridge_kmesh_0_4_0() {
    chain_at("0.4.0", 40);
}

#[test]
fn chain_bridge_kmesh_1_0_0() {
    chain_at("1.0.0", 100);
}

/// cnitool (libcni LoadConfList) also takes a single-plugin `.conf` and upconverts it to a list,
/// as runtimes still do for pre-1.0.0 configs.
#[test]
fn cnitool_accepts_single_conf() {
    if !require_netns_env() {
        return;
    }
    let cni_path = CniPath::new();
    let ns = TestNetns::new("weft-conf");
    let bridge = HostLink::adopt(&unique_ifname("wbr"));
    let data = TempDir::new().unwrap();
    let tool = Cnitool::new(&cni_path);
    tool.write_conf(
        "10-single.conf",
        &json!({
            "cniVersion": "0.4.0",
            "name": "weft-single",
            "type": "bridge",
            "bridge": bridge.name(),
            "ipam": {"type": "host-local", "subnet": "10.231.4.0/24", "dataDir": data.path()}
        }),
    );
    let out = tool.add("weft-single", ns.path());
    out.assert_success("ADD from a .conf");
    assert_eq!(out.json()["cniVersion"], "0.4.0");
    assert!(ns.link_exists("eth0"));
    tool.del("weft-single", ns.path())
        .assert_success("DEL from a .conf");
    assert!(!ns.link_exists("eth0"));
    assert_eq!(
        reservations(data.path(), "weft-single"),
        Vec::<String>::new()
    );
}
