//! Changing existing links over rtnetlink: what a plugin needs that hands a host netdev (an
//! SR-IOV VF) to a pod and back — rename, MAC, MTU, up/down, alternative names, netns moves —
//! and the pod's addresses and routes. Read-only lookups of the common fields live in
//! [`crate::link`]; [`Netdev`] adds what a moved device needs (altnames, parent device).
//!
//! Every function takes an rtnetlink [`Handle`], so a caller runs a whole sequence in one
//! netns entry and one socket: `crate::link::netlink(Some(netns), |h| async move { ... })`.

use std::{net::IpAddr, os::fd::RawFd};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, Prop},
    route::RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::{link::format_mac, HostError};

/// One link with everything needed to restore it after a trip through a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netdev {
    pub index: u32,
    pub name: String,
    /// Lowercase `aa:bb:cc:dd:ee:ff`; `None` without a hardware address.
    pub mac: Option<String>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// `IFLA_INFO_KIND` ("veth", "macvlan", ...); `None` for physical NICs and VFs.
    pub kind: Option<String>,
    /// Alternative names (`IFLA_PROP_LIST`/`IFLA_ALT_IFNAME`, Linux ≥ 5.5). They travel with
    /// the device between namespaces and block moves and renames that collide with them.
    pub altnames: Vec<String>,
    /// `IFLA_PARENT_DEV_NAME`: the bus device behind the netdev (the PCI address of a NIC or
    /// VF); `None` for virtual links (veth, macvlan).
    pub parent_dev: Option<String>,
}

/// How to find a link: by ifindex, or by name (the kernel matches altnames too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

fn nl(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> HostError {
    move |source| HostError::Netlink { op, source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| -c.get() == errno))
}

/// Parses one `RTM_NEWLINK`.
pub fn netdev_of(msg: &LinkMessage) -> Netdev {
    let mut dev = Netdev {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        carrier: msg.header.flags.contains(LinkFlags::LowerUp),
        ..Netdev::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => dev.name = n.clone(),
            LinkAttribute::Address(a) if !a.is_empty() => dev.mac = Some(format_mac(a)),
            LinkAttribute::Mtu(m) => dev.mtu = *m,
            LinkAttribute::ParentDevName(p) => dev.parent_dev = Some(p.clone()),
            LinkAttribute::PropList(props) => {
                for p in props {
                    if let Prop::AltIfName(n) = p {
                        dev.altnames.push(n.clone());
                    }
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        dev.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    dev
}

/// The link `by` in the handle's netns; `Ok(None)` if there is none.
pub async fn get(h: &Handle, by: LinkRef<'_>) -> Result<Option<Netdev>, HostError> {
    let req = h.link().get();
    let req = match by {
        LinkRef::Index(0) => return Ok(None),
        LinkRef::Index(i) => req.match_index(i),
        LinkRef::Name(n) if n.is_empty() || n.len() > 15 => return Ok(None),
        LinkRef::Name(n) => req.match_name(n),
    };
    let mut stream = Box::pin(req.execute());
    match stream.next().await {
        None => Ok(None),
        Some(Ok(msg)) => Ok(Some(netdev_of(&msg))),
        Some(Err(e)) if is_errno(&e, libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(nl("get link")(e)),
    }
}

/// Every link in the handle's netns.
pub async fn dump(h: &Handle) -> Result<Vec<Netdev>, HostError> {
    h.link()
        .get()
        .execute()
        .map_ok(|m| netdev_of(&m))
        .try_collect()
        .await
        .map_err(nl("dump links"))
}

/// Attributes to change on one link in one `RTM_SETLINK`. The kernel applies the MAC and MTU
/// before the rename and the rename before the up/down flag, so a down device can be
/// renamed, readdressed and brought up in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
}

impl LinkChange {
    pub fn is_empty(&self) -> bool {
        *self == LinkChange::default()
    }
}

/// Applies `change` to link `index` (nothing to do is no request).
pub async fn change(h: &Handle, index: u32, change: &LinkChange) -> Result<(), HostError> {
    if change.is_empty() {
        return Ok(());
    }
    let mut b = LinkUnspec::new_with_index(index);
    if let Some(name) = &change.name {
        b = b.name(name.clone());
    }
    if let Some(mac) = change.mac {
        b = b.address(mac.to_vec());
    }
    if let Some(mtu) = change.mtu {
        b = b.mtu(mtu);
    }
    b = match change.up {
        Some(true) => b.up(),
        Some(false) => b.down(),
        None => b,
    };
    h.link()
        .set(b.build())
        .execute()
        .await
        .map_err(nl("set link"))
}

/// Moves link `index` into the netns open as `target` (an nsfs fd the caller keeps open),
/// named `name` there. The kernel renames as part of the move when the current name is taken
/// in the target, and right after it otherwise; either failure (`EEXIST`) fails the request.
pub async fn move_to_netns(
    h: &Handle,
    index: u32,
    target: RawFd,
    name: &str,
) -> Result<(), HostError> {
    let msg = LinkUnspec::new_with_index(index)
        .setns_by_fd(target)
        .name(name.to_owned())
        .build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(nl("move link to netns"))
}

/// Adds alternative names to link `index`.
pub async fn add_altnames(h: &Handle, index: u32, names: &[String]) -> Result<(), HostError> {
    if names.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    h.link()
        .property_add(index)
        .alt_ifname(&names)
        .execute()
        .await
        .map_err(nl("add altname"))
}

/// Removes alternative names from link `index`.
pub async fn del_altnames(h: &Handle, index: u32, names: &[String]) -> Result<(), HostError> {
    if names.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    h.link()
        .property_del(index)
        .alt_ifname(&names)
        .execute()
        .await
        .map_err(nl("delete altname"))
}

/// Adds `addr` (address with prefix length) to link `index`.
pub async fn add_address(h: &Handle, index: u32, addr: IpNetwork) -> Result<(), HostError> {
    h.address()
        .add(index, addr.ip(), addr.prefix())
        .execute()
        .await
        .map_err(nl("add address"))
}

/// The addresses (with prefix length) on link `index`.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNetwork>, HostError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("dump addresses"))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            // IFA_LOCAL is the own address on IPv4 (IFA_ADDRESS the peer on p2p links).
            let pick = |local: bool| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) if local => Some(*ip),
                    AddressAttribute::Address(ip) if !local => Some(*ip),
                    _ => None,
                })
            };
            let ip = pick(true).or_else(|| pick(false))?;
            IpNetwork::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}

/// Adds a route to `dst` out of link `index`, via `gw` when given (`ip route add <dst> [via
/// <gw>] dev <link>`; without a gateway the IPv4 route is link-scoped, as iproute2 makes it).
pub async fn add_route(
    h: &Handle,
    index: u32,
    dst: IpNetwork,
    gw: Option<IpAddr>,
) -> Result<(), HostError> {
    // rtnetlink does not export its builder's error type: keep its message.
    let invalid = |e: String| HostError::Io {
        context: format!("route to {dst}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map_err(|e| invalid(e.to_string()))?
        .output_interface(index);
    match gw {
        Some(gw) => b = b.gateway(gw).map_err(|e| invalid(e.to_string()))?,
        None if dst.is_ipv4() => b = b.scope(RouteScope::Link),
        None => {}
    }
    h.route()
        .add(b.build())
        .execute()
        .await
        .map_err(nl("add route"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_altnames_and_parent() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up;
        msg.attributes = vec![
            LinkAttribute::IfName("enp175s6".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(9000),
            LinkAttribute::PropList(vec![Prop::AltIfName("enp175s0f1v0".into())]),
            LinkAttribute::ParentDevName("0000:af:06.0".into()),
        ];
        let dev = netdev_of(&msg);
        assert_eq!(
            dev,
            Netdev {
                index: 7,
                name: "enp175s6".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: 9000,
                up: true,
                carrier: false,
                kind: None,
                altnames: vec!["enp175s0f1v0".into()],
                parent_dev: Some("0000:af:06.0".into()),
            }
        );
        assert!(LinkChange::default().is_empty());
    }

    #[test]
    fn loopback_has_no_parent() {
        let lo = crate::link::netlink(None, |h| async move { get(&h, LinkRef::Name("lo")).await })
            .unwrap()
            .expect("lo exists");
        assert_eq!(lo.parent_dev, None);
        assert!(lo.index > 0);
        let none = crate::link::netlink(None, |h| async move {
            get(&h, LinkRef::Name("weft-absent9")).await
        })
        .unwrap();
        assert!(none.is_none());
    }
}
