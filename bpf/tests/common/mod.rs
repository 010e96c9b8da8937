//! Fixtures for root tests: network namespaces, veth/bridge topologies, a private pin root,
//! and real traffic (ping, UDP with received TTL, TCP). Every guard cleans up on drop, also
//! when the test panics.
#![allow(dead_code)]

use std::{
    io::{IoSliceMut, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use bpf::PinRoot;
use integration::fixtures::bpffs::Isolation;
use integration::fixtures::netns::{veth_pair, TestNetns};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short id unique across concurrently running tests and test processes.
pub fn unique_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{n:x}", std::process::id() & 0xfffff)
}

/// Root tests need root, iproute2, ping, sysctl and tc (`integration::prereq`: under `CI=true`
/// a missing prerequisite is a failure; otherwise the test is skipped with the reason printed).
pub fn prerequisites(_test: &str) -> bool {
    integration::prereq::require_root()
        && integration::prereq::require(&["ip", "ping", "sysctl", "tc", "bpftool"])
}

/// The shared netns fixture ([`TestNetns`]), with what these tests call on it.
pub type Netns = TestNetns;

/// `ip -n <ns> <args>` that must succeed; its stdout.
pub trait Ip {
    fn ip(&self, args: &[&str]) -> String;
}

impl Ip for TestNetns {
    fn ip(&self, args: &[&str]) -> String {
        self.must(args).stdout
    }
}

/// A private pin root (the shared bpffs isolation), as the bpf crate's [`PinRoot`].
pub struct TestPins {
    pub root: PinRoot,
    iso: Isolation,
}

impl TestPins {
    pub fn new(_id: &str) -> TestPins {
        bpf::ensure_bpffs().expect("bpffs");
        let iso = Isolation::tagged("bpf-test");
        TestPins {
            root: PinRoot::new(iso.pin_root()),
            iso,
        }
    }

    /// Files left under links/ (must be empty after every detach).
    pub fn link_pins(&self) -> Vec<String> {
        self.iso.link_pins()
    }
}

/// `tc` can answer whether weft's filter is on `dev`'s clsact ingress (what kmesh-cni asks
/// netlink through `host` in production): `bpf::is_attached`'s tc query for these tests, run
/// in the calling thread's netns.
pub fn tc_filter_on(dev: &str) -> impl FnOnce(u32, u16, u32) -> std::io::Result<Option<u32>> + '_ {
    move |_ifindex, priority, handle| {
        let out = integration::proc::cmd("tc", &["-j", "filter", "show", "dev", dev, "ingress"]);
        if !out.success() {
            return Ok(None); // no clsact qdisc: no filters
        }
        let filters: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        Ok(filters
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| {
                f["pref"].as_u64() == Some(u64::from(priority))
                    && f["options"]["handle"]
                        .as_str()
                        .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok())
                        .map(|h| h & 0xffff)
                        == Some(handle)
            })
            .map(|f| f["options"]["prog"]["id"].as_u64().unwrap_or(0) as u32))
    }
}

/// One pod: its netns, the host-side veth name, addresses.
pub struct Pod {
    pub ns: Netns,
    pub host_if: String,
    pub v4: IpAddr,
    pub v6: Option<IpAddr>,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub host_ifindex: u32,
}

impl Pod {
    /// A pod whose eth0 in `ns` is wired to `host_if` in `node`: its facts read back.
    fn wired(ns: TestNetns, node: &TestNetns, host_if: String, v4: &str, v6: Option<&str>) -> Pod {
        Pod {
            mac: ns.mac("eth0"),
            host_mac: node.mac(&host_if),
            host_ifindex: node.ifindex(&host_if),
            host_if,
            v4: v4.parse().unwrap(),
            v6: v6.map(|a| a.parse().unwrap()),
            ns,
        }
    }
}

/// Two pods on one "node" (its own netns, so the real host is never touched).
/// Drop order: pods first, then the node.
pub struct Topology {
    pub a: Pod,
    pub b: Pod,
    pub node: Netns,
}

impl Topology {
    /// Pods on a Linux bridge in the node netns, same /24 and /64 (bridge plugin style).
    pub fn bridge(id: &str, net: u8) -> Topology {
        let node = TestNetns::new(&format!("wft-{id}-n"));
        let br = format!("br{id}");
        node.ip(&["link", "add", &br, "type", "bridge"]);
        node.ip(&["link", "set", &br, "up"]);
        let mk = |tag: &str, host: u8| {
            let ns = TestNetns::new(&format!("wft-{id}-{tag}"));
            let host_if = format!("h{tag}{id}");
            veth_pair(Some(&node), &host_if, &ns, "eth0");
            node.ip(&["link", "set", &host_if, "master", &br, "up"]);
            let v4 = format!("10.{net}.0.{host}");
            let v6 = format!("fd{net:02x}::{host}");
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
            Pod::wired(ns, &node, host_if, &v4, Some(&v6))
        };
        let a = mk("a", 1);
        let b = mk("b", 2);
        Topology { a, b, node }
    }

    /// Routed pods (ptp plugin style): /32 on the pod, default route via the host veth
    /// address, a /32 route per pod on the node, forwarding on. IPv4 only.
    pub fn ptp(id: &str, net: u8) -> Topology {
        let node = TestNetns::new(&format!("wft-{id}-n"));
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .assert_success("enable forwarding on the node");
        let gw = format!("10.{net}.0.254");
        let mk = |tag: &str, host: u8| {
            let ns = TestNetns::new(&format!("wft-{id}-{tag}"));
            let host_if = format!("h{tag}{id}");
            veth_pair(Some(&node), &host_if, &ns, "eth0");
            node.ip(&["addr", "add", &format!("{gw}/32"), "dev", &host_if]);
            node.ip(&["link", "set", &host_if, "up"]);
            let v4 = format!("10.{net}.0.{host}");
            ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&[
                "route",
                "add",
                &format!("{gw}/32"),
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            ns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"]);
            node.ip(&[
                "route",
                "add",
                &format!("{v4}/32"),
                "dev",
                &host_if,
                "scope",
                "link",
            ]);
            Pod::wired(ns, &node, host_if, &v4, None)
        };
        let a = mk("a", 1);
        let b = mk("b", 2);
        Topology { a, b, node }
    }
}

/// `ping -c 3` from `from` to `to`; true if it got replies.
pub fn ping(from: &Netns, to: IpAddr) -> bool {
    let out = from.exec(&[
        "ping",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        &to.to_string(),
    ]);
    if !out.success() {
        eprintln!("ping {to} failed: {}", out.stdout);
    }
    out.success()
}

/// Send `n` UDP datagrams from `from` to `to` and return, for each one received,
/// the source address and the TTL/hop limit the receiver saw.
pub fn udp_observe(from: &Netns, to_ns: &Netns, to: IpAddr, n: usize) -> Vec<(IpAddr, u8)> {
    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
    };
    let listener = to_ns.run_in(|| {
        let s = UdpSocket::bind(SocketAddr::new(to, 0)).expect("bind udp");
        match to {
            IpAddr::V4(_) => setsockopt(&s, sockopt::Ipv4RecvTtl, &true).unwrap(),
            IpAddr::V6(_) => setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).unwrap(),
        }
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    });
    let dst = listener.local_addr().unwrap();
    from.run_in(|| {
        let bind: SocketAddr = match to {
            IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            IpAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        let s = UdpSocket::bind(bind).expect("bind sender");
        for i in 0..n {
            s.send_to(format!("weft {i}").as_bytes(), dst)
                .expect("send");
        }
    });
    let mut seen = Vec::new();
    for _ in 0..n {
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::libc::c_int);
        let msg = match recvmsg::<SockaddrStorage>(
            listener.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(m) => m,
            Err(_) => break, // timeout: fewer than n arrived
        };
        let src = msg.address.expect("source address");
        let src: IpAddr = if let Some(a) = src.as_sockaddr_in() {
            IpAddr::V4(a.ip())
        } else {
            IpAddr::V6(src.as_sockaddr_in6().expect("inet6").ip())
        };
        let mut ttl = None;
        for c in msg.cmsgs().expect("cmsgs") {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) => ttl = Some(t as u8),
                ControlMessageOwned::Ipv6HopLimit(t) => ttl = Some(t as u8),
                _ => {}
            }
        }
        seen.push((src, ttl.expect("TTL control message")));
    }
    seen
}

/// TCP connect from `from` to a listener in `to_ns`; echo a payload; return the client
/// address the server saw.
pub fn tcp_roundtrip(from: &Netns, to_ns: &Netns, to: IpAddr) -> IpAddr {
    let listener = to_ns.run_in(|| TcpListener::bind(SocketAddr::new(to, 0)).expect("listen"));
    let addr = listener.local_addr().unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            // Bounded wait, so a failed connect fails the test instead of hanging it.
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let (mut c, peer) = loop {
                match listener.accept() {
                    Ok(x) => break x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "no TCP connection arrived"
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
            peer.ip()
        });
        from.run_in(|| {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
        });
        server.join().unwrap()
    })
}
