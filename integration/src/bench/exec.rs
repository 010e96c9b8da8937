//! `weft-bench exec`: the cost of one whole plugin process, ours (Rust) against the Go reference
//! `tuning` plugin, which is also a chained plugin that passes `prevResult` through.
//!
//! * `exec-version`: VERSION, i.e. process start-up, config decode and one print.
//! * `exec-add`: a pass-through ADD in a real netns that holds a veth named eth0, with a 1.0.0
//!   prevResult naming it. Each measured ADD is followed by an unmeasured DEL so both plugins
//!   start every run from the same state.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{alternate, Comparison};
use crate::cni::{exec_plugin_measured, PluginEnv};
use crate::netns::{unique_ifname, TestNetns};
use crate::plugins::{reference_plugin, CniPath};
use crate::proc::Usage;

pub struct ExecOpts {
    /// Directory holding our built binaries (prefer target/release: that is what ships).
    pub bin_dir: PathBuf,
    pub pairs: usize,
}

/// Run `bin` once and fail unless it exits 0.
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

fn chained_conf(plugin_type: &str, prev_result: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": "1.0.0",
        "name": "weft-bench",
        "type": plugin_type,
        "prevResult": prev_result,
    }))
    .expect("serialize conf")
}

pub fn run(opts: &ExecOpts) -> Result<Vec<Comparison>> {
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
    results.push(alternate(
        "exec-version",
        "kmesh-cni",
        "tuning",
        opts.pairs,
        || run_ok(&kmesh, &env, stdin),
        || run_ok(&tuning, &env, stdin),
    )?);

    // Pass-through ADD (+ unmeasured DEL) in a real netns.
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
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
    let (add, del) = (verb("ADD"), verb("DEL"));
    let add_then_del = |bin: &Path, conf: &[u8]| -> Result<Usage> {
        let usage = run_ok(bin, &add, conf).context("ADD")?;
        run_ok(bin, &del, conf).context("DEL")?;
        Ok(usage)
    };
    let kmesh_conf = chained_conf("kmesh-cni", &prev);
    let tuning_conf = chained_conf("tuning", &prev);
    results.push(alternate(
        "exec-add",
        "kmesh-cni",
        "tuning",
        opts.pairs,
        || add_then_del(&kmesh, &kmesh_conf),
        || add_then_del(&tuning, &tuning_conf),
    )?);
    Ok(results)
}
