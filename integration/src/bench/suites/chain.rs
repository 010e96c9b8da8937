//! `weft-bench chain` (P1-chain): what chaining kmesh-cni after bridge costs a pod's ADD+DEL,
//! against what chaining the Go reference `tuning` plugin costs, both through libcni (cnitool)
//! in a real netns.
//!
//! Every pair runs bridge alone, bridge + kmesh-cni, bridge alone, bridge + tuning. The extra
//! cost of a side is its chain's ADD+DEL wall time minus the bridge-alone run just before it:
//! adjacent runs share the VM's momentary speed, so the difference keeps the plugin's own cost
//! and drops most of the drift. The figure is median(A extra) / median(B extra).
//!
//! The kernel's floor, in the same run (issue 12): `weft-attach-floor` (bpf/src/bin) is the
//! smallest program that does kmesh-cni's kernel work on a pod's veth, attaching and detaching
//! the same pinned program in the same mode and nothing else. A second table alternates
//! kmesh-cni with the floor, both timed around their own two execs after the same bridge-alone
//! ADD: kmesh-cni ADD and DEL exec'd as libcni would (with the bridge's result as prevResult)
//! against one floor exec attaching to the pod's host veth and one detaching.
//!
//! The third table (P1-chain-direct) is the first one's question without its noise: kmesh-cni
//! and tuning exec'd the same way, each with the same bridge result, alternating. The chain
//! difference above subtracts two ~35 ms cnitool runs whose spread is larger than either
//! plugin's share.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tempfile::TempDir;

use crate::bench::{self, BenchOpts, Figure, Table};
use crate::cni::{bridge_plugin, conflist, Cnitool};
use crate::fixtures::bpffs::Isolation;
use crate::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use crate::plugins::{built_bin_dir, CniPath};
use crate::proc;

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

const FLOOR_FIGURES: [Figure; 1] = [Figure {
    key: "extra-time",
    title: "extra ADD+DEL",
    unit: "ms",
}];

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

/// One ADD of the kmesh-cni chain must attach the program and record the pod, and its DEL must
/// undo both: otherwise A would time a pass-through, not the fast path's attach and detach.
/// Returns the note to print and the attach mode kmesh-cni chose (`tc` or `tcx`).
fn verify_attach(tool: &Cnitool, ns: &TestNetns, iso: &Isolation) -> Result<(String, String)> {
    let add = tool.add(NET_KMESH, ns.path());
    let records = iso.record_values();
    let attached_here = records
        .first()
        .map(|r| (r["mode"].as_str().unwrap_or("").to_owned(), r.clone()));
    let attached = match &attached_here {
        Some((mode, r)) if mode == "tcx" => iso.link_pins().len() == 1 && r["state"] == "attached",
        Some((mode, r)) if mode == "tc" => {
            let veth = r["host_veth"].as_str().unwrap_or("");
            tc_filter_present(veth, bpf_tc_priority()) && r["state"] == "attached"
        }
        _ => false,
    };
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
    let Some((mode, _)) = attached_here.filter(|_| records.len() == 1 && attached) else {
        bail!("kmesh-cni ADD attached no fast path (records: {records:?})");
    };
    let left = (iso.link_pins().len(), iso.records().len());
    ensure!(
        left == (0, 0),
        "kmesh-cni DEL left {} link pins and {} records",
        left.0,
        left.1
    );
    Ok((
        format!(
            "checked: kmesh-cni ADD attaches in mode {mode} under {} and records the pod; DEL \
             removes both",
            iso.pin_root().display()
        ),
        mode,
    ))
}

/// kmesh-cni's tc filter priority (bpf::TC_PRIORITY, "WF"); this crate does not link bpf.
fn bpf_tc_priority() -> u32 {
    0x5746
}

/// `tc filter show dev <veth> ingress` lists a filter at `priority`.
fn tc_filter_present(veth: &str, priority: u32) -> bool {
    let out = proc::cmd("tc", &["-j", "filter", "show", "dev", veth, "ingress"]);
    out.success()
        && serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|f| f["pref"].as_u64() == Some(u64::from(priority)))
}

/// The host-side veth a bridge ADD created: the result's interface outside the sandbox that is
/// not the bridge.
fn host_veth(add_result: &serde_json::Value, bridge: &str) -> Result<String> {
    add_result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none() && i["name"] != bridge)
        .and_then(|i| i["name"].as_str())
        .map(str::to_owned)
        .context("bridge result names no host veth")
}

/// One pod of the floor table: bridge ADD through cnitool (not measured), `measure` with the
/// bridge's result (the execs it times, in ms), bridge DEL, which runs even when `measure`
/// failed so a broken run leaves nothing behind.
fn around_bridge_pod(
    tool: &Cnitool,
    ns: &TestNetns,
    measure: impl FnOnce(&serde_json::Value) -> Result<f64>,
) -> Result<f64> {
    let add = tool.add(NET_BRIDGE, ns.path());
    let result = if add.success() {
        measure(&add.json())
    } else {
        Err(anyhow::anyhow!(
            "cnitool add {NET_BRIDGE}:\n{}",
            add.describe()
        ))
    };
    let del = tool.del(NET_BRIDGE, ns.path());
    let total = result?;
    ensure!(
        del.success(),
        "cnitool del {NET_BRIDGE}:\n{}",
        del.describe()
    );
    Ok(total)
}

/// Execs `cmd` once per item of `runs` (its arguments and environment set by `prepare`), all
/// with `stdin`; each must succeed. Returns the wall time of all of them in ms.
fn timed_execs<'a>(
    what: &str,
    runs: &[&'a str],
    stdin: &[u8],
    mut prepare: impl FnMut(&'a str) -> std::process::Command,
) -> Result<f64> {
    let mut total = 0.0;
    for run in runs {
        let mut cmd = prepare(run);
        let (out, usage) = proc::run(&mut cmd, stdin).with_context(|| format!("exec {what}"))?;
        ensure!(out.success(), "{what} {run}:\n{}", out.describe());
        total += wall_ms(usage.wall);
    }
    Ok(total)
}

/// The kernel's floor for one pod: `weft-attach-floor attach` and `detach` on the host veth of
/// a bridge pod.
fn floor_run(
    tool: &Cnitool,
    ns: &TestNetns,
    floor: &std::path::Path,
    mode: &str,
    iso: &Isolation,
    bridge: &str,
) -> Result<f64> {
    around_bridge_pod(tool, ns, |result| {
        let veth = host_veth(result, bridge)?;
        timed_execs("weft-attach-floor", &["attach", "detach"], b"", |verb| {
            let mut cmd = std::process::Command::new(floor);
            cmd.args([verb, mode, iso.pin_root_str(), &veth]);
            cmd
        })
    })
}

/// A chained plugin's own share of one pod, timed as the floor is: `plugin` exec'd directly
/// for ADD and DEL after a bridge pod's ADD, with `conf` and the bridge's result as
/// `prevResult`, as libcni would exec it in `network`. The chained extra above also carries
/// libcni's per-plugin work and the run-to-run drift of two whole chains; this is the
/// like-for-like figure against the floor and against tuning.
fn direct_run(
    tool: &Cnitool,
    ns: &TestNetns,
    plugin: &std::path::Path,
    conf: &serde_json::Value,
    network: &str,
    cni_path: &CniPath,
    iso: &Isolation,
) -> Result<f64> {
    let what = plugin.display().to_string();
    around_bridge_pod(tool, ns, |result| {
        let mut conf = conf.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(network);
        conf["prevResult"] = result.clone();
        let stdin = serde_json::to_vec(&conf).expect("plain JSON");
        timed_execs(&what, &["ADD", "DEL"], &stdin, |verb| {
            let mut cmd = std::process::Command::new(plugin);
            cmd.env_clear()
                .env("CNI_COMMAND", verb)
                .env("CNI_CONTAINERID", "weft-bench-direct")
                .env("CNI_NETNS", ns.path())
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", cni_path.path())
                .env("WEFT_STATE_DIR", iso.state_dir());
            cmd
        })
    })
}

/// Pods run for the steps note of the floor table.
const STEP_PODS: usize = 20;

/// Where kmesh-cni's share of a pod goes, step by step: `STEP_PODS` pods run as in
/// [`direct_run`] with `logLevel: debug` (not timed: logging costs time), and the median of each
/// step every ADD and DEL logged (kmesh-cni's `steps` module), in the order they ran.
fn kmesh_steps(
    tool: &Cnitool,
    ns: &TestNetns,
    kmesh: &std::path::Path,
    plugin: &serde_json::Value,
    cni_path: &CniPath,
    iso: &Isolation,
) -> Result<String> {
    let logs = TempDir::with_prefix("weft-bench-steps-").context("log dir")?;
    let log = logs.path().join("kmesh-cni.log");
    let mut conf = plugin.clone();
    conf["logLevel"] = json!("debug");
    conf["logFile"] = json!(log);
    for _ in 0..STEP_PODS {
        direct_run(tool, ns, kmesh, &conf, NET_KMESH, cni_path, iso)?;
    }
    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let mut out = Vec::new();
    for verb in ["ADD", "DEL"] {
        let steps = step_medians(&text, verb);
        ensure!(
            !steps.is_empty(),
            "kmesh-cni logged no steps for {verb}:\n{text}"
        );
        let total: u64 = steps.iter().map(|(_, us)| us).sum();
        let list: Vec<String> = steps.iter().map(|(n, us)| format!("{n} {us}")).collect();
        out.push(format!("{verb} {} (sum {total})", list.join(" · ")));
    }
    Ok(format!(
        "kmesh-cni's own steps, median µs of {STEP_PODS} pods logged at debug level (after \
         stdin is parsed; untimed pass): {}",
        out.join("; ")
    ))
}

/// The median of each step in the `time per step` lines of `verb`, in first-seen order. A line
/// reads `... time per step verb="ADD" steps=config=75 features=32 ...` (kmesh-cni's `steps`).
fn step_medians(log: &str, verb: &str) -> Vec<(String, u64)> {
    let verb_field = format!("verb=\"{verb}\" steps=");
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    for line in log.lines().filter(|l| l.contains("time per step")) {
        let Some((_, steps)) = line.split_once(&verb_field) else {
            continue;
        };
        for (name, us) in steps.split_whitespace().filter_map(|p| p.split_once('=')) {
            let Ok(us) = us.parse::<f64>() else {
                continue;
            };
            match samples.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(us),
                None => samples.push((name.to_owned(), vec![us])),
            }
        }
    }
    samples
        .into_iter()
        .map(|(name, v)| (name, bench::Stats::of(&v).median.round() as u64))
        .collect()
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
    tool.write_conflist(&conflist(NET_KMESH, &[main.clone(), kmesh_plugin.clone()]));
    tool.write_conflist(&conflist(NET_TUNING, &[main, tuning_plugin.clone()]));
    let ns = TestNetns::new("weft-bench-chain");

    let (checked, mode) = verify_attach(&tool, &ns, &iso)?;
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

    // kmesh-cni's side of the floor and direct tables: its own two execs after a bridge ADD.
    let kmesh_direct = || {
        Ok(vec![direct_run(
            &tool,
            &ns,
            &kmesh,
            &kmesh_plugin,
            NET_KMESH,
            &cni_path,
            &iso,
        )?])
    };
    let floor = built_bin_dir().join("weft-attach-floor");
    ensure!(
        floor.is_file(),
        "{} not found (cargo build --release -p bpf)",
        floor.display()
    );
    let mut floor_table = bench::alternate(
        "P1-chain-floor",
        (
            "kmesh-cni ADD + DEL exec'd directly after a bridge ADD (prevResult as libcni passes it)",
            &format!("the kernel's floor: weft-attach-floor attach + detach, mode {mode}"),
        ),
        &FLOOR_FIGURES,
        opts.pairs,
        kmesh_direct,
        || {
            Ok(vec![floor_run(
                &tool,
                &ns,
                &floor,
                &mode,
                &iso,
                bridge.name(),
            )?])
        },
    )?;
    floor_table.notes = vec![
        "both sides timed around each of their two execs, in the same netns after the same \
         bridge ADD; floor = the smallest program doing kmesh-cni's kernel work (open the \
         pinned program, clsact + filter add / filter delete, or tcx link + pin / unpin)"
            .into(),
        kmesh_steps(&tool, &ns, &kmesh, &kmesh_plugin, &cni_path, &iso)?,
    ];

    let tuning = crate::plugins::reference_plugin("tuning");
    let mut direct_table = bench::alternate(
        "P1-chain-direct",
        (
            "kmesh-cni ADD + DEL exec'd directly after a bridge ADD (prevResult as libcni passes it)",
            "tuning ADD + DEL exec'd the same way (Go reference, no settings)",
        ),
        &FLOOR_FIGURES,
        opts.pairs,
        kmesh_direct,
        || {
            Ok(vec![direct_run(
                &tool,
                &ns,
                &tuning,
                &tuning_plugin,
                NET_TUNING,
                &cni_path,
                &iso,
            )?])
        },
    )?;
    direct_table.notes = vec![
        "the chained plugin's own share of P1-chain's extra without libcni and without the \
         drift of two whole chains: both exec'd by this harness with the same bridge result"
            .into(),
    ];
    Ok(vec![table, floor_table, direct_table])
}

#[cfg(test)]
mod tests {
    use super::step_medians;

    #[test]
    fn step_medians_read_kmesh_cni_debug_lines() {
        let log = "\
2026-12-01T08:16:05.478053Z DEBUG kmesh_cni::steps: time per step verb=\"ADD\" steps=config=122 discover=304 attach=1200
2026-12-01T08:16:05.480257Z DEBUG kmesh_cni::steps: time per step verb=\"DEL\" steps=config=49 detach=72
2026-12-01T08:16:05.481000Z  WARN kmesh_cni: something else entirely
2026-12-01T08:16:05.482058Z DEBUG kmesh_cni::steps: time per step verb=\"ADD\" steps=config=57 discover=313 attach=137
2026-12-01T08:16:05.483058Z DEBUG kmesh_cni::steps: time per step verb=\"ADD\" steps=config=60 discover=200 attach=140
";
        let add = step_medians(log, "ADD");
        assert_eq!(
            add,
            [
                ("config".to_owned(), 60),
                ("discover".to_owned(), 304),
                ("attach".to_owned(), 140)
            ]
        );
        assert_eq!(
            step_medians(log, "DEL"),
            [("config".to_owned(), 49), ("detach".to_owned(), 72)]
        );
        assert!(step_medians(log, "CHECK").is_empty());
    }
}
