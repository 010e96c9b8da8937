//! `weft-bench chain` (P1-chain): what chaining kmesh-cni after bridge costs a pod's ADD+DEL,
//! against what chaining the Go reference `tuning` plugin costs, both through libcni (cnitool)
//! in a real netns.
//!
//! Every pair runs bridge alone, bridge + kmesh-cni, bridge alone, bridge + tuning. The extra
//! cost of a side is its chain's ADD+DEL wall time minus the bridge-alone run just before it:
//! adjacent runs share the VM's momentary speed, so the difference keeps the plugin's own cost
//! and drops most of the drift. The figure is median(A extra) / median(B extra).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tempfile::TempDir;

use crate::bench::{self, BenchOpts, Figure, Table};
use crate::cni::{bridge_plugin, conflist, Cnitool};
use crate::fixtures::bpffs::Isolation;
use crate::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use crate::plugins::CniPath;

const SUBNET: &str = "10.210.0.0/24";
const NET_BRIDGE: &str = "wb-bridge";
const NET_KMESH: &str = "wb-kmesh";
const NET_TUNING: &str = "wb-tuning";

const FIGURES: [Figure; 3] = [
    Figure {
        key: "bridge-time",
        title: "bridge alone ADD+DEL",
        unit: "ms",
    },
    Figure {
        key: "chain-time",
        title: "chain ADD+DEL",
        unit: "ms",
    },
    Figure {
        key: "extra-time",
        title: "extra over bridge",
        unit: "ms",
    },
];

fn wall_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One cnitool ADD then DEL of `net`; the sum of both wall times in ms. The DEL runs even when
/// the ADD failed, so a broken run leaves nothing behind.
fn add_del(tool: &Cnitool, net: &str, ns: &TestNetns) -> Result<f64> {
    let (add, add_usage) = tool.run_measured("add", net, ns.path());
    let (del, del_usage) = tool.run_measured("del", net, ns.path());
    if !add.success() {
        bail!("cnitool add {net} failed:\n{}", add.describe());
    }
    if !del.success() {
        bail!("cnitool del {net} failed:\n{}", del.describe());
    }
    Ok(wall_ms(add_usage.wall) + wall_ms(del_usage.wall))
}

/// One ADD of the kmesh-cni chain must pin a link and write a record, and its DEL must remove
/// both: otherwise A would time a pass-through, not the fast path's attach and detach.
fn verify_attach(tool: &Cnitool, ns: &TestNetns, iso: &Isolation) -> Result<String> {
    let add = tool.add(NET_KMESH, ns.path());
    let attached = (iso.link_pins().len(), iso.records().len());
    let del = tool.del(NET_KMESH, ns.path());
    ensure!(
        add.success(),
        "cnitool add {NET_KMESH}:\n{}",
        add.describe()
    );
    ensure!(
        del.success(),
        "cnitool del {NET_KMESH}:\n{}",
        del.describe()
    );
    ensure!(
        attached == (1, 1),
        "kmesh-cni ADD left {} link pins and {} records (want 1 and 1): no fast path attached",
        attached.0,
        attached.1
    );
    let detached = (iso.link_pins().len(), iso.records().len());
    ensure!(
        detached == (0, 0),
        "kmesh-cni DEL left {} link pins and {} records",
        detached.0,
        detached.1
    );
    Ok(format!(
        "checked: kmesh-cni ADD pins 1 tcx/tc link under {} and records the pod; DEL removes both",
        iso.pin_root().display()
    ))
}

pub fn run(opts: &BenchOpts) -> Result<Vec<Table>> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "P1-chain needs root (netns)"
    );
    let kmesh = opts.bin_dir.join("kmesh-cni");
    ensure!(
        kmesh.is_file(),
        "{} not found (cargo build --release -p kmesh-cni)",
        kmesh.display()
    );

    // Declared in teardown order reversed: the netns goes first, the pin dir last.
    let iso = Isolation::tagged("bench-chain");
    let ipam = TempDir::with_prefix("weft-bench-ipam-").context("ipam dir")?;
    let cni_path = CniPath::with_bin_dir(&opts.bin_dir);
    let mut tool = Cnitool::new(&cni_path);
    tool.set_env("WEFT_STATE_DIR", iso.state_dir());
    let bridge = HostLink::adopt(&unique_ifname("wbbr"));
    let main = bridge_plugin(bridge.name(), SUBNET, ipam.path());
    let kmesh_plugin = json!({"type": "kmesh-cni", "mode": "auto", "pinRoot": iso.pin_root()});
    let tuning_plugin = json!({"type": "tuning"});
    tool.write_conflist(&conflist(NET_BRIDGE, std::slice::from_ref(&main)));
    tool.write_conflist(&conflist(NET_KMESH, &[main.clone(), kmesh_plugin]));
    tool.write_conflist(&conflist(NET_TUNING, &[main, tuning_plugin]));
    let ns = TestNetns::new("weft-bench-chain");

    let checked = verify_attach(&tool, &ns, &iso)?;
    let side = |chained: &str| -> Result<Vec<f64>> {
        let base = add_del(&tool, NET_BRIDGE, &ns)?;
        let chain = add_del(&tool, chained, &ns)?;
        Ok(vec![base, chain, chain - base])
    };
    let mut table = bench::alternate(
        "P1-chain",
        (
            "bridge + host-local, then + kmesh-cni (mode auto)",
            "bridge + host-local, then + tuning (Go reference, no settings)",
        ),
        &FIGURES,
        opts.pairs,
        || side(NET_KMESH),
        || side(NET_TUNING),
    )?;
    table.notes = vec![
        "each run: cnitool add + del in one netns; extra = chain run minus the bridge-alone run \
         just before it"
            .into(),
        checked,
    ];
    Ok(vec![table])
}
