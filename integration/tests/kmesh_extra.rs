//! kmesh-cni beyond kmesh.rs: IPv6 (dual-stack) pods on bridge and ptp, `failurePolicy` when
//! the kernel refuses the fast path, and `enrolByDefault`.
//!
//! Same rules as kmesh.rs: real Debian bridge/ptp + host-local through the libcni cnitool (or a
//! direct exec on a hand-made veth where a runtime cannot produce the case), each test on its own
//! pin root and WEFT_STATE_DIR (integration::fixtures::bpffs::Isolation), everything read back with bpftool.

mod common;

use std::net::IpAddr;

use common::kmesh_net::{
    direct_env, prerequisites, Main, Net, Pod, VethPod, EP_F_ROUTED, MANAGED_F_ENROLLED,
};
use integration::cni::{assert_cni_error, exec_plugin, PluginEnv};
use integration::fixtures::bpffs::{Counters, Isolation};
use integration::fixtures::pods::{
    host_ifindex, netns_cookie, netns_exec, ping, pod_ips_of, tc_ingress_filters, tc_programs,
    tcp_exchange, Listener, Ping, PONG,
};
use integration::plugins::CniPath;
use integration::proc::Output;
use serde_json::{json, Value};

const LISTEN_PORT: u16 = 7071;

// --- 1. IPv6 ----------------------------------------------------------------------------------

/// What the pods saw of each other over IPv6: the hop limit of ping replies both ways, and what
/// a hop-limit-1 ping met.
#[derive(Debug, PartialEq, Eq)]
struct Observed6 {
    reply_ab: Ping,
    reply_ba: Ping,
    hop1_ab: Ping,
}

/// Two dual-stack pods on `main` + kmesh-cni (`mode`) at 1.0.0: both addresses of each pod get
/// an endpoint, the pods ping6 and TCP-connect over IPv6 (with neighbour discovery starting from
/// empty caches), IPv6 is redirected, CHECK and DEL clean up. Returns what the pods observed.
fn exercise_v6(main: Main, mode: &str, octet: u8) -> Observed6 {
    let what = format!("{main:?} + kmesh-cni ({mode}) dual-stack");
    let mut net = Net::dual_stack(main, "1.0.0", json!({"mode": mode}), octet);
    let a = Pod::new("a6");
    let b = Pod::new("b6");
    let added_a = net.add(&a);
    let added_b = net.add(&b);
    let v6 = |r: &Value| -> IpAddr {
        let ips = pod_ips_of(r, true);
        assert_eq!(ips.len(), 1, "{what}: one IPv6 address expected in {r}");
        ips[0]
    };
    let (a6, b6) = (v6(&added_a.result), v6(&added_b.result));

    for (pod, added) in [(&a, &added_a), (&b, &added_b)] {
        let all: Vec<IpAddr> = pod_ips_of(&added.result, false)
            .into_iter()
            .chain(pod_ips_of(&added.result, true))
            .collect();
        assert_eq!(all.len(), 2, "{what}: dual-stack result {}", added.result);
        if mode == "off" {
            assert_eq!(net.iso.record(&pod.cid, "eth0"), None, "{what}: record");
            continue;
        }
        let record = net.iso.record(&pod.cid, "eth0").expect("record");
        assert_eq!(record["state"], "attached", "{what}: {record}");
        for ip in all {
            let ep = net
                .iso
                .endpoint(ip)
                .unwrap_or_else(|| panic!("{what}: no endpoints entry for {ip}"));
            assert_eq!(ep.ifindex, host_ifindex(&added.host_veth), "{what}: {ip}");
            assert_eq!(
                ep.flags & EP_F_ROUTED != 0,
                main == Main::Ptp,
                "{what}: routed flag of {ep:?}"
            );
        }
        let out = net.run("check", pod);
        out.assert_success(&format!("{what}: CHECK {}", pod.cid));
    }

    // Neighbour discovery must work through the program: start from empty neighbour caches in
    // the pods, so the first ping6 needs NS/NA across the pods' host veths.
    for ns in [&a.ns, &b.ns] {
        netns_exec(ns, &["ip", "-6", "neigh", "flush", "all"]);
    }
    let before = net.iso.counters();
    let reply_ab = ping(&a.ns, b6, 3, None);
    let reply_ba = ping(&b.ns, a6, 3, None);
    assert!(
        matches!(reply_ab, Ping::Replies { .. }) && matches!(reply_ba, Ping::Replies { .. }),
        "{what}: pods cannot ping6 each other: a->b {reply_ab:?}, b->a {reply_ba:?}"
    );
    {
        let listener = Listener::start_any(&b.ns, b6, LISTEN_PORT);
        assert_eq!(
            tcp_exchange(&a.ns, listener.addr, listener.port).as_deref(),
            Ok(PONG),
            "{what}: TCP over IPv6 a -> b"
        );
    }
    let hop1_ab = ping(&a.ns, b6, 1, Some(1));
    let after = net.iso.counters();
    if mode == "off" {
        assert_eq!(after, Counters::default(), "{what}: mode off made counters");
    } else {
        assert!(
            after.get("redirected_packets") > before.get("redirected_packets"),
            "{what}: no IPv6 packet was redirected: before {before:?}, after {after:?}"
        );
        assert!(
            after.get("pass_multicast") > before.get("pass_multicast"),
            "{what}: the program never passed neighbour discovery: {after:?}"
        );
        if hop1_ab == Ping::TimeExceeded {
            assert!(
                after.get("pass_ttl") > before.get("pass_ttl"),
                "{what}: a hop-limit-1 packet expired but not on the kernel path: {after:?}"
            );
        }
    }

    for pod in [&a, &b] {
        net.run("del", pod)
            .assert_success(&format!("{what}: DEL {}", pod.cid));
        assert!(!pod.ns.link_exists("eth0"), "{what}: eth0 left");
    }
    assert_eq!(net.iso.records(), Vec::<String>::new(), "{what}: records");
    assert_eq!(net.iso.attached(), Vec::<String>::new(), "{what}: attached");
    assert_eq!(net.iso.endpoints(), vec![], "{what}: endpoints left");
    let seen = Observed6 {
        reply_ab,
        reply_ba,
        hop1_ab,
    };
    eprintln!("{what}: {seen:?}, counters {after:?}");
    seen
}

/// Bridge (L2): the fast path must not touch the hop limit, exactly as the bridge does not.
#[test]
fn ipv6_bridge_tcx_tc_agree_with_off() {
    if !prerequisites() {
        return;
    }
    let off = exercise_v6(Main::Bridge, "off", 130);
    assert!(
        matches!(off.hop1_ab, Ping::Replies { .. }),
        "bridge without fast path: a hop-limit-1 ping crosses L2: {off:?}"
    );
    let tcx = exercise_v6(Main::Bridge, "tcx", 131);
    let tc = exercise_v6(Main::Bridge, "tc", 132);
    assert_eq!(tcx, off, "bridge IPv6: tcx fast path differs from mode off");
    assert_eq!(tc, off, "bridge IPv6: tc fast path differs from mode off");
}

/// ptp (routed): redirected IPv6 must look routed — hop limit decremented once, a hop-limit-1
/// packet answered with "Time exceeded: Hop limit" by the host — the same as mode off.
#[test]
fn ipv6_ptp_tcx_tc_agree_with_off() {
    if !prerequisites() {
        return;
    }
    let off = exercise_v6(Main::Ptp, "off", 130);
    assert_eq!(
        off.hop1_ab,
        Ping::TimeExceeded,
        "ptp without fast path: the host should expire a hop-limit-1 packet"
    );
    let tcx = exercise_v6(Main::Ptp, "tcx", 131);
    let tc = exercise_v6(Main::Ptp, "tc", 132);
    assert_eq!(tcx, off, "ptp IPv6: tcx fast path does not look routed");
    assert_eq!(tc, off, "ptp IPv6: tc fast path does not look routed");
}

// --- 2. failurePolicy -------------------------------------------------------------------------

/// An address nobody has: frames to it leave the pod through its host veth and end there.
const FAKE_PEER: &str = "192.0.2.1";

/// One pod on a hand-made veth and kmesh-cni exec'd directly on an isolated pin root.
struct Direct {
    iso: Isolation,
    cni_path: CniPath,
    pod: VethPod,
}

impl Direct {
    /// `addr` must be in 10.234.<n>.0/24 with <n> unused elsewhere.
    fn new(tag: &str, addr: &str) -> Self {
        let pod = VethPod::new(tag, addr, true);
        pod.ns.must(&[
            "neigh",
            "add",
            FAKE_PEER,
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "eth0",
        ]);
        pod.ns.must(&["route", "add", FAKE_PEER, "dev", "eth0"]);
        Direct {
            iso: Isolation::new(),
            cni_path: CniPath::new(),
            pod,
        }
    }

    fn conf(&self, extra: Value) -> Value {
        self.pod.conf(&self.iso, "1.0.0", self.pod.ip, extra)
    }

    fn exec(&self, verb: &str, cid: &str, conf: &Value) -> Output {
        let env = direct_env(&self.iso, &self.cni_path, verb, cid, self.pod.ns.path_str());
        exec_plugin(
            &self.cni_path.plugin("kmesh-cni"),
            &env,
            &serde_json::to_vec(conf).unwrap(),
        )
    }

    /// Creates the pinned maps (STATUS opens or creates them) so a test can pre-fill them.
    fn create_maps(&self) {
        let mut conf = self.iso.plugin_conf(json!({}));
        conf["cniVersion"] = json!("1.1.0");
        conf["name"] = json!("weft-kmesh-test");
        let env = PluginEnv::command("STATUS")
            .set("CNI_PATH", self.cni_path.path_str())
            .set("WEFT_STATE_DIR", self.iso.state_dir());
        exec_plugin(
            &self.cni_path.plugin("kmesh-cni"),
            &env,
            &serde_json::to_vec(&conf).unwrap(),
        )
        .assert_success("STATUS (creates the maps)");
    }

    /// Whether a program using this root's pinned counters runs on the pod's host veth: one
    /// unicast frame out of the pod (a static neighbour, so no ARP is needed) must be counted.
    /// bpftool 7.1 (Debian 12) does not list tcx links per device, so this is the check that
    /// sees both tcx and legacy tc attachments.
    fn program_sees_traffic(&self) -> bool {
        let total = |c: &Counters| c.get("passed_packets") + c.get("redirected_packets");
        let before = total(&self.iso.counters());
        ping(&self.pod.ns, FAKE_PEER.parse().unwrap(), 1, None);
        total(&self.iso.counters()) > before
    }

    /// Nothing of kmesh-cni is on the pod's veth, in the `endpoints` map or in bpffs links.
    fn assert_nothing_attached(&self, what: &str) {
        let veth = &self.pod.host_veth;
        assert!(
            !self.program_sees_traffic(),
            "{what}: a program still counts the pod's traffic on {veth}"
        );
        assert_eq!(
            tc_programs(veth),
            Vec::<Value>::new(),
            "{what}: program on {veth}"
        );
        assert!(
            !tc_ingress_filters(veth).contains("bpf"),
            "{what}: tc filter left on {veth}"
        );
        assert_eq!(
            self.iso.attached(),
            Vec::<String>::new(),
            "{what}: program attached"
        );
        assert_eq!(self.iso.endpoints(), vec![], "{what}: endpoints entry");
    }
}

/// The prevResult a chained plugin must hand back. kmesh-cni re-encodes it, which adds an empty
/// `dns` object (equivalent to none); everything else must be identical.
fn same_as_prev(out: &Output, conf: &Value) -> bool {
    let mut got = out.json();
    if got.get("dns") == Some(&json!({})) {
        got.as_object_mut().unwrap().remove("dns");
    }
    got == conf["prevResult"]
}

/// A `pinRoot` that is not on bpffs (a dir under /tmp) can never work: it is refused as a config
/// error (code 7) before anything is created there, whatever `failurePolicy` says (that policy is
/// about a kernel refusing a program, not about a config). Nothing is attached.
#[test]
fn non_bpffs_pin_root_is_a_config_error_under_either_policy() {
    if !prerequisites() {
        return;
    }
    let d = Direct::new("nobpffs", "10.234.140.2");
    let tmp = tempfile::tempdir().unwrap();
    let pin_root = tmp.path().join("pins");
    for (policy, mode) in [
        ("ignore", "tcx"),
        ("fail", "tcx"),
        ("ignore", "tc"),
        ("fail", "tc"),
    ] {
        let what = format!("pinRoot on tmpfs, mode {mode}, failurePolicy {policy}");
        let conf = d.conf(json!({"mode": mode, "failurePolicy": policy, "pinRoot": pin_root}));
        let out = d.exec("ADD", &format!("{}-{policy}-{mode}", d.pod.cid), &conf);
        assert_cni_error(&out, 7, &what);
        assert!(
            out.stdout
                .contains("not under /sys/fs/bpf nor on a BPF filesystem"),
            "{what}: error does not say why:\n{}",
            out.describe()
        );
        d.assert_nothing_attached(&what);
        assert!(!pin_root.exists(), "{what}: created {}", pin_root.display());
    }
}

/// Regression: a failed ADD with a pin root that is not on bpffs used to leave a
/// `state: attaching` record (attach's undo re-opened the maps, failed the same way and never
/// dropped the record), after which every DEL for that container failed with code 100 although
/// nothing was ever attached. Now the undo skips the map work on a non-bpffs root.
#[test]
fn non_bpffs_pin_root_leaves_no_record_and_del_succeeds() {
    if !prerequisites() {
        return;
    }
    let d = Direct::new("nobpffsrec", "10.234.140.3");
    let tmp = tempfile::tempdir().unwrap();
    let pin_root = tmp.path().join("pins");
    for policy in ["ignore", "fail"] {
        let cid = format!("{}-{policy}", d.pod.cid);
        let conf = d.conf(json!({"mode": "tcx", "failurePolicy": policy, "pinRoot": pin_root}));
        let _ = d.exec("ADD", &cid, &conf);
        assert_eq!(
            d.iso.records(),
            Vec::<String>::new(),
            "failurePolicy {policy}: failed ADD left a record"
        );
        let out = d.exec("DEL", &cid, &conf);
        out.assert_success(&format!("DEL after a failed ADD ({policy})"));
    }
}

/// A real kernel refusal after partial work: the `managed` map is full (E2BIG), so enrolment
/// fails after the program was attached and the endpoint inserted. `fail` returns a CNI error and
/// `ignore` passes prevResult through; both undo everything. Freeing one slot makes the same ADD
/// succeed, which shows the refusal was the only obstacle.
fn managed_map_full(mode: &str, addr: &str) {
    let d = Direct::new(&format!("full{mode}"), addr);
    d.create_maps();
    // Keys with the top bit set: real netns cookies count up from 1 and never get there.
    const FILLER: u64 = 1 << 63;
    let max = d.iso.map_max_entries("managed");
    d.iso.fill_managed(FILLER, max);
    let conf = |policy: &str| {
        d.conf(json!({"mode": mode, "enrolByDefault": true, "failurePolicy": policy}))
    };

    for policy in ["fail", "ignore"] {
        let what = format!("mode {mode}, managed map full, failurePolicy {policy}");
        let cid = format!("{}-{policy}", d.pod.cid);
        let out = d.exec("ADD", &cid, &conf(policy));
        if policy == "fail" {
            assert_cni_error(&out, 100, &what);
            let msg = out.json()["msg"].as_str().unwrap_or("").to_owned();
            assert!(
                msg.starts_with("enrol"),
                "{what}: failed somewhere else than enrolment: {msg}"
            );
        } else {
            out.assert_success(&what);
            assert!(
                same_as_prev(&out, &conf(policy)),
                "{what}: result is not prevResult:\n{}",
                out.describe()
            );
        }
        assert_eq!(d.iso.records(), Vec::<String>::new(), "{what}: record left");
        d.assert_nothing_attached(&what);
        d.exec("DEL", &cid, &conf(policy))
            .assert_success(&format!("{what}: DEL after the failed ADD"));
    }

    d.iso.delete_managed(FILLER);
    let cid = format!("{}-ok", d.pod.cid);
    d.exec("ADD", &cid, &conf("fail"))
        .assert_success(&format!("mode {mode}: ADD with one free managed slot"));
    let record = d.iso.record(&cid, "eth0").expect("record");
    assert_eq!(record["state"], "attached");
    assert_eq!(record["netns_cookie"], netns_cookie(&d.pod.ns));
    assert!(
        d.program_sees_traffic(),
        "mode {mode}: the attached program does not count the pod's traffic"
    );
    assert!(d.iso.endpoint(d.pod.ip).is_some());
    d.exec("DEL", &cid, &conf("fail"))
        .assert_success(&format!("mode {mode}: DEL"));
    assert_eq!(d.iso.records(), Vec::<String>::new());
    d.assert_nothing_attached(&format!("mode {mode}: after DEL"));
}

#[test]
fn managed_map_full_tcx_undoes_partial_attach() {
    if prerequisites() {
        managed_map_full("tcx", "10.234.141.2");
    }
}

#[test]
fn managed_map_full_tc_undoes_partial_attach() {
    if prerequisites() {
        managed_map_full("tc", "10.234.142.2");
    }
}

// --- 3. enrolByDefault ------------------------------------------------------------------------

/// `enrolByDefault: true` enrols a pod without annotations (a `managed` entry keyed by its netns
/// cookie); `istio.io/dataplane-mode=none` opts a pod out of enrolment but not of the fast path.
#[test]
fn enrol_by_default_and_annotation_opt_out() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new(
        Main::Bridge,
        "1.0.0",
        json!({"mode": "tcx", "enrolByDefault": true}),
        143,
    );
    let plain = Pod::new("plain");
    let out_pod = Pod::annotated("none", json!({"istio.io/dataplane-mode": "none"}));
    let added_plain = net.add(&plain);
    let added_out = net.add(&out_pod);
    let cookie = netns_cookie(&plain.ns);
    assert_ne!(cookie, netns_cookie(&out_pod.ns));
    assert_eq!(
        net.iso.managed(),
        vec![(
            cookie,
            MANAGED_F_ENROLLED,
            host_ifindex(&added_plain.host_veth)
        )],
        "managed map must hold exactly the pod without annotations"
    );
    assert_eq!(
        net.iso.record(&plain.cid, "eth0").unwrap()["netns_cookie"],
        cookie
    );
    assert_eq!(
        net.iso.record(&out_pod.cid, "eth0").unwrap()["netns_cookie"],
        Value::Null,
        "opted-out pod recorded as enrolled"
    );
    assert!(
        net.iso.endpoint(added_out.ip).is_some(),
        "opting out of the mesh must keep the fast path"
    );
    for pod in [&plain, &out_pod] {
        net.run("check", pod)
            .assert_success(&format!("CHECK {}", pod.cid));
    }
    assert!(matches!(
        ping(&plain.ns, added_out.ip, 2, None),
        Ping::Replies { .. }
    ));

    net.run("del", &plain)
        .assert_success("DEL of the enrolled pod");
    assert_eq!(net.iso.managed(), vec![], "DEL left the managed entry");
    net.run("del", &out_pod)
        .assert_success("DEL of the opted-out pod");
    assert_eq!(net.iso.records(), Vec::<String>::new());
    assert_eq!(net.iso.attached(), Vec::<String>::new());
    assert_eq!(net.iso.endpoints(), vec![]);
}
