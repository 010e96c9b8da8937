//! Fixtures for root tests: network namespaces, veth/bridge topologies, a private pin root,
//! and real traffic (ping, UDP with received TTL, TCP). Every guard cleans up on drop, also
//! when the test panics.
#![allow(dead_code)]

use std::{
    io::{IoSliceMut, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use bpf::PinRoot;

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

/// Run a command, panic with its output on failure.
pub fn run(args: &[&str]) -> String {
    let out = integration::proc::command(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop (with every interface in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip netns exec <ns> ...` (exit status returned, output captured).
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        integration::proc::command("ip")
            .args(["netns", "exec", &self.name])
            .arg(integration::prereq::program(args[0]))
            .args(&args[1..])
            .output()
            .expect("ip netns exec")
    }

    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        host::run_in_netns(&self.path(), f).expect("enter netns")
    }

    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let js: serde_json::Value =
            serde_json::from_str(&self.ip(&["-j", "link", "show", dev])).expect("ip -j");
        parse_mac(js[0]["address"].as_str().expect("address"))
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let js: serde_json::Value =
            serde_json::from_str(&self.ip(&["-j", "link", "show", dev])).expect("ip -j");
        js[0]["ifindex"].as_u64().expect("ifindex") as u32
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = integration::proc::command("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

/// A private pin root under /sys/fs/bpf, removed (with every pin in it) on drop.
pub struct TestPins {
    pub root: PinRoot,
}

impl TestPins {
    pub fn new(id: &str) -> TestPins {
        bpf::ensure_bpffs().expect("bpffs");
        TestPins {
            root: PinRoot::new(PathBuf::from(bpf::BPFFS).join(format!("weft-test-{id}"))),
        }
    }

    /// Files left under links/ (must be empty after every detach).
    pub fn link_pins(&self) -> Vec<String> {
        match std::fs::read_dir(self.root.links_dir()) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        // Unlinking a link pin detaches it; map/program pins just go away.
        let _ = std::fs::remove_dir_all(self.root.path());
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
        let node = Netns::new(format!("wft-{id}-n"));
        let br = format!("br{id}");
        node.ip(&["link", "add", &br, "type", "bridge"]);
        node.ip(&["link", "set", &br, "up"]);
        let mk = |tag: &str, host: u8| {
            let ns = Netns::new(format!("wft-{id}-{tag}"));
            let host_if = format!("h{tag}{id}");
            node.ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
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
            Pod {
                mac: ns.mac("eth0"),
                host_mac: node.mac(&host_if),
                host_ifindex: node.ifindex(&host_if),
                host_if,
                v4: v4.parse().unwrap(),
                v6: Some(v6.parse().unwrap()),
                ns,
            }
        };
        let a = mk("a", 1);
        let b = mk("b", 2);
        Topology { a, b, node }
    }

    /// Routed pods (ptp plugin style): /32 on the pod, default route via the host veth
    /// address, a /32 route per pod on the node, forwarding on. IPv4 only.
    pub fn ptp(id: &str, net: u8) -> Topology {
        let node = Netns::new(format!("wft-{id}-n"));
        run(&[
            "ip",
            "netns",
            "exec",
            &node.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let gw = format!("10.{net}.0.254");
        let mk = |tag: &str, host: u8| {
            let ns = Netns::new(format!("wft-{id}-{tag}"));
            let host_if = format!("h{tag}{id}");
            node.ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
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
            Pod {
                mac: ns.mac("eth0"),
                host_mac: node.mac(&host_if),
                host_ifindex: node.ifindex(&host_if),
                host_if,
                v4: v4.parse().unwrap(),
                v6: None,
                ns,
            }
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
    if !out.status.success() {
        eprintln!("ping {to} failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    out.status.success()
}

/// Send `n` UDP datagrams from `from` to `to` and return, for each one received,
/// the source address and the TTL/hop limit the receiver saw.
pub fn udp_observe(from: &Netns, to_ns: &Netns, to: IpAddr, n: usize) -> Vec<(IpAddr, u8)> {
    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
    };
    let listener = to_ns.in_ns(|| {
        let s = UdpSocket::bind(SocketAddr::new(to, 0)).expect("bind udp");
        match to {
            IpAddr::V4(_) => setsockopt(&s, sockopt::Ipv4RecvTtl, &true).unwrap(),
            IpAddr::V6(_) => setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).unwrap(),
        }
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    });
    let dst = listener.local_addr().unwrap();
    from.in_ns(|| {
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
        let mut cmsg = nix::cmsg_space!(libc::c_int);
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
    let listener = to_ns.in_ns(|| TcpListener::bind(SocketAddr::new(to, 0)).expect("listen"));
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
        from.in_ns(|| {
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
