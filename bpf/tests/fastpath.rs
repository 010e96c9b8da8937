//! Root tests with real traffic between network namespaces.
//!
//! Each test builds its own node netns (bridge or routed veths) with two pod netns and
//! its own pin root, so tests run in parallel and never touch the host's interfaces.
//! Run: `sudo -E cargo test -p bpf` (CI=true turns missing prerequisites into failures).

mod common;

use std::net::IpAddr;

use bpf::{probe, Counters, Endpoint, Managed, Maps, Mode};
use common::*;

#[test]
fn probes_find_the_kernel_features() {
    if !prerequisites("probes_find_the_kernel_features") {
        return;
    }
    // The attach probes attach for real: in a namespace that exists only for them.
    let scratch = integration::fixtures::netns::TestNetns::new("wft-probe");
    let f = probe::features(Some(scratch.run_in(probe::attach_probes)));
    eprintln!("features: {f:?}");
    // The test machines run kernel 6.18 (ENVIRONMENT.md): everything must be there.
    assert!(
        f.redirect_peer,
        "bpf_redirect_peer not usable from tc programs"
    );
    assert!(f.bpffs, "no bpffs");
    assert!(f.clsact, "clsact + cls_bpf attach failed");
    assert!(f.tcx, "tcx link attach failed");
    // auto takes the cheaper attach (clsact + cls_bpf), tcx only without clsact.
    assert_eq!(f.mode(), Some(Mode::Tc));
    let without_clsact = probe::Features { clsact: false, ..f };
    assert_eq!(without_clsact.mode(), Some(Mode::Tcx));
}

#[test]
fn maps_are_pinned_once_and_reused_by_later_processes() {
    if !prerequisites("maps_are_pinned_once_and_reused_by_later_processes") {
        return;
    }
    let pins = TestPins::new(&unique_id());
    let mut first = Maps::open_or_create(&pins.root).unwrap();
    for name in [
        bpf::MAP_ENDPOINTS,
        bpf::MAP_DEVICES,
        bpf::MAP_COUNTERS,
        bpf::MAP_MANAGED,
    ] {
        assert!(pins.root.path().join(name).exists(), "{name} not pinned");
    }
    assert_eq!(first.counters().unwrap(), Counters::default());

    // A second open (as a later CNI exec would) sees the same maps.
    let ip: IpAddr = "10.9.9.9".parse().unwrap();
    let ep = Endpoint::new(
        7,
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        false,
        bpf::owner_token(&["a", "eth0"]),
    );
    let net = bpf::network_id("net1");
    first.endpoints.insert(net, ip, &ep).unwrap();
    let mut second = Maps::open_or_create(&pins.root).unwrap();
    assert_eq!(second.endpoints.get(net, ip).unwrap(), Some(ep));
    assert_eq!(second.endpoints.list().unwrap(), vec![(net, ip, ep)]);

    // The same address in another network is another entry: neither overwrites the other.
    let other_net = bpf::network_id("net2");
    let theirs = Endpoint::new(
        9,
        [2, 0, 0, 0, 0, 5],
        [2, 0, 0, 0, 0, 6],
        false,
        bpf::owner_token(&["c", "eth0"]),
    );
    second.endpoints.insert(other_net, ip, &theirs).unwrap();
    assert_eq!(first.endpoints.get(net, ip).unwrap(), Some(ep));
    assert!(second
        .endpoints
        .remove_if_owner(other_net, ip, &theirs)
        .unwrap());
    assert_eq!(first.endpoints.get(net, ip).unwrap(), Some(ep));

    // IP reuse race: a new pod got the address; the old pod's DEL must not remove it.
    let newer = Endpoint::new(
        8,
        [2, 0, 0, 0, 0, 3],
        [2, 0, 0, 0, 0, 4],
        false,
        bpf::owner_token(&["b", "eth0"]),
    );
    second.endpoints.insert(net, ip, &newer).unwrap();
    assert!(!first.endpoints.remove_if_owner(net, ip, &ep).unwrap());
    assert_eq!(first.endpoints.get(net, ip).unwrap(), Some(newer));
    assert!(second.endpoints.remove_if_owner(net, ip, &newer).unwrap());
    assert_eq!(first.endpoints.get(net, ip).unwrap(), None);
    // Removing what is already gone is fine.
    assert!(!second.endpoints.remove_if_owner(net, ip, &newer).unwrap());

    // Devices: the network of the pod behind a host veth, removed only by its owner.
    let dev = bpf::Device {
        network: net,
        owner: bpf::owner_token(&["a", "eth0"]),
    };
    first.devices.insert(7, &dev).unwrap();
    let reused = bpf::Device {
        network: other_net,
        owner: bpf::owner_token(&["d", "eth0"]),
    };
    second.devices.insert(7, &reused).unwrap();
    assert!(!first.devices.remove_if_owner(7, &dev).unwrap());
    assert_eq!(first.devices.get(7).unwrap(), Some(reused));
    assert!(second.devices.remove_if_owner(7, &reused).unwrap());
    assert_eq!(first.devices.list().unwrap(), vec![]);

    // Mesh enrolment by netns cookie.
    let cookie = integration::fixtures::netns::current_netns_cookie();
    assert_ne!(cookie, 0);
    let m = Managed {
        flags: bpf::MANAGED_F_ENROLLED,
        ifindex: 7,
        owner: bpf::owner_token(&["a", "eth0"]),
    };
    first.managed.insert(cookie, &m).unwrap();
    assert_eq!(second.managed.get(cookie).unwrap(), Some(m));
    // The same pod enrolled through a second network: the first network's DEL leaves it.
    let m2 = Managed {
        owner: bpf::owner_token(&["a", "net1"]),
        ..m
    };
    second.managed.insert(cookie, &m2).unwrap();
    assert!(!first.managed.remove_if_owner(cookie, &m).unwrap());
    assert!(second.managed.remove_if_owner(cookie, &m2).unwrap());
    assert!(!first.managed.remove_if_owner(cookie, &m2).unwrap());
    assert_eq!(first.managed.list().unwrap(), vec![]);
}

#[test]
fn stale_pins_with_another_layout_are_refused() {
    if !prerequisites("stale_pins_with_another_layout_are_refused") {
        return;
    }
    let pins = TestPins::new(&unique_id());
    pins.root.ensure().unwrap();
    // What an older build with a 4-byte key would have left behind.
    let path = pins.root.path().join(bpf::MAP_ENDPOINTS);
    let status = integration::proc::command("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "32",
            "entries",
            "16",
            "name",
            "endpoints",
        ])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            let msg = format!("bpftool map create failed: {other:?}");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("SKIP {msg}");
            return;
        }
    }
    match Maps::open_or_create(&pins.root) {
        Err(bpf::Error::StaleMap { path: p, .. }) => assert_eq!(p, path),
        Err(e) => panic!("expected StaleMap, got {e}"),
        Ok(_) => panic!("stale pin accepted"),
    }
}

/// `bpftool <args>`, which must succeed.
fn bpftool(args: &[&str]) {
    let out = integration::proc::cmd("bpftool", args);
    out.assert_success(&format!("bpftool {}", args.join(" ")));
}

/// Space-separated hex bytes, as bpftool takes keys and values.
fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pins_of_the_previous_layout_are_moved_aside_and_still_serve_del() {
    if !prerequisites("pins_of_the_previous_layout_are_moved_aside_and_still_serve_del") {
        return;
    }
    let pins = TestPins::new(&unique_id());
    pins.root.ensure().unwrap();
    let at = |name: &str| pins.root.path().join(name).display().to_string();
    // What a release before network scoping pinned: endpoints keyed by address alone (20
    // bytes), managed values without an owner (8 bytes), 11 counters.
    for (name, kind, key, value) in [
        ("endpoints", "hash", "20", "32"),
        ("managed", "hash", "8", "8"),
        ("counters", "percpu_array", "4", "88"),
    ] {
        let entries = if kind == "hash" { "65536" } else { "1" };
        bpftool(&[
            "map",
            "create",
            &at(name),
            "type",
            kind,
            "key",
            key,
            "value",
            value,
            "entries",
            entries,
            "name",
            name,
        ]);
    }
    let ip: IpAddr = "10.8.0.2".parse().unwrap();
    let old = Endpoint::new(
        5,
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        false,
        bpf::owner_token(&["old", "eth0"]),
    );
    let mut key = vec![10, 8, 0, 2];
    key.resize(16, 0);
    key.extend([4, 0, 0, 0]);
    let mut value = Vec::new();
    value.extend(old.ifindex.to_ne_bytes());
    value.extend(old.flags.to_ne_bytes());
    value.extend(old.owner.to_ne_bytes());
    value.extend(old.pod_mac);
    value.extend(old.host_mac);
    value.extend([0u8; 4]);
    let mut args = vec!["map", "update", "pinned"];
    let path = at("endpoints");
    args.push(&path);
    args.extend(["key", "hex"]);
    let (key, value) = (hex(&key), hex(&value));
    args.extend(key.iter().map(String::as_str));
    args.extend(["value", "hex"]);
    args.extend(value.iter().map(String::as_str));
    bpftool(&args);

    // The new release opens its own maps at the root and keeps the old ones for their pods.
    let maps = Maps::open_or_create(&pins.root).unwrap();
    assert!(maps.endpoints.list().unwrap().is_empty());
    assert!(pins.root.path().join("legacy-v1/endpoints").exists());
    let mut legacy = bpf::LegacyMaps::open(&pins.root).unwrap();
    assert_eq!(legacy.endpoint(ip).unwrap(), Some(old));
    let someone_else = Endpoint { owner: 1, ..old };
    assert!(!legacy.remove_endpoint_if_owner(ip, &someone_else).unwrap());
    assert!(legacy.remove_endpoint_if_owner(ip, &old).unwrap());
    assert_eq!(legacy.endpoint(ip).unwrap(), None);
    // A second open moves nothing again and keeps the current maps.
    drop(maps);
    Maps::open_or_create(&pins.root).unwrap();
    assert!(pins.root.path().join("legacy-v1/endpoints").exists());
    bpf::legacy::remove_if_unused(&pins.root).unwrap();
    assert!(!pins.root.path().join("legacy-v1").exists());
    assert_eq!(
        bpf::LegacyMaps::open(&pins.root)
            .unwrap()
            .endpoint(ip)
            .unwrap(),
        None
    );
}

#[test]
fn bridge_fast_path_with_tcx() {
    if prerequisites("bridge_fast_path_with_tcx") {
        fast_path(Kind::Bridge, Mode::Tcx, 71);
    }
}

#[test]
fn bridge_fast_path_with_legacy_tc() {
    if prerequisites("bridge_fast_path_with_legacy_tc") {
        fast_path(Kind::Bridge, Mode::Tc, 72);
    }
}

#[test]
fn routed_fast_path_decrements_ttl_like_the_kernel() {
    if prerequisites("routed_fast_path_decrements_ttl_like_the_kernel") {
        fast_path(Kind::Routed, Mode::Tcx, 73);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Bridge,
    Routed,
}

/// Everything a receiver observes for A -> B traffic: UDP (source, TTL) per family.
fn observe(t: &Topology) -> Vec<(IpAddr, u8)> {
    let mut seen = udp_observe(&t.a.ns, &t.b.ns, t.b.v4, 5);
    assert_eq!(seen.len(), 5, "IPv4 UDP datagrams lost");
    if let Some(v6) = t.b.v6 {
        let s6 = udp_observe(&t.a.ns, &t.b.ns, v6, 5);
        assert_eq!(s6.len(), 5, "IPv6 UDP datagrams lost");
        seen.extend(s6);
    }
    seen
}

/// Ping both ways and both families, TCP A -> B; asserts all of it works.
fn traffic(t: &Topology) {
    assert!(ping(&t.a.ns, t.b.v4), "IPv4 ping A -> B");
    assert!(ping(&t.b.ns, t.a.v4), "IPv4 ping B -> A");
    if let (Some(a6), Some(b6)) = (t.a.v6, t.b.v6) {
        assert!(ping(&t.a.ns, b6), "IPv6 ping A -> B");
        assert!(ping(&t.b.ns, a6), "IPv6 ping B -> A");
    }
    assert_eq!(
        tcp_roundtrip(&t.a.ns, &t.b.ns, t.b.v4),
        t.a.v4,
        "TCP client address"
    );
    if let (Some(a6), Some(b6)) = (t.a.v6, t.b.v6) {
        assert_eq!(
            tcp_roundtrip(&t.a.ns, &t.b.ns, b6),
            a6,
            "TCP client address (v6)"
        );
    }
}

fn endpoints_of(p: &Pod, routed: bool, owner: &str) -> Vec<(IpAddr, Endpoint)> {
    let ep = Endpoint::new(
        p.host_ifindex,
        p.mac,
        p.host_mac,
        routed,
        bpf::owner_token(&[owner, "eth0"]),
    );
    std::iter::once(p.v4)
        .chain(p.v6)
        .map(|ip| (ip, ep))
        .collect()
}

fn fast_path(kind: Kind, mode: Mode, net: u8) {
    let id = unique_id();
    let pins = TestPins::new(&id);
    let t = match kind {
        Kind::Bridge => Topology::bridge(&id, net),
        Kind::Routed => Topology::ptp(&id, net),
    };

    // 1. The normal path, no program: what must the receiver see?
    traffic(&t);
    let baseline = observe(&t);
    let expected_ttl = if kind == Kind::Routed { 63 } else { 64 };
    assert!(
        baseline.iter().all(|&(_, ttl)| ttl == expected_ttl),
        "normal path TTLs {baseline:?}, expected {expected_ttl}"
    );

    // 2. Fast path: attach on both host veths (twice for A: a retried ADD), fill endpoints.
    let mut maps = Maps::open_or_create(&pins.root).unwrap();
    let (att_a, att_b) = t.node.run_in(|| {
        let first = maps.attach(&t.a.host_if, mode, "pod-a").unwrap();
        let again = maps.attach(&t.a.host_if, mode, "pod-a").unwrap();
        assert_eq!(first, again);
        (again, maps.attach(&t.b.host_if, mode, "pod-b").unwrap())
    });
    assert_eq!(att_a.ifindex, t.a.host_ifindex);
    assert_eq!(
        att_a.prog_id, att_b.prog_id,
        "one pinned program shared by all pods"
    );
    t.node.run_in(|| {
        for att in [&att_a, &att_b] {
            assert!(
                bpf::is_attached(&pins.root, att, tc_filter_on(&att.ifname)).unwrap(),
                "{att:?} not attached"
            );
        }
        if mode == Mode::Tcx {
            let (_, progs) = aya::programs::SchedClassifier::query_tcx(
                &t.a.host_if,
                aya::programs::TcAttachType::Ingress,
            )
            .unwrap();
            assert_eq!(progs.len(), 1, "retried attach stacked programs");
        }
    });
    let routed = kind == Kind::Routed;
    let eps: Vec<_> = endpoints_of(&t.a, routed, "a")
        .into_iter()
        .chain(endpoints_of(&t.b, routed, "b"))
        .collect();
    let net = bpf::network_id("fastpath-test");
    let devices = [&att_a, &att_b].map(|att| {
        let dev = bpf::Device {
            network: net,
            owner: bpf::owner_token(&[&att.key]),
        };
        maps.devices.insert(att.ifindex, &dev).unwrap();
        (att.ifindex, dev)
    });
    for (ip, ep) in &eps {
        maps.endpoints.insert(net, *ip, ep).unwrap();
    }

    let c0 = maps.counters().unwrap();
    traffic(&t);
    let fast = observe(&t);
    let c1 = maps.counters().unwrap();
    eprintln!("{kind:?}/{mode:?} fast-path counters: {c1:?}");
    assert_eq!(
        fast, baseline,
        "receiver saw different source/TTL on the fast path"
    );
    let udp = fast.len() as u64;
    // Pings (3 each way per family), TCP segments and the UDP datagrams all qualify.
    assert!(
        c1.redirected_packets - c0.redirected_packets >= udp + 6,
        "redirected only {} packets",
        c1.redirected_packets - c0.redirected_packets
    );
    assert!(c1.redirected_bytes > c0.redirected_bytes);

    // 3a. Another network: the same addresses registered for a pod of another network are
    // never a destination for these pods (the devices map says which network they are in).
    let other = bpf::network_id("another-network");
    for (ip, ep) in &eps {
        assert!(maps.endpoints.remove_if_owner(net, *ip, ep).unwrap());
        maps.endpoints.insert(other, *ip, ep).unwrap();
    }
    let ca = maps.counters().unwrap();
    traffic(&t);
    assert_eq!(observe(&t), baseline);
    let cb = maps.counters().unwrap();
    assert_eq!(
        cb.redirected_packets, ca.redirected_packets,
        "redirected across networks"
    );
    for (ip, ep) in &eps {
        assert!(maps.endpoints.remove_if_owner(other, *ip, ep).unwrap());
    }

    // 3b. Unknown destinations pass: without endpoints nothing is redirected, all flows.
    let c2 = maps.counters().unwrap();
    traffic(&t);
    assert_eq!(observe(&t), baseline);
    let c3 = maps.counters().unwrap();
    assert_eq!(
        c3.redirected_packets, c2.redirected_packets,
        "redirected without endpoints"
    );
    assert!(
        c3.pass_no_endpoint - c2.pass_no_endpoint >= udp,
        "unknown destinations not counted as passed"
    );
    assert!(c3.passed_packets > c2.passed_packets);

    // 3c. A veth weft does not know (no devices entry) passes, even with endpoints.
    for (ip, ep) in &eps {
        maps.endpoints.insert(net, *ip, ep).unwrap();
    }
    for (ifindex, dev) in &devices {
        assert!(maps.devices.remove_if_owner(*ifindex, dev).unwrap());
    }
    let cc = maps.counters().unwrap();
    traffic(&t);
    assert_eq!(observe(&t), baseline);
    let cd = maps.counters().unwrap();
    assert_eq!(cd.redirected_packets, cc.redirected_packets);
    assert!(cd.pass_no_device - cc.pass_no_device >= udp);

    // 4. Detach: counters stop, traffic keeps flowing via the normal path.
    t.node.run_in(|| {
        for att in [&att_a, &att_b] {
            bpf::detach(&pins.root, att).unwrap();
            assert!(!bpf::is_attached(&pins.root, att, tc_filter_on(&att.ifname)).unwrap());
            bpf::detach(&pins.root, att).unwrap(); // already gone: still fine
        }
        if mode == Mode::Tcx {
            let (_, progs) = aya::programs::SchedClassifier::query_tcx(
                &t.a.host_if,
                aya::programs::TcAttachType::Ingress,
            )
            .unwrap();
            assert!(
                progs.is_empty(),
                "tcx programs left after detach: {}",
                progs.len()
            );
        }
    });
    assert!(
        pins.link_pins().is_empty(),
        "link pins left: {:?}",
        pins.link_pins()
    );
    if mode == Mode::Tc {
        let out = t
            .node
            .exec(&["tc", "filter", "show", "dev", &t.a.host_if, "ingress"]);
        assert!(out.stdout.trim().is_empty(), "tc filter left behind");
    }
    let c4 = maps.counters().unwrap();
    traffic(&t);
    assert_eq!(observe(&t), baseline);
    assert_eq!(maps.counters().unwrap(), c4, "counters moved after detach");
}

#[test]
fn detach_key_cleans_up_without_a_record() {
    if !prerequisites("detach_key_cleans_up_without_a_record") {
        return;
    }
    let id = unique_id();
    let pins = TestPins::new(&id);
    let t = Topology::bridge(&id, 74);
    let mut maps = Maps::open_or_create(&pins.root).unwrap();
    t.node.run_in(|| {
        let tcx = maps.attach(&t.a.host_if, Mode::Tcx, "k-a").unwrap();
        let tc = maps.attach(&t.b.host_if, Mode::Tc, "k-b").unwrap();
        // Switching modes under one key replaces the old attachment.
        let switched = maps.attach(&t.a.host_if, Mode::Tc, "k-a").unwrap();
        assert!(!bpf::is_attached(&pins.root, &tcx, tc_filter_on(&tcx.ifname)).unwrap());
        assert!(bpf::is_attached(&pins.root, &switched, tc_filter_on(&switched.ifname)).unwrap());
        bpf::detach_key(&pins.root, "k-a", Some(&t.a.host_if)).unwrap();
        bpf::detach_key(&pins.root, "k-b", Some(&t.b.host_if)).unwrap();
        assert!(!bpf::is_attached(&pins.root, &switched, tc_filter_on(&switched.ifname)).unwrap());
        assert!(!bpf::is_attached(&pins.root, &tc, tc_filter_on(&tc.ifname)).unwrap());
        // Nothing there at all, or an interface that does not exist: still fine.
        bpf::detach_key(&pins.root, "k-a", Some("nonexistent0")).unwrap();
        assert!(bpf::detach_key(&pins.root, "../escape", None).is_err());
    });
    assert!(pins.link_pins().is_empty());
}

#[test]
fn concurrent_first_opens_share_one_set_of_pins() {
    if !prerequisites("concurrent_first_opens_share_one_set_of_pins") {
        return;
    }
    // Several "CNI execs" racing to create the pins: all must succeed (the pin-root lock
    // serialises creation) and end up on the same maps. A few rounds on fresh roots,
    // released together by a barrier, to make the race likely.
    for _ in 0..5 {
        let pins = TestPins::new(&unique_id());
        let n = 12;
        let barrier = std::sync::Barrier::new(n);
        let ids: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let _maps = Maps::open_or_create(&pins.root).unwrap();
                        aya::maps::MapInfo::from_pin(pins.root.path().join(bpf::MAP_ENDPOINTS))
                            .unwrap()
                            .id()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "different maps: {ids:?}"
        );
    }
}
