//! `weft gc` across plugins on a private stand-in node: a pod that vanished without a DEL gets
//! its weft-sriov VF or its kmesh-cni attachment taken back, and its weft-ipam address freed
//! (the stale record is the proof), while live pods and every other network keep theirs.
//! `weft inspect` and `weft doctor` show the weft-sriov records before.
//!
//! SR-IOV is faked where this kernel lacks it (`integration::sriov`: veth stand-ins for VFs,
//! a fake sysfs tree, a recording fake PF); netns, moves, renames, addresses are real.

mod common;

use common::{unique, TestNode};
use integration::cni::{exec_plugin, Cnitool, PluginEnv};
use integration::fixtures::bpffs::AttachWatch;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::plugins::CniPath;
use integration::prereq::require_netns_env;
use integration::proc::{run, Output};
use integration::sriov::{fresh_vf_state, link_state, FakeSriov, Kind};
use serde_json::{json, Value};

/// `weft <args>` on `node`, with the fake SR-IOV environment when given.
fn weft(node: &TestNode, fake: Option<&FakeSriov>, args: &[&str]) -> Output {
    let mut c = node.weft_command(args);
    for (k, v) in fake.map(FakeSriov::env).unwrap_or_default() {
        c.env(k, v);
    }
    run(&mut c, b"").expect("run weft").0
}

/// The reservations of every weft-ipam pool as (network, address, owner) from `weft inspect`.
fn reservations(inspect: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for pool in inspect["ipam"].as_array().unwrap() {
        for r in pool["reservations"].as_array().unwrap() {
            out.push((
                pool["network"].as_str().unwrap().to_owned(),
                r["address"].as_str().unwrap().to_owned(),
                r["owner"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

/// The gc report line about `what` (a key, an address), with the whole report on a miss.
#[track_caller]
fn line<'a>(report: &'a str, plugin: &str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(plugin) && l.contains(what))
        .unwrap_or_else(|| panic!("no {plugin} line about {what} in:\n{report}"))
}

#[test]
fn gc_takes_back_the_vf_of_a_vanished_pod_and_frees_its_address() {
    if !require_netns_env() {
        return;
    }
    let fake = FakeSriov::new(2, Kind::Veth);
    let mut node = TestNode::new();
    node.state = fake.state_dir();
    let cni_path = CniPath::new();
    let sriov = cni_path.plugin("weft-sriov");
    let net = unique("wgcs");
    let conf = |vf: usize, extra: Value| {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": net, "type": "weft-sriov",
            "deviceID": fake.vfs[vf].pci, "vlan": 20 + vf,
            "ipam": {"type": "weft-ipam", "range": "10.69.0.0/24"},
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::to_vec(&c).unwrap()
    };
    let env = |verb: &str, pod: &TestNetns, ifname: &str| {
        let mut e = PluginEnv::verb(
            verb,
            &format!("{}-cid", pod.name()),
            pod.path_str(),
            ifname,
            cni_path.path_str(),
        );
        for (k, v) in fake.env() {
            e = e.set(k, &v);
        }
        e
    };
    // Pod 1's VF comes back to the host under the pod's ifname when its netns dies: unique.
    let ifnames = ["net1".to_owned(), unique_ifname("wgi")];
    let mut pods: Vec<TestNetns> = (0..2).map(|_| TestNetns::new("wgcs")).collect();
    let before = fake.host_state(1).expect("VF 1 in the host");
    exec_plugin(
        &sriov,
        &env("ADD", &pods[0], &ifnames[0]),
        &conf(0, json!({})),
    )
    .assert_success("ADD pod 0");
    let pod1_conf = conf(1, json!({"mac": "02:00:00:00:9c:01", "mtu": 1300}));
    exec_plugin(&sriov, &env("ADD", &pods[1], &ifnames[1]), &pod1_conf).assert_success("ADD pod 1");

    let i = weft(&node, Some(&fake), &["inspect", "--json"]);
    i.assert_success("inspect --json");
    let i = i.json();
    let recs = i["weft_sriov"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{i}");
    for (r, vf) in recs.iter().zip(&fake.vfs) {
        assert_eq!(r["pod"], "alive", "{r}");
        assert_eq!(r["pci"], vf.pci.as_str(), "{r}");
    }
    assert_eq!(reservations(&i).len(), 2, "{i}");
    let text = weft(&node, Some(&fake), &["inspect"]);
    text.assert_success("inspect");
    for vf in &fake.vfs {
        assert!(
            text.stdout.contains(&format!("VF {}", vf.pci)),
            "{}",
            text.stdout
        );
    }
    assert!(
        text.stdout.contains("sriov netdev") && text.stdout.contains("10.69.0.2[ipam]"),
        "{}",
        text.stdout
    );
    let doctor = weft(&node, Some(&fake), &["doctor"]);
    assert!(
        doctor.stdout.contains("2 weft-sriov record(s) in ")
            && doctor.stdout.contains("every pod alive"),
        "{}",
        doctor.describe()
    );

    // Pod 1 vanishes without a DEL: its veth stand-in dies with the netns, and the "kernel"
    // hands the VF back under the pod's ifname with what the pod set (the emulated part).
    drop(pods.remove(1));
    assert!(fake.host_state(1).is_none());
    let returned = fake.hand_back(1, &ifnames[1], "02:00:00:00:9c:01", Some(1300));
    let doctor = weft(&node, Some(&fake), &["doctor"]);
    assert!(
        doctor.stdout.contains("2 weft-sriov record(s): 1 stale"),
        "{}",
        doctor.describe()
    );

    let pod0_key = format!("{net}/{}-cid/{}", pods[0].name(), ifnames[0]);
    let dry = weft(&node, Some(&fake), &["gc", "--dry-run"]);
    dry.assert_success("gc --dry-run");
    assert!(
        line(&dry.stdout, "weft-sriov", &ifnames[1]).contains("would reclaim: netns gone"),
        "{}",
        dry.stdout
    );
    assert!(line(&dry.stdout, "weft-sriov", &pod0_key).contains("kept: pod alive"));
    assert!(line(&dry.stdout, "weft-ipam", "10.69.0.3").contains("would free"));
    assert!(returned.exists(), "a dry run changes nothing");
    assert_eq!(
        reservations(&weft(&node, None, &["inspect", "--json"]).json()).len(),
        2
    );

    let gc = weft(&node, Some(&fake), &["gc"]);
    gc.assert_success("gc");
    assert!(
        line(&gc.stdout, "weft-sriov", &ifnames[1]).contains("reclaimed: netns gone, VF restored"),
        "{}",
        gc.stdout
    );
    assert!(line(&gc.stdout, "weft-sriov", &pod0_key).contains("kept: pod alive"));
    assert!(line(&gc.stdout, "weft-ipam", "10.69.0.3").contains("freed"));
    assert!(line(&gc.stdout, "weft-ipam", "10.69.0.2").contains("kept"));
    // VF 1 is back as ADD found it: name, MAC, MTU; PF side fresh; nothing of ours left.
    assert!(!returned.exists(), "the VF kept the pod's name");
    fake.set_netdev(1, Some(&before.name));
    let now = fake.host_state(1).expect("VF 1 back under its name");
    assert_eq!((now.mac, now.mtu), (before.mac.clone(), before.mtu));
    assert_eq!(fake.vf_pf_state(1), fresh_vf_state());
    let i = weft(&node, None, &["inspect", "--json"]).json();
    assert_eq!(i["weft_sriov"].as_array().unwrap().len(), 1, "{i}");
    let held = reservations(&i);
    assert_eq!(held.len(), 1, "{i}");
    assert!(held[0].2.contains(pods[0].name()), "{held:?}");
    // Pod 0 is untouched, and a second gc finds nothing to do.
    assert!(link_state(Some(pods[0].name()), "net1").is_some());
    let again = weft(&node, Some(&fake), &["gc"]);
    again.assert_success("second gc");
    assert!(!again.stdout.contains("reclaimed"), "{}", again.stdout);

    exec_plugin(
        &sriov,
        &env("DEL", &pods[0], &ifnames[0]),
        &conf(0, json!({})),
    )
    .assert_success("DEL pod 0");
    let i = weft(&node, None, &["inspect", "--json"]).json();
    assert_eq!(i["weft_sriov"], json!([]), "{i}");
    assert_eq!(reservations(&i), vec![]);
}

#[test]
fn gc_frees_the_weft_ipam_address_of_a_vanished_pod_and_nothing_of_another_network() {
    if !require_netns_env() {
        return;
    }
    let mut node = TestNode::with_bpffs();
    let cni_path = CniPath::new();
    let mut tool = Cnitool::new(&cni_path);
    tool.set_env("WEFT_STATE_DIR", node.state.to_str().unwrap());
    let bridge = HostLink::adopt(&unique_ifname("wgb"));
    let net = unique("wgck");
    let octet = (std::process::id() % 200) as u8 + 20;
    let conf = tool.write_conflist(&json!({
        "cniVersion": "1.0.0", "name": net,
        "plugins": [{"type": "bridge", "bridge": bridge.name(), "isGateway": true,
                     "ipam": {"type": "weft-ipam", "range": format!("10.238.{octet}.0/24")}}]
    }));
    node.conf = conf.parent().unwrap().to_path_buf();
    node.install(&[]).assert_success("weft install");
    let mut pods: Vec<TestNetns> = (0..2).map(|_| TestNetns::new("wgck")).collect();
    for p in &pods {
        tool.set_env("CNI_CONTAINERID", p.name());
        tool.add(&net, p.path())
            .assert_success("ADD through the chain weft installed");
    }
    // The same container and ifname also hold an address in another network (weft-ipam
    // alone): a reservation there is another network's and needs its own proof.
    let other = unique("wgco");
    let other_conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": other, "type": "weft-ipam",
        "ipam": {"type": "weft-ipam", "range": format!("10.239.{octet}.0/24")}
    }))
    .unwrap();
    let ipam = cni_path.plugin("weft-ipam");
    let other_env = |verb: &str, pod: &TestNetns| {
        PluginEnv::verb(
            verb,
            pod.name(),
            pod.path_str(),
            "eth0",
            cni_path.path_str(),
        )
        .set("WEFT_STATE_DIR", node.state.to_str().unwrap())
    };
    exec_plugin(&ipam, &other_env("ADD", &pods[1]), &other_conf)
        .assert_success("ADD in the other network");
    let watch = AttachWatch::new(&node.state, &node.pin_root);
    assert_eq!(watch.attached().len(), 2, "{:?}", watch.attached());
    let held = reservations(&node.weft(&["inspect", "--json"]).json());
    assert_eq!(held.len(), 3, "{held:?}");
    let gone_ip = held
        .iter()
        .find(|(n, _, o)| *n == net && o.contains(pods[1].name()))
        .map(|(_, a, _)| a.clone())
        .expect("pod 1's address");

    let gone = pods.remove(1);
    let gone_name = gone.name().to_owned();
    let spare = TestNetns::new("wgck");
    drop(gone);
    let gc = node.weft(&["gc"]);
    gc.assert_success("gc");
    assert!(
        line(&gc.stdout, "kmesh-cni", &gone_name).contains("reclaimed: netns gone"),
        "{}",
        gc.stdout
    );
    assert!(
        line(&gc.stdout, "weft-ipam", &format!("{gone_ip} "))
            .contains("freed: its pod's record was stale"),
        "{}",
        gc.stdout
    );
    assert!(
        line(&gc.stdout, "weft-ipam", &format!("{other}/{gone_name}"))
            .contains("kept: no proof its pod is gone"),
        "{}",
        gc.stdout
    );
    assert_eq!(watch.attached().len(), 1, "{:?}", watch.attached());
    let held = reservations(&node.weft(&["inspect", "--json"]).json());
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|(_, a, _)| *a != gone_ip), "{held:?}");
    assert!(
        held.iter()
            .any(|(n, _, o)| *n == other && o.contains(&gone_name)),
        "the other network's reservation is kept: {held:?}"
    );

    // Clean up: the live pod through the chain, the other network's address by its DEL.
    tool.set_env("CNI_CONTAINERID", pods[0].name());
    tool.del(&net, pods[0].path()).assert_success("DEL pod 0");
    let other_del = PluginEnv::verb(
        "DEL",
        &gone_name,
        spare.path_str(),
        "eth0",
        cni_path.path_str(),
    )
    .set("WEFT_STATE_DIR", node.state.to_str().unwrap());
    exec_plugin(&ipam, &other_del, &other_conf).assert_success("DEL in the other network");
    assert_eq!(
        reservations(&node.weft(&["inspect", "--json"]).json()),
        vec![]
    );
    assert_eq!(watch.attached(), Vec::<String>::new());
}
