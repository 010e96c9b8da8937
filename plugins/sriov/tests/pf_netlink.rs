//! The real PF path (`host::sriov::NetlinkPf`) against a real netdev that is no SR-IOV PF: a
//! veth. Its driver implements no `ndo_get_vf_config`/`ndo_set_vf_*`, so the kernel reports no
//! `IFLA_VFINFO_LIST` and refuses `IFLA_VF_*` with EOPNOTSUPP — exactly what a NIC without VF
//! support does. (The request bytes themselves are checked in host's unit tests.)

mod common;

use common::*;
use host::sriov::{fake::FakeState, NetlinkPf, PfError, PfOps, VfSetting, VlanProto};
use integration::fixtures::netns::{unique_ifname, HostLink};
use integration::proc::must;
use integration::sriov::Kind;
use serde_json::json;

/// A veth in the host named like the fake tree's PF netdev, so sysfs and netlink agree.
fn veth_pf(rig: &Rig) -> HostLink {
    let name = rig.fake.pf_name.clone();
    let peer = unique_ifname("wpp");
    must(
        "ip",
        &["link", "add", &name, "type", "veth", "peer", "name", &peer],
    );
    HostLink::adopt(&name)
}

#[test]
fn netlink_pf_on_a_veth_is_not_supported() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let _pf = veth_pf(&rig);
    let pf = NetlinkPf;
    let e = pf.vf_state(&rig.fake.pf_name, 0).unwrap_err();
    assert!(e.is_unsupported(), "{e}");
    assert!(
        e.to_string().contains("not supported by the PF driver"),
        "{e}"
    );
    let vlan = VfSetting::Vlan {
        vlan: 10,
        qos: 0,
        proto: VlanProto::Dot1Q,
    };
    for setting in [vlan, VfSetting::Spoofchk(false), VfSetting::Trust(true)] {
        let e = pf.set(&rig.fake.pf_name, 0, &setting).unwrap_err();
        assert!(
            e.is_unsupported(),
            "the kernel answered {setting} with: {e}"
        );
    }
    let e = pf.vf_state("wsr-no-such-pf", 0).unwrap_err();
    assert!(matches!(e, PfError::NoSuchPf { .. }), "{e}");
}

/// The plugin with the real netlink PF (no fake) on a veth PF: PF-side settings fail with a
/// clear error and the VF is untouched; without settings the VF attaches (the PF is only read).
#[test]
fn plugin_on_a_veth_pf() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let _pf = veth_pf(&rig);
    rig.add_altname(0);
    let before = rig.fake.host_state(0).unwrap();
    let pod = Pod::new("wsr-vethpf");
    let env = |verb: &str| rig.env(verb, &pod, "net1").unset("WEFT_SRIOV_FAKE_PF");
    let conf = rig.conf(
        "1.0.0",
        0,
        json!({"vlan": 10, "mac": "02:00:00:00:0e:01", "ipam": weft_ipam("10.91.0.0/24")}),
    );
    let msg = assert_code(
        &rig.run(&env("ADD"), &conf),
        100,
        "ADD with vlan on a veth PF",
    );
    assert!(msg.contains("not supported by the PF driver"), "{msg}");
    assert!(msg.contains(&rig.fake.vfs[0].pci), "names the VF: {msg}");
    assert!(msg.contains(&rig.fake.pf_name), "names the PF: {msg}");
    assert_eq!(rig.fake.host_state(0).as_ref(), Some(&before), "VF touched");
    assert!(pod.link("net1").is_none());
    assert!(rig.records().is_empty());
    assert_eq!(rig.owner(0), None);
    assert_eq!(rig.ipam_held("sriov-test"), 0);

    let plain = rig.conf("1.0.0", 0, json!({"ipam": weft_ipam("10.91.0.0/24")}));
    rig.run(&env("ADD"), &plain)
        .assert_success("ADD without PF-side settings");
    assert!(pod.link("net1").is_some());
    let record = rig.record("sriov-test", &pod.cid, "net1").unwrap();
    assert_eq!(record["pf_original"], json!(null), "{record}");
    rig.run(&env("DEL"), &plain).assert_success("DEL");
    assert_eq!(rig.fake.host_state(0).as_ref(), Some(&before));
}

/// The test kit writes the fake PF in exactly the format the plugin's fake reads.
#[test]
fn the_kits_fake_pf_file_is_the_plugins_format() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(2, Kind::Veth);
    rig.fake.pf_unsupported(&["trust"]);
    rig.fake.pf_flaky("mac", 1);
    let state: FakeState = serde_json::from_value(rig.fake.pf()).expect("host reads it");
    let pf = &state.pfs[&rig.fake.pf_name];
    assert_eq!(pf.vfs.len(), 2);
    assert_eq!(pf.unsupported, vec!["trust".to_string()]);
    assert_eq!(pf.flaky["mac"], 1);
    assert_eq!(
        serde_json::to_value(pf.vfs[&0]).unwrap(),
        integration::sriov::fresh_vf_state()
    );
}
