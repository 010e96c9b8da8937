//! weft-sriov through libcni (a cnitool built from Debian's libcni 1.1.2) at every version it
//! speaks, with weft-ipam and with host-local as IPAM, chained with the reference `tuning`;
//! traffic through the VF; multus-shaped delegate calls; the neighbour announcements.

mod common;

use common::*;
use integration::cni::Cnitool;
use integration::sriov::Kind;
use serde_json::{json, Value};

/// libcni 1.1.2 speaks up to 1.0.0.
const LIBCNI_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

fn tool(rig: &Rig, cid: &str) -> Cnitool {
    let mut tool = Cnitool::new(&rig.cni_path);
    for (k, v) in rig.fake.env() {
        tool.set_env(k, &v);
    }
    tool.set_env("CNI_CONTAINERID", cid);
    tool.set_env("CNI_IFNAME", "net1");
    tool
}

fn ipam(kind: &str, subnet: &str, data: &std::path::Path) -> Value {
    match kind {
        "weft-ipam" => json!({"type": "weft-ipam", "range": subnet,
                              "routes": [{"dst": "0.0.0.0/0"}]}),
        _ => json!({"type": "host-local", "subnet": subnet, "dataDir": data,
                    "routes": [{"dst": "0.0.0.0/0"}]}),
    }
}

#[test]
fn add_check_del_through_libcni_every_version_and_ipam() {
    if !prerequisites()
        || !integration::prereq::require(&["/usr/lib/cni/tuning", "/usr/lib/cni/host-local"])
    {
        return;
    }
    let rig = Rig::new(1, Kind::Macvlan);
    let alt = rig.add_altname(0);
    let before = rig.fake.host_state(0).unwrap();
    let data = tempfile::tempdir().unwrap();
    for (n, version) in LIBCNI_VERSIONS.iter().enumerate() {
        for ipam_kind in ["weft-ipam", "host-local"] {
            let what = format!("{ipam_kind} at {version}");
            let pod = Pod::new("wsr-cni");
            let tool = tool(&rig, &pod.cid);
            let subnet = format!("10.81.{n}.0/24");
            tool.write_conflist(&json!({
                "cniVersion": version,
                "name": "sriov-chain",
                "plugins": [
                    {"type": "weft-sriov", "deviceID": rig.fake.vfs[0].pci,
                     "vlan": 200 + n, "mac": "02:00:00:00:81:01",
                     "ipam": ipam(ipam_kind, &subnet, data.path())},
                    {"type": "tuning", "sysctl": {"net.ipv4.conf.net1.arp_ignore": "1"}},
                ],
            }));
            let out = tool.add("sriov-chain", pod.ns.path());
            out.assert_success(&format!("{what}: ADD"));
            let result = out.json();
            assert_eq!(result["cniVersion"], *version, "{what}: {result}");
            let iface = &result["interfaces"][0];
            assert_eq!(iface["name"], "net1", "{what}: {result}");
            assert_eq!(iface["sandbox"], pod.netns(), "{what}: {result}");
            assert_eq!(iface["mac"], "02:00:00:00:81:01", "{what}: {result}");
            assert_eq!(
                result["ips"][0]["address"],
                format!("10.81.{n}.2/24"),
                "{what}"
            );
            assert_eq!(result["ips"][0]["interface"], 0, "{what}");
            let inside = pod
                .link("net1")
                .unwrap_or_else(|| panic!("{what}: no net1"));
            assert_eq!(inside.mac, "02:00:00:00:81:01", "{what}");
            let sysctl = pod
                .ns
                .exec(&["sysctl", "-n", "net.ipv4.conf.net1.arp_ignore"])
                .stdout;
            assert_eq!(sysctl.trim(), "1", "{what}: tuning did not run after us");
            assert_eq!(rig.fake.vf_pf_state(0)["vlan"], 200 + n as u64, "{what}");
            if version_at_least(version, "0.4.0") {
                tool.check("sriov-chain", pod.ns.path())
                    .assert_success(&format!("{what}: CHECK"));
            }
            tool.del("sriov-chain", pod.ns.path())
                .assert_success(&format!("{what}: DEL"));
            rig.assert_restored(0, &before, &what);
            assert!(before.altnames.contains(&alt));
            assert!(rig.records().is_empty(), "{what}: {:?}", rig.records());
            assert_eq!(rig.ipam_held("sriov-chain"), 0, "{what}: weft-ipam leaked");
        }
    }
    let leftover: Vec<_> = std::fs::read_dir(data.path().join("sriov-chain"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(leftover.is_empty(), "host-local leaked {leftover:?}");
}

/// The VF carries traffic: the pod pings the stand-in's wire end in the host through it.
#[test]
fn traffic_flows_through_the_vf() {
    if !prerequisites() || !integration::prereq::require(&["ping"]) {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let wire = rig.fake.vfs[0].wire.clone();
    integration::proc::must("ip", &["addr", "add", "10.82.0.1/24", "dev", &wire]);
    let pod = Pod::new("wsr-ping");
    let tool = tool(&rig, &pod.cid);
    let data = tempfile::tempdir().unwrap();
    tool.write_conflist(&json!({
        "cniVersion": "1.0.0", "name": "sriov-ping",
        "plugins": [{"type": "weft-sriov", "deviceID": rig.fake.vfs[0].pci,
                     "ipam": ipam("host-local", "10.82.0.0/24", data.path())}],
    }));
    tool.add("sriov-ping", pod.ns.path()).assert_success("ADD");
    pod.ns
        .exec(&["ping", "-c", "2", "-W", "2", "10.82.0.1"])
        .assert_success("ping through the VF");
    tool.del("sriov-ping", pod.ns.path()).assert_success("DEL");
}

/// What multus sends a delegate: `deviceID` and `pciBusID` at the top, ifname net1, the
/// `K8S_POD_*` args, and a whereabouts-shaped IPAM block handed to weft-ipam.
#[test]
fn multus_shaped_call_with_whereabouts_ipam_block() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let before = rig.fake.host_state(0).unwrap();
    let pod = Pod::new("wsr-multus");
    let pci = rig.fake.vfs[0].pci.clone();
    let conf = json!({
        "cniVersion": "0.3.1",
        "name": "sriov-whereabouts",
        "type": "weft-sriov",
        "deviceID": pci,
        "pciBusID": pci,
        "vlan": 35,
        "ipam": {"type": "weft-ipam", "range": "10.35.1.0/24", "gateway": "10.35.1.1",
                 "exclude": ["10.35.1.0/26"]},
    });
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
         K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=6f1c0c2e-0000-4000-8000-000000000001",
        pod.cid
    );
    let env = |verb: &str| rig.env(verb, &pod, "net1").set("CNI_ARGS", &args);
    let out = rig.run(&env("ADD"), &conf);
    out.assert_success("multus ADD");
    let result = out.json();
    assert_eq!(result["cniVersion"], "0.3.1");
    // The first address after the excluded 10.35.1.0/26, as whereabouts hands it out (skip to
    // the excluded subnet's broadcast, then the next address).
    assert_eq!(result["ips"][0]["address"], "10.35.1.64/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.35.1.1", "{result}");
    assert_eq!(result["ips"][0]["version"], "4");
    assert!(pod.link("net1").is_some());
    rig.run(&env("DEL"), &conf).assert_success("multus DEL");
    rig.assert_restored(0, &before, "multus");
}

/// After ADD the neighbours learn the VF's MAC for the pod's addresses: IPv4 at once
/// (gratuitous ARP), IPv6 once DAD completes (the kernel's unsolicited NA, `ndisc_notify`).
/// The neighbour is a sibling macvlan on the stand-in's lower device: its carrier does not
/// flap when the VF moves (a veth peer's would, and the kernel flushes its neighbour cache).
#[test]
fn neighbours_learn_the_new_mac() {
    if !prerequisites() || !integration::prereq::require(&["sysctl"]) {
        return;
    }
    let rig = Rig::new(1, Kind::Macvlan);
    let lower = rig.fake.vfs[0].wire.clone();
    let nb = integration::fixtures::netns::HostLink::adopt(
        &integration::fixtures::netns::unique_ifname("wnb"),
    );
    let must = |args: &[&str]| integration::proc::must("ip", args);
    must(&[
        "link",
        "add",
        nb.name(),
        "link",
        &lower,
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    must(&["link", "set", nb.name(), "up"]);
    must(&["addr", "add", "10.83.0.1/24", "dev", nb.name()]);
    must(&["addr", "add", "fd83::1/64", "dev", nb.name(), "nodad"]);
    // Stale entries with another pod's MAC, and no lock time, as on a busy node.
    must(&[
        "ntable",
        "change",
        "name",
        "arp_cache",
        "dev",
        nb.name(),
        "locktime",
        "0",
    ]);
    for ip in ["10.83.0.2", "fd83::2"] {
        must(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            "02:de:ad:00:00:01",
            "dev",
            nb.name(),
            "nud",
            "stale",
        ]);
    }
    let pod = Pod::new("wsr-garp");
    let conf = rig.conf(
        "1.0.0",
        0,
        json!({"mac": "02:00:00:00:83:02", "ipam": {"type": "weft-ipam", "range": "10.83.0.0/24",
               "ipRanges": [{"range": "fd83::/64"}]}}),
    );
    let out = rig.run(&rig.env("ADD", &pod, "net1"), &conf);
    out.assert_success("ADD");
    assert_eq!(out.json()["ips"][1]["address"], "fd83::2/64");
    let neigh = |ip: &str| -> String {
        let out = must(&["-j", "neigh", "show", ip, "dev", nb.name()]);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v[0]["lladdr"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(neigh("10.83.0.2"), "02:00:00:00:83:02", "no gratuitous ARP");
    let notify = pod
        .ns
        .exec(&["sysctl", "-n", "net.ipv6.conf.net1.ndisc_notify"])
        .stdout;
    assert_eq!(notify.trim(), "1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while neigh("fd83::2") != "02:00:00:00:83:02" {
        assert!(
            std::time::Instant::now() < deadline,
            "no unsolicited NA after DAD: {}",
            neigh("fd83::2")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    rig.run(&rig.env("DEL", &pod, "net1"), &conf)
        .assert_success("DEL");
}

/// GC and STATUS at 1.1.0 reach the IPAM delegate too (weft-ipam speaks 1.1.0).
#[test]
fn gc_forwards_to_ipam() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let pod = Pod::new("wsr-gcipam");
    let conf = rig.conf("1.1.0", 0, json!({"ipam": weft_ipam("10.84.0.0/24")}));
    rig.run(&rig.env("ADD", &pod, "net1"), &conf)
        .assert_success("ADD");
    assert_eq!(rig.ipam_held("sriov-test"), 1);
    rig.run(&rig.env_global("STATUS"), &conf)
        .assert_success("STATUS");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    rig.run(&rig.env_global("GC"), &gc).assert_success("GC");
    assert_eq!(
        rig.ipam_held("sriov-test"),
        0,
        "GC not forwarded to weft-ipam"
    );
    assert!(pod.link("net1").is_none());
    assert!(rig.records().is_empty());
}
