//! Root tests against real network namespaces and veth pairs made with `ip`.
//!
//! Without root they are skipped with a printed reason, unless `CI=true`, where a missing
//! prerequisite is a failure. Every netns, link and process a test creates is removed by a Drop
//! guard, also when the test panics. Names carry the test process's pid so parallel runs of this
//! binary (and the tests inside it) do not collide.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Child,
};

use host::{
    addresses, find_veth_pair, link_by_index, link_by_name, links, netns, netns_cookie,
    run_in_netns, HostError,
};
use integration::fixtures::netns::{unique_ifname, veth_pair, HostLink, TestNetns};

/// True if the test can run; false (after printing why) if it should be skipped.
fn prerequisites(_test: &str) -> bool {
    integration::prereq::require_root() && integration::prereq::require(&["ip", "sleep"])
}

fn ip(args: &[&str]) {
    integration::proc::must("ip", args);
}

/// The shared netns fixture.
type Netns = TestNetns;

/// A veth pair: a fresh host-side name here, `eth0` inside `ns`.
fn pod_veth(ns: &Netns, _tag: &str) -> HostLink {
    // Both ends stay down: the tests look at a link's state as created.
    veth_pair(None, &unique_ifname("wh"), ns, "eth0").expect("host-side end")
}

/// A `sleep` child that lives in `ns`; killed and reaped on drop.
struct ChildInNetns(Child);

impl ChildInNetns {
    fn spawn(ns: &Netns) -> Self {
        let file = File::open(ns.path()).unwrap();
        let fd = file.as_raw_fd();
        let mut cmd = integration::proc::command("sleep");
        cmd.arg("600");
        // SAFETY: setns(2) is async-signal-safe; `file` outlives spawn(), which returns only
        // after exec, so the child is inside the netns by the time we look at it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn sleep in netns");
        drop(file);
        ChildInNetns(child)
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }
}

impl Drop for ChildInNetns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn link_lookups_inside_a_netns() {
    if !prerequisites("link_lookups_inside_a_netns") {
        return;
    }
    let ns = TestNetns::new("wht-links");
    let host_end = pod_veth(&ns, "l");
    ns.must(&["link", "set", "eth0", "mtu", "1400", "up"]);
    ns.must(&["addr", "add", "10.99.7.2/24", "dev", "eth0"]);
    ns.must(&["addr", "add", "fd00:99:7::2/64", "dev", "eth0", "nodad"]);

    let eth0 = link_by_name(Some(ns.path()), "eth0")
        .unwrap()
        .expect("eth0 in the netns");
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.mtu, 1400);
    assert!(eth0.up);
    let mac = eth0.mac.as_deref().expect("veth has a MAC");
    assert_eq!(mac.len(), 17, "{mac}");
    assert_eq!(mac, mac.to_lowercase());
    assert!(eth0.link_netnsid.is_some(), "peer is in another netns");

    let host = link_by_name(None, host_end.name())
        .unwrap()
        .expect("host end");
    assert_eq!(eth0.peer_index, Some(host.index));
    assert_eq!(host.peer_index, Some(eth0.index));
    assert!(!host.up);
    assert_eq!(
        link_by_index(Some(ns.path()), eth0.index).unwrap(),
        Some(eth0.clone())
    );

    let all = links(Some(ns.path())).unwrap();
    let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo", "eth0"]);
    assert!(link_by_name(Some(ns.path()), host_end.name())
        .unwrap()
        .is_none());

    let mut addrs: Vec<String> = addresses(Some(ns.path()), eth0.index)
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();
    addrs.sort();
    assert!(addrs.contains(&"10.99.7.2/24".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"fd00:99:7::2/64".to_string()), "{addrs:?}");
    // The fixture brings lo up: exactly the loopback addresses, none of eth0's.
    let mut lo_addrs: Vec<String> = addresses(Some(ns.path()), 1)
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();
    lo_addrs.sort();
    assert_eq!(lo_addrs, ["127.0.0.1/8", "::1/128"], "lo of the test netns");
}

#[test]
fn veth_peer_found_in_host() {
    if !prerequisites("veth_peer_found_in_host") {
        return;
    }
    let ns = TestNetns::new("wht-peer");
    let host_end = pod_veth(&ns, "p");
    let pair = find_veth_pair(ns.path(), "eth0")
        .unwrap()
        .expect("host peer");
    let peer = &pair.host;
    assert_eq!(peer.name, host_end.name());
    assert!(peer.is_veth());
    let eth0 = link_by_name(Some(ns.path()), "eth0").unwrap().unwrap();
    assert_eq!(peer.peer_index, Some(eth0.index));
    assert_eq!(pair.inside, eth0, "the pod end as read inside the netns");
    assert_eq!(
        pair.netns_cookie,
        Some(netns_cookie(ns.path()).unwrap()),
        "the pod's netns cookie, read in the same visit"
    );

    // Absent link: nothing to find. Not a veth: a clear error.
    assert!(find_veth_pair(ns.path(), "eth9").unwrap().is_none());
    match find_veth_pair(ns.path(), "lo") {
        Err(HostError::NotVeth { name, .. }) => assert_eq!(name, "lo"),
        other => panic!("lo: {other:?}"),
    }
    // Both ends inside the netns: no host peer.
    ns.must(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    assert!(find_veth_pair(ns.path(), "va").unwrap().is_none());
}

/// The peer of `x` (in netns A) is `y` in netns B, and the host has a decoy veth with y's ifindex
/// whose own peer has x's ifindex (but lives in netns C). Only the nsid check tells them apart.
#[test]
fn veth_peer_in_other_netns_is_not_mistaken_for_host_link() {
    if !prerequisites("veth_peer_in_other_netns_is_not_mistaken_for_host_link") {
        return;
    }
    let a = TestNetns::new("wht-da");
    let b = TestNetns::new("wht-db");
    let c = TestNetns::new("wht-dc");
    let base = 100_000 + (std::process::id() % 100_000) * 2;
    let (i1, i2) = (base.to_string(), (base + 1).to_string());
    a.must(&[
        "link",
        "add",
        "name",
        "x",
        "index",
        &i1,
        "type",
        "veth",
        "peer",
        "name",
        "y",
        "index",
        &i2,
        "netns",
        b.name(),
    ]);
    let decoy = HostLink::adopt(&unique_ifname("wh"));
    ip(&[
        "link",
        "add",
        "name",
        decoy.name(),
        "index",
        &i2,
        "type",
        "veth",
        "peer",
        "name",
        "z",
        "index",
        &i1,
        "netns",
        c.name(),
    ]);
    let host = link_by_index(None, base + 1).unwrap().expect("decoy");
    assert_eq!(host.name, decoy.name());
    assert_eq!(host.peer_index, Some(base));
    let x = link_by_name(Some(a.path()), "x").unwrap().unwrap();
    assert_eq!((x.index, x.peer_index), (base, Some(base + 1)));

    assert!(find_veth_pair(a.path(), "x").unwrap().is_none());
    // ...while the real pair through C is found.
    assert_eq!(
        find_veth_pair(c.path(), "z").unwrap().map(|p| p.host.name),
        Some(decoy.name().to_owned())
    );
}

#[test]
fn netns_cookies_identify_namespaces() {
    if !prerequisites("netns_cookies_identify_namespaces") {
        return;
    }
    let a = TestNetns::new("wht-ca");
    let b = TestNetns::new("wht-cb");
    let own = netns::current_netns_cookie().unwrap();
    let ca = netns_cookie(a.path()).unwrap();
    let cb = netns_cookie(b.path()).unwrap();
    assert_ne!(ca, cb);
    assert_ne!(ca, own);
    assert_ne!(cb, own);
    assert_eq!(netns_cookie(a.path()).unwrap(), ca, "stable per netns");

    // The same netns reached through /proc/<pid>/ns/net (podman's form) has the same cookie.
    let child = ChildInNetns::spawn(&a);
    assert_eq!(netns_cookie(&child.netns_path()).unwrap(), ca);
    // And our own netns through /proc is ours.
    assert_eq!(
        netns_cookie(Path::new(&format!("/proc/{}/ns/net", std::process::id()))).unwrap(),
        own
    );
}

#[test]
fn run_in_netns_enters_only_its_own_thread() {
    if !prerequisites("run_in_netns_enters_only_its_own_thread") {
        return;
    }
    let ns = TestNetns::new("wht-run");
    let _host_end = pod_veth(&ns, "r");
    let before = netns::current_netns_cookie().unwrap();
    let (inside, eth0) = run_in_netns(ns.path(), || {
        (
            netns::current_netns_cookie().unwrap(),
            // Netlink without a netns argument runs where the thread is: inside.
            link_by_name(None, "eth0").unwrap(),
        )
    })
    .unwrap();
    assert_eq!(inside, netns_cookie(ns.path()).unwrap());
    assert_ne!(inside, before);
    assert!(eth0.is_some_and(|l| l.is_veth()));
    assert_eq!(netns::current_netns_cookie().unwrap(), before);
    assert!(link_by_name(None, "eth0")
        .unwrap()
        .is_none_or(|l| !l.is_veth() || l.link_netnsid.is_none()));

    // Borrowing from the caller works (scoped thread).
    let wanted = String::from("eth0");
    let found = run_in_netns(ns.path(), || {
        link_by_name(None, &wanted).unwrap().map(|l| l.name)
    })
    .unwrap();
    assert_eq!(found.as_deref(), Some("eth0"));
}

/// The calling thread creates a socket inside the pod's namespace and is back in its own
/// namespace afterwards; the socket stays in the pod's (so netlink on it sees the pod's links).
#[test]
fn sockets_in_netns_returns_the_thread_to_its_namespace() {
    if !prerequisites("sockets_in_netns_returns_the_thread_to_its_namespace") {
        return;
    }
    let ns = TestNetns::new("wht-sock");
    let before = netns::current_netns_cookie().unwrap();
    let file = netns::open_netns(ns.path()).unwrap();
    let (socket, inside) = netns::sockets_in_netns(&file, ns.path(), || {
        let raw = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        );
        (raw, netns::current_netns_cookie())
    })
    .unwrap();
    let socket = socket.unwrap();
    assert_eq!(inside.unwrap(), netns_cookie(ns.path()).unwrap());
    assert_eq!(
        netns::current_netns_cookie().unwrap(),
        before,
        "the thread is back in its own netns"
    );
    assert_eq!(
        netns::socket_netns_cookie(&socket).unwrap(),
        netns_cookie(ns.path()).unwrap(),
        "the socket stays inside"
    );

    // A panic inside the window unwinds through it: the thread is back all the same.
    let panicked = std::panic::catch_unwind(|| {
        netns::sockets_in_netns(&file, ns.path(), || panic!("inside")).unwrap()
    });
    assert!(panicked.is_err());
    assert_eq!(netns::current_netns_cookie().unwrap(), before);

    // A file that is no netns cannot be entered: an error, and the thread stays where it was.
    let not_ns = File::open("/proc/self/status").unwrap();
    assert!(netns::sockets_in_netns(&not_ns, Path::new("/proc/self/status"), || ()).is_err());
    assert_eq!(netns::current_netns_cookie().unwrap(), before);
}

#[test]
fn deleted_netns_is_netns_missing() {
    if !prerequisites("deleted_netns_is_netns_missing") {
        return;
    }
    let path = {
        let ns = TestNetns::new("wht-gone");
        assert!(netns::netns_exists(ns.path()));
        ns.path().to_path_buf()
    };
    assert!(!netns::netns_exists(&path));
    let e = run_in_netns(&path, || ()).unwrap_err();
    assert!(e.is_netns_missing(), "{e}");
    assert!(netns_cookie(&path).unwrap_err().is_netns_missing());
    assert!(find_veth_pair(&path, "eth0")
        .unwrap_err()
        .is_netns_missing());
    assert!(link_by_name(Some(&path), "eth0")
        .unwrap_err()
        .is_netns_missing());
    assert_eq!(conf::Error::from(e).code, conf::code::UNKNOWN_CONTAINER);
}
