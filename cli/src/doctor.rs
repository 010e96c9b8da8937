//! `weft doctor`: what this host supports and what weft will use, found by trying (weft's
//! runtime "compatibility mode": probes, never a recompile or a kernel version string), and
//! whether the bin dir, conf dir and state dir agree with each other.

use crate::chain;
use crate::fsx;
use crate::node::{Manifest, Node, PLUGINS};
use crate::state::{self, Liveness};
use crate::versions;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Works, but something deserves a look.
    Warn,
    /// Informational (a feature weft can do without).
    Info,
    /// weft cannot work on this node until this is fixed.
    Fail,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Info => "info",
            Verdict::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub verdict: Verdict,
    pub what: String,
    pub detail: String,
}

fn check(verdict: Verdict, what: &str, detail: impl Into<String>) -> Check {
    Check {
        verdict,
        what: what.into(),
        detail: detail.into(),
    }
}

fn yes_no(ok: bool, what: &str, yes: &str, no: &str, fail: Verdict) -> Check {
    if ok {
        check(Verdict::Ok, what, yes)
    } else {
        check(fail, what, no)
    }
}

/// Every check, in the order a person reads them: kernel, then the node's files.
pub fn run(node: &Node) -> Vec<Check> {
    let mut out = Vec::new();
    kernel(node, &mut out);
    files(node, &mut out);
    out
}

fn kernel(node: &Node, out: &mut Vec<Check>) {
    // The attach probes attach for real: in a netns that exists only for them.
    let attach = host::netns::run_in_new_netns(bpf::probe::attach_probes).ok();
    let f = bpf::probe::features(attach);
    let mounted = bpf::is_bpffs(Path::new(bpf::BPFFS)).unwrap_or(false);
    out.push(if mounted {
        check(Verdict::Ok, "bpffs", format!("mounted at {}", bpf::BPFFS))
    } else if f.bpffs {
        check(
            Verdict::Warn,
            "bpffs",
            format!(
                "not mounted at {}; kmesh-cni mounts it on first use",
                bpf::BPFFS
            ),
        )
    } else {
        check(
            Verdict::Fail,
            "bpffs",
            "the kernel offers no BPF filesystem",
        )
    });
    out.push(yes_no(
        f.redirect_peer,
        "bpf_redirect_peer",
        "tc programs may call it (same-node fast path)",
        "missing (needs Linux >= 5.10): no fast path",
        Verdict::Fail,
    ));
    out.push(yes_no(
        f.tcx,
        "tcx",
        "tcx links attach (Linux >= 6.6; used with mode: tcx)",
        "no tcx links: mode: tcx is unavailable",
        if f.clsact {
            Verdict::Info
        } else {
            Verdict::Warn
        },
    ));
    out.push(yes_no(
        f.clsact,
        "clsact",
        "clsact qdisc + cls_bpf direct-action attach (what mode auto uses)",
        "no clsact/cls_bpf: mode auto falls back to tcx, whose attach and detach are slower",
        Verdict::Warn,
    ));
    out.push(match f.mode() {
        Some(m) => check(
            Verdict::Ok,
            "fast path",
            format!(
                "kmesh-cni mode auto will use {}",
                match m {
                    bpf::Mode::Tcx => "tcx (pinned link per pod)",
                    bpf::Mode::Tc => "tc (clsact + cls_bpf)",
                }
            ),
        ),
        None => check(
            Verdict::Fail,
            "fast path",
            "not available on this kernel (set kmesh-cni mode: off, or failurePolicy: ignore)",
        ),
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    out.push(yes_no(
        btf,
        "BTF",
        "/sys/kernel/btf/vmlinux present",
        "no kernel BTF (weft's programs need none; bpftool shows raw map values)",
        Verdict::Info,
    ));
    out.push(cgroup2());
    out.push(match host::netns::current_netns_cookie() {
        Ok(c) => check(
            Verdict::Ok,
            "netns cookies",
            format!("SO_NETNS_COOKIE works (this netns: {c}); mesh enrolment keys on it"),
        ),
        Err(e) => check(
            Verdict::Warn,
            "netns cookies",
            format!("{e}: mesh enrolment is not available"),
        ),
    });
    out.push(sriov());
    let _ = node;
}

fn cgroup2() -> Check {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| f[1])
        })
        .collect();
    match found.first() {
        Some(p) => check(Verdict::Ok, "cgroup2", format!("mounted at {p}")),
        None => check(
            Verdict::Info,
            "cgroup2",
            "not mounted (weft's tc programs do not need it)",
        ),
    }
}

fn sriov() -> Check {
    let mut pfs = Vec::new();
    for e in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let total = e.path().join("device/sriov_totalvfs");
        if let Ok(n) = std::fs::read_to_string(&total) {
            if n.trim().parse::<u32>().unwrap_or(0) > 0 {
                let used = std::fs::read_to_string(e.path().join("device/sriov_numvfs"))
                    .unwrap_or_default();
                pfs.push(format!(
                    "{} ({}/{} VFs)",
                    e.file_name().to_string_lossy(),
                    used.trim(),
                    n.trim()
                ));
            }
        }
    }
    if pfs.is_empty() {
        check(
            Verdict::Info,
            "SR-IOV",
            "no SR-IOV capable PF (weft-sriov has nothing to attach here)",
        )
    } else {
        check(
            Verdict::Ok,
            "SR-IOV",
            format!("capable PFs: {}", pfs.join(", ")),
        )
    }
}

fn files(node: &Node, out: &mut Vec<Check>) {
    let manifest = Manifest::load(node).ok().flatten();
    // Binaries.
    for name in PLUGINS {
        let path = node.bin_dir.join(name);
        let installed = manifest
            .as_ref()
            .and_then(|m| m.binaries.iter().find(|b| b.name == *name));
        if !path.exists() {
            let v = if *name == "kmesh-cni" {
                Verdict::Fail
            } else {
                Verdict::Info
            };
            out.push(check(
                v,
                &format!("bin {name}"),
                format!("{} missing", path.display()),
            ));
            continue;
        }
        let answered = versions::ask(&path);
        let bytes = std::fs::read(&path).unwrap_or_default();
        let same = installed.map(|b| b.fingerprint == fsx::fingerprint(&bytes));
        let (v, detail) = match (&answered, same) {
            (Err(e), _) => (Verdict::Fail, format!("VERSION fails: {e:#}")),
            (Ok(vs), Some(false)) => (
                Verdict::Warn,
                format!(
                    "answers {}; changed since weft install wrote it",
                    join(vs.iter().map(|v| v.as_str()))
                ),
            ),
            (Ok(vs), Some(true)) => (
                Verdict::Ok,
                format!(
                    "answers {}; as installed",
                    join(vs.iter().map(|v| v.as_str()))
                ),
            ),
            (Ok(vs), None) => (
                Verdict::Ok,
                format!("answers {}", join(vs.iter().map(|v| v.as_str()))),
            ),
        };
        out.push(check(v, &format!("bin {name}"), detail));
    }
    // The chain.
    match chain::primary(&node.conf_dir) {
        Ok(None) => out.push(check(
            Verdict::Fail,
            "chain",
            format!(
                "no CNI config in {} (run weft install)",
                node.conf_dir.display()
            ),
        )),
        Err(e) => out.push(check(Verdict::Fail, "chain", format!("{e:#}"))),
        Ok(Some(p)) => match chain::load(&p) {
            Err(e) => out.push(check(Verdict::Fail, "primary config", format!("{e:#}"))),
            Ok(l) => {
                out.push(check(
                    Verdict::Ok,
                    "primary config",
                    format!(
                        "{} (network {})",
                        l.path.display(),
                        l.value["name"].as_str().unwrap_or("?")
                    ),
                ));
                let plugins = l.value["plugins"].as_array().cloned().unwrap_or_default();
                match chain::kmesh_index(&l.value) {
                    Some(i) if i + 1 == plugins.len() => {
                        out.push(check(Verdict::Ok, "chain", "kmesh-cni is the last plugin"))
                    }
                    Some(i) => out.push(check(
                        Verdict::Ok,
                        "chain",
                        format!("kmesh-cni is plugin {} of {}", i + 1, plugins.len()),
                    )),
                    None => out.push(check(
                        Verdict::Fail,
                        "chain",
                        "kmesh-cni is not in the primary network (run weft install, or weft watch)",
                    )),
                }
                if !plugins.is_empty() {
                    out.push(version_check(node, &l.value, &plugins));
                }
            }
        },
    }
    // State.
    out.push(records_check(
        "kmesh-cni",
        &node.kmesh_store(),
        &state::kmesh_records(node),
        state::liveness,
    ));
    let sriov = state::sriov_records(node);
    if !sriov.is_empty() {
        out.push(records_check(
            "weft-sriov",
            &node.sriov_store(),
            &sriov,
            state::sriov_liveness,
        ));
    }
    let pools = state::ipam_pools(node);
    let bad: Vec<String> = pools
        .iter()
        .filter_map(|p| {
            p.reservations
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", p.network))
        })
        .collect();
    let held: usize = pools
        .iter()
        .map(|p| p.reservations.as_ref().map_or(0, Vec::len))
        .sum();
    out.push(if bad.is_empty() {
        check(
            Verdict::Ok,
            "ipam",
            format!("{} pool(s), {held} reservation(s)", pools.len()),
        )
    } else {
        check(Verdict::Fail, "ipam", bad.join("; "))
    });
}

fn version_check(node: &Node, list: &serde_json::Value, plugins: &[serde_json::Value]) -> Check {
    let answers = versions::ask_all(&versions::types_of(plugins), &node.plugin_dirs);
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    for a in &answers {
        match &a.versions {
            Ok(vs) => {
                for (what, v) in versions::effective(list) {
                    match v {
                        Some(v) if vs.contains(&v) => {}
                        _ => problems.push(format!("{} does not support {what}", a.plugin_type)),
                    }
                }
            }
            Err(_) => unknown.push(a.plugin_type.clone()),
        }
    }
    if !problems.is_empty() {
        check(
            Verdict::Fail,
            "versions",
            format!("{}: runtimes will fail every ADD", problems.join("; ")),
        )
    } else if !unknown.is_empty() {
        check(
            Verdict::Warn,
            "versions",
            format!(
                "could not ask {} (not in the plugin dirs)",
                unknown.join(", ")
            ),
        )
    } else {
        check(
            Verdict::Ok,
            "versions",
            format!(
                "every plugin speaks what the config declares ({})",
                versions::effective(list)
                    .iter()
                    .map(|(w, _)| w.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

fn join<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(" ")
}

/// One line per check.
pub fn render(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!(
            "{:<4}  {:<w$}  {}\n",
            c.verdict.label(),
            c.what,
            c.detail
        ));
    }
    s
}

pub fn blocking(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.verdict == Verdict::Fail)
}

/// One plugin's records: every pod alive, or how many are stale or unreadable.
fn records_check<T>(
    plugin: &str,
    store: &host::RecordStore,
    records: &[state::Stored<T>],
    liveness: impl Fn(&T) -> Liveness,
) -> Check {
    let stale = records
        .iter()
        .filter(|r| matches!(&r.record, Ok(rec) if liveness(rec) != Liveness::Alive))
        .count();
    let unreadable = records.iter().filter(|r| r.record.is_err()).count();
    let total = records.len();
    if stale == 0 && unreadable == 0 {
        check(
            Verdict::Ok,
            "records",
            format!(
                "{total} {plugin} record(s) in {}, every pod alive",
                store.dir().display()
            ),
        )
    } else {
        check(
            Verdict::Warn,
            "records",
            format!(
                "{total} {plugin} record(s): {stale} stale (pod gone), {unreadable} unreadable; weft gc reclaims stale ones"
            ),
        )
    }
}
