//! Quick same-node TCP throughput comparison: bridge path vs bridge + redirect fast path
//! (iperf3 between two pod netns, A/B alternating, median of the pairs). Not a test: it
//! prints figures and exits 0. The project's benchmarks proper live in integration/.
//!
//! Run as root: `cargo run --release -p bpf --example fastpath_bench [pairs] [seconds]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};

use bpf::{Endpoint, Maps, Mode};
use common::*;

fn iperf(t: &Topology, secs: &str) -> f64 {
    let mut server: Child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.b.ns.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &t.b.v4.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out =
        t.a.ns
            .exec(&["iperf3", "-J", "-c", &t.b.v4.to_string(), "-t", secs]);
    let _ = server.wait();
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    js["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bps")
        / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(5);
    let secs = args.next().unwrap_or_else(|| "3".into());
    let id = unique_id();
    let pins = TestPins::new(&id);
    let t = Topology::bridge(&id, 79);
    let mut maps = Maps::open_or_create(&pins.root).unwrap();
    for p in [&t.a, &t.b] {
        let ep = Endpoint::new(p.host_ifindex, p.mac, p.host_mac, false, 0);
        maps.endpoints.insert(p.v4, &ep).unwrap();
    }
    let (mut bridge, mut fast) = (vec![], vec![]);
    for _ in 0..pairs {
        bridge.push(iperf(&t, &secs));
        let atts = t.node.in_ns(|| {
            [(&t.a, "bench-a"), (&t.b, "bench-b")]
                .map(|(p, k)| maps.attach(&p.host_if, Mode::Tcx, k).unwrap())
        });
        fast.push(iperf(&t, &secs));
        t.node.in_ns(|| {
            atts.iter()
                .for_each(|a| bpf::detach(&pins.root, a).unwrap())
        });
    }
    // Ratio per A/B pair, then the median (BENCHMARKS.md): drift between pairs cancels.
    let ratios: Vec<f64> = fast.iter().zip(&bridge).map(|(f, b)| f / b).collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    println!("bridge     Gbit/s: {bridge:.2?}");
    println!("fast path  Gbit/s: {fast:.2?}");
    println!(
        "P3-fast-throughput (quick): ratio={:.2} [min {lo:.2}, max {hi:.2}] (A={:.2} Gbit/s, B={:.2} Gbit/s)",
        median(ratios.clone()),
        median(fast),
        median(bridge)
    );
}
