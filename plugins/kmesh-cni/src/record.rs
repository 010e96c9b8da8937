//! What kmesh-cni did for one attachment, kept under /var/lib/cni/kmesh-cni/<cid>:<ifname>.
//!
//! Written before the side effects it lists become visible (with `state: Attaching`), rewritten
//! once they all are (`Attached`), and removed only after they were undone, so a crash at any
//! point leaves a record DEL or GC can finish from.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
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
