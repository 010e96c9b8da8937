//! `weft smoke`: two throwaway pods networked through the node's installed primary config by
//! the exec path a runtime uses (each plugin of the list exec'd from the CNI path with the
//! `CNI_*` environment, the previous result as `prevResult`), pinged both ways, CHECKed and
//! DELeted; then everything it created is removed. install.sh ends with it.

use crate::bpfview;
use crate::chain;
use crate::node::Node;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Pod {
    netns: String,
    path: PathBuf,
    cid: String,
    result: Option<Value>,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Execs one plugin for `verb`.
fn exec(
    node: &Node,
    path_list: &str,
    plugin: &Value,
    list: &Value,
    verb: &str,
    pod: &Pod,
    prev: Option<&Value>,
) -> Result<String> {
    let t = plugin["type"].as_str().unwrap_or_default();
    let bin = crate::fsx::find_in(&node.plugin_dirs, t)
        .ok_or_else(|| anyhow!("plugin {t} not found in {path_list}"))?;
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", &pod.cid)
        .env("CNI_NETNS", &pod.path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path_list)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=weft-smoke;K8S_POD_NAME={}",
                pod.netns
            ),
        )
        .env("WEFT_STATE_DIR", &node.state_dir);
    let ran = crate::fsx::run_bounded(
        &mut cmd,
        conf.to_string().as_bytes(),
        Duration::from_secs(30),
    )?;
    if !ran.ok {
        bail!("{verb} {t}: {}{}", ran.stdout.trim(), ran.stderr.trim());
    }
    Ok(ran.stdout)
}

/// Runs the smoke test; returns the report lines. Cleans up also when a step fails.
pub fn run(node: &Node) -> Result<Vec<String>> {
    let primary = chain::primary(&node.conf_dir)?
        .ok_or_else(|| anyhow!("no CNI config in {}", node.conf_dir.display()))?;
    let loaded = chain::load(&primary)?;
    let list = loaded.value.clone();
    let plugins = list["plugins"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("{} is not a conflist", primary.display()))?;
    let path_list = node
        .plugin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut report = vec![format!(
        "smoke test through {} (network {}, cniVersion {})",
        primary.display(),
        list["name"].as_str().unwrap_or("?"),
        list["cniVersion"].as_str().unwrap_or("?")
    )];
    report.push(format!(
        "  chain: {}   (CNI_PATH {path_list})",
        plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" -> ")
    ));
    // What exists before, so cleanup removes only what the smoke test made.
    let bridge = plugins
        .iter()
        .find(|p| p["type"] == "bridge")
        .map(|p| p["bridge"].as_str().unwrap_or("cni0").to_owned());
    let bridge_existed = bridge
        .as_ref()
        .is_some_and(|b| Path::new("/sys/class/net").join(b).exists());
    let net = list["name"].as_str().unwrap_or_default().to_owned();
    let state_dirs: Vec<PathBuf> = [
        node.state_dir.join("networks").join(&net),
        node.state_dir.join("weft-ipam").join(&net),
        node.state_dir.join("weft-ipam"),
        node.state_dir.join("networks"),
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .collect();
    let tag = std::process::id();
    let mut pods: Vec<Pod> = Vec::new();
    let outcome = (|| -> Result<()> {
        for n in ["a", "b"] {
            let name = format!("weft-smoke-{tag}-{n}");
            ip(&["netns", "add", &name])?;
            pods.push(Pod {
                path: PathBuf::from("/var/run/netns").join(&name),
                cid: format!("weft-smoke-{tag}-{n}"),
                netns: name.clone(),
                result: None,
            });
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let before = bpfview::read(&node.bpf_root())
            .ok()
            .flatten()
            .map(|v| v.counters);
        let t = Instant::now();
        for pod in pods.iter_mut() {
            let mut prev: Option<Value> = None;
            for p in &plugins {
                let out = exec(node, &path_list, p, &list, "ADD", pod, prev.as_ref())?;
                prev = Some(serde_json::from_str(out.trim()).context("ADD result is not JSON")?);
            }
            pod.result = prev;
        }
        report.push(format!(
            "  ADD ok: 2 pods in {} ms",
            t.elapsed().as_millis()
        ));
        for pod in &pods {
            let r = pod.result.as_ref().expect("added");
            let addr = r["ips"][0]["address"].as_str().unwrap_or("?");
            let record = node
                .kmesh_store()
                .dir()
                .join(&net)
                .join(format!("{}:eth0", pod.cid));
            let fast = match std::fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                Some(rec) => format!(
                    "fast path {} on {}",
                    rec["mode"].as_str().unwrap_or("?"),
                    rec["host_veth"].as_str().unwrap_or("?")
                ),
                None => "no kmesh-cni record (fast path off for this pod)".into(),
            };
            report.push(format!("  pod {}  {addr}  {fast}", pod.netns));
        }
        let version = list["cniVersion"].as_str().unwrap_or("1.0.0");
        if conf::Version::parse(version).is_ok_and(|v| v.supports_check()) {
            for pod in &pods {
                for p in &plugins {
                    exec(
                        node,
                        &path_list,
                        p,
                        &list,
                        "CHECK",
                        pod,
                        pod.result.as_ref(),
                    )?;
                }
            }
            report.push("  CHECK ok".into());
        }
        let addr = |p: &Pod| -> String {
            p.result.as_ref().expect("added")["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        for (from, to) in [(0, 1), (1, 0)] {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pods[from].netns,
                    "ping",
                    "-n",
                    "-c",
                    "3",
                    "-i",
                    "0.2",
                    "-W",
                    "2",
                ])
                .arg(addr(&pods[to]))
                .output()
                .context("run ping")?;
            if !out.status.success() {
                bail!(
                    "ping {} -> {} failed:\n{}",
                    pods[from].netns,
                    addr(&pods[to]),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let after = bpfview::read(&node.bpf_root())
            .ok()
            .flatten()
            .map(|v| v.counters);
        let redirected = match (before, after) {
            (b, Some(a)) => a.redirected_packets - b.map_or(0, |b| b.redirected_packets),
            _ => 0,
        };
        report.push(format!(
            "  ping a->b and b->a ok (3/3 each); fast path redirected {redirected} packet(s)"
        ));
        Ok(())
    })();
    // DEL in reverse plugin order, then remove what the test created.
    let mut del_errors = Vec::new();
    for pod in &pods {
        for p in plugins.iter().rev() {
            if let Err(e) = exec(node, &path_list, p, &list, "DEL", pod, pod.result.as_ref()) {
                del_errors.push(format!("{e:#}"));
            }
        }
        let _ = ip(&["netns", "del", &pod.netns]);
    }
    if !pods.is_empty() && del_errors.is_empty() {
        report.push("  DEL ok".into());
    }
    let mut cleaned = vec!["netns".to_string()];
    if let (Some(b), false) = (&bridge, bridge_existed) {
        if ip(&["link", "del", b]).is_ok() {
            cleaned.push(format!("bridge {b}"));
        }
    }
    for d in &state_dirs {
        if d.exists() && std::fs::remove_dir_all(d).is_ok() {
            cleaned.push(d.display().to_string());
        }
    }
    report.push(format!("  cleaned up: {}", cleaned.join(", ")));
    outcome?;
    if !del_errors.is_empty() {
        bail!("DEL failed: {}", del_errors.join("; "));
    }
    Ok(report)
}
