//! Links and addresses over rtnetlink. All of weft's netlink code lives in this module.
//!
//! Every call builds a current-thread tokio runtime on the calling thread (or on the netns
//! thread from [`run_in_netns`] when a netns is given), opens one netlink socket, does its
//! requests and drops both. Plugins are short-lived processes doing a handful of requests, so
//! there is no long-lived runtime and no tokio worker ever enters a namespace.

use std::{future::Future, os::fd::AsRawFd, path::Path};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{self as nl, LinkAttribute, LinkFlags, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
    Handle,
};

use crate::{netns, run_in_netns, HostError};

/// What weft needs to know about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Hardware address as lowercase `aa:bb:cc:dd:ee:ff` (any length), `None` if the link has none.
    pub mac: Option<String>,
    pub mtu: u32,
    /// `IFLA_INFO_KIND`: "veth", "bridge", "macvlan", ...; `None` for physical NICs and `lo`.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFLA_LINK`: for a veth the peer's ifindex (in the netns named by `link_netnsid`, or in
    /// this netns when that is `None`); for vlan/macvlan the lower device.
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the nsid, *as seen from this link's netns*, of the netns holding
    /// `peer_index`. `None` when the peer is in the same netns.
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`: the bridge/bond this link is enslaved to.
    pub controller: Option<u32>,
}

impl LinkInfo {
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// The link called `name` in `netns` (or in the caller's netns for `None`); `Ok(None)` if there
/// is no such link (a name that cannot be an ifname has no link either).
pub fn link_by_name(netns: Option<&Path>, name: &str) -> Result<Option<LinkInfo>, HostError> {
    if name.is_empty() || name.len() > 15 {
        return Ok(None);
    }
    let name = name.to_owned();
    netlink(netns, move |h| async move { get_by_name(&h, &name).await })
}

/// The link with ifindex `index` in `netns` (or the caller's netns); `Ok(None)` if none.
pub fn link_by_index(netns: Option<&Path>, index: u32) -> Result<Option<LinkInfo>, HostError> {
    if index == 0 {
        return Ok(None);
    }
    netlink(netns, move |h| async move { get_by_index(&h, index).await })
}

/// Every link in `netns` (or the caller's netns), in kernel order.
pub fn links(netns: Option<&Path>) -> Result<Vec<LinkInfo>, HostError> {
    netlink(netns, |h| async move {
        h.link()
            .get()
            .execute()
            .map_ok(link_info)
            .try_collect()
            .await
            .map_err(|source| HostError::Netlink {
                op: "dump links",
                source,
            })
    })
}

/// The addresses (with prefix length) on link `ifindex` in `netns` (or the caller's netns).
pub fn addresses(netns: Option<&Path>, ifindex: u32) -> Result<Vec<IpNetwork>, HostError> {
    netlink(netns, move |h| async move {
        let msgs: Vec<AddressMessage> = h
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostError::Netlink {
                op: "dump addresses",
                source,
            })?;
        Ok(msgs.iter().filter_map(address_of).collect())
    })
}

/// A veth pair with one end inside a pod's netns and the other in the caller's netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The end inside the netns (the container interface).
    pub inside: LinkInfo,
    /// Its peer in the caller's netns (the host veth).
    pub host: LinkInfo,
    /// The netns cookie of the pod's netns, read while inside it; `None` where the kernel has
    /// no `SO_NETNS_COOKIE` (before 5.14).
    pub netns_cookie: Option<u64>,
}

/// The veth `ifname` inside `netns` and its host-side peer, looked up in the caller's netns.
/// Everything runs on the calling thread with one tokio runtime: the sockets read in `netns`
/// (a netlink socket and the one the netns cookie is read from) are created there by
/// [`netns::sockets_in_netns`], so no thread enters the pod's namespace: a plugin execs per pod
/// and verb, and pays for a netns thread and a second runtime every time (issue 12).
///
/// The container end's `IFLA_LINK` is the peer's ifindex in another netns. ifindexes are per
/// netns, so a link with that index in the host is only accepted when it is a veth whose own
/// `IFLA_LINK` is the container end and whose `IFLA_LINK_NETNSID` is the host's nsid for `netns`.
///
/// `Ok(None)`: no link `ifname` in `netns`, or its peer is not in the caller's netns.
/// `Err(NotVeth)`: `ifname` exists but is not a veth. `Err(NetnsMissing)`: `netns` is gone.
pub fn find_veth_pair(netns: &Path, ifname: &str) -> Result<Option<VethPair>, HostError> {
    let ns_file = netns::open_netns(netns)?;
    if ifname.is_empty() || ifname.len() > 15 {
        return Ok(None);
    }
    let name = ifname.to_owned();
    netlink(None, move |h| async move {
        // The socket registers with this runtime's reactor, so it is made inside it.
        let (pod_socket, netns_cookie) = netns::sockets_in_netns(&ns_file, netns, || {
            (
                rtnetlink::new_connection(),
                netns::current_netns_cookie().ok(),
            )
        })?;
        let inner = with_handle(
            pod_socket,
            |pod| async move { get_by_name(&pod, &name).await },
        );
        let Some(inner) = inner.await? else {
            return Ok(None);
        };
        if !inner.is_veth() {
            return Err(HostError::NotVeth {
                name: inner.name,
                kind: inner.kind,
            });
        }
        let (Some(peer_index), Some(_)) = (inner.peer_index, inner.link_netnsid) else {
            // No peer netns id: both ends live in `netns`.
            return Ok(None);
        };
        let Some(host) = get_by_index(&h, peer_index).await? else {
            return Ok(None);
        };
        if !host.is_veth() || host.peer_index != Some(inner.index) || host.link_netnsid.is_none() {
            return Ok(None);
        }
        // Dumping `host` made the kernel assign an nsid to the peer netns if it had none.
        let nsid = nsid_of_fd(&h, ns_file.as_raw_fd()).await?;
        Ok(
            (nsid.is_some() && host.link_netnsid == nsid).then_some(VethPair {
                inside: inner,
                host,
                netns_cookie,
            }),
        )
    })
}

/// Runs async netlink work `f` with a fresh rtnetlink handle, inside `netns` when given.
///
/// This is the building block of every function here and the escape hatch for callers that
/// need other requests (`rtnetlink` is re-exported by this crate). When the caller is already
/// inside a tokio runtime the work moves to a scoped thread, because a runtime cannot be
/// started from within another.
pub fn netlink<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, HostError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, HostError>>,
{
    match netns {
        Some(path) => run_in_netns(path, move || block_on_here(f))?,
        None if tokio::runtime::Handle::try_current().is_ok() => {
            std::thread::scope(|s| match s.spawn(move || block_on_here(f)).join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        }
        None => block_on_here(f),
    }
}

fn block_on_here<T, F, Fut>(f: F) -> Result<T, HostError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, HostError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| HostError::io("tokio runtime", e))?;
    // The socket registers with the runtime's reactor, so it is created inside block_on.
    rt.block_on(async move { with_handle(rtnetlink::new_connection(), f).await })
}

/// Runs `f` with the handle of a new rtnetlink connection (`socket`, as
/// `rtnetlink::new_connection` returns it) whose task lives exactly as long as `f`.
async fn with_handle<T, C, M, F, Fut>(
    socket: std::io::Result<(C, Handle, M)>,
    f: F,
) -> Result<T, HostError>
where
    C: Future<Output = ()> + Send + 'static,
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, HostError>>,
{
    let (conn, handle, _) = socket.map_err(|e| HostError::io("netlink socket", e))?;
    let conn = tokio::spawn(conn);
    let r = f(handle).await;
    conn.abort();
    r
}

/// `ENODEV`: the kernel's answer to a get for a link that does not exist.
fn is_no_such_link(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| -c.get() == libc::ENODEV))
}

async fn first_link(
    mut stream: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>> + Unpin,
    op: &'static str,
) -> Result<Option<LinkInfo>, HostError> {
    match stream.next().await {
        None => Ok(None),
        Some(Ok(msg)) => Ok(Some(link_info(msg))),
        Some(Err(e)) if is_no_such_link(&e) => Ok(None),
        Some(Err(source)) => Err(HostError::Netlink { op, source }),
    }
}

async fn get_by_name(h: &Handle, name: &str) -> Result<Option<LinkInfo>, HostError> {
    let stream = h.link().get().match_name(name).execute();
    first_link(Box::pin(stream), "get link by name").await
}

async fn get_by_index(h: &Handle, index: u32) -> Result<Option<LinkInfo>, HostError> {
    let stream = h.link().get().match_index(index).execute();
    first_link(Box::pin(stream), "get link by index").await
}

/// `RTM_GETNSID` for a namespace fd: its nsid as seen from the handle's netns, `None` if the
/// kernel has not assigned one.
async fn nsid_of_fd(h: &Handle, fd: i32) -> Result<Option<i32>, HostError> {
    let err = |source| HostError::Netlink {
        op: "get nsid",
        source,
    };
    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(fd as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut responses = h.clone().request(req).map_err(err)?;
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(err(rtnetlink::Error::NetlinkError(e)))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

fn link_info(msg: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..LinkInfo::default()
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::Address(a) if !a.is_empty() => info.mac = Some(format_mac(&a)),
            LinkAttribute::Mtu(m) => info.mtu = m,
            LinkAttribute::Link(i) => info.peer_index = Some(i),
            LinkAttribute::LinkNetNsId(id) => info.link_netnsid = Some(id),
            LinkAttribute::Controller(i) => info.controller = Some(i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let nl::LinkInfo::Kind(k) = i {
                        info.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Lowercase, colon-separated hex: the form CNI results carry.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// IPv4 puts the interface's own address in `IFA_LOCAL` (`IFA_ADDRESS` is the peer on
/// point-to-point links); IPv6 only sends `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<IpNetwork> {
    let pick = |want_local: bool| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    let ip = pick(true).or_else(|| pick(false))?;
    IpNetwork::new(ip, msg.header.prefix_len).ok()
}

/// The BPF program run by the tc filter with this priority and handle on the clsact ingress
/// hook of `ifindex`: `Some(program id)` (0 if the filter names none), `None` when there is no
/// such filter (a device without a clsact qdisc, or gone altogether, has none). The bpf crate
/// uses this to tell whether its legacy-tc attachment is still in place and still runs the
/// program it attached, since aya does not expose the query.
pub fn tc_ingress_filter_prog(
    netns: Option<&Path>,
    ifindex: u32,
    priority: u16,
    handle: u32,
) -> Result<Option<u32>, HostError> {
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
    netlink(netns, move |h| async move {
        let mut filters = h.traffic_filter(ifindex as i32).get().ingress().execute();
        let mut found = None;
        while let Some(msg) = filters.next().await {
            match msg {
                Ok(m) => {
                    // The kernel dumps a filter once without options (the chain head) and once
                    // with them; the program id is in the latter.
                    if u32::from(m.header.handle) == handle
                        && (m.header.info >> 16) as u16 == priority
                    {
                        let prog = m.attributes.iter().find_map(|a| match a {
                            TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                                _ => None,
                            }),
                            _ => None,
                        });
                        found = Some(prog.unwrap_or(0).max(found.unwrap_or(0)));
                    }
                }
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.code.is_some_and(|c| {
                        matches!(-c.get(), libc::ENOENT | libc::EINVAL | libc::ENODEV)
                    }) =>
                {
                    return Ok(None)
                }
                Err(source) => {
                    return Err(HostError::Netlink {
                        op: "dump tc filters",
                        source,
                    })
                }
            }
        }
        Ok(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0x0a, 0xBC, 0, 1, 2, 0xff]),
            "0a:bc:00:01:02:ff"
        );
        assert_eq!(format_mac(&[1]), "01");
    }

    #[test]
    fn loopback_in_own_netns() {
        // Reading links needs no privilege.
        let lo = link_by_name(None, "lo").unwrap().expect("lo exists");
        assert_eq!(lo.name, "lo");
        assert_eq!(lo.kind, None);
        assert!(lo.mtu > 0);
        assert_eq!(link_by_index(None, lo.index).unwrap(), Some(lo.clone()));
        assert!(links(None).unwrap().iter().any(|l| l.index == lo.index));
        assert!(link_by_name(None, "weft-absent0").unwrap().is_none());
        assert!(link_by_name(None, "a-name-far-too-long").unwrap().is_none());
        assert!(link_by_index(None, 0).unwrap().is_none());
        assert!(link_by_index(None, 0x7fff_fff0).unwrap().is_none());
    }

    #[test]
    fn works_from_inside_a_tokio_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lo = rt.block_on(async { link_by_name(None, "lo") }).unwrap();
        assert!(lo.is_some());
    }
}
