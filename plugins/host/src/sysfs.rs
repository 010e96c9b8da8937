//! PCI devices in sysfs: SR-IOV VFs, their PF, their netdevs and their driver.
//!
//! The kernel lays a VF out as (every `->` a symlink, relative in the real tree):
//! ```text
//! <root>/bus/pci/devices/<vf-bdf> -> ../../../devices/pci0000:00/.../<vf-bdf>
//! <vf dir>/physfn                 -> ../<pf-bdf>              the PF's device directory
//! <vf dir>/net/<ifname>/                                      the VF's netdev (netdev mode)
//! <vf dir>/driver                 -> ../../../bus/pci/drivers/<name>   iavf, mlx5_core, vfio-pci, ...
//! <pf dir>/virtfn<N>              -> ../<vf-bdf>              N = the VF index the PF knows it by
//! <pf dir>/net/<pf-ifname>/
//! ```
//! `net/` only lists netdevs of the network namespace sysfs was mounted from: a VF moved into a
//! pod has an empty `net/` on the host.
//!
//! The root is `/sys`, or `$WEFT_SYSFS_ROOT` when set and non-empty. That variable is a **test
//! hook**: this kernel has no SR-IOV, so weft's tests point it at a fake tree of exactly this
//! shape whose `net/` entries name veth/macvlan netdevs standing in for VFs.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Default sysfs mount point.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
/// Environment variable redirecting the sysfs root (test hook, see the module docs).
pub const SYSFS_ROOT_ENV: &str = "WEFT_SYSFS_ROOT";

/// Drivers that bind a VF for user space (DPDK): such a VF has no netdev.
pub const USERSPACE_DRIVERS: [&str; 3] = ["vfio-pci", "uio_pci_generic", "igb_uio"];

/// Whether `driver` hands the device to user space (no kernel netdev).
pub fn is_userspace_driver(driver: &str) -> bool {
    USERSPACE_DRIVERS.contains(&driver)
}

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// Not a PCI address of the form `0000:af:06.0` (domain:bus:device.function).
    #[error("invalid PCI address {value:?}: {reason}")]
    InvalidPciAddress { value: String, reason: &'static str },

    /// No such PCI device.
    #[error("PCI device {pci} does not exist ({})", path.display())]
    NoDevice { pci: PciAddress, path: PathBuf },

    /// The device exists but has no `physfn`: it is not a VF.
    #[error("PCI device {pci} is not an SR-IOV VF (it has no physfn link)")]
    NotAVf { pci: PciAddress },

    /// The PF does not list the VF among its `virtfn<N>` links.
    #[error("VF {pci} is not among the virtfn links of its PF {pf}")]
    VfIndexUnknown { pci: PciAddress, pf: PciAddress },

    /// Reading the tree failed; `context` names the path.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl SysfsError {
    fn io(path: &Path, what: &str, source: io::Error) -> Self {
        SysfsError::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

/// A validated PCI address `dddd:bb:dd.f`, lowercase: safe to use as a path component and a
/// file name (no `/`, no `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciAddress(String);

impl PciAddress {
    /// Accepts `dddd:bb:dd.f` and the short `bb:dd.f` (domain 0000), in any case; the result is
    /// lowercase with a domain, as sysfs names devices. Anything else is refused.
    pub fn parse(value: &str) -> Result<PciAddress, SysfsError> {
        let bad = |reason| SysfsError::InvalidPciAddress {
            value: value.to_owned(),
            reason,
        };
        let lower = value.to_ascii_lowercase();
        let full = if lower.len() == 7 {
            format!("0000:{lower}")
        } else {
            lower
        };
        // ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$
        let b = full.as_bytes();
        if b.len() != 12 {
            return Err(bad("want domain:bus:device.function, e.g. 0000:af:06.0"));
        }
        let hex = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_hexdigit);
        if !(hex(0..4) && b[4] == b':' && hex(5..7) && b[7] == b':' && hex(8..10)) {
            return Err(bad("want domain:bus:device.function, e.g. 0000:af:06.0"));
        }
        if b[10] != b'.' || !(b'0'..=b'7').contains(&b[11]) {
            return Err(bad("the function must be .0 to .7"));
        }
        Ok(PciAddress(full))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PciAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PciAddress::parse(&s).map_err(|e| e.to_string())
    }
}

impl From<PciAddress> for String {
    fn from(p: PciAddress) -> String {
        p.0
    }
}

/// One SR-IOV VF as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfDevice {
    pub pci: PciAddress,
    /// The PF's PCI address (target of `physfn`).
    pub pf_pci: PciAddress,
    /// The PF's netdev (first entry of `physfn/net/`); `None` when the PF has none here.
    pub pf_netdev: Option<String>,
    /// The index the PF knows the VF by (`virtfn<N>`): what `IFLA_VF_*` requests name.
    pub index: u32,
    /// The VF's netdevs in this sysfs' netns, sorted (usually one; none in DPDK mode or while
    /// the VF is in a pod).
    pub netdevs: Vec<String>,
    /// The bound driver's name, if any.
    pub driver: Option<String>,
}

/// A sysfs tree: `/sys`, or the root named by `$WEFT_SYSFS_ROOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    /// `$WEFT_SYSFS_ROOT` if set and non-empty, else `/sys`.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os(SYSFS_ROOT_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSFS_ROOT)),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/bus/pci/devices`: where every PCI device has its entry.
    pub fn pci_devices(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    /// `<root>/bus/pci/devices/<pci>` (whether or not it exists).
    pub fn device_dir(&self, pci: &PciAddress) -> PathBuf {
        self.pci_devices().join(pci.as_str())
    }

    fn existing_device_dir(&self, pci: &PciAddress) -> Result<PathBuf, SysfsError> {
        let dir = self.device_dir(pci);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(SysfsError::NoDevice {
                pci: pci.clone(),
                path: dir,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SysfsError::NoDevice {
                pci: pci.clone(),
                path: dir,
            }),
            Err(e) => Err(SysfsError::io(&dir, "stat", e)),
        }
    }

    /// Everything about the VF `pci`: its PF, index, netdevs and driver.
    pub fn vf(&self, pci: &PciAddress) -> Result<VfDevice, SysfsError> {
        let dir = self.existing_device_dir(pci)?;
        let physfn = dir.join("physfn");
        let pf_pci = match link_target_name(&physfn)? {
            Some(name) => PciAddress::parse(&name)?,
            None => return Err(SysfsError::NotAVf { pci: pci.clone() }),
        };
        let index = vf_index(&physfn, pci)?.ok_or_else(|| SysfsError::VfIndexUnknown {
            pci: pci.clone(),
            pf: pf_pci.clone(),
        })?;
        Ok(VfDevice {
            pci: pci.clone(),
            pf_netdev: list_dir(&physfn.join("net"))?.into_iter().next(),
            pf_pci,
            index,
            netdevs: list_dir(&dir.join("net"))?,
            driver: link_target_name(&dir.join("driver"))?,
        })
    }

    /// The netdevs of device `pci` in this sysfs' netns, sorted; empty if it has none.
    pub fn netdevs(&self, pci: &PciAddress) -> Result<Vec<String>, SysfsError> {
        let dir = self.existing_device_dir(pci)?;
        list_dir(&dir.join("net"))
    }

    /// The driver bound to `pci`, if any.
    pub fn driver(&self, pci: &PciAddress) -> Result<Option<String>, SysfsError> {
        let dir = self.existing_device_dir(pci)?;
        link_target_name(&dir.join("driver"))
    }
}

/// The last path component of the symlink `link`'s target; `None` if there is no such link.
fn link_target_name(link: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_link(link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // Not a symlink at all: treat as absent (the kernel only ever makes symlinks here).
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
        Err(e) => Err(SysfsError::io(link, "readlink", e)),
    }
}

/// Sorted entry names of `dir`; empty when it does not exist.
fn list_dir(dir: &Path) -> Result<Vec<String>, SysfsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SysfsError::io(dir, "list", e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SysfsError::io(dir, "list", e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The `N` of the `virtfn<N>` link in the PF directory (reached through `physfn`) that points
/// at `vf`.
fn vf_index(physfn: &Path, vf: &PciAddress) -> Result<Option<u32>, SysfsError> {
    let entries = match fs::read_dir(physfn) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SysfsError::io(physfn, "list", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SysfsError::io(physfn, "list", e))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("virtfn"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if link_target_name(&entry.path())?.as_deref() == Some(vf.as_str()) {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn pci_addresses() {
        for (input, want) in [
            ("0000:af:06.0", "0000:af:06.0"),
            ("0000:AF:06.7", "0000:af:06.7"),
            ("af:06.1", "0000:af:06.1"),
            ("10de:00:1f.3", "10de:00:1f.3"),
        ] {
            assert_eq!(PciAddress::parse(input).unwrap().as_str(), want, "{input}");
        }
        for bad in [
            "",
            "0000:af:06.8",
            "0000:af:06",
            "0000:af:06.0/..",
            "../af:06.0",
            "0000-af-06.0",
            "0000:ag:06.0",
            "00000:af:06.0",
            "0000:af:06.00",
            "eth0",
        ] {
            assert!(PciAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&PciAddress::parse("af:06.1").unwrap()).unwrap();
        assert_eq!(json, "\"0000:af:06.1\"");
        assert!(serde_json::from_str::<PciAddress>("\"../../etc\"").is_err());
    }

    /// The kernel's layout with relative links, as in sriov-cni's fake tree.
    fn tree() -> (tempfile::TempDir, Sysfs) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let bus = root.join("devices/pci0000:ae/0000:ae:00.0");
        let pf = bus.join("0000:af:00.1");
        let vf0 = bus.join("0000:af:06.0");
        let vf1 = bus.join("0000:af:06.1");
        for d in [
            pf.join("net/enp175s0f1"),
            vf0.join("net/enp175s6"),
            vf1.clone(),
            root.join("bus/pci/devices"),
            root.join("bus/pci/drivers/iavf"),
            root.join("bus/pci/drivers/vfio-pci"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        symlink("../0000:af:06.0", pf.join("virtfn0")).unwrap();
        symlink("../0000:af:06.1", pf.join("virtfn1")).unwrap();
        for vf in [&vf0, &vf1] {
            symlink("../0000:af:00.1", vf.join("physfn")).unwrap();
        }
        symlink("../../../../bus/pci/drivers/iavf", vf0.join("driver")).unwrap();
        symlink("../../../../bus/pci/drivers/vfio-pci", vf1.join("driver")).unwrap();
        for (bdf, dir) in [
            ("0000:af:00.1", &pf),
            ("0000:af:06.0", &vf0),
            ("0000:af:06.1", &vf1),
        ] {
            let rel = Path::new("../../..").join(dir.strip_prefix(root).unwrap());
            symlink(rel, root.join("bus/pci/devices").join(bdf)).unwrap();
        }
        let sysfs = Sysfs::new(root);
        (tmp, sysfs)
    }

    #[test]
    fn vf_lookup_follows_the_kernel_layout() {
        let (_t, sysfs) = tree();
        let vf0 = sysfs
            .vf(&PciAddress::parse("0000:af:06.0").unwrap())
            .unwrap();
        assert_eq!(vf0.pf_pci.as_str(), "0000:af:00.1");
        assert_eq!(vf0.pf_netdev.as_deref(), Some("enp175s0f1"));
        assert_eq!(vf0.index, 0);
        assert_eq!(vf0.netdevs, vec!["enp175s6".to_string()]);
        assert_eq!(vf0.driver.as_deref(), Some("iavf"));
        let vf1 = sysfs
            .vf(&PciAddress::parse("0000:af:06.1").unwrap())
            .unwrap();
        assert_eq!(vf1.index, 1);
        assert!(vf1.netdevs.is_empty());
        assert!(is_userspace_driver(vf1.driver.as_deref().unwrap()));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let (_t, sysfs) = tree();
        let pf = PciAddress::parse("0000:af:00.1").unwrap();
        assert!(matches!(sysfs.vf(&pf), Err(SysfsError::NotAVf { .. })));
        let absent = PciAddress::parse("0000:af:07.0").unwrap();
        assert!(matches!(
            sysfs.vf(&absent),
            Err(SysfsError::NoDevice { .. })
        ));
        // A VF whose PF does not list it (sriov_numvfs lowered meanwhile).
        fs::remove_file(sysfs.device_dir(&pf).join("virtfn1")).unwrap();
        let vf1 = PciAddress::parse("0000:af:06.1").unwrap();
        assert!(matches!(
            sysfs.vf(&vf1),
            Err(SysfsError::VfIndexUnknown { .. })
        ));
        assert_eq!(sysfs.driver(&vf1).unwrap().as_deref(), Some("vfio-pci"));
        assert!(sysfs.netdevs(&absent).is_err());
    }

    #[test]
    fn root_from_env_defaults_to_sys() {
        // Only the pure part: tests never mutate the process env.
        assert_eq!(
            Sysfs::new("/sys").pci_devices(),
            Path::new("/sys/bus/pci/devices")
        );
    }
}
