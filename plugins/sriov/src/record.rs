//! What weft-sriov keeps on disk, under `/var/lib/cni/weft-sriov/` (or `$WEFT_STATE_DIR`):
//!
//! ```text
//! <network>/<containerID>:<ifname>   Record: one per attachment, 0600 (host::RecordStore)
//! _vf/<pci>.lock                     per-VF flock: one ADD/DEL/GC of a VF at a time
//! _vf/<pci with '-' for ':'>:owner   VfOwner: which attachment holds the VF, and its netns
//! ```
//! `_vf` cannot be a network (network names start with a letter or digit), so GC of a network
//! never sees it. The owner files reuse the record store's atomic write (keys without a
//! network: the VF's PCI address stands where a container ID would).
//!
//! A record is written before the first side effect and holds everything DEL and GC need
//! without the config: the VF and its PF, the VF netdev as ADD found it (name, index, MAC,
//! MTU, up, altnames), the MAC/MTU ADD set, the VF's PF-side state before ADD and the settings
//! ADD applied, the mode (netdev, or DPDK with its driver) and the owning netns (path and
//! cookie). It is removed only after all of that is undone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use conf::AttachmentKey;
use host::sriov::{MacAddr, VfSetting, VfState};
use host::{PciAddress, RecordStore};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SriovError};

/// The record format written by this release.
pub const RECORD_VERSION: u32 = 1;

/// The VF netdev as ADD found it in the host, to restore on DEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalNetdev {
    pub name: String,
    /// ifindex in the host netns at ADD.
    pub index: u32,
    pub mac: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub altnames: Vec<String>,
}

/// How the VF is handed to the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mode {
    /// A kernel netdev moved into the pod's netns as `CNI_IFNAME`.
    Netdev {
        original: OriginalNetdev,
        /// What ADD set on the netdev in the pod; `None` = left as found.
        mac: Option<MacAddr>,
        mtu: Option<u32>,
    },
    /// Bound to a user-space driver (vfio-pci, ...): no netdev, only PF-side settings.
    Dpdk { driver: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The pod's netns as ADD got it, and its cookie (unique per boot: tells a reused path
    /// from the pod's own netns).
    pub netns: PathBuf,
    pub netns_cookie: u64,
    pub pci: PciAddress,
    pub pf_pci: PciAddress,
    /// The PF's netdev in the host (where `IFLA_VF_*` requests go).
    pub pf: Option<String>,
    /// The VF's index on its PF.
    pub vf_index: u32,
    pub mode: Mode,
    /// The VF's PF-side state before ADD (admin MAC, VLAN, ...); `None` when the PF does not
    /// report it, which is only accepted when no PF-side setting is configured.
    pub pf_original: Option<VfState>,
    /// PF-side settings in the order ADD applies them (DEL undoes them in reverse).
    pub pf_settings: Vec<VfSetting>,
}

/// `netns` still exists and is the netns whose cookie ADD recorded (a path can be reused by
/// another pod's netns).
fn netns_is_still(netns: &Path, cookie: u64) -> bool {
    host::netns_cookie(netns).is_ok_and(|c| c == cookie)
}

impl Record {
    /// The pod's netns still exists and is still the pod's (the same check as [`VfOwner::alive`]).
    pub fn netns_alive(&self) -> bool {
        netns_is_still(&self.netns, self.netns_cookie)
    }

    /// The VF's netdev as the pod sees it (`CNI_IFNAME`), or the DPDK driver it is bound to.
    pub fn device(&self) -> String {
        match &self.mode {
            Mode::Netdev { original, .. } => {
                format!("{} (host name {})", self.ifname, original.name)
            }
            Mode::Dpdk { driver } => format!("bound to {driver}"),
        }
    }
}

/// Which attachment holds a VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfOwner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub netns_cookie: u64,
}

impl VfOwner {
    pub fn new(key: &AttachmentKey, netns: &Path, netns_cookie: u64) -> Self {
        VfOwner {
            network: key.network().unwrap_or_default().to_owned(),
            container_id: key.container_id().to_owned(),
            ifname: key.ifname().to_owned(),
            netns: netns.to_path_buf(),
            netns_cookie,
        }
    }

    pub fn key(&self) -> Result<AttachmentKey> {
        Ok(AttachmentKey::new(
            &self.network,
            &self.container_id,
            &self.ifname,
        )?)
    }

    /// The owner's netns still exists and is still the same netns (not a reused path).
    pub fn alive(&self) -> bool {
        netns_is_still(&self.netns, self.netns_cookie)
    }
}

/// How long an ADD/DEL waits for another call on the same VF before asking to try again.
pub const VF_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-VF locks and owner files.
#[derive(Debug, Clone)]
pub struct VfStore {
    dir: PathBuf,
    owners: RecordStore,
}

/// A held per-VF lock; released on drop.
#[derive(Debug)]
pub struct VfLock {
    _lock: host::lock::Locked,
}

impl VfStore {
    /// The VF store beside `records` (the plugin's record store).
    pub fn new(records: &RecordStore) -> Self {
        let dir = records.dir().join("_vf");
        VfStore {
            owners: RecordStore::new(&dir),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `0000:af:06.0` → `0000-af-06.0`: a valid container-ID-shaped key part.
    fn key(pci: &PciAddress) -> AttachmentKey {
        AttachmentKey::legacy(&pci.as_str().replace(':', "-"), "owner")
            .expect("a validated PCI address makes a valid key")
    }

    /// Takes the VF's lock, waiting at most [`VF_LOCK_TIMEOUT`].
    pub fn lock(&self, pci: &PciAddress) -> Result<VfLock> {
        let path = self.dir.join(format!("{pci}.lock"));
        match host::lock::lock_file_within(&path, VF_LOCK_TIMEOUT)? {
            Some(lock) => Ok(VfLock { _lock: lock }),
            None => Err(SriovError::LockTimeout { pci: pci.clone() }),
        }
    }

    pub fn owner(&self, pci: &PciAddress) -> Result<Option<VfOwner>> {
        Ok(self.owners.read(&Self::key(pci))?)
    }

    pub fn claim(&self, pci: &PciAddress, owner: &VfOwner) -> Result<()> {
        Ok(self.owners.write(&Self::key(pci), owner)?)
    }

    pub fn release(&self, pci: &PciAddress) -> Result<()> {
        self.owners.remove(&Self::key(pci))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use host::sriov::{VfLinkState, VlanProto};

    fn pci() -> PciAddress {
        PciAddress::parse("0000:af:06.0").unwrap()
    }

    #[test]
    fn owner_files_and_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let vfs = VfStore::new(&RecordStore::new(tmp.path().join("weft-sriov")));
        let key = AttachmentKey::new("net1", "c1", "net1").unwrap();
        assert_eq!(vfs.owner(&pci()).unwrap(), None);
        let _l = vfs.lock(&pci()).unwrap();
        let owner = VfOwner::new(&key, Path::new("/var/run/netns/gone"), 7);
        vfs.claim(&pci(), &owner).unwrap();
        assert_eq!(vfs.owner(&pci()).unwrap(), Some(owner.clone()));
        assert_eq!(owner.key().unwrap(), key);
        assert!(!owner.alive(), "a netns that does not exist is not alive");
        let files: Vec<String> = std::fs::read_dir(vfs.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            files.contains(&"0000:af:06.0.lock".to_string()),
            "{files:?}"
        );
        assert!(
            files.contains(&"0000-af-06.0:owner".to_string()),
            "{files:?}"
        );
        vfs.release(&pci()).unwrap();
        vfs.release(&pci()).unwrap();
        assert_eq!(vfs.owner(&pci()).unwrap(), None);
    }

    #[test]
    fn record_roundtrip() {
        let r = Record {
            version: RECORD_VERSION,
            network: "sriov-net".into(),
            container_id: "c1".into(),
            ifname: "net1".into(),
            netns: "/var/run/netns/cni-1".into(),
            netns_cookie: 4096,
            pci: pci(),
            pf_pci: PciAddress::parse("0000:af:00.1").unwrap(),
            pf: Some("ens1f1".into()),
            vf_index: 3,
            mode: Mode::Netdev {
                original: OriginalNetdev {
                    name: "ens1f1v3".into(),
                    index: 12,
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: 1500,
                    up: true,
                    altnames: vec!["enp175s6".into()],
                },
                mac: Some(MacAddr::parse("ca:fe:00:00:00:01").unwrap()),
                mtu: None,
            },
            pf_original: Some(VfState {
                spoofchk: true,
                link_state: VfLinkState::Auto,
                ..VfState::default()
            }),
            pf_settings: vec![VfSetting::Vlan {
                vlan: 100,
                qos: 0,
                proto: VlanProto::Dot1Q,
            }],
        };
        let json = serde_json::to_string_pretty(&r).unwrap();
        assert!(json.contains("\"type\": \"netdev\""), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
        let dpdk = Mode::Dpdk {
            driver: "vfio-pci".into(),
        };
        assert_eq!(
            serde_json::to_value(&dpdk).unwrap(),
            serde_json::json!({"type": "dpdk", "driver": "vfio-pci"})
        );
    }
}
