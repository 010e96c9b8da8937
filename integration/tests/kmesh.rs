//! kmesh-cni's same-node fast path with real binaries in real netns (issue #4).
//!
//! Pods are wired by the Debian bridge/ptp + host-local through the libcni cnitool with
//! kmesh-cni chained after them, at every version libcni 1.1.2 speaks. Each test asserts what a
//! user would see (results identical to the main plugin alone, pods ping and TCP-connect, TTL as
//! on the normal path) and what kmesh-cni must leave on the host (tcx link pins or the legacy
//! tc filter, `endpoints`/`managed` entries and records, read back with bpftool), before and
//! after DEL. Every test has its own pin root and WEFT_STATE_DIR (integration::fixtures::bpffs::Isolation).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::kmesh_net::{
    direct_env, prerequisites, Added, Main, Net, Pod, VethPod, EP_F_ROUTED, MANAGED_F_ENROLLED,
};
use integration::cni::exec_plugin;
use integration::fixtures::bpffs::{Counters, Isolation};
use integration::fixtures::pods::{
    host_ifindex, masked, netns_cookie, ping, tc_ingress_filters, tcp_exchange, Listener, Ping,
    PONG,
};
use integration::plugins::CniPath;
use integration::proc::cmd;
use serde_json::{json, Value};

const LISTEN_PORT: u16 = 7070;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Tcx,
    Tc,
    Off,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Tcx => "tcx",
            Mode::Tc => "tc",
            Mode::Off => "off",
        }
    }
}

fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    parse(version) >= parse(min)
}

/// The record, link pin, tc filter and endpoint entry kmesh-cni must have made for `pod`.
fn assert_attached(net: &Net, pod: &Pod, added: &Added, mode: Mode) {
    let what = format!("{:?} {} {}", net.main, net.version, mode.as_str());
    let iso = &net.iso;
    let veth = &added.host_veth;
    let filters = tc_ingress_filters(veth);
    if mode == Mode::Off {
        assert_eq!(
            iso.record(&pod.cid, "eth0"),
            None,
            "{what}: mode off wrote a record"
        );
        assert!(
            !filters.contains("bpf"),
            "{what}: mode off left a tc filter: {filters}"
        );
        assert_eq!(
            iso.endpoint(added.ip),
            None,
            "{what}: mode off inserted an endpoint"
        );
        return;
    }
    let record = iso
        .record(&pod.cid, "eth0")
        .unwrap_or_else(|| panic!("{what}: no record for {}", pod.cid));
    let perms = std::fs::metadata(iso.record_path(&pod.cid, "eth0"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(perms & 0o777, 0o600, "{what}: record mode {perms:o}");
    assert_eq!(record["state"], "attached", "{what}: {record}");
    assert_eq!(record["host_veth"], veth.as_str(), "{what}: record veth");
    assert_eq!(record["mode"], mode.as_str(), "{what}: attach mode");
    let key = record["attach_key"]
        .as_str()
        .expect("attach_key")
        .to_owned();
    match mode {
        Mode::Tcx => {
            assert!(
                iso.link_pins().contains(&key),
                "{what}: no tcx link pin {key}: {:?}",
                iso.link_pins()
            );
            assert_eq!(
                Some(iso.link_prog_id(&key)),
                record["attachment"]["prog_id"].as_u64(),
                "{what}: pinned link runs another program"
            );
            assert!(
                !filters.contains("bpf"),
                "{what}: tcx mode added a tc filter: {filters}"
            );
        }
        Mode::Tc => {
            assert!(
                !iso.link_pins().contains(&key),
                "{what}: tc mode pinned a tcx link"
            );
            assert!(
                filters.contains("bpf") && filters.contains("direct-action"),
                "{what}: no cls_bpf direct-action filter on {veth} ingress:\n{filters}"
            );
        }
        Mode::Off => unreachable!(),
    }
    let ep = iso
        .endpoint(added.ip)
        .unwrap_or_else(|| panic!("{what}: no endpoints entry for {}", added.ip));
    assert_eq!(ep.ifindex, host_ifindex(veth), "{what}: endpoint ifindex");
    assert_eq!(
        ep.flags & EP_F_ROUTED != 0,
        net.main == Main::Ptp,
        "{what}: routed flag of {ep:?}"
    );
}

/// After DEL: no record, no link pin (`attach_key` from the record before DEL), no endpoint
/// entry of `pod`, and no eth0 in its netns.
fn assert_detached(net: &Net, pod: &Pod, added: &Added, attach_key: Option<&str>) {
    let what = format!("{:?} {} DEL of {}", net.main, net.version, pod.cid);
    assert!(
        !pod.ns.link_exists("eth0"),
        "{what}: eth0 left in the netns"
    );
    assert_eq!(
        net.iso.record(&pod.cid, "eth0"),
        None,
        "{what}: record left"
    );
    assert_eq!(
        net.iso.endpoint(added.ip),
        None,
        "{what}: endpoint entry left"
    );
    if let Some(key) = attach_key {
        assert!(
            !net.iso.link_pins().iter().any(|p| p == key),
            "{what}: tcx link pin {key} left"
        );
    }
}

/// What the pods saw of each other: the TTL of ping replies, and what a TTL-1 ping met.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    reply_ttl_ab: Ping,
    reply_ttl_ba: Ping,
    ttl1_ab: Ping,
}

/// Two pods on `main` + kmesh-cni (mode `mode`) at `version`: results, attachments, traffic,
/// counters, CHECK, DEL. Returns what the pods observed for comparisons across modes.
fn exercise(main: Main, version: &str, mode: Mode, octet: u8) -> Observed {
    let what = format!("{main:?} + kmesh-cni ({}) at {version}", mode.as_str());
    let mut net = Net::new(main, version, json!({"mode": mode.as_str()}), octet);
    let a = Pod::new("a");
    let b = Pod::new("b");

    // The chain's result is the main plugin's, in the conflist's version.
    let reference = net.reference(&a);
    let added_a = net.add(&a);
    assert_eq!(
        masked(&added_a.result, net.bridge_name()),
        masked(&reference, net.bridge_name()),
        "{what}: result differs from {main:?} alone"
    );
    assert_eq!(
        added_a.result["cniVersion"], version,
        "{what}: result version"
    );
    let added_b = net.add(&b);
    assert_ne!(added_a.ip, added_b.ip);

    assert_attached(&net, &a, &added_a, mode);
    assert_attached(&net, &b, &added_b, mode);
    let pins_after_add = net.iso.link_pins();
    assert_eq!(
        pins_after_add.len(),
        if mode == Mode::Tcx { 2 } else { 0 },
        "{what}: link pins {pins_after_add:?}"
    );

    if version_at_least(version, "0.4.0") {
        for pod in [&a, &b] {
            let out = net.run("check", pod);
            out.assert_success(&format!("{what}: CHECK {}", pod.cid));
            assert_eq!(out.stdout, "", "{what}: CHECK printed");
        }
    }

    // Traffic both ways, ICMP and TCP.
    let before = net.iso.counters();
    let reply_ttl_ab = ping(&a.ns, added_b.ip, 3, None);
    let reply_ttl_ba = ping(&b.ns, added_a.ip, 3, None);
    assert!(
        matches!(reply_ttl_ab, Ping::Replies { .. })
            && matches!(reply_ttl_ba, Ping::Replies { .. }),
        "{what}: pods cannot ping each other: a->b {reply_ttl_ab:?}, b->a {reply_ttl_ba:?}"
    );
    {
        let listener = Listener::start(&b.ns, added_b.ip, LISTEN_PORT);
        assert_eq!(
            tcp_exchange(&a.ns, listener.addr, listener.port).as_deref(),
            Ok(PONG),
            "{what}: TCP a -> b"
        );
    }
    let ttl1_ab = ping(&a.ns, added_b.ip, 1, Some(1));
    let after = net.iso.counters();
    if mode == Mode::Off {
        assert_eq!(
            after,
            Counters::default(),
            "{what}: mode off created counters"
        );
    } else {
        assert!(
            after.get("redirected_packets") > before.get("redirected_packets"),
            "{what}: nothing was redirected: before {before:?}, after {after:?}"
        );
        if ttl1_ab == Ping::TimeExceeded {
            assert!(
                after.get("pass_ttl") > before.get("pass_ttl"),
                "{what}: a TTL-1 packet expired but not on the kernel path: {after:?}"
            );
        }
    }

    // DEL, then DEL again (nothing left to undo).
    for (pod, added) in [(&a, &added_a), (&b, &added_b)] {
        let key = net
            .iso
            .record(&pod.cid, "eth0")
            .and_then(|r| r["attach_key"].as_str().map(str::to_owned));
        net.run("del", pod)
            .assert_success(&format!("{what}: DEL {}", pod.cid));
        assert_detached(&net, pod, added, key.as_deref());
        net.run("del", pod)
            .assert_success(&format!("{what}: second DEL {}", pod.cid));
    }
    assert_eq!(
        net.iso.records(),
        Vec::<String>::new(),
        "{what}: records left"
    );
    assert_eq!(
        net.iso.attached(),
        Vec::<String>::new(),
        "{what}: programs left attached"
    );
    assert_eq!(net.iso.endpoints(), vec![], "{what}: endpoints left");
    let seen = Observed {
        reply_ttl_ab,
        reply_ttl_ba,
        ttl1_ab,
    };
    eprintln!("{what}: {seen:?}, counters {after:?}");
    seen
}

// --- 1. the fast path through libcni, every version, bridge and ptp, tcx/tc/off -------------

#[test]
fn bridge_tcx_0_3_0() {
    if prerequisites() {
        exercise(Main::Bridge, "0.3.0", Mode::Tcx, 30);
    }
}

#[test]
fn bridge_tcx_0_3_1() {
    if prerequisites() {
        exercise(Main::Bridge, "0.3.1", Mode::Tcx, 31);
    }
}

#[test]
fn bridge_tcx_0_4_0() {
    if prerequisites() {
        exercise(Main::Bridge, "0.4.0", Mode::Tcx, 40);
    }
}

#[test]
fn ptp_tcx_0_3_0() {
    if prerequisites() {
        exercise(Main::Ptp, "0.3.0", Mode::Tcx, 30);
    }
}

#[test]
fn ptp_tcx_0_3_1() {
    if prerequisites() {
        exercise(Main::Ptp, "0.3.1", Mode::Tcx, 31);
    }
}

#[test]
fn ptp_tcx_0_4_0() {
    if prerequisites() {
        exercise(Main::Ptp, "0.4.0", Mode::Tcx, 40);
    }
}

/// At 1.0.0: tcx, forced legacy tc and off on a bridge. L2 delivery: the fast path must not
/// touch the TTL, exactly as the bridge does not.
#[test]
fn bridge_tcx_tc_off_agree_1_0_0() {
    if !prerequisites() {
        return;
    }
    let off = exercise(Main::Bridge, "1.0.0", Mode::Off, 100);
    let tcx = exercise(Main::Bridge, "1.0.0", Mode::Tcx, 101);
    let tc = exercise(Main::Bridge, "1.0.0", Mode::Tc, 102);
    assert_eq!(
        tcx, off,
        "bridge: pods see something else with the tcx fast path than without"
    );
    assert_eq!(
        tc, off,
        "bridge: pods see something else with the tc fast path than without"
    );
}

/// At 1.0.0 on ptp (routed): the redirected packets must look routed — TTL decremented once,
/// and a TTL-1 packet expires with "Time to live exceeded" — the same as `mode: off`.
#[test]
fn ptp_tcx_tc_off_agree_1_0_0() {
    if !prerequisites() {
        return;
    }
    let off = exercise(Main::Ptp, "1.0.0", Mode::Off, 100);
    assert_eq!(
        off.ttl1_ab,
        Ping::TimeExceeded,
        "ptp without fast path: the host should expire a TTL-1 packet"
    );
    let tcx = exercise(Main::Ptp, "1.0.0", Mode::Tcx, 101);
    let tc = exercise(Main::Ptp, "1.0.0", Mode::Tc, 102);
    assert_eq!(
        tcx, off,
        "ptp: the tcx fast path does not look like the routed path"
    );
    assert_eq!(
        tc, off,
        "ptp: the tc fast path does not look like the routed path"
    );
}

// --- 2. ownership, DEL without netns, GC --------------------------------------------------

/// Pod A leaves but its DEL comes late; pod B already got A's address (crafted prevResult on
/// B's real veth). A's CHECK must notice, and A's DEL must leave B's entry alone.
#[test]
fn ip_reuse_del_of_old_owner_keeps_new_entry() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new(Main::Bridge, "1.0.0", json!({"mode": "tcx"}), 110);
    let a = Pod::new("a");
    let added_a = net.add(&a);
    let b = VethPod::new("b", &added_a.ip.to_string(), false);
    // B is in A's network: only there can it take A's address over (another network's pod
    // with the same address has an entry of its own, see tests/networks.rs).
    let mut b_conf = b.conf(&net.iso, "1.0.0", added_a.ip, json!({"mode": "tcx"}));
    b_conf["name"] = json!(net.name);
    net.direct(&net.direct_env("ADD", &b.cid, b.ns.path_str()), &b_conf)
        .assert_success("pod B ADD claiming A's address");
    let b_ifindex = host_ifindex(&b.host_veth);
    let ep = net
        .iso
        .endpoint(added_a.ip)
        .expect("endpoint after B's ADD");
    assert_eq!(
        ep.ifindex, b_ifindex,
        "B's ADD did not take the address over"
    );
    let b_owner = ep.owner;

    // A's CHECK sees its entry now belongs to someone else.
    let out = net.run("check", &a);
    assert!(
        !out.success(),
        "CHECK of A passed although B owns its address"
    );
    // cnitool prints libcni's error: the plugin's msg and details.
    assert!(
        out.stderr.contains("belongs to another pod"),
        "CHECK of A failed for another reason:\n{}",
        out.describe()
    );

    let pins_before = net.iso.link_pins();
    net.run("del", &a).assert_success("late DEL of A");
    let ep = net
        .iso
        .endpoint(added_a.ip)
        .expect("A's DEL removed the endpoint entry that belongs to B (owner check)");
    assert_eq!(
        (ep.ifindex, ep.owner),
        (b_ifindex, b_owner),
        "A's DEL changed B's entry"
    );
    assert_eq!(net.iso.record(&a.cid, "eth0"), None, "A's record left");
    assert_eq!(net.iso.records(), vec![format!("{}:eth0", b.cid)]);
    let pins = net.iso.link_pins();
    assert_eq!(pins.len(), pins_before.len() - 1, "A's link pin: {pins:?}");
    net.direct(&net.direct_env("CHECK", &b.cid, b.ns.path_str()), &b_conf)
        .assert_success("CHECK of B after A's DEL");

    net.direct(&net.direct_env("DEL", &b.cid, b.ns.path_str()), &b_conf)
        .assert_success("DEL of B");
    assert_eq!(net.iso.endpoints(), vec![], "B's DEL left its endpoint");
    assert_eq!(net.iso.link_pins(), Vec::<String>::new());
    assert_eq!(net.iso.records(), Vec::<String>::new());
}

/// The netns is deleted before DEL (the runtime lost it): DEL through libcni and by direct
/// exec both exit 0, clean the record and the pin, and so does a second DEL.
#[test]
fn del_after_netns_is_gone() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new(Main::Bridge, "1.0.0", json!({"mode": "tcx"}), 111);

    // Through libcni (bridge, host-local and kmesh-cni all see the missing netns).
    let a = Pod::new("a");
    let added_a = net.add(&a);
    assert_eq!(net.iso.link_pins().len(), 1);
    let a_path = a.ns.path_str().to_owned();
    let Pod { ns, cid, cap_args } = a;
    drop(ns); // deletes eth0 (and so the host veth) and the netns
    assert!(!std::path::Path::new(&a_path).exists());
    let name = net.name.clone();
    for attempt in ["DEL", "second DEL"] {
        net.run_on("del", &name, &cid, &cap_args, &a_path)
            .assert_success(&format!("{attempt} after the netns is gone (cnitool)"));
        assert_eq!(net.iso.record(&cid, "eth0"), None, "{attempt}: record left");
        assert_eq!(
            net.iso.link_pins(),
            Vec::<String>::new(),
            "{attempt}: pin left"
        );
        assert_eq!(
            net.iso.endpoint(added_a.ip),
            None,
            "{attempt}: endpoint left"
        );
    }

    // Direct exec, with and without CNI_NETNS.
    let b = VethPod::new("b", "10.234.111.200", true);
    let conf = b.conf(&net.iso, "1.0.0", b.ip, json!({"mode": "tcx"}));
    let b_path = b.ns.path_str().to_owned();
    let env = |verb: &str| net.direct_env(verb, &b.cid, &b_path);
    net.direct(&env("ADD"), &conf).assert_success("direct ADD");
    assert_eq!(net.iso.link_pins().len(), 1);
    let VethPod { cid, ns, veth, .. } = b;
    drop(veth);
    drop(ns);
    assert!(!std::path::Path::new(&b_path).exists());
    let env = |verb: &str| direct_env(&net.iso, &net.cni_path, verb, &cid, &b_path);
    for (attempt, env) in [
        ("DEL", env("DEL")),
        ("second DEL", env("DEL")),
        ("DEL without CNI_NETNS", env("DEL").unset("CNI_NETNS")),
    ] {
        let out = net.direct(&env, &conf);
        out.assert_success(&format!("direct {attempt} after the netns is gone"));
        assert_eq!(out.stdout, "", "DEL printed");
        assert_eq!(net.iso.record(&cid, "eth0"), None, "{attempt}: record left");
        assert_eq!(
            net.iso.link_pins(),
            Vec::<String>::new(),
            "{attempt}: pin left"
        );
        assert_eq!(net.iso.endpoints(), vec![], "{attempt}: endpoint left");
    }
}

/// GC at 1.1.0 removes the attachment of a pod whose veth vanished (listed or not) and of a
/// live pod the runtime no longer lists, and keeps a listed live one intact.
#[test]
fn gc_removes_stale_and_unlisted_keeps_listed() {
    if !prerequisites() {
        return;
    }
    let iso = Isolation::new();
    let cni_path = CniPath::new();
    let bin = cni_path.plugin("kmesh-cni");
    let run = |env: &integration::cni::PluginEnv, conf: &Value| {
        exec_plugin(&bin, env, &serde_json::to_vec(conf).unwrap())
    };
    let keep = VethPod::new("keep", "10.234.112.2", true);
    let vanished = VethPod::new("vanished", "10.234.112.3", true);
    let unlisted = VethPod::new("unlisted", "10.234.112.4", true);
    for p in [&keep, &vanished, &unlisted] {
        let conf = p.conf(&iso, "1.1.0", p.ip, json!({"mode": "tcx"}));
        run(
            &direct_env(&iso, &cni_path, "ADD", &p.cid, p.ns.path_str()),
            &conf,
        )
        .assert_success(&format!("ADD {}", p.cid));
    }
    assert_eq!(iso.records().len(), 3);
    assert_eq!(iso.link_pins().len(), 3);
    let keep_record = iso.record(&keep.cid, "eth0").unwrap();
    let keep_ep = iso.endpoint(keep.ip).unwrap();

    // A TTL-1 packet from `unlisted` to `keep` (a routed endpoint: no master on these veths)
    // is passed to the kernel by the program on unlisted's host veth and counted as pass_ttl,
    // so pass_ttl moves iff that program is still attached. The host answers "time exceeded";
    // nothing leaves the node.
    unlisted.ns.must(&[
        "neigh",
        "add",
        &keep.ip.to_string(),
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "eth0",
    ]);
    let ttl1_from_unlisted = || {
        let before = iso.counters().get("pass_ttl");
        ping(&unlisted.ns, keep.ip, 1, Some(1));
        iso.counters().get("pass_ttl") - before
    };
    assert!(
        ttl1_from_unlisted() > 0,
        "the program on the unlisted pod's veth does not see its traffic before GC"
    );

    cmd("ip", &["link", "del", &vanished.host_veth]).assert_success("delete a pod's veth");
    let mut gc = iso.plugin_conf(json!({"mode": "tcx"}));
    gc["cniVersion"] = json!("1.1.0");
    gc["name"] = json!("weft-kmesh-test");
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": keep.cid, "ifname": "eth0"},
        {"containerID": vanished.cid, "ifname": "eth0"},
    ]);
    let env = integration::cni::PluginEnv::command("GC")
        .set("CNI_PATH", cni_path.path_str())
        .set("WEFT_STATE_DIR", iso.state_dir());
    let out = run(&env, &gc);
    out.assert_success("GC");
    assert_eq!(out.stdout, "", "GC printed");

    assert_eq!(
        iso.records(),
        vec![format!("{}:eth0", keep.cid)],
        "GC must keep exactly the listed live attachment"
    );
    assert_eq!(
        iso.link_pins(),
        vec![keep_record["attach_key"].as_str().unwrap().to_owned()],
        "GC link pins"
    );
    assert_eq!(iso.endpoints(), vec![keep_ep], "GC endpoints");
    assert_eq!(iso.record(&keep.cid, "eth0"), Some(keep_record));
    let check_conf = keep.conf(&iso, "1.1.0", keep.ip, json!({"mode": "tcx"}));
    run(
        &direct_env(&iso, &cni_path, "CHECK", &keep.cid, keep.ns.path_str()),
        &check_conf,
    )
    .assert_success("CHECK of the kept attachment after GC");
    assert_eq!(
        ttl1_from_unlisted(),
        0,
        "GC removed the unlisted pod's pin, but its program still runs on its veth"
    );

    run(
        &direct_env(&iso, &cni_path, "DEL", &keep.cid, keep.ns.path_str()),
        &check_conf,
    )
    .assert_success("DEL of the kept attachment");
    assert_eq!(iso.records(), Vec::<String>::new());
    assert_eq!(iso.link_pins(), Vec::<String>::new());
    assert_eq!(iso.endpoints(), vec![]);
}

// --- 3. enrolment and opt-out from pod annotations ------------------------------------------

/// `istio.io/dataplane-mode=kmesh` (as the CRI capability) enrols the pod: a `managed` entry
/// keyed by its netns cookie, removed on DEL. A pod without the annotation is not enrolled.
#[test]
fn enrolment_annotation_fills_managed_map() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new(Main::Bridge, "1.0.0", json!({"mode": "tcx"}), 120);
    let a = Pod::annotated("a", json!({"istio.io/dataplane-mode": "kmesh"}));
    let b = Pod::annotated("b", json!({"istio.io/dataplane-mode": "none"}));
    let added_a = net.add(&a);
    let added_b = net.add(&b);
    let cookie_a = netns_cookie(&a.ns);
    assert_ne!(cookie_a, netns_cookie(&b.ns));
    assert_eq!(
        net.iso.managed(),
        vec![(
            cookie_a,
            MANAGED_F_ENROLLED,
            host_ifindex(&added_a.host_veth)
        )],
        "managed map must hold exactly the enrolled pod, keyed by its netns cookie"
    );
    assert_eq!(
        net.iso.record(&a.cid, "eth0").unwrap()["netns_cookie"],
        cookie_a
    );
    assert_eq!(
        net.iso.record(&b.cid, "eth0").unwrap()["netns_cookie"],
        Value::Null
    );
    for pod in [&a, &b] {
        net.run("check", pod)
            .assert_success(&format!("CHECK {}", pod.cid));
    }
    assert!(matches!(
        ping(&a.ns, added_b.ip, 2, None),
        Ping::Replies { .. }
    ));

    net.run("del", &a).assert_success("DEL of the enrolled pod");
    assert_eq!(net.iso.managed(), vec![], "DEL left the managed entry");
    net.run("del", &b).assert_success("DEL b");
    assert_eq!(net.iso.records(), Vec::<String>::new());
    assert_eq!(net.iso.link_pins(), Vec::<String>::new());
}

/// `weft.dev/fast-path=false` opts a pod out: nothing attached or recorded for it, and it still
/// talks to a pod that has the fast path — over the normal path, nothing is redirected to it.
#[test]
fn opt_out_annotation_attaches_nothing() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new(Main::Bridge, "1.0.0", json!({"mode": "tcx"}), 121);
    let out_pod = Pod::annotated("out", json!({"weft.dev/fast-path": "false"}));
    let fast = Pod::new("fast");
    let added_out = net.add(&out_pod);
    let added_fast = net.add(&fast);
    assert_eq!(
        net.iso.record(&out_pod.cid, "eth0"),
        None,
        "opted-out pod has a record"
    );
    assert_eq!(
        net.iso.endpoint(added_out.ip),
        None,
        "opted-out pod has an endpoint"
    );
    assert!(!tc_ingress_filters(&added_out.host_veth).contains("bpf"));
    let fast_key = net.iso.record(&fast.cid, "eth0").expect("fast pod record")["attach_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        net.iso.link_pins(),
        vec![fast_key],
        "only the fast pod has a link"
    );
    for pod in [&out_pod, &fast] {
        net.run("check", pod)
            .assert_success(&format!("CHECK {}", pod.cid));
    }

    let before = net.iso.counters();
    for (from, to) in [(&out_pod, added_fast.ip), (&fast, added_out.ip)] {
        let seen = ping(&from.ns, to, 3, None);
        assert!(matches!(seen, Ping::Replies { .. }), "ping {to}: {seen:?}");
    }
    let listener = Listener::start(&out_pod.ns, added_out.ip, LISTEN_PORT);
    assert_eq!(
        tcp_exchange(&fast.ns, listener.addr, listener.port).as_deref(),
        Ok(PONG)
    );
    drop(listener);
    let after = net.iso.counters();
    assert_eq!(
        after.get("redirected_packets"),
        before.get("redirected_packets"),
        "packets were redirected although one side opted out"
    );
    assert!(
        after.get("pass_no_endpoint") > before.get("pass_no_endpoint"),
        "the fast pod's program never saw traffic for the opted-out pod: {after:?}"
    );

    for pod in [&out_pod, &fast] {
        net.run("del", pod)
            .assert_success(&format!("DEL {}", pod.cid));
    }
    assert_eq!(net.iso.records(), Vec::<String>::new());
    assert_eq!(net.iso.link_pins(), Vec::<String>::new());
}

/// The TCP check itself can fail: with the listener gone, the same exchange is refused.
#[test]
fn tcp_exchange_fails_without_listener() {
    if !prerequisites() {
        return;
    }
    let p = VethPod::new("lonely", "10.234.122.2", true);
    let listener = Listener::start(&p.ns, p.ip, LISTEN_PORT);
    assert_eq!(tcp_exchange(&p.ns, p.ip, LISTEN_PORT).as_deref(), Ok(PONG));
    drop(listener);
    assert!(
        tcp_exchange(&p.ns, p.ip, LISTEN_PORT).is_err(),
        "connect succeeded without a listener"
    );
}

/// DEL must undo a legacy tc attachment even when the pin root is gone (bpffs remounted, an
/// operator removed /sys/fs/bpf/weft): the filter lives on the veth, not in bpffs, and once the
/// record is dropped nothing can ever find it again.
#[test]
fn del_with_pin_root_gone_removes_legacy_tc_filter() {
    if !prerequisites() {
        return;
    }
    let iso = Isolation::new();
    let cni_path = CniPath::new();
    let bin = cni_path.plugin("kmesh-cni");
    let pod = VethPod::new("tcgone", "10.234.123.2", true);
    let conf = pod.conf(&iso, "1.0.0", pod.ip, json!({"mode": "tc"}));
    let env = |verb: &str| direct_env(&iso, &cni_path, verb, &pod.cid, pod.ns.path_str());
    let stdin = serde_json::to_vec(&conf).unwrap();
    exec_plugin(&bin, &env("ADD"), &stdin).assert_success("ADD mode tc");
    assert!(tc_ingress_filters(&pod.host_veth).contains("direct-action"));

    std::fs::remove_dir_all(iso.pin_root()).expect("remove the pin root");
    exec_plugin(&bin, &env("DEL"), &stdin).assert_success("DEL with the pin root gone");
    assert_eq!(iso.records(), Vec::<String>::new(), "record left");
    let filters = tc_ingress_filters(&pod.host_veth);
    assert!(
        !filters.contains("bpf"),
        "kmesh-cni BUG: DEL with the pin root gone dropped the record but left the legacy tc \
         filter on {} (fastpath::detach skips bpf::detach when the pin root does not exist); \
         nothing can remove it afterwards:\n{filters}",
        pod.host_veth
    );
}
