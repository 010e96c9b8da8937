//! Handing a VF to a pod and taking it back: PF-side settings, the netdev's trip into the pod's
//! netns and back, the pod's addresses. [`attach`] and [`detach`] are the only functions here
//! that change anything; every other verb goes through them.
//!
//! Netdev mode, ADD: (host) read the VF netdev and, when PF-side settings are configured, the
//! VF's PF-side state → write the record and claim the VF → apply PF-side settings → (host) set
//! the VF down, drop its altnames, move it into the pod's netns renamed to `CNI_IFNAME` in one
//! request → IPAM → (pod) set MAC/MTU, up, addresses, routes. Any failure undoes it all with
//! [`detach`] (the IPAM delegate's DEL runs first, from `conf::delegate::add_guarded`).
//!
//! DEL reverses it from the record alone: PF-side settings back first (some drivers refuse a
//! netdev reset of an untrusted VF otherwise), then the netdev back to the host under its
//! original name with its MAC, MTU, altnames and up state. A VF whose pod netns is gone is
//! found in the host (the kernel returns physical netdevs of a dying netns to the host, named
//! `dev%d`): by its sysfs `net/` entry, else by its original name.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use conf::{AttachmentKey, CniResult, Interface, Request};
use host::netdev::{self, LinkChange, LinkRef, Netdev};
use host::sriov::{MacAddr, PfOps};
use host::sysfs::{self, Sysfs};
use host::{announce, HostError, PciAddress, RecordStore};

use crate::config::SriovConf;
use crate::error::{Result, SriovError};
use crate::record::{Mode, OriginalNetdev, Record, VfOwner, VfStore, RECORD_VERSION};

/// What every verb works with.
pub struct Ctx<'a> {
    pub sysfs: Sysfs,
    pub pf: &'a dyn PfOps,
    pub store: RecordStore,
    pub vfs: VfStore,
}

/// A link in the pod (or host) is our VF when the kernel names the VF's PCI address as its
/// parent device. VF stand-ins (veth, macvlan) have no parent: there the name decides.
fn is_vf(dev: &Netdev, pci: &PciAddress) -> bool {
    dev.parent_dev.as_deref().is_none_or(|p| p == pci.as_str())
}

/// The name a VF comes back to the host under when its original name is taken there:
/// deterministic per VF, so a later DEL or ADD finds it.
fn fallback_name(pci: &PciAddress) -> String {
    let digits: String = pci
        .as_str()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    format!("wsr{digits}")
}

fn errno_is(e: &HostError, errno: i32) -> bool {
    e.errno() == Some(errno)
}

/// Attaches the VF `conf.device_id` to the pod as `key`'s interface. The VF's lock is held
/// from before its owner is checked until the record says what was done.
pub fn attach(
    ctx: &Ctx,
    req: &Request,
    conf: &SriovConf,
    key: &AttachmentKey,
) -> Result<CniResult> {
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| conf::Error::invalid_env("CNI_NETNS missing"))?;
    let ns_file = host::netns::open_netns(&netns)?;
    let cookie = host::netns_cookie(&netns)?;
    let pci = &conf.device_id;
    // Fail on a wrong deviceID before taking any lock (code 7).
    ctx.sysfs.vf(pci)?;

    // A previous ADD of this attachment (a retry, or a changed deviceID) is undone first.
    if let Some((stored, old)) = ctx.store.find::<Record>(key)? {
        tracing::info!(%key, vf = %old.pci, "ADD again: undoing the previous attachment first");
        let _old_lock = ctx.vfs.lock(&old.pci)?;
        if let Some((stored, old)) = ctx.store.find::<Record>(&stored)? {
            let back = detach(ctx, &stored, &old)?;
            tracing::debug!(vf = %old.pci, name = ?back, "previous attachment undone");
        }
    }

    let _lock = ctx.vfs.lock(pci)?;
    let restored = take_over(ctx, pci, key)?;
    // Read after a take-over, which may have brought the netdev back (and renamed it: a fake
    // sysfs tree does not follow renames, so the name the take-over restored counts too).
    let vf = ctx.sysfs.vf(pci)?;
    let settings = conf.pf_settings();
    if !settings.is_empty() && vf.pf_netdev.is_none() {
        return Err(SriovError::NoPfNetdev {
            pci: pci.clone(),
            pf_pci: vf.pf_pci.clone(),
            what: settings
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let names: Vec<&String> = vf.netdevs.iter().chain(&restored).collect();
    let mode = if names.is_empty() {
        match &vf.driver {
            Some(d) if sysfs::is_userspace_driver(d) => Mode::Dpdk { driver: d.clone() },
            driver => {
                return Err(SriovError::NoNetdev {
                    pci: pci.clone(),
                    driver: driver.clone(),
                })
            }
        }
    } else {
        // sysfs names a netdev: it must be in the host (not in some other netns).
        let mut found = None;
        for name in names {
            found = host_netdev(name)?.filter(|d| is_vf(d, pci));
            if found.is_some() {
                break;
            }
        }
        let found = found.ok_or_else(|| SriovError::NoNetdev {
            pci: pci.clone(),
            driver: vf.driver.clone(),
        })?;
        let ifname = req.env.ifname.clone();
        let taken = host::link::netlink(Some(&netns), move |h| async move {
            netdev::get(&h, LinkRef::Name(&ifname)).await
        })?;
        if taken.is_some() {
            return Err(SriovError::IfnameTaken {
                ifname: req.env.ifname.clone(),
                netns: netns.display().to_string(),
            });
        }
        Mode::Netdev {
            original: OriginalNetdev {
                name: found.name,
                index: found.index,
                mac: found.mac,
                mtu: found.mtu,
                up: found.up,
                altnames: found.altnames,
            },
            mac: conf.mac,
            mtu: conf.mtu,
        }
    };
    // Read before anything changes: what DEL restores. Without PF-side settings the PF is only
    // read (for the admin MAC), and a PF that cannot report VF state is fine.
    let pf_original = match &vf.pf_netdev {
        Some(pf) => match ctx.pf.vf_state(pf, vf.index) {
            Ok(state) => Some(state),
            Err(e) if settings.is_empty() => {
                tracing::debug!(error = %e, "no PF-side state for the VF (none configured)");
                None
            }
            Err(e) => return Err(SriovError::pf(pci, e)),
        },
        None => None,
    };
    let record = Record {
        version: RECORD_VERSION,
        network: key.network().unwrap_or_default().to_owned(),
        container_id: key.container_id().to_owned(),
        ifname: key.ifname().to_owned(),
        netns: netns.clone(),
        netns_cookie: cookie,
        pci: pci.clone(),
        pf_pci: vf.pf_pci.clone(),
        pf: vf.pf_netdev.clone(),
        vf_index: vf.index,
        mode,
        pf_original,
        pf_settings: settings,
    };
    ctx.store.write(key, &record)?;
    ctx.vfs.claim(pci, &VfOwner::new(key, &netns, cookie))?;
    match setup(ctx, req, conf, &record, &ns_file) {
        Ok(result) => Ok(result),
        Err(e) => {
            if let Err(undo) = detach(ctx, key, &record) {
                tracing::error!(error = %undo, %key, "undoing a failed ADD");
            }
            Err(e)
        }
    }
}

/// The VF's owner file names someone: our own attachment without a record (cleared), a live
/// pod (busy), or a pod whose netns is gone (its record is undone and dropped: the VF is ours).
/// Returns the VF netdev's host name when undoing an attachment brought it back.
fn take_over(ctx: &Ctx, pci: &PciAddress, key: &AttachmentKey) -> Result<Option<String>> {
    let Some(owner) = ctx.vfs.owner(pci)? else {
        return Ok(None);
    };
    let owner_key = owner.key()?;
    if owner_key != *key {
        if owner.alive() {
            return Err(SriovError::Busy {
                pci: pci.clone(),
                owner: owner_key.to_string(),
                netns: owner.netns.display().to_string(),
            });
        }
        tracing::warn!(vf = %pci, previous = %owner_key, "the VF's previous pod is gone without a DEL: restoring the VF for the new one");
    }
    match ctx.store.find::<Record>(&owner_key)? {
        Some((stored, rec)) if rec.pci == *pci => detach(ctx, &stored, &rec),
        _ => ctx.vfs.release(pci).map(|()| None),
    }
}

/// The host's netdev `name`, if it exists.
fn host_netdev(name: &str) -> Result<Option<Netdev>> {
    let wanted = name.to_owned();
    // By name the kernel also matches altnames: only the device really called `name` counts.
    Ok(host::link::netlink(None, move |h| async move {
        netdev::get(&h, LinkRef::Name(&wanted)).await
    })?
    .filter(|d| d.name == name))
}

/// Everything after the record: PF-side settings, the move, IPAM, the pod side.
fn setup(
    ctx: &Ctx,
    req: &Request,
    conf: &SriovConf,
    record: &Record,
    ns_file: &File,
) -> Result<CniResult> {
    if let Some(pf) = &record.pf {
        for setting in &record.pf_settings {
            host::sriov::set_verified(ctx.pf, pf, record.vf_index, setting)
                .map_err(|e| SriovError::pf(&record.pci, e))?;
        }
    }
    if let Mode::Netdev { original, .. } = &record.mode {
        let (index, altnames, fd, ifname) = (
            original.index,
            original.altnames.clone(),
            ns_file.as_raw_fd(),
            record.ifname.clone(),
        );
        host::link::netlink(None, move |h| async move {
            // Down first: the kernel refuses to rename a running device.
            netdev::change(
                &h,
                index,
                &LinkChange {
                    up: Some(false),
                    ..LinkChange::default()
                },
            )
            .await?;
            // Altnames travel with the device and block the move when the pod has the name.
            netdev::del_altnames(&h, index, &altnames).await?;
            netdev::move_to_netns(&h, index, fd, &ifname).await
        })?;
    }
    let ipam = match ipam_type(req) {
        Some(t) => Some(conf::delegate::add_guarded(t, req)?),
        None => None,
    };
    let mut result = ipam
        .as_ref()
        .map(|g| g.result().clone())
        .unwrap_or_default();
    for ip in &mut result.ips {
        ip.interface = Some(0);
    }
    if result.dns == conf::Dns::default() {
        if let Some(dns) = &req.conf.dns {
            result.dns = dns.clone();
        }
    }
    let mut iface = Interface {
        name: record.ifname.clone(),
        sandbox: Some(record.netns.display().to_string()),
        pci_id: Some(record.pci.to_string()),
        ..Interface::default()
    };
    match &record.mode {
        Mode::Netdev { mac, mtu, .. } => {
            let dev = configure_pod(&record.netns, &record.ifname, *mac, *mtu, &result)?;
            iface.mac = dev.mac;
            iface.mtu = Some(dev.mtu);
        }
        Mode::Dpdk { .. } => {
            iface.mac = conf
                .mac
                .or(record.pf_original.map(|s| s.mac).filter(|m| !m.is_zero()))
                .map(|m| m.to_string());
        }
    }
    result.interfaces = vec![iface];
    if let Some(guard) = ipam {
        guard.commit();
    }
    Ok(result)
}

/// The IPAM delegate's type, when the config has a usable `ipam` section.
pub fn ipam_type(req: &Request) -> Option<&str> {
    req.conf.ipam.as_ref()?;
    req.conf.ipam_type().ok()
}

/// How long to wait for carrier before announcing IPv4 addresses (a real VF's link comes up
/// some time after the netdev does; a frame sent before that is lost).
const CARRIER_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// In the pod: MAC, MTU, up, the IPAM addresses and routes (a route without a gateway goes
/// via the first gateway of its family, as the reference plugins' `ConfigureIface` does),
/// then the announcements (`host::announce`: gratuitous ARP now, unsolicited NA from the
/// kernel once DAD completes). Returns the link as it ends up.
fn configure_pod(
    netns: &Path,
    ifname: &str,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
    result: &CniResult,
) -> Result<Netdev> {
    let ifname = ifname.to_owned();
    let ips: Vec<_> = result
        .ips
        .iter()
        .map(|ip| (ip.address, ip.gateway))
        .collect();
    let routes: Vec<_> = result.routes.iter().map(|r| (r.dst, r.gw)).collect();
    let dev = host::link::netlink(Some(netns), move |h| async move {
        let dev = netdev::get(&h, LinkRef::Name(&ifname))
            .await?
            .ok_or_else(|| HostError::Io {
                context: format!("VF {ifname} after the move"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        if let Err(e) = announce::enable_notify(&ifname) {
            tracing::warn!(error = %e, "cannot enable arp_notify/ndisc_notify");
        }
        netdev::change(
            &h,
            dev.index,
            &LinkChange {
                mac: mac.map(|m| m.0),
                mtu,
                up: Some(true),
                ..LinkChange::default()
            },
        )
        .await?;
        for (address, _) in &ips {
            netdev::add_address(&h, dev.index, *address).await?;
        }
        for (dst, gw) in routes {
            let gw = gw.or_else(|| {
                ips.iter()
                    .find_map(|(_, g)| g.filter(|g| g.is_ipv4() == dst.is_ipv4()))
            });
            netdev::add_route(&h, dev.index, dst, gw).await?;
        }
        let mut now = netdev::get(&h, LinkRef::Index(dev.index)).await?;
        let v4: Vec<std::net::Ipv4Addr> = ips
            .iter()
            .filter_map(|(a, _)| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        if !v4.is_empty() {
            let deadline = std::time::Instant::now() + CARRIER_WAIT;
            while now.as_ref().is_some_and(|d| !d.carrier) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                now = netdev::get(&h, LinkRef::Index(dev.index)).await?;
            }
            let hw = now
                .as_ref()
                .and_then(|d| d.mac.as_deref())
                .and_then(|m| MacAddr::parse(m).ok());
            for ip in v4 {
                // Best effort, as in sriov-cni: a lost announcement only delays neighbours.
                match hw {
                    Some(hw) => {
                        if let Err(e) = announce::gratuitous_arp(dev.index, hw.0, ip) {
                            tracing::warn!(%ip, error = %e, "gratuitous ARP not sent");
                        }
                    }
                    None => tracing::warn!(%ip, "no MAC to announce"),
                }
            }
        }
        Ok(now)
    })?;
    dev.ok_or_else(|| {
        HostError::Io {
            context: format!("VF in {}", netns.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into()
    })
}

/// Undoes everything `record` (stored under `key`) says, then drops the record. The caller
/// holds the VF's lock. A VF that now belongs to another attachment is left alone (only the
/// record goes): a late DEL must never reset a VF a new pod uses. Everything already gone
/// (netns, netdev, PF) is fine; a PF-side setting the driver refuses cannot have been applied.
/// Returns the VF netdev's name in the host afterwards, when it was found and restored.
pub fn detach(ctx: &Ctx, key: &AttachmentKey, record: &Record) -> Result<Option<String>> {
    let owner = ctx.vfs.owner(&record.pci)?;
    if let Some(owner) = &owner {
        let owner_key = owner.key()?;
        if owner_key != *key {
            tracing::warn!(vf = %record.pci, %key, owner = %owner_key, "the VF belongs to another attachment now: dropping only our record");
            ctx.store.remove(key)?;
            return Ok(None);
        }
    }
    let mut failures = Vec::new();
    if let (Some(pf), Some(original)) = (&record.pf, &record.pf_original) {
        for setting in record.pf_settings.iter().rev() {
            let undo = setting.restore_from(original);
            match ctx.pf.set(pf, record.vf_index, &undo) {
                Ok(()) => {}
                Err(e @ host::PfError::Unsupported { .. }) => {
                    tracing::info!(error = %e, "not restoring a setting the PF refuses");
                }
                Err(e @ host::PfError::NoSuchPf { .. }) => {
                    tracing::warn!(error = %e, "PF gone: nothing to restore on it");
                    break;
                }
                Err(e) => failures.push(format!("restore {undo}: {e}")),
            }
        }
    }
    let mut host_name = None;
    if let Mode::Netdev { original, .. } = &record.mode {
        match release_netdev(ctx, record, original) {
            Ok(name) => host_name = name,
            Err(e) => failures.push(format!("return the VF netdev: {e}")),
        }
    }
    if !failures.is_empty() {
        return Err(SriovError::Host(HostError::Io {
            context: format!("could not undo the attachment of VF {}", record.pci),
            source: std::io::Error::other(failures.join("; ")),
        }));
    }
    if owner.is_some() {
        ctx.vfs.release(&record.pci)?;
    }
    ctx.store.remove(key)?;
    Ok(host_name)
}

/// Brings the VF netdev back to the host and restores it; returns its host name then.
fn release_netdev(ctx: &Ctx, record: &Record, original: &OriginalNetdev) -> Result<Option<String>> {
    // This thread is in the host netns: that is where the VF goes back to.
    let host_ns = File::open("/proc/thread-self/ns/net").map_err(|e| HostError::Io {
        context: "open the host netns".into(),
        source: e,
    })?;
    let back = match from_pod(record, original, &host_ns) {
        Ok(name) => name,
        // The pod's netns is gone (the kernel returned a real VF to the host on the way).
        Err(e) if e.is_netns_missing() => None,
        Err(e) => return Err(e.into()),
    };
    let restored = match back {
        // Just moved back under `name`: find and restore it in one netlink session.
        Some(name) => {
            let original = original.clone();
            host::link::netlink(None, move |h| async move {
                match netdev::get(&h, LinkRef::Name(&name)).await? {
                    Some(dev) if dev.name == name => restore(&h, dev, &original).await.map(Some),
                    _ => Ok(None),
                }
            })?
        }
        None => match find_in_host(ctx, record, original)? {
            Some(dev) => {
                let original = original.clone();
                Some(host::link::netlink(None, move |h| async move {
                    restore(&h, dev, &original).await
                })?)
            }
            None => None,
        },
    };
    if restored.is_none() {
        tracing::info!(vf = %record.pci, "the VF netdev is gone: nothing to return");
    }
    Ok(restored)
}

/// In the pod's netns (if it is still the pod's): find the VF, set it down, move it to the
/// host under its original name (or [`fallback_name`] when that is taken). Returns the name it
/// has in the host, `None` when it was not in the pod.
fn from_pod(
    record: &Record,
    original: &OriginalNetdev,
    host_ns: &File,
) -> std::result::Result<Option<String>, HostError> {
    let (ifname, pci, cookie) = (
        record.ifname.clone(),
        record.pci.clone(),
        record.netns_cookie,
    );
    let (name, fallback, fd) = (
        original.name.clone(),
        fallback_name(&record.pci),
        host_ns.as_raw_fd(),
    );
    host::link::netlink(Some(&record.netns), move |h| async move {
        if host::netns::current_netns_cookie()? != cookie {
            tracing::warn!("the netns path now holds another netns: not touching it");
            return Ok(None);
        }
        let dev = match netdev::get(&h, LinkRef::Name(&ifname)).await? {
            Some(d) if is_vf(&d, &pci) => Some(d),
            // Renamed inside the pod: a real VF is still recognisable by its parent device.
            _ => netdev::dump(&h)
                .await?
                .into_iter()
                .find(|d| d.parent_dev.as_deref() == Some(pci.as_str())),
        };
        let Some(dev) = dev else {
            return Ok(None);
        };
        netdev::change(
            &h,
            dev.index,
            &LinkChange {
                up: Some(false),
                ..LinkChange::default()
            },
        )
        .await?;
        match netdev::move_to_netns(&h, dev.index, fd, &name).await {
            Ok(()) => Ok(Some(name)),
            Err(e) if errno_is(&e, libc::EEXIST) => {
                tracing::warn!(%name, %fallback, "the VF's original name is taken in the host: returning it under a fallback name");
                netdev::move_to_netns(&h, dev.index, fd, &fallback).await?;
                Ok(Some(fallback))
            }
            Err(e) => Err(e),
        }
    })
}

/// The VF's netdev in the host when it did not come back from the pod: sysfs first (the
/// kernel's own view, e.g. `dev3` after its netns died), then the fallback and original names.
fn find_in_host(ctx: &Ctx, record: &Record, original: &OriginalNetdev) -> Result<Option<Netdev>> {
    let mut names = ctx.sysfs.netdevs(&record.pci).unwrap_or_default();
    names.push(fallback_name(&record.pci));
    for name in names {
        if let Some(dev) = host_netdev(&name)?.filter(|d| is_vf(d, &record.pci)) {
            return Ok(Some(dev));
        }
    }
    // The original name counts only while it is clearly the same device.
    Ok(host_netdev(&original.name)?.filter(|d| {
        d.parent_dev.as_deref() == Some(record.pci.as_str())
            || (d.parent_dev.is_none() && d.index == original.index)
    }))
}

/// Name, MAC, MTU, altnames and up state as ADD found them. A name or altname someone else
/// took meanwhile is left as is (logged): the VF is usable, and the next ADD finds it in sysfs.
/// Returns the name the VF ends up with.
async fn restore(
    h: &host::rtnetlink::Handle,
    dev: Netdev,
    original: &OriginalNetdev,
) -> std::result::Result<String, HostError> {
    let mut change = LinkChange::default();
    if dev.mac != original.mac {
        change.mac = original
            .mac
            .as_deref()
            .and_then(|m| MacAddr::parse(m).ok())
            .map(|m| m.0);
    }
    if dev.mtu != original.mtu {
        change.mtu = Some(original.mtu);
    }
    let changed = !change.is_empty() || dev.name != original.name;
    if changed {
        // Down before a MAC change or rename (drivers and the kernel refuse them live).
        netdev::change(
            h,
            dev.index,
            &LinkChange {
                up: Some(false),
                ..LinkChange::default()
            },
        )
        .await?;
    }
    netdev::change(h, dev.index, &change).await?;
    if dev.name != original.name {
        let rename = LinkChange {
            name: Some(original.name.clone()),
            ..LinkChange::default()
        };
        match netdev::change(h, dev.index, &rename).await {
            Ok(()) => {}
            Err(e) if errno_is(&e, libc::EEXIST) => {
                tracing::warn!(name = %original.name, now = %dev.name, "cannot restore the VF's name: taken in the host");
            }
            Err(e) => return Err(e),
        }
    }
    let now = if changed {
        netdev::get(h, LinkRef::Index(dev.index))
            .await?
            .unwrap_or(dev)
    } else {
        dev
    };
    let missing: Vec<String> = original
        .altnames
        .iter()
        .filter(|a| !now.altnames.contains(a))
        .cloned()
        .collect();
    for alt in missing {
        match netdev::add_altnames(h, now.index, std::slice::from_ref(&alt)).await {
            Ok(()) => {}
            Err(e) if errno_is(&e, libc::EEXIST) => {
                tracing::warn!(altname = %alt, "cannot restore the VF's altname: taken in the host");
            }
            Err(e) => return Err(e),
        }
    }
    if original.up != now.up {
        netdev::change(
            h,
            now.index,
            &LinkChange {
                up: Some(original.up),
                ..LinkChange::default()
            },
        )
        .await?;
    }
    Ok(now.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_names_fit_and_differ() {
        let a = fallback_name(&PciAddress::parse("0000:af:06.0").unwrap());
        let b = fallback_name(&PciAddress::parse("0000:af:06.1").unwrap());
        assert_eq!(a, "wsr0000af060");
        assert_ne!(a, b);
        assert!(a.len() <= 15);
    }

    #[test]
    fn vf_identity() {
        let pci = PciAddress::parse("0000:af:06.0").unwrap();
        let mut dev = Netdev::default();
        assert!(is_vf(&dev, &pci), "stand-ins have no parent");
        dev.parent_dev = Some("0000:af:06.0".into());
        assert!(is_vf(&dev, &pci));
        dev.parent_dev = Some("0000:af:06.1".into());
        assert!(!is_vf(&dev, &pci));
    }
}
