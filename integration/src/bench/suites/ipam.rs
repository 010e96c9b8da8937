//! `weft-bench ipam-exec | ipam-node | ipam-scale | ipam-cluster`: weft-ipam against the Go
//! reference `host-local` (BENCHMARKS.md P1-exec, P2-node, P4-scale), and weft-ipam's etcd store
//! against its own file store on the same cluster workload (P2-cluster).
//!
//! An IPAM plugin needs no network namespace, so most runs exec the IPAM binary directly with
//! the environment and config a main plugin (bridge) would hand it: that is the process a pod's
//! ADD pays for, and the only way to read *its* peak RSS (under cnitool the IPAM is a
//! grandchild). P1-exec also times the whole libcni path: cnitool with the IPAM as the only
//! plugin of a conflist. Both sides always get the same subnet, the same kind of store (a temp
//! dir) and the same requests.
//!
//! Every run checks what it measured: each ADD printed an address, no address was handed out
//! twice, the store is empty again after the DELs. A wrong result aborts the bench (a failing
//! command measures nothing); a bench never asserts timing.

use std::cell::Cell;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::RwLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::bench::{self, check_stop, BenchOpts, Figure, Table};
use crate::cni::Cnitool;
use crate::etcd::EtcdCluster;
use crate::fixtures::netns::TestNetns;
use crate::plugins::{reference_plugin, CniPath};
use crate::proc;

/// Subnets of the suites (never configured on any interface: IPAM only hands them out).
const SUBNET_EXEC: &str = "10.242.0.0/24";
const SUBNET_NODE: &str = "10.243.0.0/23";
/// Room for 65,533 reservations: `--held 10000` and more.
const SUBNET_SCALE: &str = "10.244.0.0/16";
/// A plugin that has not exited by then is killed and the run fails: a hang measures nothing.
const EXEC_LIMIT: Duration = Duration::from_secs(60);

fn weft_ipam(bin_dir: &Path) -> Result<PathBuf> {
    let bin = bin_dir.join("weft-ipam");
    ensure!(
        bin.is_file(),
        "{} not found (cargo build --release -p weft-ipam)",
        bin.display()
    );
    Ok(bin)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- one IPAM under test -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Weft,
    HostLocal,
}

/// One IPAM plugin with its own store in a temp dir (removed on drop), for one network.
struct Ipam {
    kind: Kind,
    bin: PathBuf,
    network: String,
    /// The `ipam` section.
    section: Value,
    /// The network config on stdin, as bridge passes it to its IPAM delegate.
    stdin: Vec<u8>,
    /// The file store / dataDir; none for the etcd store.
    store: Option<TempDir>,
}

impl Ipam {
    fn new(
        kind: Kind,
        bin: PathBuf,
        network: &str,
        section: Value,
        store: Option<TempDir>,
    ) -> Ipam {
        let stdin = serde_json::to_vec(&json!({
            "cniVersion": "1.0.0",
            "name": network,
            "type": section["type"],
            "ipam": section,
        }))
        .expect("serialize conf");
        Ipam {
            kind,
            bin,
            network: network.to_owned(),
            section,
            stdin,
            store,
        }
    }

    fn store_dir(prefix: &str) -> Result<TempDir> {
        TempDir::with_prefix(prefix).context("IPAM store dir")
    }

    /// weft-ipam with its embedded file store.
    fn weft(bin_dir: &Path, network: &str, subnet: &str) -> Result<Ipam> {
        let store = Self::store_dir("weft-bench-ipam-")?;
        let section = json!({
            "type": "weft-ipam",
            "range": subnet,
            "store": {"type": "file", "dir": store.path()},
        });
        Ok(Self::new(
            Kind::Weft,
            weft_ipam(bin_dir)?,
            network,
            section,
            Some(store),
        ))
    }

    /// The Go reference: host-local, its dataDir in a temp dir.
    fn host_local(network: &str, subnet: &str) -> Result<Ipam> {
        let store = Self::store_dir("weft-bench-host-local-")?;
        let section = json!({
            "type": "host-local",
            "dataDir": store.path(),
            "ranges": [[{"subnet": subnet}]],
        });
        Ok(Self::new(
            Kind::HostLocal,
            reference_plugin("host-local"),
            network,
            section,
            Some(store),
        ))
    }

    fn label(&self) -> &'static str {
        match self.kind {
            Kind::Weft => "weft-ipam (file store)",
            Kind::HostLocal => "host-local (Go reference)",
        }
    }

    /// The exec of one verb for `container_id`, with only the CNI environment (plus a fixed PATH).
    fn command(&self, verb: &str, container_id: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", "eth0")
            // The IPAM never enters it; bridge would pass the pod's netns here.
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_PATH", self.bin.parent().unwrap_or(Path::new("/")));
        cmd
    }

    /// Reservations in the store right now.
    fn held(&self) -> Result<usize> {
        let store = self.store.as_ref().context("no local store to count")?;
        let dir = store.path().join(&self.network);
        match self.kind {
            // `<dir>/pool`: header, one line per reservation, `end <count>` (ipam/src/store/file.rs).
            Kind::Weft => {
                let text = match std::fs::read_to_string(dir.join("pool")) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                    Err(e) => return Err(e).context("read weft-ipam pool"),
                };
                let count = text
                    .lines()
                    .find_map(|l| l.strip_prefix("end "))
                    .ok_or_else(|| anyhow!("weft-ipam pool without trailer:\n{text}"))?;
                Ok(count.parse()?)
            }
            // One file per address, named by it (besides `lock` and `last_reserved_ip.N`).
            Kind::HostLocal => match std::fs::read_dir(&dir) {
                Ok(entries) => Ok(entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                    .count()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e).context("read host-local dataDir"),
            },
        }
    }

    /// `plugins` entry for a conflist whose only plugin is this IPAM (P1-exec via cnitool).
    fn as_plugin(&self) -> Value {
        json!({"type": self.section["type"], "ipam": self.section})
    }
}

/// The addresses of an ADD result (`ips[].address` without the prefix).
fn result_addrs(stdout: &str) -> Result<Vec<IpAddr>> {
    let v: Value = serde_json::from_str(stdout).context("ADD result is not JSON")?;
    let addrs = v["ips"]
        .as_array()
        .ok_or_else(|| anyhow!("ADD result without ips: {stdout}"))?
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| anyhow!("bad ips entry {ip}"))
        })
        .collect::<Result<Vec<IpAddr>>>()?;
    ensure!(!addrs.is_empty(), "ADD handed out no address: {stdout}");
    Ok(addrs)
}

/// Duplicates among all addresses handed out: total minus distinct.
fn duplicates(addrs: &[IpAddr]) -> usize {
    addrs.len() - addrs.iter().collect::<HashSet<_>>().len()
}

// ---- bounded, concurrent execs -----------------------------------------------------------

/// What one bounded exec did.
struct Timed {
    ok: bool,
    stdout: String,
    stderr: String,
    wall: Duration,
    ended: Instant,
    killed: bool,
}

impl Timed {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            if self.killed {
                "killed at the time limit"
            } else {
                "failed"
            },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Exec `cmd` with `stdin` through the kit's runner, killed past `limit`.
fn exec_bounded(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Result<Timed> {
    let f = proc::run_bounded(cmd, stdin, Some(limit)).with_context(|| format!("exec {cmd:?}"))?;
    Ok(Timed {
        ok: f.output.success(),
        stdout: f.output.stdout,
        stderr: f.output.stderr,
        wall: f.usage.wall,
        ended: f.ended,
        killed: f.killed,
    })
}

/// `n` execs released together; returns each outcome and the phase's wall time (release to the
/// last exit). `make(i)` builds the i-th command before the release, so the phase holds only
/// the execs themselves.
fn concurrent(
    n: usize,
    stdin: &[u8],
    limit: Duration,
    make: impl Fn(usize) -> Command + Sync,
) -> Result<(Vec<Timed>, Duration)> {
    // Threads block on a read lock while this thread holds the write lock: dropping it releases
    // them all at once, also when spawning a thread failed half-way (no thread is left waiting).
    let gate = RwLock::new(());
    thread::scope(|s| {
        let held = gate.write().unwrap_or_else(|e| e.into_inner());
        let mut handles = Vec::with_capacity(n);
        let mut spawn_error = None;
        for i in 0..n {
            let (gate, make) = (&gate, &make);
            let spawned =
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let mut cmd = make(i);
                        drop(gate.read().unwrap_or_else(|e| e.into_inner()));
                        exec_bounded(&mut cmd, stdin, limit)
                    });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let start = Instant::now();
        drop(held);
        let outcomes: Vec<Result<Timed>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("exec thread panicked")))
            })
            .collect();
        if let Some(e) = spawn_error {
            bail!("cannot start {n} threads: {e}");
        }
        let outcomes = outcomes.into_iter().collect::<Result<Vec<Timed>>>()?;
        let last = outcomes.iter().map(|t| t.ended).max().unwrap_or(start);
        Ok((outcomes, last.saturating_duration_since(start)))
    })
}

/// The first failed outcome, as an error naming `what`.
fn all_ok(outcomes: &[Timed], what: &str) -> Result<()> {
    let failed: Vec<&Timed> = outcomes.iter().filter(|t| !t.ok).collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} {what} failed; first: {}",
            failed.len(),
            outcomes.len(),
            first.describe()
        );
    }
    Ok(())
}

/// Reserve `count` addresses (`<tag>-<i>`), 16 execs at a time.
fn fill(ipam: &Ipam, count: usize, tag: &str) -> Result<()> {
    for start in (0..count).step_by(16) {
        let n = (count - start).min(16);
        let (outs, _) = concurrent(n, &ipam.stdin, EXEC_LIMIT, |i| {
            ipam.command("ADD", &format!("{tag}-{}", start + i))
        })?;
        all_ok(&outs, "fill ADDs")?;
    }
    let held = ipam.held()?;
    ensure!(
        held == count,
        "{}: {held} reservations after filling {count}",
        ipam.label()
    );
    Ok(())
}

// ---- P1-exec -----------------------------------------------------------------------------

const EXEC_FIGURES: [Figure; 3] = [
    Figure {
        key: "cnitool-time",
        title: "cnitool ADD+DEL",
        unit: "ms",
    },
    Figure {
        key: "time",
        title: "IPAM exec ADD+DEL",
        unit: "ms",
    },
    Figure {
        key: "rss",
        title: "IPAM peak RSS",
        unit: "MiB",
    },
];

/// Runs the command, fails unless it exits 0; (stdout, usage).
fn run_measured(mut cmd: Command, stdin: &[u8], what: &str) -> Result<(String, proc::Usage)> {
    let (out, usage) = proc::run(&mut cmd, stdin).with_context(|| format!("exec {what}"))?;
    ensure!(out.success(), "{what} failed:\n{}", out.describe());
    Ok((out.stdout, usage))
}

/// P1-exec: one pod's IPAM ADD+DEL as whole processes. Each run: cnitool add + del of a conflist
/// holding only the IPAM (libcni's full path, wall time), then the IPAM exec'd directly for ADD
/// and DEL (its own wall time and peak RSS, the larger of the two verbs).
pub fn run_exec(opts: &BenchOpts) -> Result<Vec<Table>> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "P1-exec needs root (netns)"
    );
    let net = "wb-ipam-exec";
    // Absolute: CNI_PATH holds symlinks to our binaries.
    let bin_dir = std::fs::canonicalize(&opts.bin_dir)
        .with_context(|| format!("bin dir {}", opts.bin_dir.display()))?;
    let weft = Ipam::weft(&bin_dir, net, SUBNET_EXEC)?;
    let host_local = Ipam::host_local(net, SUBNET_EXEC)?;
    let cni_path = CniPath::with_bin_dir(&bin_dir);
    let ns = TestNetns::new("weft-bench-ipam");
    let tools = [&weft, &host_local].map(|ipam| {
        let tool = Cnitool::new(&cni_path);
        tool.write_conflist(&json!({
            "cniVersion": "1.0.0", "name": net, "plugins": [ipam.as_plugin()],
        }));
        tool
    });
    let n = Cell::new(0usize);
    let side = |ipam: &Ipam, tool: &Cnitool| -> Result<Vec<f64>> {
        n.set(n.get() + 1);
        let (add, add_u) = tool.run_measured("add", net, ns.path());
        let (del, del_u) = tool.run_measured("del", net, ns.path());
        ensure!(add.success(), "cnitool add:\n{}", add.describe());
        ensure!(del.success(), "cnitool del:\n{}", del.describe());
        result_addrs(&add.stdout)?;
        let id = format!("p1-{}", n.get());
        let (out, a) = run_measured(ipam.command("ADD", &id), &ipam.stdin, "IPAM ADD")?;
        result_addrs(&out)?;
        let (_, d) = run_measured(ipam.command("DEL", &id), &ipam.stdin, "IPAM DEL")?;
        ensure!(
            ipam.held()? == 0,
            "{}: DEL left a reservation",
            ipam.label()
        );
        Ok(vec![
            ms(add_u.wall + del_u.wall),
            ms(a.wall + d.wall),
            a.max_rss_kib.max(d.max_rss_kib) as f64 / 1024.0,
        ])
    };
    let mut table = bench::alternate(
        "P1-exec",
        (weft.label(), host_local.label()),
        &EXEC_FIGURES,
        opts.pairs,
        || side(&weft, &tools[0]),
        || side(&host_local, &tools[1]),
    )?;
    table.notes = vec![
        format!(
            "each run: cnitool add+del (conflist = the IPAM alone, {SUBNET_EXEC}), then the IPAM \
             exec'd directly for ADD and DEL with a bridge-style config; RSS = max of the two"
        ),
        "the cnitool figure includes the Go cnitool process itself on both sides".into(),
    ];
    Ok(vec![table])
}

// ---- P2-node -----------------------------------------------------------------------------

pub struct NodeOpts {
    pub ipam: BenchOpts,
    /// Concurrent ADDs (then DELs) per run.
    pub pods: usize,
}

const NODE_FIGURES: [Figure; 3] = [
    Figure {
        key: "add-time",
        title: "concurrent ADDs",
        unit: "ms",
    },
    Figure {
        key: "del-time",
        title: "concurrent DELs",
        unit: "ms",
    },
    Figure {
        key: "total-time",
        title: "ADDs + DELs",
        unit: "ms",
    },
];

/// P2-node: `pods` ADDs released at once on one range, then `pods` DELs at once.
pub fn run_node(opts: &NodeOpts) -> Result<Vec<Table>> {
    let pods = opts.pods;
    ensure!(
        (1..=500).contains(&pods),
        "--pods must be 1..=500 (the /23 holds 509)"
    );
    let net = "wb-ipam-node";
    let weft = Ipam::weft(&opts.ipam.bin_dir, net, SUBNET_NODE)?;
    let host_local = Ipam::host_local(net, SUBNET_NODE)?;
    let run = Cell::new(0usize);
    // Addresses handed out and duplicates among them, per side (A, B), over every run.
    let adds = [Cell::new(0usize), Cell::new(0usize)];
    let dups = [Cell::new(0usize), Cell::new(0usize)];
    let side = |ipam: &Ipam, i: usize| -> Result<Vec<f64>> {
        run.set(run.get() + 1);
        let r = run.get();
        let id = |k: usize| format!("p2n-{r}-{k}");
        let (added, add_time) = concurrent(pods, &ipam.stdin, EXEC_LIMIT, |k| {
            ipam.command("ADD", &id(k))
        })?;
        all_ok(&added, "concurrent ADDs")?;
        let mut addrs = Vec::new();
        for t in &added {
            addrs.extend(result_addrs(&t.stdout)?);
        }
        adds[i].set(adds[i].get() + addrs.len());
        dups[i].set(dups[i].get() + duplicates(&addrs));
        let (deleted, del_time) = concurrent(pods, &ipam.stdin, EXEC_LIMIT, |k| {
            ipam.command("DEL", &id(k))
        })?;
        all_ok(&deleted, "concurrent DELs")?;
        ensure!(
            dups[i].get() == 0,
            "{}: {} duplicate addresses among {} handed out",
            ipam.label(),
            dups[i].get(),
            adds[i].get()
        );
        let left = ipam.held()?;
        ensure!(left == 0, "{}: {left} reservations left", ipam.label());
        Ok(vec![ms(add_time), ms(del_time), ms(add_time + del_time)])
    };
    let mut table = bench::alternate(
        "P2-node",
        (weft.label(), host_local.label()),
        &NODE_FIGURES,
        opts.ipam.pairs,
        || side(&weft, 0),
        || side(&host_local, 1),
    )?;
    table.notes = vec![
        format!(
            "each run: {pods} IPAM processes released at once on {SUBNET_NODE}, then {pods} DELs; \
             time = release to last exit"
        ),
        format!(
            "duplicates: A {} of {} addresses, B {} of {} (warm-ups included); store empty \
             after every run",
            dups[0].get(),
            adds[0].get(),
            dups[1].get(),
            adds[1].get()
        ),
    ];
    Ok(vec![table])
}

// ---- P4-scale ----------------------------------------------------------------------------

pub struct ScaleOpts {
    pub ipam: BenchOpts,
    /// Reservations already in the store on the A side (B holds `base`).
    pub held: usize,
    pub base: usize,
}

// The two P4 figures: DEL and ADD latency.
const SCALE_FIGURES: [Figure; 2] = [
    Figure {
        key: "del-time",
        title: "DEL latency",
        unit: "ms",
    },
    Figure {
        key: "add-time",
        title: "ADD latency",
        unit: "ms",
    },
];

/// One pod ADD (measured) and its DEL (measured) against a store holding `ipam.held()`
/// reservations; the store is back to where it was afterwards.
fn probe(ipam: &Ipam, id: &str) -> Result<Vec<f64>> {
    let (out, a) = run_measured(ipam.command("ADD", id), &ipam.stdin, "IPAM ADD")?;
    result_addrs(&out)?;
    let (_, d) = run_measured(ipam.command("DEL", id), &ipam.stdin, "IPAM DEL")?;
    Ok(vec![ms(d.wall), ms(a.wall)])
}

/// P4-scale: ADD and DEL latency with `held` reservations in the store vs `base`, weft-ipam
/// against itself; host-local's own ratios alongside for comparison.
pub fn run_scale(opts: &ScaleOpts) -> Result<Vec<Table>> {
    ensure!(
        opts.base < opts.held && opts.held <= 60_000,
        "need --base < --held <= 60,000 ({SUBNET_SCALE} holds 65,533)"
    );
    let net = "wb-ipam-scale";
    let mut tables = Vec::new();
    // host-local first, so the last summary line is weft-ipam's.
    for kind in [Kind::HostLocal, Kind::Weft] {
        let make = || match kind {
            Kind::Weft => Ipam::weft(&opts.ipam.bin_dir, net, SUBNET_SCALE),
            Kind::HostLocal => Ipam::host_local(net, SUBNET_SCALE),
        };
        let (large, small) = (make()?, make()?);
        eprintln!(
            "{}: filling stores with {} and {} reservations",
            large.label(),
            opts.held,
            opts.base
        );
        fill(&large, opts.held, "held")?;
        fill(&small, opts.base, "held")?;
        let n = Cell::new(0usize);
        let next = || {
            n.set(n.get() + 1);
            format!("probe-{}", n.get())
        };
        let (a_label, b_label) = (
            format!("{} with {} reservations", large.label(), opts.held),
            format!("{} with {} reservations", small.label(), opts.base),
        );
        let name = match kind {
            Kind::Weft => "P4-scale",
            Kind::HostLocal => "P4-scale-host-local",
        };
        let mut table = bench::alternate(
            name,
            (&a_label, &b_label),
            &SCALE_FIGURES,
            opts.ipam.pairs,
            || probe(&large, &next()),
            || probe(&small, &next()),
        )?;
        ensure!(
            (large.held()?, small.held()?) == (opts.held, opts.base),
            "{}: a probe's DEL did not restore the store",
            large.label()
        );
        table.notes =
            vec!["each run: one ADD exec'd directly (measured), then its DEL (measured)".into()];
        tables.push(table);
    }
    Ok(tables)
}

// ---- P2-cluster ----------------------------------------------------------------------------

/// One cluster shape: `nodes` simulated nodes × `pods` pods each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub nodes: usize,
    pub pods: usize,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shape, String> {
        let (n, p) = s.split_once('x').ok_or("expected NODESxPODS, e.g. 64x64")?;
        let num = |t: &str| t.parse::<usize>().ok().filter(|v| *v > 0);
        match (num(n), num(p)) {
            (Some(nodes), Some(pods)) => Ok(Shape { nodes, pods }),
            _ => Err(format!("{s:?}: expected NODESxPODS with both at least 1")),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.nodes, self.pods)
    }
}

pub struct ClusterOpts {
    pub ipam: BenchOpts,
    pub shapes: Vec<Shape>,
    /// Execs in flight on one simulated node at most (a kubelet's bounded pod workers).
    pub workers: usize,
    /// Execs in flight in the whole cluster at most, so the machine's cores are not what is
    /// measured.
    pub max_procs: usize,
    /// Fresh network (key space) every run: every node claims its blocks in every run. Else
    /// (warm) one network for all runs: the warm-up claims them, measured runs reuse them.
    pub cold: bool,
    pub warm: bool,
    /// Blocks already claimed (by other nodes) before a fresh node claims one: the scale curve.
    pub seeded: Vec<usize>,
    /// Where etcd keeps its data (default: the system temp dir; a tmpfs takes etcd's fsyncs out).
    pub etcd_dir: Option<PathBuf>,
    /// weft-ipam's bound on one verb against etcd (`store.timeout_ms`).
    pub timeout: Duration,
}

/// The cluster subnet: room for 1,024 /26 blocks, so a few thousand pods never exhaust it.
const SUBNET_CLUSTER: &str = "10.245.0.0/16";
/// The scale curve's subnet: 16,384 /26 blocks, room for 10,000 seeded ones and the probes.
const SUBNET_SEEDED: &str = "10.64.0.0/12";
const ETCD_PREFIX: &str = "/weft-bench";

/// Every KV request etcd served (Range, Txn, Put, DeleteRange, Compact), on every member: one
/// per client round trip, counted by the server itself.
fn etcd_requests(cluster: &EtcdCluster) -> Result<f64> {
    cluster.counter(
        "grpc_server_handled_total",
        &["grpc_service=\"etcdserverpb.KV\""],
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Which store a cluster run uses, and how one node's verb is exec'd against it.
enum ClusterStore<'a> {
    /// Each node its own file store: the reference (no cluster-wide state at all).
    File { bin_dir: &'a Path },
    /// One etcd store config; nodes differ only in `NODENAME`, their local state under `dir`.
    Etcd {
        bin: PathBuf,
        cluster: &'a EtcdCluster,
        dir: &'a Path,
        timeout: Duration,
    },
}

/// One network of a cluster run: per node, the IPAM to exec (file store: one per node).
struct ClusterNet {
    per_node: Vec<Ipam>,
    etcd: bool,
}

impl ClusterStore<'_> {
    fn label(&self) -> &'static str {
        match self {
            ClusterStore::File { .. } => "weft-ipam file store, one per node",
            ClusterStore::Etcd { .. } => "weft-ipam etcd store, 3-member etcd on loopback",
        }
    }

    fn network(&self, net: &str, nodes: usize, subnet: &str) -> Result<ClusterNet> {
        Ok(match self {
            ClusterStore::File { bin_dir } => ClusterNet {
                per_node: (0..nodes)
                    .map(|_| Ipam::weft(bin_dir, net, subnet))
                    .collect::<Result<_>>()?,
                etcd: false,
            },
            ClusterStore::Etcd {
                bin,
                cluster,
                dir,
                timeout,
            } => {
                let ipam = Ipam::new(
                    Kind::Weft,
                    bin.clone(),
                    net,
                    json!({
                        "type": "weft-ipam",
                        "range": subnet,
                        "store": {"type": "etcd", "endpoints": cluster.endpoints(),
                                  "prefix": ETCD_PREFIX, "timeout_ms": timeout.as_millis() as u64,
                                  "dir": dir},
                    }),
                    None,
                );
                ClusterNet {
                    per_node: vec![ipam],
                    etcd: true,
                }
            }
        })
    }
}

impl ClusterNet {
    fn ipam(&self, node: usize) -> &Ipam {
        &self.per_node[if self.etcd { 0 } else { node }]
    }

    fn command(&self, node: usize, verb: &str, id: &str) -> Command {
        let mut cmd = self.ipam(node).command(verb, id);
        cmd.env("NODENAME", format!("node-{node}"));
        cmd
    }

    /// GC of `node` with no valid attachments: frees everything, and the etcd store then
    /// releases the node's empty blocks.
    fn gc(&self, node: usize) -> Result<()> {
        let ipam = self.ipam(node);
        let stdin = serde_json::to_vec(&json!({
            "cniVersion": "1.1.0", "name": ipam.network, "type": ipam.section["type"],
            "ipam": ipam.section, "cni.dev/valid-attachments": [],
        }))?;
        let mut cmd = Command::new(&ipam.bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", ipam.bin.parent().unwrap_or(Path::new("/")))
            .env("NODENAME", format!("node-{node}"));
        run_measured(cmd, &stdin, "IPAM GC")?;
        Ok(())
    }
}

/// Runs `verb` for every (node, pod) with at most `workers` execs per node and `max_procs` in
/// the whole cluster in flight; pods are taken round-robin over the nodes. Returns each
/// outcome with its node, in completion order.
fn cluster_phase(
    net: &ClusterNet,
    shape: Shape,
    verb: &str,
    ids: &(dyn Fn(usize, usize) -> String + Sync),
    workers: usize,
    max_procs: usize,
    limit: Duration,
) -> Result<Vec<(usize, Timed)>> {
    use std::collections::VecDeque;
    use std::sync::{Condvar, Mutex};
    let queue: VecDeque<(usize, usize)> = (0..shape.pods)
        .flat_map(|p| (0..shape.nodes).map(move |n| (n, p)))
        .collect();
    // The tasks not started yet, and each node's execs in flight.
    let state = Mutex::new((queue, vec![0usize; shape.nodes]));
    let changed = Condvar::new();
    let done = Mutex::new(Vec::with_capacity(shape.nodes * shape.pods));
    let stdin = |node: usize| &net.ipam(node).stdin;
    thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..max_procs {
            handles.push(s.spawn(|| -> Result<()> {
                loop {
                    let (node, pod) = {
                        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            let (queue, inflight) = &mut *st;
                            if queue.is_empty() {
                                return Ok(());
                            }
                            if let Some(i) = queue.iter().position(|(n, _)| inflight[*n] < workers)
                            {
                                let task = queue.remove(i).expect("index from position");
                                inflight[task.0] += 1;
                                break task;
                            }
                            st = changed.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let outcome = check_stop().and_then(|()| {
                        exec_bounded(
                            &mut net.command(node, verb, &ids(node, pod)),
                            stdin(node),
                            limit,
                        )
                    });
                    state.lock().unwrap_or_else(|e| e.into_inner()).1[node] -= 1;
                    changed.notify_all();
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((node, outcome?));
                }
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow!("cluster worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(done.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Sanity counters of a side over all its runs (warm-up included).
#[derive(Default)]
struct ClusterTally {
    adds: Cell<usize>,
    duplicates: Cell<usize>,
    etcd_requests: Cell<f64>,
}

/// One run of `shape` on network `net`: every ADD (measured: p50, p99 of the exec's wall time),
/// duplicate check (across all nodes for the etcd store, where addresses are cluster-wide; per
/// node for the file store, whose nodes are independent), then every DEL (not measured).
fn cluster_run(
    net: &ClusterNet,
    shape: Shape,
    opts: &ClusterOpts,
    cluster: &EtcdCluster,
    tally: &ClusterTally,
    run: usize,
) -> Result<Vec<f64>> {
    let limit = opts.timeout + Duration::from_secs(15);
    let ids = move |node: usize, pod: usize| format!("p2c-{run}-{node}-{pod}");
    let before = etcd_requests(cluster)?;
    let adds = cluster_phase(net, shape, "ADD", &ids, opts.workers, opts.max_procs, limit)?;
    let requests = etcd_requests(cluster)? - before;
    let mut per_node: Vec<Vec<IpAddr>> = vec![Vec::new(); shape.nodes];
    let mut lat = Vec::with_capacity(adds.len());
    for (node, t) in &adds {
        ensure!(t.ok, "ADD on node-{node} {}", t.describe());
        per_node[*node].extend(result_addrs(&t.stdout)?);
        lat.push(ms(t.wall));
    }
    let dups = if net.etcd {
        duplicates(&per_node.concat())
    } else {
        per_node.iter().map(|a| duplicates(a)).sum()
    };
    tally.adds.set(tally.adds.get() + adds.len());
    tally.duplicates.set(tally.duplicates.get() + dups);
    tally
        .etcd_requests
        .set(tally.etcd_requests.get() + requests);
    ensure!(
        dups == 0,
        "{dups} DUPLICATE addresses among {} ADDs",
        adds.len()
    );
    let dels = cluster_phase(net, shape, "DEL", &ids, opts.workers, opts.max_procs, limit)?;
    if let Some((node, t)) = dels.iter().find(|(_, t)| !t.ok) {
        bail!("DEL on node-{node} {}", t.describe());
    }
    lat.sort_by(f64::total_cmp);
    Ok(vec![percentile(&lat, 0.5), percentile(&lat, 0.99)])
}

const CLUSTER_FIGURES: [Figure; 2] = [
    Figure {
        key: "add-p50",
        title: "ADD p50",
        unit: "ms",
    },
    Figure {
        key: "add-p99",
        title: "ADD p99",
        unit: "ms",
    },
];

/// P2-cluster: the same workload against the etcd store (A) and per-node file stores (B),
/// alternating, per shape and scenario (cold: every node claims its blocks in every run; warm:
/// blocks held from the warm-up run); then the block-claim scale curve.
pub fn run_cluster(opts: &ClusterOpts) -> Result<Vec<Table>> {
    ensure!(
        opts.workers >= 1 && opts.max_procs >= 1,
        "--workers and --max-procs must be at least 1"
    );
    for shape in &opts.shapes {
        ensure!(
            shape.nodes * shape.pods <= 20_000 && shape.pods <= 4_000,
            "{shape}: at most 20,000 pods, 4,000 per node ({SUBNET_CLUSTER})"
        );
    }
    let bin = weft_ipam(&opts.ipam.bin_dir)?;
    let etcd_parent = opts.etcd_dir.clone().unwrap_or_else(std::env::temp_dir);
    eprintln!(
        "starting a 3-member etcd on loopback, data in {}",
        etcd_parent.display()
    );
    let cluster = EtcdCluster::start_in(&etcd_parent)?;
    let local = TempDir::with_prefix("weft-bench-etcd-nodes-").context("node dirs")?;
    let etcd = ClusterStore::Etcd {
        bin,
        cluster: &cluster,
        dir: local.path(),
        timeout: opts.timeout,
    };
    let file = ClusterStore::File {
        bin_dir: &opts.ipam.bin_dir,
    };
    let on_disk = describe_fs(&etcd_parent);
    let mut tables = Vec::new();
    for shape in &opts.shapes {
        for (cold, wanted) in [(true, opts.cold), (false, opts.warm)] {
            if !wanted {
                continue;
            }
            let scenario = if cold { "cold" } else { "warm" };
            eprintln!("P2-cluster {shape} {scenario}");
            let run = Cell::new(0usize);
            let tallies = [ClusterTally::default(), ClusterTally::default()];
            // Warm: one network per side for every run. Cold: a fresh one per run.
            let fixed = [
                etcd.network(&format!("p2c-{shape}-warm"), shape.nodes, SUBNET_CLUSTER)?,
                file.network(&format!("p2c-{shape}-warm"), shape.nodes, SUBNET_CLUSTER)?,
            ];
            let side = |i: usize, store: &ClusterStore<'_>| -> Result<Vec<f64>> {
                run.set(run.get() + 1);
                let r = run.get();
                if cold {
                    let net =
                        store.network(&format!("p2c-{shape}-{r}"), shape.nodes, SUBNET_CLUSTER)?;
                    cluster_run(&net, *shape, opts, &cluster, &tallies[i], r)
                } else {
                    cluster_run(&fixed[i], *shape, opts, &cluster, &tallies[i], r)
                }
            };
            let mut table = bench::alternate(
                &format!("P2-cluster-{shape}-{scenario}"),
                (etcd.label(), file.label()),
                &CLUSTER_FIGURES,
                opts.ipam.pairs,
                || side(0, &etcd),
                || side(1, &file),
            )?;
            let [a, b] = &tallies;
            table.notes = vec![
                format!(
                    "each run: {} nodes x {} pods, ADDs then DELs, at most {} execs per node and {} \
                     in the cluster in flight; latency = one ADD exec's wall time",
                    shape.nodes, shape.pods, opts.workers, opts.max_procs
                ),
                if cold {
                    "cold: a fresh network every run, so every node claims its blocks in every run".into()
                } else {
                    "warm: one network for all runs; the warm-up run claims the blocks, the measured runs reuse them".into()
                },
                format!(
                    "etcd round trips per ADD (KV requests served by etcd, all members, / ADDs): {:.3} \
                     ({} requests for {} ADDs, warm-up included); B: none",
                    a.etcd_requests.get() / a.adds.get().max(1) as f64,
                    a.etcd_requests.get(),
                    a.adds.get()
                ),
                format!(
                    "duplicates: A {} of {} (across all nodes), B {} of {} (per node); etcd data on {on_disk}",
                    a.duplicates.get(),
                    a.adds.get(),
                    b.duplicates.get(),
                    b.adds.get()
                ),
            ];
            tables.push(table);
            if !cold {
                for node in 0..shape.nodes {
                    fixed[0].gc(node)?;
                }
            }
        }
    }
    tables.extend(claim_curve(opts, &etcd, &cluster)?);
    Ok(tables)
}

/// The filesystem type under `dir`, for the notes (`tmpfs`, `ext4`, ...).
fn describe_fs(dir: &Path) -> String {
    use nix::sys::statfs::{statfs, EXT4_SUPER_MAGIC, TMPFS_MAGIC};
    let kind = match statfs(dir).map(|s| s.filesystem_type()) {
        Ok(t) if t == TMPFS_MAGIC => "tmpfs".to_owned(),
        Ok(t) if t == EXT4_SUPER_MAGIC => "ext4 (disk)".to_owned(),
        Ok(t) => format!("{t:?}"),
        Err(e) => format!("unknown ({e})"),
    };
    format!("{kind}, {}", dir.display())
}

const CLAIM_FIGURES: [Figure; 2] = [
    Figure {
        key: "time",
        title: "ADD that claims a block",
        unit: "ms",
    },
    Figure {
        key: "requests",
        title: "etcd KV requests",
        unit: "",
    },
];

/// The block-claim scale curve: the ADD of a fresh node (which must claim a block) with
/// `opts.seeded[k]` blocks already claimed by other nodes, each against the smallest level.
/// Seeded keys are written in the store's format (`<prefix>/<network>/blocks/4-<start as 8 hex
/// digits>` = `{"node":…,"prefix":26}`, ipam/README.md), lowest blocks first: the fresh node
/// lists them all and claims the first free one after them. After each probe the node's DEL
/// and GC release the block again, so the level stays what it was.
fn claim_curve(
    opts: &ClusterOpts,
    etcd: &ClusterStore<'_>,
    cluster: &EtcdCluster,
) -> Result<Vec<Table>> {
    let mut levels = opts.seeded.clone();
    levels.sort_unstable();
    levels.dedup();
    if levels.len() < 2 {
        return Ok(Vec::new());
    }
    let base: u32 = "10.64.0.0".parse::<std::net::Ipv4Addr>()?.into();
    let mut nets = Vec::new();
    for &n in &levels {
        ensure!(n <= 16_000, "--seeded at most 16,000 ({SUBNET_SEEDED})");
        let name = format!("p2c-seeded-{n}");
        eprintln!("seeding {n} claimed blocks under {ETCD_PREFIX}/{name}/blocks/");
        let kvs: Vec<(String, String)> = (0..n as u32)
            .map(|i| {
                (
                    format!("{ETCD_PREFIX}/{name}/blocks/4-{:08x}", base + i * 64),
                    format!("{{\"node\":\"seed-{i}\",\"prefix\":26}}"),
                )
            })
            .collect();
        cluster.put_many(&kvs)?;
        nets.push((n, etcd.network(&name, 1, SUBNET_SEEDED)?));
    }
    let probes = Cell::new(0usize);
    let probe = |net: &ClusterNet| -> Result<Vec<f64>> {
        probes.set(probes.get() + 1);
        let id = format!("claim-{}", probes.get());
        let before = etcd_requests(cluster)?;
        let t = exec_bounded(
            &mut net.command(0, "ADD", &id),
            &net.ipam(0).stdin,
            opts.timeout + Duration::from_secs(15),
        )?;
        let requests = etcd_requests(cluster)? - before;
        ensure!(t.ok, "claiming ADD {}", t.describe());
        result_addrs(&t.stdout)?;
        let (out, _) = run_measured(net.command(0, "DEL", &id), &net.ipam(0).stdin, "IPAM DEL")?;
        drop(out);
        net.gc(0)?;
        Ok(vec![ms(t.wall), requests])
    };
    let (low, low_net) = &nets[0];
    let mut tables = Vec::new();
    for (n, net) in &nets[1..] {
        let mut t = bench::alternate(
            &format!("P2-cluster-claim-{n}"),
            (
                &format!("claim with {n} blocks claimed"),
                &format!("claim with {low} blocks claimed"),
            ),
            &CLAIM_FIGURES,
            opts.ipam.pairs,
            || probe(net),
            || probe(low_net),
        )?;
        t.notes = vec![format!(
            "each run: ADD on a node holding no block (it lists every block key of {SUBNET_SEEDED} \
             and claims the first free /26), then its DEL and GC release the block again"
        )];
        tables.push(t);
    }
    Ok(tables)
}
