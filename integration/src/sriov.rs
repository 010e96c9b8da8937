//! SR-IOV stand-ins. This kernel has no SR-IOV (no PCI_IOV, no netdevsim), so weft-sriov is
//! driven against:
//! - **VFs**: veth or macvlan netdevs in the host netns (a macvlan is a child of a lower device,
//!   as a VF is of its PF; a veth's peer stays in the host as a wire to ping through);
//! - **sysfs**: a fake tree of the kernel's layout (`bus/pci/devices/<bdf>` → `devices/...`,
//!   `physfn`, `virtfn<N>`, `net/<ifname>`, `driver`), handed to the plugin as
//!   `WEFT_SYSFS_ROOT`;
//! - **the PF**: the plugin's recording fake (`WEFT_SRIOV_FAKE_PF`, a JSON file in the format
//!   of `host::sriov::fake::FakeState`), since no PF here answers `IFLA_VF_*`.
//!
//! The kernel's own parts are real: netns moves, renames, altnames, MACs, MTUs, addresses.
//! Where the kernel would update sysfs (a VF returned by a dying netns shows up in `net/`
//! under a new name) the test does it with [`FakeSriov::set_netdev`].
//!
//! Everything is unique per process and fixture (PCI addresses only need to be unique inside
//! one tree; every fixture has its own tree and state dir) and removed on drop.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::fixtures::netns::{host_link_exists, unique_ifname, HostLink};
use crate::proc::{cmd, must};

/// What stands in for a VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A veth whose peer (`StandIn::wire`) stays in the host, up.
    Veth,
    /// A macvlan (bridge mode) on a host veth (`StandIn::wire`) as its lower device.
    Macvlan,
}

/// One stand-in VF as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    pub pci: String,
    pub index: u32,
    /// The VF netdev's name in the host (and in sysfs `net/`).
    pub name: String,
    /// The veth peer (Veth) or the macvlan's lower device (Macvlan), in the host.
    pub wire: String,
    pub mac: String,
    pub mtu: u32,
}

/// How a netdev looks from the host: what DEL must restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub altnames: Vec<String>,
}

/// `ip -j -d link show dev <name>` in the host (or in `netns` when given), if it exists.
pub fn link_state(netns: Option<&str>, name: &str) -> Option<LinkState> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-j", "-d", "link", "show", "dev", name]);
    let out = cmd("ip", &args);
    if !out.success() {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    let l = v.as_array()?.first()?;
    Some(LinkState {
        name: l["ifname"].as_str()?.to_owned(),
        mac: l["address"].as_str().unwrap_or_default().to_owned(),
        mtu: l["mtu"].as_u64()? as u32,
        up: l["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        altnames: l["altnames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A fake SR-IOV NIC: one PF with `n` stand-in VFs, its sysfs tree, a fake PF state file and a
/// private WEFT_STATE_DIR.
pub struct FakeSriov {
    dir: TempDir,
    pub pf_name: String,
    pub pf_pci: String,
    pub vfs: Vec<StandIn>,
    /// Where the kernel would keep the PCI devices of this fake tree.
    bus_dir: PathBuf,
}

/// The PF's PCI address of fixture bus `bus`, and VF `i`'s (function 0..7 on devices 2, 3, ...).
fn vf_pci(bus: u8, i: u32) -> String {
    format!("0000:{bus:02x}:{:02x}.{}", 2 + i / 8, i % 8)
}

/// A VF's PF-side state as a fresh VF reports it (`host::sriov::VfState`).
pub fn fresh_vf_state() -> Value {
    json!({"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0, "vlan_proto": "802.1Q",
           "spoofchk": true, "trust": false, "link_state": "auto",
           "min_tx_rate": 0, "max_tx_rate": 0})
}

impl FakeSriov {
    /// `n` stand-ins of `kind`, each up with its wire up (carrier), MTU 1500.
    pub fn new(n: u32, kind: Kind) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("weft-sriov-fake-")
            .tempdir()
            .expect("temp dir");
        let bus = 0x5e;
        let pf_pci = format!("0000:{bus:02x}:00.0");
        let bus_dir = dir.path().join("sys/devices/pci0000:00/0000:00:03.0");
        let mut fake = FakeSriov {
            pf_name: unique_ifname("wpf"),
            pf_pci,
            vfs: Vec::new(),
            bus_dir,
            dir,
        };
        let root = fake.sysfs_root();
        std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        for d in ["iavf", "vfio-pci"] {
            std::fs::create_dir_all(root.join("bus/pci/drivers").join(d)).unwrap();
        }
        let pf_dir = fake.device_dir(&fake.pf_pci.clone());
        std::fs::create_dir_all(pf_dir.join("net").join(&fake.pf_name)).unwrap();
        std::fs::write(pf_dir.join("sriov_numvfs"), n.to_string()).unwrap();
        fake.link_device(&fake.pf_pci.clone());
        let mut pf_vfs = serde_json::Map::new();
        for i in 0..n {
            let pci = vf_pci(bus, i);
            let name = unique_ifname("wvf");
            let wire = unique_ifname("wvw");
            match kind {
                Kind::Veth => {
                    must(
                        "ip",
                        &["link", "add", &name, "type", "veth", "peer", "name", &wire],
                    );
                }
                Kind::Macvlan => {
                    let peer = unique_ifname("wvp");
                    must(
                        "ip",
                        &["link", "add", &wire, "type", "veth", "peer", "name", &peer],
                    );
                    must("ip", &["link", "set", &peer, "up"]);
                    must(
                        "ip",
                        &[
                            "link", "add", &name, "link", &wire, "type", "macvlan", "mode",
                            "bridge",
                        ],
                    );
                }
            }
            must("ip", &["link", "set", &wire, "up"]);
            must("ip", &["link", "set", &name, "up"]);
            let state = link_state(None, &name).expect("stand-in exists");
            let vf_dir = fake.device_dir(&pci);
            std::fs::create_dir_all(vf_dir.join("net").join(&name)).unwrap();
            symlink(format!("../{pci}"), pf_dir.join(format!("virtfn{i}"))).unwrap();
            symlink(format!("../{}", fake.pf_pci), vf_dir.join("physfn")).unwrap();
            symlink("../../../../bus/pci/drivers/iavf", vf_dir.join("driver")).unwrap();
            fake.link_device(&pci);
            pf_vfs.insert(i.to_string(), fresh_vf_state());
            fake.vfs.push(StandIn {
                pci,
                index: i,
                name,
                wire,
                mac: state.mac,
                mtu: state.mtu,
            });
        }
        fake.write_pf(&json!({"pfs": {fake.pf_name.clone(): {"vfs": pf_vfs}}, "calls": []}));
        std::fs::create_dir_all(fake.state_dir()).unwrap();
        fake
    }

    /// `<root>/bus/pci/devices/<pci>` → the device directory, as the kernel links it.
    fn link_device(&self, pci: &str) {
        let target = Path::new("../../..").join(
            self.device_dir(pci)
                .strip_prefix(self.sysfs_root())
                .unwrap(),
        );
        symlink(target, self.sysfs_root().join("bus/pci/devices").join(pci)).unwrap();
    }

    fn device_dir(&self, pci: &str) -> PathBuf {
        self.bus_dir.join(pci)
    }

    /// The fake sysfs root (`WEFT_SYSFS_ROOT`).
    pub fn sysfs_root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// The fake PF's state file (`WEFT_SRIOV_FAKE_PF`).
    pub fn pf_file(&self) -> PathBuf {
        self.dir.path().join("pf.json")
    }

    /// This fixture's `WEFT_STATE_DIR` (records of weft-sriov and weft-ipam).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The three variables that point the plugin at this fixture.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let s = |p: PathBuf| p.to_str().expect("UTF-8 temp path").to_owned();
        vec![
            ("WEFT_SYSFS_ROOT", s(self.sysfs_root())),
            ("WEFT_SRIOV_FAKE_PF", s(self.pf_file())),
            ("WEFT_STATE_DIR", s(self.state_dir())),
        ]
    }

    /// The fake PF's whole state (`pfs` and `calls`).
    pub fn pf(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.pf_file()).expect("read fake PF"))
            .expect("fake PF is JSON")
    }

    pub fn write_pf(&self, state: &Value) {
        std::fs::write(self.pf_file(), serde_json::to_vec_pretty(state).unwrap()).unwrap();
    }

    /// VF `i`'s PF-side state now.
    pub fn vf_pf_state(&self, i: u32) -> Value {
        self.pf()["pfs"][&self.pf_name]["vfs"][i.to_string()].clone()
    }

    /// The fake PF's `set` calls, as `(vf, setting)`.
    pub fn pf_sets(&self) -> Vec<(u64, Value)> {
        self.pf()["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["op"] == "set")
            .map(|c| (c["vf"].as_u64().unwrap(), c["setting"].clone()))
            .collect()
    }

    /// Makes the fake PF's driver refuse `what` (setting names, or "state").
    pub fn pf_unsupported(&self, what: &[&str]) {
        let mut s = self.pf();
        s["pfs"][&self.pf_name]["unsupported"] = json!(what);
        self.write_pf(&s);
    }

    /// Makes the fake PF acknowledge the next `n` sets of `setting` without applying them.
    pub fn pf_flaky(&self, setting: &str, n: u32) {
        let mut s = self.pf();
        s["pfs"][&self.pf_name]["flaky"][setting] = json!(n);
        self.write_pf(&s);
    }

    /// Removes the PF from the fake: it answers like a netdev without SR-IOV.
    pub fn pf_forget(&self) {
        let mut s = self.pf();
        s["pfs"] = json!({});
        self.write_pf(&s);
    }

    /// Points VF `i`'s sysfs `net/` at `name` (or empties it), as the kernel's sysfs shows a
    /// VF after it was renamed or moved.
    pub fn set_netdev(&self, i: usize, name: Option<&str>) {
        let net = self.device_dir(&self.vfs[i].pci).join("net");
        let _ = std::fs::remove_dir_all(&net);
        std::fs::create_dir_all(&net).unwrap();
        if let Some(n) = name {
            std::fs::create_dir_all(net.join(n)).unwrap();
        }
    }

    /// The kernel's part when the netns holding VF `i` dies: the VF comes back to the host under
    /// `name` (the pod's ifname) with the MAC and MTU the pod had, and sysfs shows it there.
    /// A veth stand-in died with the netns, so a new one of that name takes its place (its peer
    /// is the wire again, up). Returns the guard of the returned netdev.
    pub fn hand_back(&self, i: usize, name: &str, mac: &str, mtu: Option<u32>) -> HostLink {
        let link = HostLink::adopt(name);
        let mtu = mtu.map(|m| m.to_string());
        let mut args = vec!["link", "add", name, "address", mac];
        if let Some(m) = &mtu {
            args.extend(["mtu", m.as_str()]);
        }
        args.extend(["type", "veth", "peer", "name", &self.vfs[i].wire]);
        must("ip", &args);
        must("ip", &["link", "set", &self.vfs[i].wire, "up"]);
        self.set_netdev(i, Some(name));
        link
    }

    /// Binds VF `i` to `driver` in sysfs; a user-space driver also takes its netdev away.
    pub fn bind(&self, i: usize, driver: &str) {
        let dir = self.device_dir(&self.vfs[i].pci);
        let link = dir.join("driver");
        let _ = std::fs::remove_file(&link);
        std::fs::create_dir_all(self.sysfs_root().join("bus/pci/drivers").join(driver)).unwrap();
        symlink(format!("../../../../bus/pci/drivers/{driver}"), link).unwrap();
    }

    /// The host-side state of VF `i` under its original name, if it is there.
    pub fn host_state(&self, i: usize) -> Option<LinkState> {
        link_state(None, &self.vfs[i].name)
    }
}

impl Drop for FakeSriov {
    fn drop(&mut self) {
        // Stand-ins a test left in a netns go with that netns (TestNetns deletes its links).
        for vf in &self.vfs {
            for name in [&vf.name, &vf.wire] {
                if host_link_exists(name) {
                    let _ = cmd("ip", &["link", "del", name]);
                }
            }
        }
    }
}
