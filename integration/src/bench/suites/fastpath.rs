//! `weft-bench fast` (P3-fast) and `weft-bench limit` (P3-limit): same-node pod-to-pod TCP
//! throughput (iperf3) and request/response latency (sockperf ping-pong) between two pods that
//! bridge + host-local + kmesh-cni wired through libcni (cnitool).
//!
//! * P3-fast: A = those pods with the eBPF fast path (kmesh-cni `mode: auto`), B = two pods on
//!   another bridge whose kmesh-cni has `mode: off` (bridge alone). Two scenarios: no rules and
//!   br_netfilter off, then 2,000 kube-proxy-style iptables rules in the host netns with
//!   `net.bridge.bridge-nf-call-iptables=1`, so bridged traffic walks them.
//! * P3-limit: A = the fast-path pods, B = a bare veth pair straight between two netns.
//!
//! The pods and the traffic servers are set up once; runs alternate A B A B. Every A run must
//! move the program's `redirected_packets` counter (read with bpftool from the pinned map), so a
//! figure can never silently measure the slow path. Every netns, bridge, BPF pin, iptables
//! chain, sysctl and server process is owned by a guard, also on error and Ctrl-C.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::bench::{self, check_stop, BenchOpts, Figure, Table};
use crate::cni::{bridge_plugin, conflist, Cnitool};
use crate::fixtures::bpffs::Isolation;
use crate::fixtures::guards::{KubeRules, Sysctl};
use crate::fixtures::netns::{unique_ifname, veth_pair, HostLink, TestNetns};
use crate::plugins::CniPath;
use crate::proc::{self, cmd};

pub struct TrafficOpts {
    pub bench: BenchOpts,
    /// Length of each iperf3 and each sockperf run.
    pub seconds: u32,
    /// Rules in the kube-proxy-like chain of the second P3-fast scenario; 0 skips it.
    pub rules: usize,
}

const SUBNET_FAST: &str = "10.201.0.0/24";
const SUBNET_OFF: &str = "10.202.0.0/24";
/// The bare veth pair of P3-limit.
const VETH_A: &str = "10.203.0.1";
const VETH_B: &str = "10.203.0.2";

const NET_FAST: &str = "wb-fast";
const NET_OFF: &str = "wb-off";
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const BR_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

const FIGURES: [Figure; 3] = [
    Figure {
        key: "tput",
        title: "TCP throughput",
        unit: "Gbit/s",
    },
    Figure {
        key: "lat-p99",
        title: "latency p99 (RTT/2)",
        unit: "us",
    },
    Figure {
        key: "lat",
        title: "latency p50 (RTT/2)",
        unit: "us",
    },
];

// ---- guards ------------------------------------------------------------------------------

/// A pod wired by cnitool; DEL on drop (before its netns goes).
struct Pod<'a> {
    tool: &'a Cnitool,
    net: &'static str,
    ip: String,
    ns: TestNetns,
}

impl<'a> Pod<'a> {
    fn add(tool: &'a Cnitool, net: &'static str) -> Result<Pod<'a>> {
        let mut pod = Pod {
            tool,
            net,
            ip: String::new(),
            ns: TestNetns::new("weft-bench-pod"),
        };
        let out = tool.add(net, pod.ns.path());
        ensure!(
            out.success(),
            "cnitool add {net} failed:\n{}",
            out.describe()
        );
        let result: Value = serde_json::from_str(&out.stdout).context("ADD result")?;
        pod.ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("ADD result has no address")?
            .to_owned();
        Ok(pod)
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let out = self.tool.del(self.net, self.ns.path());
        if !out.success() {
            eprintln!(
                "warning: cnitool del {} {}:\n{}",
                self.net,
                self.ns.name(),
                out.describe()
            );
        }
    }
}

/// A traffic server we started inside a netns; killed (by its PID) and reaped on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(ns: &TestNetns, port: u16, argv: &[&str]) -> Result<Server> {
        let mut command = ns.command(argv);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut server = Server {
            child: command
                .spawn()
                .with_context(|| format!("start {}", argv[0]))?,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let port_filter = format!("sport = :{port}");
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("{} exited at start: {status}", argv.join(" "));
            }
            let out = ns_cmd(ns, &["ss", "-Hltn", &port_filter]);
            if out.success() && !out.stdout.trim().is_empty() {
                return Ok(server);
            }
            ensure!(
                Instant::now() < deadline,
                "{} not listening after 5 s",
                argv[0]
            );
            check_stop()?;
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ns_cmd(ns: &TestNetns, argv: &[&str]) -> proc::Output {
    ns.exec(argv)
}

// ---- measuring ---------------------------------------------------------------------------

/// Run `argv` inside `ns`, killing it after `limit` (or on Ctrl-C); its stdout and stderr.
fn run_bounded(ns: &TestNetns, argv: &[&str], limit: Duration) -> Result<(String, String)> {
    let f = proc::run_bounded(&mut ns.command(argv), b"", Some(limit))
        .with_context(|| format!("start {}", argv[0]))?;
    check_stop()?;
    if f.killed {
        bail!("{} still running after {limit:?}: killed", argv.join(" "));
    }
    if !f.output.success() {
        bail!("{} failed:\n{}", argv.join(" "), f.output.describe());
    }
    Ok((f.output.stdout, f.output.stderr))
}

/// A client netns and the server it talks to (iperf3 and sockperf running there).
struct TrafficPath<'a> {
    client: &'a TestNetns,
    server_ip: String,
    _servers: [Server; 2],
}

impl<'a> TrafficPath<'a> {
    fn new(client: &'a TestNetns, server: &TestNetns, server_ip: &str) -> Result<Self> {
        let (iperf_port, sockperf_port) = (IPERF_PORT.to_string(), SOCKPERF_PORT.to_string());
        Ok(TrafficPath {
            client,
            server_ip: server_ip.to_owned(),
            _servers: [
                Server::start(
                    server,
                    IPERF_PORT,
                    &["iperf3", "-s", "-B", server_ip, "-p", &iperf_port],
                )?,
                Server::start(
                    server,
                    SOCKPERF_PORT,
                    &[
                        "sockperf",
                        "sr",
                        "--tcp",
                        "-i",
                        server_ip,
                        "-p",
                        &sockperf_port,
                    ],
                )?,
            ],
        })
    }

    /// One run: [throughput Gbit/s, p99 µs, p50 µs] (FIGURES order).
    fn measure(&self, seconds: u32) -> Result<Vec<f64>> {
        let secs = seconds.to_string();
        let limit = Duration::from_secs(u64::from(seconds) + 10);
        let (iperf, _) = run_bounded(
            self.client,
            &[
                "iperf3",
                "-c",
                &self.server_ip,
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &secs,
                "-J",
                "--connect-timeout",
                "3000",
            ],
            limit,
        )?;
        let v: Value = serde_json::from_str(&iperf).context("iperf3 -J output")?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("iperf3 output lacks end.sum_received: {iperf}"))?;
        let (out, err) = run_bounded(
            self.client,
            &[
                "sockperf",
                "pp",
                "--tcp",
                "-i",
                &self.server_ip,
                "-p",
                &SOCKPERF_PORT.to_string(),
                "-t",
                &secs,
            ],
            limit,
        )?;
        let text = format!("{out}\n{err}");
        Ok(vec![
            bps / 1e9,
            sockperf_percentile(&text, "99.000")?,
            sockperf_percentile(&text, "50.000")?,
        ])
    }
}

/// `sockperf: ---> percentile 50.000 =   24.186` → 24.186 (µs, half a round trip).
fn sockperf_percentile(text: &str, pct: &str) -> Result<f64> {
    let needle = format!("percentile {pct} =");
    text.lines()
        .find_map(|l| l.split_once(&needle))
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("no '{needle}' in sockperf output:\n{text}"))
}

/// The redirect program's counters (`struct weft_counters`), summed over CPUs, from the pinned
/// per-CPU map as bpftool formats it with the map's BTF.
fn fast_path_counters(pins: &Isolation) -> Result<BTreeMap<String, u64>> {
    let map = pins.pin_root().join("counters");
    let map = map.to_str().context("UTF-8 pin path")?;
    let out = cmd("bpftool", &["map", "dump", "pinned", map, "-j"]);
    ensure!(
        out.success(),
        "bpftool map dump failed:\n{}",
        out.describe()
    );
    let v: Value = serde_json::from_str(&out.stdout).context("bpftool -j output")?;
    let cpus = v[0]["formatted"]["values"]
        .as_array()
        .context("bpftool output lacks formatted values (no BTF?)")?;
    let mut sum = BTreeMap::new();
    for cpu in cpus {
        let fields = cpu["value"]
            .as_object()
            .context("bpftool output: per-CPU value is not a struct")?;
        for (name, n) in fields {
            *sum.entry(name.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    ensure!(
        sum.contains_key(REDIRECTED),
        "bpftool output lacks {REDIRECTED}"
    );
    Ok(sum)
}

const REDIRECTED: &str = "redirected_packets";

/// What the counters saw during one side's runs (warm-up included).
#[derive(Default)]
struct SideCounts {
    /// Deltas of the redirect program's counters.
    fast_path: BTreeMap<String, u64>,
    /// Packets that entered the rules chain from FORWARD (bridged traffic through iptables).
    forward_hits: u64,
}

impl SideCounts {
    fn redirected(&self) -> u64 {
        self.fast_path.get(REDIRECTED).copied().unwrap_or(0)
    }

    /// `redirected_packets +N, passed_packets +M (pass_x +k, ...)`: the non-zero reasons.
    fn describe(&self) -> String {
        let get = |k: &str| self.fast_path.get(k).copied().unwrap_or(0);
        let reasons: Vec<String> = self
            .fast_path
            .iter()
            .filter(|(k, &n)| k.starts_with("pass_") && n > 0)
            .map(|(k, n)| format!("{k} +{n}"))
            .collect();
        format!(
            "{REDIRECTED} +{}, passed_packets +{} ({})",
            self.redirected(),
            get("passed_packets"),
            if reasons.is_empty() {
                "-".to_owned()
            } else {
                reasons.join(", ")
            }
        )
    }
}

/// The note that proves which side used the fast path.
fn counters_note(pins: &Isolation, a: &SideCounts, b: &SideCounts) -> String {
    format!(
        "fast path counters (bpftool map dump pinned {}/counters -j):\n     A runs: {}\n     \
         B runs: {}",
        pins.pin_root().display(),
        a.describe(),
        b.describe()
    )
}

/// One measured run plus the counter deltas around it. `fast` demands that the run went
/// through the redirect program.
fn run_side(
    path: &TrafficPath,
    seconds: u32,
    pins: &Isolation,
    rules: Option<&KubeRules>,
    counts: &mut SideCounts,
    fast: bool,
) -> Result<Vec<f64>> {
    let hits = |r: Option<&KubeRules>| r.map_or(Ok(0), KubeRules::forward_hits);
    let (before, hit0) = (fast_path_counters(pins)?, hits(rules)?);
    let figures = path.measure(seconds)?;
    let (after, hit1) = (fast_path_counters(pins)?, hits(rules)?);
    for (name, n) in &after {
        let delta = n.saturating_sub(before.get(name).copied().unwrap_or(0));
        *counts.fast_path.entry(name.clone()).or_default() += delta;
    }
    if fast {
        ensure!(
            after[REDIRECTED] > before[REDIRECTED],
            "the fast path was not used: {REDIRECTED} stayed at {}",
            before[REDIRECTED]
        );
    }
    counts.forward_hits += hit1 - hit0;
    Ok(figures)
}

// ---- setup -------------------------------------------------------------------------------

/// Everything the pods share: CNI_PATH, cnitool with its own conf/cache dirs, the pin root,
/// the state and IPAM dirs, and the bridges.
struct Node {
    tool: Cnitool,
    _bridges: [HostLink; 2],
    _ipam: TempDir,
    _cni_path: CniPath,
    pins: Isolation,
}

impl Node {
    fn new(bin_dir: &Path, tag: &str) -> Result<Node> {
        ensure!(nix::unistd::geteuid().is_root(), "needs root (netns)");
        let kmesh = bin_dir.join("kmesh-cni");
        ensure!(
            kmesh.is_file(),
            "{} not found (cargo build --release -p kmesh-cni)",
            kmesh.display()
        );
        for tool in ["iperf3", "sockperf", "bpftool", "ss", "iptables-restore"] {
            let p = crate::prereq::lookup(tool);
            ensure!(
                p.present(),
                "{} not found (Debian package {})",
                p.path,
                p.package
            );
        }
        let pins = Isolation::tagged(&format!("bench-{tag}"));
        let ipam = TempDir::with_prefix("weft-bench-ipam-").context("ipam dir")?;
        let cni_path = CniPath::with_bin_dir(bin_dir);
        let mut tool = Cnitool::new(&cni_path);
        tool.set_env("WEFT_STATE_DIR", pins.state_dir());
        let bridges = [
            HostLink::adopt(&unique_ifname("wbbr")),
            HostLink::adopt(&unique_ifname("wbbr")),
        ];
        let kmesh =
            |mode: &str| json!({"type": "kmesh-cni", "mode": mode, "pinRoot": pins.pin_root()});
        tool.write_conflist(&conflist(
            NET_FAST,
            &[
                bridge_plugin(bridges[0].name(), SUBNET_FAST, ipam.path()),
                kmesh("auto"),
            ],
        ));
        tool.write_conflist(&conflist(
            NET_OFF,
            &[
                bridge_plugin(bridges[1].name(), SUBNET_OFF, ipam.path()),
                kmesh("off"),
            ],
        ));
        Ok(Node {
            tool,
            _bridges: bridges,
            _ipam: ipam,
            _cni_path: cni_path,
            pins,
        })
    }

    /// Two pods on `net`.
    fn pods(&self, net: &'static str) -> Result<[Pod<'_>; 2]> {
        Ok([Pod::add(&self.tool, net)?, Pod::add(&self.tool, net)?])
    }

    /// The attach mode kmesh-cni recorded for its pods, and a check that both are attached.
    fn fast_path_mode(&self) -> Result<String> {
        let mut modes: Vec<String> = self
            .pins
            .record_values()
            .iter()
            .map(|r| r["mode"].as_str().unwrap_or("?").to_owned())
            .collect();
        let links = self.pins.link_pins().len();
        ensure!(
            modes.len() == 2 && links == 2,
            "expected 2 kmesh-cni attachments, found {} records and {links} link pins",
            modes.len(),
        );
        modes.dedup();
        Ok(modes.join(","))
    }
}

/// Two netns joined by nothing but a veth pair (P3-limit's reference).
fn bare_veth_pair() -> Result<[TestNetns; 2]> {
    let (a, b) = (
        TestNetns::new("weft-bench-veth"),
        TestNetns::new("weft-bench-veth"),
    );
    veth_pair(Some(&a), "eth0", &b, "eth0");
    for (ns, ip) in [(&a, VETH_A), (&b, VETH_B)] {
        ns.must(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.must(&["link", "set", "eth0", "up"]);
    }
    Ok([a, b])
}

fn tools_note(seconds: u32) -> String {
    format!(
        "each run: iperf3 -c <ip> -t {seconds} -J (received bits/s), then sockperf pp --tcp -t \
         {seconds} (latency percentiles, RTT/2), client in one pod, servers in the other"
    )
}

fn fast_label(mode: &str) -> String {
    format!("bridge + host-local + kmesh-cni (fast path, attach mode {mode})")
}

// ---- suites ------------------------------------------------------------------------------

/// P3-fast: the fast path against bridge alone, without and with kube-proxy-sized rule sets.
pub fn run_fast(opts: &TrafficOpts) -> Result<Vec<Table>> {
    if opts.rules > 0 {
        ensure!(
            Path::new(BR_NF_CALL_IPTABLES).exists(),
            "{BR_NF_CALL_IPTABLES} missing: br_netfilter is not available on this kernel \
             (modprobe br_netfilter), so the rules scenario cannot run; --rules 0 skips it"
        );
    }
    let node = Node::new(&opts.bench.bin_dir, "fast")?;
    let fast = node.pods(NET_FAST)?;
    let off = node.pods(NET_OFF)?;
    let mode = node.fast_path_mode()?;
    let path_a = TrafficPath::new(&fast[0].ns, &fast[1].ns, &fast[1].ip)?;
    let path_b = TrafficPath::new(&off[0].ns, &off[1].ns, &off[1].ip)?;
    let labels = (
        fast_label(&mode),
        "bridge + host-local + kmesh-cni mode: off (bridge alone)".to_owned(),
    );

    let mut tables = Vec::new();
    let scenario = |name: &str, rules: Option<&KubeRules>| -> Result<Table> {
        let (mut ca, mut cb) = (SideCounts::default(), SideCounts::default());
        let mut table = bench::alternate(
            name,
            (labels.0.as_str(), labels.1.as_str()),
            &FIGURES,
            opts.bench.pairs,
            || run_side(&path_a, opts.seconds, &node.pins, rules, &mut ca, true),
            || run_side(&path_b, opts.seconds, &node.pins, rules, &mut cb, false),
        )?;
        table.notes.push(tools_note(opts.seconds));
        table.notes.push(counters_note(&node.pins, &ca, &cb));
        if let Some(r) = rules {
            table.notes.push(format!(
                "packets into FORWARD -> {} ({} rules, br_netfilter on; counts any bridged \
                 traffic on the host): during A runs +{}, during B runs +{}",
                r.chain(),
                opts.rules,
                ca.forward_hits,
                cb.forward_hits
            ));
        }
        Ok(table)
    };

    {
        // Without rules, bridged traffic skips iptables entirely (as before kube-proxy).
        let _brnf = Path::new(BR_NF_CALL_IPTABLES)
            .exists()
            .then(|| Sysctl::set(BR_NF_CALL_IPTABLES, "0"))
            .transpose()?;
        let mut t = scenario("P3-fast", None)?;
        t.notes.push(
            "no iptables rules added; net.bridge.bridge-nf-call-iptables=0 during the runs".into(),
        );
        tables.push(t);
    }
    if opts.rules > 0 {
        let _brnf = Sysctl::set(BR_NF_CALL_IPTABLES, "1")?;
        let rules = KubeRules::install(opts.rules)?;
        tables.push(scenario("P3-fast-rules", Some(&rules))?);
    }
    Ok(tables)
}

/// P3-limit: the fast path against a bare veth pair between the two netns.
pub fn run_limit(opts: &TrafficOpts) -> Result<Vec<Table>> {
    let node = Node::new(&opts.bench.bin_dir, "limit")?;
    let fast = node.pods(NET_FAST)?;
    let mode = node.fast_path_mode()?;
    let veth = bare_veth_pair()?;
    let path_a = TrafficPath::new(&fast[0].ns, &fast[1].ns, &fast[1].ip)?;
    let path_b = TrafficPath::new(&veth[0], &veth[1], VETH_B)?;
    let (mut ca, mut cb) = (SideCounts::default(), SideCounts::default());
    let mut table = bench::alternate(
        "P3-limit",
        (
            fast_label(&mode).as_str(),
            "a bare veth pair between the two netns (physical limit)",
        ),
        &FIGURES,
        opts.bench.pairs,
        || run_side(&path_a, opts.seconds, &node.pins, None, &mut ca, true),
        || run_side(&path_b, opts.seconds, &node.pins, None, &mut cb, false),
    )?;
    table.notes.push(tools_note(opts.seconds));
    table.notes.push(counters_note(&node.pins, &ca, &cb));
    Ok(vec![table])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockperf_percentiles() {
        let text = "sockperf: ---> percentile 99.000 =   36.038\n\
                    sockperf: ---> percentile 50.000 =   24.186\n";
        assert_eq!(sockperf_percentile(text, "50.000").unwrap(), 24.186);
        assert_eq!(sockperf_percentile(text, "99.000").unwrap(), 36.038);
        assert!(sockperf_percentile(text, "90.000").is_err());
    }
}
