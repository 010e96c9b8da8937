//! `weft-bench vf` (P1-vf): the cost of handing a VF to a pod and back — one ADD and one DEL as
//! whole processes exec'd like a runtime does — weft-sriov against the Go reference
//! `host-device`, both moving the same stand-in device (a veth: this kernel has no SR-IOV) into
//! the same netns and back. weft-sriov finds it by PCI address in a fake sysfs tree
//! (`integration::sriov`) and reads the PF over real netlink (no PF-side settings: host-device
//! has none); host-device gets the netdev's name.
//!
//! * `P1-vf`: no IPAM — the attach itself (sysfs, records and VF lock for weft-sriov; the move,
//!   rename and the alias host-device keeps on the device).
//! * `P1-vf-ipam`: the same with host-local as IPAM on both sides (an extra exec each).
//! * `P1-vf-floor`: weft-sriov against the kernel floor: the same two moves done by two
//!   `ip link set ... netns ... name ...` processes (in, renamed to net1; back, renamed back).
//!   Moving a netdev between namespaces waits for RCU (`rcu_barrier()` in the kernel's
//!   `__dev_change_net_namespace`), which dominates every plugin that moves a device.
//!
//! Wall time is ADD + DEL of one run; peak RSS is the larger of the two processes. Before
//! measuring, one ADD/DEL of each side is checked: the device is in the pod as `net1` after
//! ADD and back in the host under its own name after DEL.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::bench::{self, wall_and_rss, BenchOpts, Table, RSS, WALL};
use crate::cni::{exec_plugin_measured, PluginEnv};
use crate::fixtures::netns::TestNetns;
use crate::plugins::{reference_plugin, CniPath};
use crate::proc::Usage;
use crate::sriov::{link_state, FakeSriov, Kind};

const IFNAME: &str = "net1";
const SUBNET: &str = "10.246.0.0/24";

/// One plugin set up to move the stand-in VF into `ns`.
struct Side<'a> {
    bin: PathBuf,
    conf: Vec<u8>,
    add: PluginEnv,
    del: PluginEnv,
    ns: &'a TestNetns,
    vf_name: String,
}

impl Side<'_> {
    fn run(&self, env: &PluginEnv, verb: &str) -> Result<Usage> {
        let (out, u) = exec_plugin_measured(&self.bin, env, &self.conf);
        if !out.success() {
            bail!("{} {verb} failed:\n{}", self.bin.display(), out.describe());
        }
        Ok(u)
    }

    /// ADD then DEL: the wall time of both, the peak RSS of the larger.
    fn add_del(&self) -> Result<Usage> {
        let add = self.run(&self.add, "ADD")?;
        let del = self.run(&self.del, "DEL")?;
        Ok(combined(&add, &del))
    }

    /// One ADD must put the device in the pod as net1 and take it from the host; DEL the reverse.
    fn verify(&self, label: &str) -> Result<()> {
        self.run(&self.add, "ADD")?;
        let inside = link_state(Some(self.ns.name()), IFNAME);
        let host = link_state(None, &self.vf_name);
        self.run(&self.del, "DEL")?;
        ensure!(
            inside.is_some() && host.is_none(),
            "{label}: ADD did not move {} into the pod as {IFNAME}",
            self.vf_name
        );
        ensure!(
            link_state(None, &self.vf_name).is_some()
                && link_state(Some(self.ns.name()), IFNAME).is_none(),
            "{label}: DEL did not give {} back to the host",
            self.vf_name
        );
        Ok(())
    }
}

/// Two processes run one after the other: their wall times add up, the peak is the larger.
fn combined(a: &Usage, b: &Usage) -> Usage {
    Usage {
        wall: a.wall + b.wall,
        max_rss_kib: a.max_rss_kib.max(b.max_rss_kib),
    }
}

/// Wall time and peak RSS of one ADD+DEL, two figures of one table.
const PROCESS: [bench::Figure; 2] = [WALL, RSS];

fn conf(name: &str, plugin: Value, ipam: Option<&Path>) -> Vec<u8> {
    let mut c = plugin;
    c["cniVersion"] = json!("1.0.0");
    c["name"] = json!(name);
    if let Some(dir) = ipam {
        c["ipam"] = json!({"type": "host-local", "subnet": SUBNET, "dataDir": dir});
    }
    serde_json::to_vec(&c).expect("serialize conf")
}

pub fn run(opts: &BenchOpts) -> Result<Vec<Table>> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "P1-vf needs root (netns, links)"
    );
    let sriov = opts.bin_dir.join("weft-sriov");
    ensure!(
        sriov.is_file(),
        "{} not found (cargo build --release -p weft-sriov)",
        sriov.display()
    );
    let host_device = reference_plugin("host-device");
    // Dropped in reverse: the netns first (it holds the VF only mid-run), then the stand-ins.
    let fake = FakeSriov::new(1, Kind::Veth);
    let cni_path = CniPath::with_bin_dir(&opts.bin_dir);
    let ns = TestNetns::new("weft-bench-vf");
    let ipam_dir = TempDir::with_prefix("weft-bench-vf-ipam-").context("ipam dir")?;
    let vf = fake.vfs[0].clone();
    let cid = format!("weft-bench-vf-{}", std::process::id());
    let env = |verb: &str, with_fakes: bool| {
        let mut e = PluginEnv::verb(verb, &cid, ns.path_str(), IFNAME, cni_path.path_str());
        if with_fakes {
            for (k, v) in fake.env() {
                // The PF is read over real netlink, as in production.
                if k != "WEFT_SRIOV_FAKE_PF" {
                    e = e.set(k, &v);
                }
            }
        }
        e
    };
    let mut results = Vec::new();
    for (name, ipam) in [("P1-vf", None), ("P1-vf-ipam", Some(ipam_dir.path()))] {
        let a = Side {
            bin: sriov.clone(),
            conf: conf(
                name,
                json!({"type": "weft-sriov", "deviceID": vf.pci}),
                ipam,
            ),
            add: env("ADD", true),
            del: env("DEL", true),
            ns: &ns,
            vf_name: vf.name.clone(),
        };
        let b = Side {
            bin: host_device.clone(),
            conf: conf(
                name,
                json!({"type": "host-device", "device": vf.name}),
                ipam,
            ),
            add: env("ADD", false),
            del: env("DEL", false),
            ns: &ns,
            vf_name: vf.name.clone(),
        };
        a.verify("weft-sriov")?;
        b.verify("host-device")?;
        results.push(bench::alternate(
            name,
            (
                "weft-sriov (VF by PCI address in a fake sysfs tree)",
                "host-device (Go reference, device by name)",
            ),
            &PROCESS,
            opts.pairs,
            || a.add_del().map(|u| wall_and_rss(&u)),
            || b.add_del().map(|u| wall_and_rss(&u)),
        )?);
        if ipam.is_none() {
            let host_ns = format!("/proc/{}/ns/net", std::process::id());
            let floor = || -> Result<Usage> {
                let into = crate::proc::run(
                    crate::proc::command("ip").args([
                        "link",
                        "set",
                        "dev",
                        &vf.name,
                        "netns",
                        ns.name(),
                        "name",
                        IFNAME,
                    ]),
                    b"",
                )?;
                let back = crate::proc::run(
                    crate::proc::command("ip").args([
                        "-n",
                        ns.name(),
                        "link",
                        "set",
                        "dev",
                        IFNAME,
                        "netns",
                        &host_ns,
                        "name",
                        &vf.name,
                    ]),
                    b"",
                )?;
                for (out, _) in [&into, &back] {
                    out.assert_success("ip link set netns");
                }
                Ok(combined(&into.1, &back.1))
            };
            results.push(bench::alternate(
                "P1-vf-floor",
                (
                    "weft-sriov (as P1-vf)",
                    "the kernel floor: ip link set netns+name, in and back",
                ),
                &PROCESS,
                opts.pairs,
                || a.add_del().map(|u| wall_and_rss(&u)),
                || floor().map(|u| wall_and_rss(&u)),
            )?);
        }
    }
    Ok(results)
}
