//! weft-bench: benchmarks that compare weft against the reference plugins (BENCHMARKS.md).
//! One subcommand per suite; each prints a table and ends with `name: ratio=… (A=…, B=…)` lines.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use integration::bench::suites::{chain, exec, fastpath, ipam, sriov};
use integration::bench::{self, BenchOpts};

#[derive(Parser)]
#[command(about = "weft benchmarks: A (weft) vs B (reference), alternating, ratios of medians")]
struct Cli {
    /// Directory of our built binaries [default: $WEFT_BIN_DIR, else those built with this
    /// weft-bench: target/<host tuple>/release for a release weft-bench]
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Measured A/B pairs, at least 5 [default: 20; 7 for fast and limit, whose runs last
    /// seconds]
    #[arg(long, global = true)]
    pairs: Option<usize>,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Whole-process cost: VERSION and pass-through ADD, kmesh-cni vs tuning (Go)
    Exec,
    /// P1-vf: VF attach ADD+DEL as whole processes, weft-sriov vs host-device (Go), moving the
    /// same veth stand-in (no SR-IOV here); without IPAM and with host-local
    #[command(alias = "p1-vf")]
    Vf,
    /// P1-chain: extra ADD+DEL cost of bridge + kmesh-cni over bridge, vs bridge + tuning (Go)
    #[command(alias = "p1-chain")]
    Chain,
    /// P3-fast: pod-to-pod throughput and latency, kmesh-cni fast path vs bridge alone, without
    /// and with kube-proxy-sized iptables rule sets
    #[command(alias = "p3-fast")]
    Fast {
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Rules in the KUBE-SERVICES-like chain of the second scenario (0 skips it)
        #[arg(long, default_value_t = 2000)]
        rules: usize,
    },
    /// P3-limit: pod-to-pod throughput and latency, kmesh-cni fast path vs a bare veth pair
    #[command(alias = "p3-limit")]
    Limit {
        #[command(flatten)]
        traffic: TrafficArgs,
    },
    /// P1-exec: one IPAM ADD+DEL as whole processes (cnitool wall time; the IPAM's own wall time
    /// and peak RSS), weft-ipam (file store) vs host-local (Go)
    #[command(alias = "p1-exec")]
    IpamExec,
    /// P2-node: N concurrent ADDs then N DELs on one /23, weft-ipam vs host-local; duplicates
    #[command(alias = "p2-node")]
    IpamNode {
        /// Concurrent ADDs (then DELs) per run [pairs default: 5]
        #[arg(long, default_value_t = 256)]
        pods: usize,
    },
    /// P4-scale: ADD and DEL latency with 1,000 reservations held vs 10, weft-ipam vs itself
    /// (and host-local vs itself for comparison)
    #[command(alias = "p4-scale")]
    IpamScale {
        /// Reservations in the measured store (one /16: at most 60,000)
        #[arg(long, default_value_t = 1000)]
        held: usize,
        /// Reservations in the reference store
        #[arg(long, default_value_t = 10)]
        base: usize,
    },
    /// P2-cluster: N simulated nodes x M pods (bounded concurrency per node and in the
    /// cluster), weft-ipam's etcd store (3-member etcd on loopback) vs its file store (one per
    /// node), ADD p50/p99, etcd round trips per ADD, duplicates; then block-claim latency with
    /// 10 / 1,000 / 10,000 blocks already claimed [pairs default: 5]
    #[command(alias = "p2-cluster")]
    IpamCluster {
        /// NODESxPODS, repeatable
        #[arg(long = "shape", default_values_t = ["64x64".parse::<ipam::Shape>().unwrap(), "8x512".parse().unwrap()])]
        shapes: Vec<ipam::Shape>,
        /// Execs in flight per node at most (a kubelet's pod workers)
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Execs in flight in the whole cluster at most [default: the number of CPUs]
        #[arg(long)]
        max_procs: Option<usize>,
        /// cold: a fresh network every run (every node claims its blocks each run); warm: the
        /// blocks claimed by the warm-up run are reused
        #[arg(long, value_enum, default_value = "both")]
        scenario: Scenario,
        /// Block-claim scale curve: blocks claimed before a fresh node claims one (the
        /// smallest is the reference; fewer than two levels skips the curve)
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        seeded: Vec<usize>,
        /// Parent directory of etcd's data [default: the system temp dir]; a tmpfs such as
        /// /dev/shm takes etcd's own fsyncs out of the figures
        #[arg(long)]
        etcd_dir: Option<PathBuf>,
        /// weft-ipam's bound on one verb against etcd (store.timeout_ms); the harness kills a
        /// process 15 s after it
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scenario {
    Cold,
    Warm,
    Both,
}

#[derive(clap::Args)]
struct TrafficArgs {
    /// Seconds of each iperf3 and each sockperf run
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin_dir = cli.bin_dir.unwrap_or_else(integration::plugins::bin_dir);
    eprintln!("weft binaries from {}", bin_dir.display());
    integration::proc::install_stop_on_signal();
    let cnitool = integration::plugins::cnitool();
    let settled = bench::settle_page_cache(
        &[&bin_dir, std::path::Path::new("/usr/lib/cni")],
        &[&cnitool],
    );
    eprintln!(
        "page cache: {settled} binaries dropped, read back by their first exec (as after a reboot)"
    );
    let opts = |default_pairs: usize| BenchOpts {
        bin_dir: bin_dir.clone(),
        pairs: cli.pairs.unwrap_or(default_pairs),
    };
    let traffic = |traffic: TrafficArgs, rules: usize| fastpath::TrafficOpts {
        bench: opts(7),
        seconds: traffic.seconds,
        rules,
    };
    let report = match cli.suite {
        Suite::Exec => bench::render("weft-bench exec", &exec::run(&opts(20))?),
        Suite::Vf => bench::render("weft-bench vf", &sriov::run(&opts(20))?),
        Suite::Chain => bench::render("weft-bench chain", &chain::run(&opts(20))?),
        Suite::Fast { traffic: t, rules } => {
            bench::render("weft-bench fast", &fastpath::run_fast(&traffic(t, rules))?)
        }
        Suite::Limit { traffic: t } => {
            bench::render("weft-bench limit", &fastpath::run_limit(&traffic(t, 0))?)
        }
        Suite::IpamExec => bench::render("weft-bench ipam-exec", &ipam::run_exec(&opts(20))?),
        Suite::IpamNode { pods } => bench::render(
            "weft-bench ipam-node",
            &ipam::run_node(&ipam::NodeOpts {
                ipam: opts(5),
                pods,
            })?,
        ),
        Suite::IpamScale { held, base } => bench::render(
            "weft-bench ipam-scale",
            &ipam::run_scale(&ipam::ScaleOpts {
                ipam: opts(20),
                held,
                base,
            })?,
        ),
        Suite::IpamCluster {
            shapes,
            workers,
            max_procs,
            scenario,
            seeded,
            etcd_dir,
            timeout_ms,
        } => bench::render(
            "weft-bench ipam-cluster",
            &ipam::run_cluster(&ipam::ClusterOpts {
                ipam: opts(5),
                shapes,
                workers,
                max_procs: max_procs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                cold: matches!(scenario, Scenario::Cold | Scenario::Both),
                warm: matches!(scenario, Scenario::Warm | Scenario::Both),
                seeded,
                etcd_dir,
                timeout: std::time::Duration::from_millis(timeout_ms),
            })?,
        ),
    };
    print!("{report}");
    Ok(())
}
