//! Traffic between test pods and facts about them: ping (with the reply TTL), a TCP listener
//! process inside a netns, the netns cookie, host link indexes and tc filters, and the pieces of
//! a main plugin's result (pod address, host veth) the fast-path tests need.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, Stdio};

use integration::cni::mask;
use integration::netns::TestNetns;
use integration::proc::{cmd, Output};
use serde_json::Value;

/// `ip netns exec <ns> <args>`.
pub fn netns_exec(ns: &TestNetns, args: &[&str]) -> Output {
    ns.exec(args)
}

/// What one ping from `from` to `to` showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    /// Every reply arrived, all with this TTL.
    Replies { ttl: u8 },
    /// A router answered "Time to live exceeded" (the request expired on the way).
    TimeExceeded,
    /// Nothing came back.
    Lost,
}

/// `ping -c <count>` with an optional initial TTL (`-t`). Two-second timeout per reply.
pub fn ping(from: &TestNetns, to: IpAddr, count: u32, ttl: Option<u8>) -> Ping {
    let expected = count as usize;
    let count = count.to_string();
    let to = to.to_string();
    let ttl = ttl.map(|t| t.to_string());
    let mut args = vec!["ping", "-n", "-c", &count, "-i", "0.2", "-W", "2"];
    if let Some(t) = &ttl {
        args.extend(["-t", t]);
    }
    args.push(&to);
    let out = netns_exec(from, &args);
    // iputils words ICMP time exceeded differently for IPv4 and ICMPv6.
    if out.stdout.contains("Time to live exceeded")
        || out.stdout.contains("Time exceeded: Hop limit")
    {
        return Ping::TimeExceeded;
    }
    let ttls: Vec<u8> = out
        .stdout
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ttl=")))
        .map(|t| t.parse().expect("ttl is a number"))
        .collect();
    if ttls.is_empty() {
        return Ping::Lost;
    }
    assert!(
        out.success() && ttls.len() == expected,
        "ping {to}: partial loss:\n{}",
        out.describe()
    );
    assert!(
        ttls.iter().all(|&t| t == ttls[0]),
        "ping {to}: replies with different TTLs {ttls:?}"
    );
    Ping::Replies { ttl: ttls[0] }
}

/// A TCP listener inside a netns (`ip netns exec <ns> perl ...`, perl-base is in every Debian):
/// answers every connection with one line and closes it. Killed by PID on drop.
pub struct Listener {
    child: Child,
    pub addr: IpAddr,
    pub port: u16,
}

/// What the listener sends on every connection.
pub const PONG: &str = "weft-pong";

const LISTENER_PL: &str = r#"
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], LocalPort => $ARGV[1], Listen => 16,
                              ReuseAddr => 1, Proto => 'tcp') or die "listen: $!\n";
$| = 1;
print "listening\n";
while (my $c = $s->accept) { print $c "$ARGV[2]\n"; close $c; }
"#;

/// The same with IO::Socket::IP (also in perl-base), which binds IPv6 addresses too.
const LISTENER_IP_PL: &str = r#"
use IO::Socket::IP;
my $s = IO::Socket::IP->new(LocalHost => $ARGV[0], LocalPort => $ARGV[1], Listen => 16,
                            ReuseAddr => 1, Proto => 'tcp') or die "listen: $@\n";
$| = 1;
print "listening\n";
while (my $c = $s->accept) { print $c "$ARGV[2]\n"; close $c; }
"#;

impl Listener {
    /// Starts listening on `addr:port` in `ns`; returns once the socket is bound and listening.
    pub fn start(ns: &TestNetns, addr: IpAddr, port: u16) -> Self {
        Self::spawn(ns, addr, port, LISTENER_PL, PONG)
    }

    /// [`Listener::start`] for an address of either family (IPv6 included).
    pub fn start_any(ns: &TestNetns, addr: IpAddr, port: u16) -> Self {
        Self::spawn(ns, addr, port, LISTENER_IP_PL, PONG)
    }

    /// [`Listener::start`] answering `reply` instead of [`PONG`] (tells pods apart).
    pub fn start_replying(ns: &TestNetns, addr: IpAddr, port: u16, reply: &str) -> Self {
        Self::spawn(ns, addr, port, LISTENER_PL, reply)
    }

    fn spawn(ns: &TestNetns, addr: IpAddr, port: u16, script: &str, reply: &str) -> Self {
        let mut child = ns
            .command(&["perl", "-e", script])
            .arg(addr.to_string())
            .arg(port.to_string())
            .arg(reply)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the perl listener");
        let stdout = child.stdout.take().expect("piped stdout");
        let listener = Listener { child, addr, port };
        // The first line comes after listen(2): reading it is the readiness handshake.
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert_eq!(
            line.trim(),
            "listening",
            "TCP listener on {addr}:{port} in {} did not start",
            ns.name()
        );
        listener
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // `ip netns exec` execs perl, so this PID is the listener itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from `from` to `addr:port` (bash's /dev/tcp, no extra tool) and returns the line
/// it got back, or the failure.
pub fn tcp_exchange(from: &TestNetns, addr: IpAddr, port: u16) -> Result<String, String> {
    let script = format!(
        "exec 3<>/dev/tcp/{addr}/{port} && IFS= read -r -t 5 line <&3 && printf '%s' \"$line\""
    );
    let out = netns_exec(from, &["timeout", "10", "bash", "-c", &script]);
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(out.describe())
    }
}

/// The netns cookie of a named netns (the `managed` map key): SO_NETNS_COOKIE of a socket
/// created inside it, on a thread that entered it and ends right after.
pub fn netns_cookie(ns: &TestNetns) -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let file = std::fs::File::open(ns.path()).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns/socket/getsockopt on fds we own, writing into locals; the thread
            // that changed namespace ends when this closure returns.
            unsafe {
                assert_eq!(
                    libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET),
                    0,
                    "setns"
                );
                let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                assert!(sock >= 0, "socket in netns");
                let mut cookie: u64 = 0;
                let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
                let r = libc::getsockopt(
                    sock,
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                );
                libc::close(sock);
                assert_eq!(r, 0, "SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
                cookie
            }
        })
        .join()
        .expect("cookie thread")
    })
}

/// ifindex of a host link (`ip -j link show dev`).
pub fn host_ifindex(name: &str) -> u32 {
    let out = cmd("ip", &["-j", "link", "show", "dev", name]);
    out.assert_success(&format!("ip link show dev {name}"));
    out.json()[0]["ifindex"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ifindex for {name}: {}", out.stdout)) as u32
}

/// `tc filter show dev <dev> ingress` (empty without a clsact qdisc).
pub fn tc_ingress_filters(dev: &str) -> String {
    let out = cmd("tc", &["filter", "show", "dev", dev, "ingress"]);
    // No clsact qdisc at all is "no filters", not an error.
    if out.success() {
        out.stdout
    } else {
        String::new()
    }
}

/// The container interface's first address in a CNI result (any version's shape).
pub fn pod_ip(result: &Value) -> IpAddr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no address: {result}"));
    addr.split('/').next().unwrap().parse().expect("IP")
}

/// Every address of a result's `ips` of one family (IPv6 when `v6`).
pub fn pod_ips_of(result: &Value, v6: bool) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap().parse::<IpAddr>().expect("IP"))
        .filter(|ip| ip.is_ipv6() == v6)
        .collect()
}

/// The host-side veth of a bridge/ptp result: the interface without a sandbox that is not the
/// bridge.
pub fn host_veth(result: &Value, bridge: Option<&str>) -> String {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none() && Some(i["name"].as_str().unwrap_or("")) != bridge)
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no host veth in result: {result}"))
        .to_owned()
}

/// Blank the fields of a bridge/ptp result that are random by design: every MAC (the kernel
/// picks random MACs for new veths; a bridge takes over its lowest port's) and the host-side
/// veth name (`veth` + random hex). Everything else must match.
pub fn masked(result: &Value, bridge: Option<&str>) -> Value {
    let mut v = result.clone();
    let mut pointers = Vec::new();
    for (i, iface) in result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        pointers.push(format!("/interfaces/{i}/mac"));
        if iface.get("sandbox").is_none() && Some(iface["name"].as_str().unwrap_or("")) != bridge {
            pointers.push(format!("/interfaces/{i}/name"));
        }
    }
    mask(&mut v, &pointers);
    v
}

/// Every BPF program on `dev`'s tc hooks, tcx links and cls_bpf filters alike
/// (`bpftool net show dev`): what an operator would look at to see if anything is attached.
pub fn tc_programs(dev: &str) -> Vec<Value> {
    let out = cmd("bpftool", &["-j", "net", "show", "dev", dev]);
    out.assert_success(&format!("bpftool net show dev {dev}"));
    out.json()[0]["tc"].as_array().cloned().unwrap_or_default()
}
