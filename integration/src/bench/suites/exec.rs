//! `weft-bench exec`: the cost of one whole plugin process, ours (Rust) against the Go reference
//! `tuning` plugin, which is also a chained plugin that passes `prevResult` through.
//!
//! * `exec-version`: VERSION, i.e. process start-up, config decode and one print.
//! * `exec-add`: a pass-through ADD in a real netns that holds a veth named eth0, with a 1.0.0
//!   prevResult naming it. Each measured ADD is followed by an unmeasured DEL so both plugins
//!   start every run from the same state.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::bench::{self, wall_and_rss, BenchOpts, Table, RSS, WALL};
use crate::cni::{exec_plugin_measured, PluginEnv};
use crate::fixtures::bpffs::Isolation;
use crate::fixtures::netns::{unique_ifname, TestNetns};
use crate::plugins::{reference_plugin, CniPath};
use crate::proc::Usage;

/// Run `bin` once and fail unless it exits 0; its wall time and peak RSS.
fn run_ok(bin: &Path, env: &PluginEnv, stdin: &[u8]) -> Result<Usage> {
    let (out, usage) = exec_plugin_measured(bin, env, stdin);
    if !out.success() {
        bail!(
            "{} {} failed:\n{}",
            bin.display(),
            env.get("CNI_COMMAND").unwrap_or("?"),
            out.describe()
        );
    }
    Ok(usage)
}

fn chained_conf(plugin_type: &str, prev_result: &Value, extra: &Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "weft-bench",
        "type": plugin_type,
        "prevResult": prev_result,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        conf[k] = v.clone();
    }
    serde_json::to_vec(&conf).expect("serialize conf")
}

/// A process: wall time and peak RSS of one run, two figures of one table.
const PROCESS: [bench::Figure; 2] = [WALL, RSS];

pub fn run(opts: &BenchOpts) -> Result<Vec<Table>> {
    let kmesh = opts.bin_dir.join("kmesh-cni");
    ensure!(
        kmesh.is_file(),
        "{} not found (cargo build --release -p kmesh-cni)",
        kmesh.display()
    );
    let tuning = reference_plugin("tuning");
    let mut results = Vec::new();

    // VERSION: libcni sends its own newest version on stdin.
    let env = PluginEnv::command("VERSION");
    let stdin = br#"{"cniVersion":"1.0.0"}"#;
    results.push(bench::alternate(
        "exec-version",
        ("kmesh-cni", "tuning"),
        &PROCESS,
        opts.pairs,
        || run_ok(&kmesh, &env, stdin).map(|u| wall_and_rss(&u)),
        || run_ok(&tuning, &env, stdin).map(|u| wall_and_rss(&u)),
    )?);

    // Pass-through ADD (+ unmeasured DEL) in a real netns.
    ensure!(
        nix::unistd::geteuid().is_root(),
        "exec-add needs root (netns)"
    );
    let cni_path = CniPath::with_bin_dir(&opts.bin_dir);
    let ns = TestNetns::new("weft-bench");
    let _veth = ns.add_veth(&unique_ifname("wbv"), "eth0");
    ns.must(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": ns.path_str()}],
        "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}],
        "dns": {},
    });
    let container_id = format!("weft-bench-{}", std::process::id());
    let verb =
        |c: &str| PluginEnv::verb(c, &container_id, ns.path_str(), "eth0", cni_path.path_str());
    // kmesh-cni attaches for real here: its pins and records go to per-run places, removed
    // on drop, never the node's /sys/fs/bpf/weft and /var/lib/cni.
    let iso = Isolation::tagged("bench-exec");
    let state_dir = iso.state_dir();
    let (add, del) = (
        verb("ADD").set("WEFT_STATE_DIR", state_dir),
        verb("DEL").set("WEFT_STATE_DIR", state_dir),
    );
    let add_then_del = |bin: &Path, conf: &[u8]| -> Result<Usage> {
        let usage = run_ok(bin, &add, conf).context("ADD")?;
        run_ok(bin, &del, conf).context("DEL")?;
        Ok(usage)
    };
    let kmesh_conf = chained_conf("kmesh-cni", &prev, &json!({"pinRoot": iso.pin_root()}));
    let passthrough_conf = chained_conf("kmesh-cni", &prev, &json!({"mode": "off"}));
    let tuning_conf = chained_conf("tuning", &prev, &json!({}));
    // Pass-through (mode off): the contract path alone, what tuning does too.
    results.push(bench::alternate(
        "exec-add-passthrough",
        ("kmesh-cni", "tuning"),
        &PROCESS,
        opts.pairs,
        || add_then_del(&kmesh, &passthrough_conf).map(|u| wall_and_rss(&u)),
        || add_then_del(&tuning, &tuning_conf).map(|u| wall_and_rss(&u)),
    )?);
    // Full ADD: veth discovery, tcx attach (~10 ms of it is the kernel's tcx link create),
    // map entries, record.
    results.push(bench::alternate(
        "exec-add",
        ("kmesh-cni", "tuning"),
        &PROCESS,
        opts.pairs,
        || add_then_del(&kmesh, &kmesh_conf).map(|u| wall_and_rss(&u)),
        || add_then_del(&tuning, &tuning_conf).map(|u| wall_and_rss(&u)),
    )?);
    Ok(results)
}
