//! What kmesh-cni did for one attachment, kept under
//! `/var/lib/cni/kmesh-cni/<network>/<containerID>:<ifname>`.
//!
//! Written before the side effects it lists become visible (with `state: Attaching`), rewritten
//! once they all are (`Attached`), and removed only after they were undone, so a crash at any
//! point leaves a record DEL or GC can finish from. A record holds everything DEL needs (the
//! pin root, the map layout, the network id, every entry with its owner): DEL never trusts the
//! current config over the record.
//!
//! Records written before network scoping (map layout 1) lack `layout`, `network`,
//! `network_id`, `pin_root` and `owner`; they are read with those defaults and undone against
//! the layout-1 maps (`bpf::legacy`).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// kmesh-cni's record store in `dir` (`<state dir>/kmesh-cni`).
///
/// Written through the page cache, never flushed to disk (issue 12: the two record writes and
/// the remove of an ADD+DEL were four fsyncs, most of kmesh-cni's cost in a chain). What a
/// record describes lives only in kernel memory (tc filters and tcx links on the pod's veth,
/// entries in maps pinned on bpffs, which is a RAM file system), so a power loss that could lose
/// the record erases everything it lists too. A record still outlives the plugin being killed:
/// the page cache holds it, and it is written before the side effects it lists. A record left
/// empty or cut short by a power loss is answered by DEL and GC like a record of nothing
/// ([`crate::KmeshCni`]'s DEL removes it and whatever its key alone names).
pub fn store(dir: &Path) -> host::RecordStore {
    host::RecordStore::new(dir).with_durability(host::fsio::Durability::Cache)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Intent recorded; some of the side effects may exist.
    Attaching,
    /// Every side effect below exists.
    Attached,
}

/// One `endpoints` map entry we inserted: enough to rebuild the exact value, so DEL removes it
/// only while it is still ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub routed: bool,
    pub owner: u64,
}

impl EndpointEntry {
    pub fn to_bpf(&self) -> bpf::Endpoint {
        bpf::Endpoint::new(
            self.ifindex,
            self.pod_mac,
            self.host_mac,
            self.routed,
            self.owner,
        )
    }
}

/// The map layout of records written before network scoping.
pub const LAYOUT_1: u32 = 1;

fn layout_1() -> u32 {
    LAYOUT_1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Map layout the entries below live in (`bpf::LAYOUT_VERSION` when written by this release).
    #[serde(default = "layout_1")]
    pub layout: u32,
    /// The CNI network the attachment belongs to.
    #[serde(default)]
    pub network: Option<String>,
    /// `bpf::network_id(network)`: the scope of the `devices` and `endpoints` entries.
    #[serde(default)]
    pub network_id: u64,
    /// Where the maps and the link pin live, as of the ADD.
    #[serde(default)]
    pub pin_root: Option<PathBuf>,
    /// Owner token in the `devices` and `managed` entries (endpoints carry their own).
    #[serde(default)]
    pub owner: u64,
    pub state: State,
    pub netns: String,
    pub host_veth: String,
    pub host_ifindex: u32,
    /// Pin key of the tcx link (also names the attachment in logs).
    pub attach_key: String,
    pub mode: bpf::Mode,
    /// Set once the program is attached.
    pub attachment: Option<bpf::Attachment>,
    pub endpoints: Vec<EndpointEntry>,
    /// `managed` map key, when the pod is enrolled in the mesh.
    pub netns_cookie: Option<u64>,
}

impl Record {
    /// Written by a release before network scoping (entries in the layout-1 maps).
    pub fn is_layout_1(&self) -> bool {
        self.layout == LAYOUT_1
    }

    /// The `devices` entry this attachment inserted (layout 2 and later).
    pub fn device(&self) -> bpf::Device {
        bpf::Device {
            network: self.network_id,
            owner: self.owner,
        }
    }

    /// The `managed` entry this attachment inserted, when enrolled (layout 2 and later).
    pub fn managed(&self) -> bpf::Managed {
        bpf::Managed {
            flags: bpf::MANAGED_F_ENROLLED,
            ifindex: self.host_ifindex,
            owner: self.owner,
        }
    }

    /// The pin root the record's pins live under: its own, or (layout-1 records, which did not
    /// say) the one the current config names.
    pub fn pin_root(&self, configured: &bpf::PinRoot) -> bpf::PinRoot {
        self.pin_root
            .as_ref()
            .map_or_else(|| configured.clone(), bpf::PinRoot::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record exactly as the release before network scoping wrote it.
    const LAYOUT_1_RECORD: &str = r#"{
  "state": "attached",
  "netns": "/var/run/netns/cni-1",
  "host_veth": "veth1234",
  "host_ifindex": 42,
  "attach_key": "c7-00112233445566ff",
  "mode": "tcx",
  "attachment": {"key": "c7-00112233445566ff", "ifname": "veth1234", "ifindex": 42, "mode": "tcx", "prog_id": 77},
  "endpoints": [{"ip": "10.1.0.5", "ifindex": 42, "pod_mac": [2,0,0,0,0,1], "host_mac": [2,0,0,0,0,2], "routed": false, "owner": 99}],
  "netns_cookie": 4096
}"#;

    #[test]
    fn records_of_the_previous_release_are_read_as_layout_1() {
        let r: Record = serde_json::from_str(LAYOUT_1_RECORD).unwrap();
        assert!(r.is_layout_1());
        assert_eq!((r.network.as_deref(), r.pin_root.as_ref()), (None, None));
        let configured = bpf::PinRoot::new("/sys/fs/bpf/configured");
        assert_eq!(r.pin_root(&configured), configured);
        assert_eq!(r.endpoints[0].owner, 99);
        // Written back (adopted into a network) it stays layout 1.
        let again: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
}
