//! Who an attachment is: the spec's triple (network name, container ID, ifname). Every record and
//! reservation weft keeps is keyed by it, so that DEL and GC of one network never touch another
//! network's state (a node runs many networks: multus secondary networks, a conflist per tenant,
//! networks sharing a `network_name` pool).
//!
//! Records written by weft releases before network scoping name no network. They are
//! *legacy* keys: a request for `(net, cid, ifname)` is still answered by a legacy record of
//! `(cid, ifname)` (an ifname is unique inside one container's netns, so the pair identifies the
//! attachment on a node), and the record is adopted into `net` when a verb of `net` names it.
//! GC never removes a legacy record for not being listed: it cannot know which network's list
//! the record belongs on.

use crate::env::{validate_container_id, validate_ifname, validate_network_name};
use crate::error::Result;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    /// `None` only for legacy records (see the module docs).
    network: Option<String>,
    container_id: String,
    ifname: String,
}

impl AttachmentKey {
    /// Validates every part before it can become a file name or an etcd key segment.
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Result<Self> {
        validate_network_name(network)?;
        Self::legacy(container_id, ifname).map(|k| k.in_network(network))
    }

    /// A key written before records named their network.
    pub fn legacy(container_id: &str, ifname: &str) -> Result<Self> {
        validate_container_id(container_id)?;
        validate_ifname(ifname)?;
        Ok(AttachmentKey {
            network: None,
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }

    /// This attachment in `network` (adopting a legacy key). `network` must be valid: it comes
    /// from another validated key or config.
    pub fn in_network(&self, network: &str) -> Self {
        AttachmentKey {
            network: Some(network.to_owned()),
            ..self.clone()
        }
    }

    pub fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn is_legacy(&self) -> bool {
        self.network.is_none()
    }

    /// Same container and interface, whatever the network.
    pub fn same_interface(&self, other: &AttachmentKey) -> bool {
        self.container_id == other.container_id && self.ifname == other.ifname
    }

    /// Whether the state stored under `self` serves a request for `wanted`: the same key, or a
    /// legacy key of the same interface.
    pub fn answers_to(&self, wanted: &AttachmentKey) -> bool {
        self.same_interface(wanted) && (self.network.is_none() || self.network == wanted.network)
    }
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.network {
            Some(n) => write!(f, "{n}/{}/{}", self.container_id, self.ifname),
            None => write!(
                f,
                "{}/{} (no network: legacy)",
                self.container_id, self.ifname
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_validated() {
        assert!(AttachmentKey::new("net1", "c1", "eth0").is_ok());
        for (n, c, i) in [
            ("../x", "c1", "eth0"),
            ("net1", "../c", "eth0"),
            ("net1", "c1", "a/b"),
            ("", "c1", "eth0"),
            ("net1", "c1", "0123456789abcdef"),
        ] {
            assert!(AttachmentKey::new(n, c, i).is_err(), "{n} {c} {i}");
        }
    }

    #[test]
    fn legacy_keys_answer_for_every_network_own_keys_only_for_theirs() {
        let a1 = AttachmentKey::new("net1", "c1", "eth0").unwrap();
        let a2 = AttachmentKey::new("net2", "c1", "eth0").unwrap();
        let old = AttachmentKey::legacy("c1", "eth0").unwrap();
        assert!(a1.answers_to(&a1));
        assert!(!a1.answers_to(&a2));
        assert!(old.answers_to(&a1) && old.answers_to(&a2));
        assert!(!AttachmentKey::new("net1", "c1", "net1")
            .unwrap()
            .answers_to(&a1));
        assert_eq!(old.in_network("net1"), a1);
        assert!(old.is_legacy() && !a1.is_legacy());
    }
}
