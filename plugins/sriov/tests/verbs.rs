//! weft-sriov exec'd directly, as a runtime or multus does, on veth and macvlan stand-ins for
//! VFs behind a fake sysfs tree, with the recording fake PF (this kernel has no SR-IOV; see
//! `integration::sriov`). Every test checks what the pod sees, what the host gets back, the
//! PF-side state and the records.

mod common;

use common::*;
use integration::sriov::{fresh_vf_state, Kind};
use serde_json::{json, Value};

const IFNAME: &str = "net1";

/// Every PF-side setting sriov-cni knows, plus MTU and weft-ipam.
fn full_extra(range: &str) -> Value {
    json!({
        "mac": "CA:FE:C0:FF:EE:01", "vlan": 100, "vlanQoS": 2, "spoofchk": "off",
        "trust": "on", "link_state": "enable", "min_tx_rate": 10, "max_tx_rate": 500,
        "mtu": 1400, "ipam": weft_ipam(range),
    })
}

fn every_version(kind: Kind, net: u8) {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, kind);
    let alt = rig.add_altname(0);
    let before = rig.fake.host_state(0).unwrap();
    assert!(before.altnames.contains(&alt));
    for version in ALL_VERSIONS {
        let what = format!("{kind:?} at {version}");
        let pod = Pod::new("wsr-verbs");
        let conf = rig.conf(version, 0, full_extra(&format!("10.{net}.0.0/24")));

        let out = rig.run(&rig.env("ADD", &pod, IFNAME), &conf);
        out.assert_success(&format!("{what}: ADD"));
        let result = out.json();
        assert_eq!(result["cniVersion"], version, "{what}: {result}");
        let iface = &result["interfaces"][0];
        assert_eq!(iface["name"], IFNAME, "{what}: {result}");
        assert_eq!(iface["mac"], "ca:fe:c0:ff:ee:01", "{what}: {result}");
        assert_eq!(iface["sandbox"], pod.netns(), "{what}: {result}");
        let v11 = version == "1.1.0";
        assert_eq!(
            iface.get("mtu").is_some(),
            v11,
            "{what}: mtu only at 1.1.0: {result}"
        );
        assert_eq!(
            iface.get("pciID").is_some(),
            v11,
            "{what}: pciID only at 1.1.0"
        );
        if v11 {
            assert_eq!(iface["mtu"], 1400);
            assert_eq!(iface["pciID"], rig.fake.vfs[0].pci);
        }
        assert_eq!(result["interfaces"].as_array().unwrap().len(), 1);
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 0, "{what}: {result}");
        assert_eq!(
            ip["address"],
            format!("10.{net}.0.2/24"),
            "{what}: {result}"
        );
        assert_eq!(
            ip.get("version").is_some(),
            !version_at_least(version, "1.0.0"),
            "{what}: ips[].version"
        );

        // The pod has the VF with our MAC/MTU, up, addressed and routed; altnames dropped.
        let inside = pod
            .link(IFNAME)
            .unwrap_or_else(|| panic!("{what}: no {IFNAME} in pod"));
        assert_eq!(inside.mac, "ca:fe:c0:ff:ee:01", "{what}");
        assert_eq!(inside.mtu, 1400, "{what}");
        assert!(inside.up, "{what}: VF not up in the pod");
        assert!(inside.altnames.is_empty(), "{what}: altnames moved along");
        let addrs = pod.ns.must(&["-o", "addr", "show", "dev", IFNAME]).stdout;
        assert!(
            addrs.contains(&format!("10.{net}.0.2/24")),
            "{what}: {addrs}"
        );
        let routes = pod.ns.must(&["route", "show", "default"]).stdout;
        assert!(
            routes.contains(&format!("via 10.{net}.0.1 dev {IFNAME}")),
            "{what}: {routes}"
        );
        assert!(
            rig.fake.host_state(0).is_none(),
            "{what}: VF still in the host"
        );

        // PF side: every setting in effect.
        assert_eq!(
            rig.fake.vf_pf_state(0),
            json!({"mac": "ca:fe:c0:ff:ee:01", "vlan": 100, "qos": 2, "vlan_proto": "802.1Q",
                   "spoofchk": false, "trust": true, "link_state": "enable",
                   "min_tx_rate": 10, "max_tx_rate": 500}),
            "{what}: PF-side state"
        );

        // Record (0600, everything DEL needs) and owner.
        let record = rig
            .record("sriov-test", &pod.cid, IFNAME)
            .unwrap_or_else(|| panic!("{what}: no record"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(rig.record_path("sriov-test", &pod.cid, IFNAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{what}: record mode");
        assert_eq!(record["network"], "sriov-test");
        assert_eq!(record["pci"], rig.fake.vfs[0].pci);
        assert_eq!(record["pf"], rig.fake.pf_name);
        assert_eq!(record["mode"]["type"], "netdev");
        assert_eq!(record["mode"]["original"]["name"], before.name.as_str());
        assert_eq!(record["mode"]["original"]["mac"], before.mac.as_str());
        assert_eq!(record["mode"]["original"]["altnames"], json!([alt]));
        assert_eq!(record["pf_original"], fresh_vf_state());
        assert_eq!(record["netns"], pod.netns());
        assert_eq!(rig.owner(0).unwrap()["container_id"], pod.cid.as_str());

        if version_at_least(version, "0.4.0") {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            let out = rig.run(&rig.env("CHECK", &pod, IFNAME), &check);
            out.assert_success(&format!("{what}: CHECK"));
            assert_eq!(out.stdout, "", "{what}: CHECK printed");
        }

        let out = rig.run(&rig.env("DEL", &pod, IFNAME), &conf);
        out.assert_success(&format!("{what}: DEL"));
        assert_eq!(out.stdout, "", "{what}: DEL printed");
        rig.assert_restored(0, &before, &what);
        assert!(pod.link(IFNAME).is_none(), "{what}: VF left in the pod");
        assert!(
            rig.records().is_empty(),
            "{what}: records left: {:?}",
            rig.records()
        );
        assert_eq!(rig.ipam_held("sriov-test"), 0, "{what}: IPAM not released");

        // DEL again, and DEL without netns (containerd's second DEL): nothing left, success.
        rig.run(&rig.env("DEL", &pod, IFNAME), &conf)
            .assert_success(&format!("{what}: second DEL"));
        rig.run(&rig.env("DEL", &pod, IFNAME).unset("CNI_NETNS"), &conf)
            .assert_success(&format!("{what}: DEL without netns"));
        rig.assert_restored(0, &before, &what);
    }
}

#[test]
fn add_check_del_every_version_on_a_veth_vf() {
    every_version(Kind::Veth, 61);
}

#[test]
fn add_check_del_every_version_on_a_macvlan_vf() {
    every_version(Kind::Macvlan, 62);
}

/// Without PF-side settings, MTU or IPAM: the PF is only read, the VF keeps its MAC.
#[test]
fn plain_vf_without_settings() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let before = rig.fake.host_state(0).unwrap();
    let pod = Pod::new("wsr-plain");
    let conf = rig.conf("1.0.0", 0, json!({}));
    let out = rig.run(&rig.env("ADD", &pod, "eth0"), &conf);
    out.assert_success("ADD");
    let result = out.json();
    assert_eq!(
        result["interfaces"][0]["mac"],
        before.mac.as_str(),
        "{result}"
    );
    assert!(result.get("ips").is_none(), "no IPAM, no ips: {result}");
    assert_eq!(pod.link("eth0").unwrap().mac, before.mac);
    assert!(rig.fake.pf_sets().is_empty(), "PF changed without settings");
    rig.run(&rig.env("DEL", &pod, "eth0"), &conf)
        .assert_success("DEL");
    rig.assert_restored(0, &before, "plain");
}

/// A VF bound to vfio-pci: PF-side settings and IPAM, no netdev, mode and driver recorded.
#[test]
fn dpdk_vf() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    rig.fake.bind(0, "vfio-pci");
    rig.fake.set_netdev(0, None);
    let pod = Pod::new("wsr-dpdk");
    let conf = rig.conf(
        "1.1.0",
        0,
        json!({"mac": "02:00:00:00:d0:01", "vlan": 7, "ipam": weft_ipam("10.63.0.0/24")}),
    );
    let links_before = pod.ns.links();
    let out = rig.run(&rig.env("ADD", &pod, IFNAME), &conf);
    out.assert_success("DPDK ADD");
    let result = out.json();
    let iface = &result["interfaces"][0];
    assert_eq!(iface["pciID"], rig.fake.vfs[0].pci, "{result}");
    assert_eq!(iface["mac"], "02:00:00:00:d0:01", "{result}");
    assert_eq!(iface["sandbox"], pod.netns(), "{result}");
    assert_eq!(result["ips"][0]["address"], "10.63.0.2/24", "{result}");
    assert_eq!(
        pod.ns.links(),
        links_before,
        "DPDK mode changed the pod's links"
    );
    let record = rig.record("sriov-test", &pod.cid, IFNAME).unwrap();
    assert_eq!(
        record["mode"],
        json!({"type": "dpdk", "driver": "vfio-pci"})
    );
    assert_eq!(rig.fake.vf_pf_state(0)["vlan"], 7);
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    rig.run(&rig.env("CHECK", &pod, IFNAME), &check)
        .assert_success("DPDK CHECK");
    // Rebound behind our back: CHECK says so.
    rig.fake.bind(0, "iavf");
    let msg = assert_code(
        &rig.run(&rig.env("CHECK", &pod, IFNAME), &check),
        103,
        "CHECK",
    );
    assert!(msg.contains("vfio-pci"), "{msg}");
    rig.fake.bind(0, "vfio-pci");
    rig.run(&rig.env("DEL", &pod, IFNAME), &conf)
        .assert_success("DPDK DEL");
    assert_eq!(rig.fake.vf_pf_state(0), fresh_vf_state());
    assert!(rig.records().is_empty());
    assert_eq!(rig.owner(0), None);
    assert_eq!(rig.ipam_held("sriov-test"), 0);
}

/// Bad input fails with a clear code and message before anything changes.
#[test]
fn bad_input_changes_nothing() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let before = rig.fake.host_state(0).unwrap();
    let pod = Pod::new("wsr-bad");
    let pf_pci = rig.fake.pf_pci.clone();
    let cases: Vec<(Value, u64, &str)> = vec![
        (json!({"deviceID": null}), 7, "deviceID"),
        (
            json!({"deviceID": "0000:5e:1f.7"}),
            7,
            "0000:5e:1f.7 does not exist",
        ),
        (json!({"deviceID": pf_pci}), 7, "not an SR-IOV VF"),
        (json!({"vlan": 5000}), 7, "vlan 5000"),
        (json!({"vlanQoS": 3}), 7, "vlanQoS"),
        (json!({"link_state": "sometimes"}), 7, "link_state"),
        (json!({"mac": "ff:ff:ff:ff:ff:ff"}), 7, "cannot be assigned"),
        (json!({"vlan_trunk": "2,4,5"}), 2, "vlan_trunk"),
    ];
    for (extra, code, needle) in cases {
        let conf = rig.conf("1.0.0", 0, extra.clone());
        let msg = assert_code(
            &rig.run(&rig.env("ADD", &pod, IFNAME), &conf),
            code,
            &extra.to_string(),
        );
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    let conf = rig.conf("1.0.0", 0, json!({"vlan": 3}));
    // A pod that is gone: code 3.
    let gone = rig
        .env("ADD", &pod, IFNAME)
        .set("CNI_NETNS", "/var/run/netns/weft-sriov-no-such-netns");
    assert_code(&rig.run(&gone, &conf), 3, "gone netns");
    // CNI_IFNAME taken in the pod: code 4, the VF stays where it is.
    pod.ns.must(&[
        "link", "add", IFNAME, "type", "veth", "peer", "name", "taken0",
    ]);
    let msg = assert_code(
        &rig.run(&rig.env("ADD", &pod, IFNAME), &conf),
        4,
        "ifname taken",
    );
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(rig.fake.host_state(0).as_ref(), Some(&before));
    assert!(
        rig.fake.pf_sets().is_empty(),
        "PF changed: {:?}",
        rig.fake.pf_sets()
    );
    assert!(rig.records().is_empty());
    assert_eq!(rig.owner(0), None);
}

/// A PF driver that refuses one setting: a clear error naming the VF and the setting, and
/// everything done before it (VLAN, MAC, the IPAM address) undone (sriov-cni #119).
#[test]
fn pf_refusing_a_setting_rolls_everything_back() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Macvlan);
    rig.add_altname(0);
    let before = rig.fake.host_state(0).unwrap();
    rig.fake.pf_unsupported(&["trust"]);
    let pod = Pod::new("wsr-refuse");
    let conf = rig.conf("1.0.0", 0, full_extra("10.64.0.0/24"));
    let msg = assert_code(&rig.run(&rig.env("ADD", &pod, IFNAME), &conf), 100, "ADD");
    assert!(msg.contains(&rig.fake.vfs[0].pci), "names the VF: {msg}");
    assert!(msg.contains("trust on"), "names the setting: {msg}");
    assert!(msg.contains("not supported by the PF driver"), "{msg}");
    // VLAN and MAC were set before trust failed: all restored.
    let sets = rig.fake.pf_sets();
    assert!(
        sets.iter().any(|(_, s)| s["vlan"]["vlan"] == 100),
        "{sets:?}"
    );
    rig.assert_restored(0, &before, "refused trust");
    assert!(pod.link(IFNAME).is_none());
    assert!(rig.records().is_empty());
    assert_eq!(rig.ipam_held("sriov-test"), 0, "IPAM address leaked");
}

/// A driver that acknowledges a MAC before applying it: the setting is read back and re-sent.
#[test]
fn lazy_pf_driver_gets_a_setting_again() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    rig.fake.pf_flaky("mac", 1);
    let pod = Pod::new("wsr-lazy");
    let conf = rig.conf("1.0.0", 0, json!({"mac": "02:00:00:00:1a:2b"}));
    rig.run(&rig.env("ADD", &pod, IFNAME), &conf)
        .assert_success("ADD");
    let macs: Vec<_> = rig
        .fake
        .pf_sets()
        .into_iter()
        .filter(|(_, s)| s.get("mac").is_some())
        .collect();
    assert_eq!(macs.len(), 2, "the dropped MAC was sent again: {macs:?}");
    assert_eq!(rig.fake.vf_pf_state(0)["mac"], "02:00:00:00:1a:2b");
    rig.run(&rig.env("DEL", &pod, IFNAME), &conf)
        .assert_success("DEL");
}

/// A failure after the IPAM delegate succeeded (its route cannot be installed) undoes the IPAM
/// reservation, the netdev move and the PF-side settings.
#[test]
fn failure_after_ipam_undoes_everything() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let before = rig.fake.host_state(0).unwrap();
    let data = tempfile::tempdir().unwrap();
    let pod = Pod::new("wsr-late");
    let conf = rig.conf(
        "1.0.0",
        0,
        json!({"vlan": 9, "ipam": {"type": "host-local", "subnet": "10.65.0.0/24",
               "dataDir": data.path(), "routes": [{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}]}}),
    );
    let out = rig.run(&rig.env("ADD", &pod, IFNAME), &conf);
    assert!(!out.success(), "ADD with an unreachable gateway succeeded");
    rig.assert_restored(0, &before, "route failure");
    let held: Vec<_> = std::fs::read_dir(data.path().join("sriov-test"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
        .collect();
    assert!(held.is_empty(), "host-local still holds {held:?}");
    assert!(rig.records().is_empty());
}

/// The application changed the VF's MAC in the pod (sriov-cni #214): CHECK notices, DEL still
/// gives the VF back with its original MAC (#125).
#[test]
fn application_changed_mac_is_restored() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let before = rig.fake.host_state(0).unwrap();
    let pod = Pod::new("wsr-appmac");
    let conf = rig.conf("1.0.0", 0, json!({"ipam": weft_ipam("10.66.0.0/24")}));
    let out = rig.run(&rig.env("ADD", &pod, IFNAME), &conf);
    out.assert_success("ADD");
    pod.ns
        .must(&["link", "set", IFNAME, "address", "02:aa:bb:cc:dd:ee"]);
    let mut check = conf.clone();
    check["prevResult"] = out.json();
    let msg = assert_code(
        &rig.run(&rig.env("CHECK", &pod, IFNAME), &check),
        103,
        "CHECK",
    );
    assert!(msg.contains("02:aa:bb:cc:dd:ee"), "{msg}");
    rig.run(&rig.env("DEL", &pod, IFNAME), &conf)
        .assert_success("DEL");
    rig.assert_restored(0, &before, "app-changed MAC");
}

/// The pod's netns is destroyed before DEL. A real VF comes back to the host under the pod's
/// ifname (sriov-cni #126/#349): emulated by a stand-in of that name with the pod's MAC/MTU
/// and its sysfs entry (the kernel's part). DEL (or GC) finds it by PCI address and restores it.
fn netns_destroyed_first(use_gc: bool) {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let alt = rig.add_altname(0);
    let before = rig.fake.host_state(0).unwrap();
    // A unique pod ifname: the "returned" VF lives in the host under it.
    let ifname = integration::fixtures::netns::unique_ifname("wpi");
    let mut pod = Pod::new("wsr-gone");
    let conf = rig.conf(
        "1.1.0",
        0,
        json!({"mac": "02:00:00:00:9a:01", "mtu": 1300, "vlan": 12}),
    );
    rig.run(&rig.env("ADD", &pod, &ifname), &conf)
        .assert_success("ADD");
    let netns_path = pod.netns().to_owned();
    let cid = pod.cid.clone();
    // Destroy the pod: the veth VF dies with it.
    drop(std::mem::replace(
        &mut pod.ns,
        integration::fixtures::netns::TestNetns::new("wsr-spare"),
    ));
    assert!(rig.fake.host_state(0).is_none());
    // The kernel hands the VF back as `ifname`, with what the pod had.
    let returned = rig
        .fake
        .hand_back(0, &ifname, "02:00:00:00:9a:01", Some(1300));
    let out = if use_gc {
        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([]);
        rig.run(&rig.env_global("GC"), &gc)
    } else {
        let env = integration::cni::PluginEnv::verb(
            "DEL",
            &cid,
            &netns_path,
            &ifname,
            rig.cni_path.path_str(),
        );
        rig.run(&rig.with_fakes(env), &conf)
    };
    out.assert_success(if use_gc { "GC" } else { "DEL" });
    assert!(!returned.exists(), "the VF kept the pod's name");
    rig.fake.set_netdev(0, Some(&before.name));
    let now = rig
        .fake
        .host_state(0)
        .expect("VF back under its original name");
    assert_eq!(now.mac, before.mac);
    assert_eq!(now.mtu, before.mtu);
    assert!(now.altnames.contains(&alt), "altname not restored: {now:?}");
    assert_eq!(rig.fake.vf_pf_state(0), fresh_vf_state());
    assert!(rig.records().is_empty());
    assert_eq!(rig.owner(0), None);
}

#[test]
fn del_after_the_netns_was_destroyed() {
    netns_destroyed_first(false);
}

#[test]
fn gc_after_the_netns_was_destroyed() {
    netns_destroyed_first(true);
}

/// The VF vanished altogether (the stand-in died with its netns): DEL restores the PF side,
/// drops the record, succeeds; and succeeds again.
#[test]
fn del_when_the_vf_is_gone() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let mut pod = Pod::new("wsr-vanish");
    let conf = rig.conf(
        "1.0.0",
        0,
        json!({"vlan": 30, "ipam": weft_ipam("10.67.0.0/24")}),
    );
    rig.run(&rig.env("ADD", &pod, IFNAME), &conf)
        .assert_success("ADD");
    let env = rig.env("DEL", &pod, IFNAME);
    drop(std::mem::replace(
        &mut pod.ns,
        integration::fixtures::netns::TestNetns::new("wsr-spare"),
    ));
    for n in 0..2 {
        rig.run(&env, &conf).assert_success(&format!("DEL {n}"));
    }
    assert_eq!(rig.fake.vf_pf_state(0), fresh_vf_state());
    assert!(rig.records().is_empty());
    assert_eq!(rig.owner(0), None);
    assert_eq!(rig.ipam_held("sriov-test"), 0);
}

/// GC of one network releases only its own unlisted VFs; another network's are untouched.
#[test]
fn gc_is_scoped_to_its_network() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(3, Kind::Veth);
    let before: Vec<_> = (0..3).map(|i| rig.fake.host_state(i).unwrap()).collect();
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new("wsr-gc")).collect();
    let conf = |net: &str, vf: usize| {
        let mut c = rig.conf("1.1.0", vf, json!({"vlan": 40 + vf}));
        c["name"] = json!(net);
        c
    };
    for (i, net) in ["net-a", "net-a", "net-b"].iter().enumerate() {
        rig.run(&rig.env("ADD", &pods[i], IFNAME), &conf(net, i))
            .assert_success(&format!("ADD {i}"));
    }
    let mut gc = conf("net-a", 0);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": pods[0].cid, "ifname": IFNAME}]);
    rig.run(&rig.env_global("GC"), &gc)
        .assert_success("GC net-a");
    assert!(
        pods[0].link(IFNAME).is_some(),
        "GC took a listed attachment's VF"
    );
    rig.assert_restored(1, &before[1], "GC net-a");
    assert!(pods[2].link(IFNAME).is_some(), "GC of net-a touched net-b");
    assert_eq!(
        rig.records(),
        vec![
            format!("net-a/{}:{IFNAME}", pods[0].cid),
            format!("net-b/{}:{IFNAME}", pods[2].cid)
        ]
    );
    let mut gc_b = conf("net-b", 2);
    gc_b["cni.dev/valid-attachments"] = json!([]);
    rig.run(&rig.env_global("GC"), &gc_b)
        .assert_success("GC net-b");
    rig.assert_restored(2, &before[2], "GC net-b");
    assert!(pods[0].link(IFNAME).is_some());
    rig.run(&rig.env("DEL", &pods[0], IFNAME), &conf("net-a", 0))
        .assert_success("DEL");
    rig.assert_restored(0, &before[0], "DEL");
}

#[test]
fn status_and_version() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let conf = rig.conf("1.1.0", 0, json!({}));
    let out = rig.run(&rig.env_global("STATUS"), &conf);
    out.assert_success("STATUS");
    assert_eq!(out.stdout, "");
    let empty = tempfile::tempdir().unwrap();
    let broken = rig
        .env_global("STATUS")
        .set("WEFT_SYSFS_ROOT", empty.path().to_str().unwrap());
    let msg = assert_code(&rig.run(&broken, &conf), 50, "STATUS without sysfs");
    assert!(msg.contains("bus/pci/devices"), "{msg}");
    let out = rig.run(
        &integration::cni::PluginEnv::command("VERSION"),
        &json!({"cniVersion": "1.1.0"}),
    );
    out.assert_success("VERSION");
    assert_eq!(out.json()["supportedVersions"], json!(ALL_VERSIONS));
}

/// The VF's pod died without a DEL (its netns is gone, the kernel returned the VF to the host
/// under the pod's ifname). A new pod's ADD of that VF reclaims it: the old attachment is
/// undone first, so the new pod gets a clean VF. The old pod's late DEL then must not reset
/// the VF the new pod owns (sriov-cni #219).
#[test]
fn a_new_pod_reclaims_a_vf_whose_pod_died_and_a_late_del_leaves_it_alone() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let before = rig.fake.host_state(0).unwrap();
    let ifname = integration::fixtures::netns::unique_ifname("wpi");
    let mut old = Pod::new("wsr-old");
    let old_conf = rig.conf("1.0.0", 0, json!({"vlan": 51, "mac": "02:00:00:00:51:01"}));
    rig.run(&rig.env("ADD", &old, &ifname), &old_conf)
        .assert_success("old pod ADD");
    let old_del = rig.env("DEL", &old, &ifname);
    drop(std::mem::replace(
        &mut old.ns,
        integration::fixtures::netns::TestNetns::new("wsr-spare"),
    ));
    // The kernel's part: the VF is back under the old pod's ifname with its MAC.
    let _returned = rig.fake.hand_back(0, &ifname, "02:00:00:00:51:01", None);

    let new = Pod::new("wsr-new");
    let new_conf = rig.conf("1.0.0", 0, json!({"vlan": 52}));
    let out = rig.run(&rig.env("ADD", &new, IFNAME), &new_conf);
    out.assert_success("new pod ADD");
    let inside = new.link(IFNAME).expect("the new pod has the VF");
    assert_eq!(
        inside.mac, before.mac,
        "the old pod's MAC stuck to the VF (#125)"
    );
    assert_eq!(rig.fake.vf_pf_state(0)["vlan"], 52);
    assert_eq!(
        rig.fake.vf_pf_state(0)["mac"],
        "00:00:00:00:00:00",
        "old admin MAC kept"
    );
    let record = rig.record("sriov-test", &new.cid, IFNAME).unwrap();
    assert_eq!(record["mode"]["original"]["name"], before.name.as_str());
    assert_eq!(
        rig.records(),
        vec![format!("sriov-test/{}:{IFNAME}", new.cid)]
    );
    // The old pod's runtime finally sends DEL: nothing of the new pod's may change.
    rig.run(&old_del, &old_conf)
        .assert_success("late DEL of the old pod");
    assert_eq!(new.link(IFNAME).as_ref(), Some(&inside));
    assert_eq!(rig.fake.vf_pf_state(0)["vlan"], 52);
    assert_eq!(rig.owner(0).unwrap()["container_id"], new.cid.as_str());
    rig.run(&rig.env("DEL", &new, IFNAME), &new_conf)
        .assert_success("new pod DEL");
    rig.fake.set_netdev(0, Some(&before.name));
    let now = rig.fake.host_state(0).unwrap();
    assert_eq!((now.mac, now.mtu), (before.mac, before.mtu));
    assert_eq!(rig.fake.vf_pf_state(0), fresh_vf_state());
}

/// ADD again for the same attachment (a runtime retrying after a lost reply): the previous
/// attachment is replaced, not doubled.
#[test]
fn add_again_replaces_the_attachment() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(2, Kind::Veth);
    let before: Vec<_> = (0..2).map(|i| rig.fake.host_state(i).unwrap()).collect();
    let pod = Pod::new("wsr-again");
    let conf = rig.conf(
        "1.0.0",
        0,
        json!({"vlan": 60, "ipam": weft_ipam("10.68.0.0/24")}),
    );
    for n in 0..2 {
        rig.run(&rig.env("ADD", &pod, IFNAME), &conf)
            .assert_success(&format!("ADD {n}"));
    }
    assert!(pod.link(IFNAME).is_some());
    assert_eq!(rig.records().len(), 1);
    assert_eq!(rig.ipam_held("sriov-test"), 1);
    // The same attachment with another VF: the first VF goes back first.
    let other = rig.conf(
        "1.0.0",
        1,
        json!({"vlan": 61, "ipam": weft_ipam("10.68.0.0/24")}),
    );
    rig.run(&rig.env("ADD", &pod, IFNAME), &other)
        .assert_success("ADD with VF 1");
    rig.assert_restored(0, &before[0], "VF 0 after the attachment moved to VF 1");
    assert_eq!(rig.fake.vf_pf_state(1)["vlan"], 61);
    rig.run(&rig.env("DEL", &pod, IFNAME), &other)
        .assert_success("DEL");
    rig.assert_restored(1, &before[1], "VF 1");
    assert_eq!(rig.ipam_held("sriov-test"), 0);
}
