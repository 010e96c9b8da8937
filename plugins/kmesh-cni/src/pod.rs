//! Finding the pod in the main plugin's result and on the host: its interface, addresses and
//! MAC inside the netns, and the host-side veth peer the tc program attaches to.

use crate::error::{KmeshError, Result};
use conf::{CniResult, Request};
use host::{HostError, LinkInfo};
use std::net::IpAddr;
use std::path::PathBuf;

/// A veth-attached pod as kmesh-cni sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub netns: PathBuf,
    /// The pod's addresses from prevResult (those bound to our interface).
    pub ips: Vec<IpAddr>,
    pub pod_mac: [u8; 6],
    pub host_veth: LinkInfo,
    pub host_mac: [u8; 6],
    /// The host routes to the pod (ptp); false when the host veth is a bridge port.
    pub routed: bool,
    /// The pod netns's cookie (the `managed` map key), when the kernel has one (>= 5.14).
    pub netns_cookie: Option<u64>,
}

/// Why a pod gets no fast path even though it wanted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAttachable {
    /// prevResult has no interface called `CNI_IFNAME` inside a sandbox.
    NoContainerInterface,
    /// The container interface is not one end of a veth pair with the other end in the host
    /// (macvlan, ipvlan, an SR-IOV VF, ...).
    NotVeth,
    /// prevResult carries no address for the interface.
    NoAddresses,
}

impl std::fmt::Display for NotAttachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotAttachable::NoContainerInterface => {
                "prevResult has no container interface for CNI_IFNAME"
            }
            NotAttachable::NotVeth => "container interface is not a veth with a host-side peer",
            NotAttachable::NoAddresses => "prevResult has no addresses for the container interface",
        })
    }
}

/// The addresses prevResult binds to the container interface `ifname`: entries indexing it,
/// plus entries without an index (IPAM-shaped results passed straight through).
pub fn pod_ips(prev: &CniResult, ifname: &str) -> Option<Vec<IpAddr>> {
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))?;
    Some(
        prev.ips
            .iter()
            .filter(|ip| ip.interface.is_none_or(|i| i == index))
            .map(|ip| ip.address.ip())
            .collect(),
    )
}

/// Finds the pod on the host. `Ok(Err(_))` means "not something we attach to" (pass through);
/// `Err` means the host could not be asked.
pub fn discover(
    req: &Request,
    prev: &CniResult,
) -> Result<std::result::Result<PodNet, NotAttachable>> {
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| KmeshError::Env("CNI_NETNS missing".into()))?;
    let ifname = &req.env.ifname;
    let Some(ips) = pod_ips(prev, ifname) else {
        return Ok(Err(NotAttachable::NoContainerInterface));
    };
    if ips.is_empty() {
        return Ok(Err(NotAttachable::NoAddresses));
    }
    let pair = match host::find_veth_pair(&netns, ifname) {
        Ok(Some(pair)) => pair,
        Ok(None) | Err(HostError::NotVeth { .. }) => return Ok(Err(NotAttachable::NotVeth)),
        Err(e) => return Err(e.into()),
    };
    Ok(Ok(PodNet {
        pod_mac: parse_mac(pair.inside.mac.as_deref())?,
        host_mac: parse_mac(pair.host.mac.as_deref())?,
        routed: pair.host.controller.is_none(),
        netns,
        ips,
        host_veth: pair.host,
        netns_cookie: pair.netns_cookie,
    }))
}

pub fn parse_mac(mac: Option<&str>) -> Result<[u8; 6]> {
    let bad = || KmeshError::Link(format!("link has no Ethernet MAC ({mac:?})"));
    let mac = mac.ok_or_else(bad)?;
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ips_of_our_interface_only() {
        let prev = CniResult::decode(
            &json!({"interfaces":[{"name":"cni0"},{"name":"vethx"},{"name":"eth0","sandbox":"/var/run/netns/p"}],
                "ips":[{"interface":2,"address":"10.0.0.5/24"},{"interface":0,"address":"10.0.0.1/24"},
                       {"address":"fd00::5/64"}]}),
            conf::Version::V1_0_0,
        )
        .unwrap();
        let ips = pod_ips(&prev, "eth0").unwrap();
        assert_eq!(
            ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(pod_ips(&prev, "net1").is_none());
        assert!(
            pod_ips(&prev, "cni0").is_none(),
            "host-side interfaces have no sandbox"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac(Some("0a:58:0a:01:00:02")).unwrap(),
            [0x0a, 0x58, 0x0a, 1, 0, 2]
        );
        for bad in [
            None,
            Some(""),
            Some("0a:58"),
            Some("0a:58:0a:01:00:02:03"),
            Some("zz:58:0a:01:00:02"),
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }
}
