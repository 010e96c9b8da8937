//! `weft-sriov`: a main plugin that hands an SR-IOV VF (by PCI address, `deviceID`) to a pod —
//! PF-side settings through the PF (`IFLA_VF_*`), the VF netdev moved into the pod's netns as
//! `CNI_IFNAME` with its MAC/MTU and the IPAM delegate's addresses — and restores all of it on
//! DEL. Config-compatible with sriov-cni (see [`config`]); DPDK VFs (vfio-pci, uio) get their
//! PF-side settings and no netdev.
//!
//! Test hooks (environment): `WEFT_SYSFS_ROOT` redirects sysfs (a fake tree of the kernel's
//! shape), `WEFT_SRIOV_FAKE_PF` sends PF-side settings to a recording fake instead of netlink
//! (this kernel has no SR-IOV), `WEFT_STATE_DIR` moves the records.

pub mod config;
pub mod error;
pub mod record;
pub mod vf;

use std::sync::Arc;

use conf::{code, AttachmentKey, CniResult, Error, Plugin, Request};
use host::sriov::PfOps;
use host::{RecordStore, Sysfs};

use config::{Logging, SriovConf};
use error::SriovError;
use record::{Mode, Record, VfStore};
use vf::Ctx;

pub const PLUGIN_NAME: &str = "weft-sriov";

/// The plugin. PF operations come from the environment (netlink, or the recording fake when
/// `WEFT_SRIOV_FAKE_PF` is set) unless given.
#[derive(Default)]
pub struct Sriov {
    pf: Option<Arc<dyn PfOps>>,
}

impl Sriov {
    pub fn with_pf(pf: Arc<dyn PfOps>) -> Self {
        Sriov { pf: Some(pf) }
    }

    /// Logging first (so even a verb that fails early logs), then the host context.
    fn context(&self, logging: &Logging) -> (Arc<dyn PfOps>, Sysfs, RecordStore) {
        logging.init();
        let pf = self
            .pf
            .clone()
            .unwrap_or_else(|| Arc::from(host::sriov::pf_ops_from_env()));
        (pf, Sysfs::from_env(), RecordStore::for_plugin(PLUGIN_NAME))
    }

    fn with_ctx<T>(
        &self,
        req: &Request,
        f: impl FnOnce(&Ctx) -> Result<T, SriovError>,
    ) -> conf::Result<T> {
        let (pf, sysfs, store) = self.context(&Logging::from_request(req));
        let ctx = Ctx {
            sysfs,
            pf: pf.as_ref(),
            vfs: VfStore::new(&store),
            store,
        };
        f(&ctx).map_err(conf::Error::from)
    }
}

/// DEL of one attachment's VF: undo what its record says (under the VF's lock). No record:
/// nothing of ours to undo.
fn release(ctx: &Ctx, key: &AttachmentKey) -> Result<(), SriovError> {
    let Some((_, rec)) = ctx.store.find::<Record>(key)? else {
        return Ok(());
    };
    let _lock = ctx.vfs.lock(&rec.pci)?;
    // Re-read under the lock: a concurrent GC or DEL may have finished it.
    match ctx.store.find::<Record>(key)? {
        Some((stored, rec)) => vf::detach(ctx, &stored, &rec).map(drop),
        None => Ok(()),
    }
}

/// For node tools (`weft gc`): undoes the attachment `key` recorded in `store` the way its DEL
/// would (under the VF's lock, re-read there; a VF that another attachment holds now is left
/// alone), with the PF and sysfs the environment names. The IPAM delegate is not called: the
/// caller decides what happens to the addresses.
pub fn reclaim(store: RecordStore, key: &AttachmentKey) -> Result<(), SriovError> {
    let pf = host::sriov::pf_ops_from_env();
    let ctx = Ctx {
        sysfs: Sysfs::from_env(),
        pf: pf.as_ref(),
        vfs: VfStore::new(&store),
        store,
    };
    release(&ctx, key)
}

/// The first of several errors, the others in its details.
fn combine(errors: Vec<Error>) -> conf::Result<()> {
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            let rest: Vec<String> = errors.map(|e| e.to_string()).collect();
            if rest.is_empty() {
                Err(first)
            } else {
                let details = if first.details.is_empty() {
                    rest.join("; ")
                } else {
                    format!("{}; {}", first.details, rest.join("; "))
                };
                Err(first.with_details(details))
            }
        }
    }
}

impl Plugin for Sriov {
    fn add(&self, req: &Request) -> conf::Result<CniResult> {
        let conf = SriovConf::from_request(req);
        self.with_ctx(req, |ctx| {
            let conf = conf?;
            vf::attach(ctx, req, &conf, &req.attachment()?)
        })
    }

    /// Undoes the VF side from the record, then always runs the IPAM delegate's DEL. Nothing
    /// left (no record, netns or netdev gone, a second DEL) is success. Reads nothing from the
    /// config but `ipam` and logging: a config that no longer validates must not block DEL.
    fn del(&self, req: &Request) -> conf::Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.with_ctx(req, |ctx| release(ctx, &req.attachment()?)) {
            errors.push(e);
        }
        if let Some(ipam) = vf::ipam_type(req) {
            if let Err(e) = conf::delegate::del(ipam, req) {
                errors.push(e);
            }
        }
        combine(errors)
    }

    /// The record exists and the VF is still ours; its PF-side settings, the netdev in the pod
    /// (name, MAC, MTU, up, prevResult's addresses) or the DPDK driver are as ADD left them;
    /// then the IPAM delegate's CHECK.
    fn check(&self, req: &Request) -> conf::Result<()> {
        let conf = SriovConf::from_request(req)?;
        self.with_ctx(req, |ctx| check(ctx, req, &conf))?;
        match vf::ipam_type(req) {
            Some(ipam) => conf::delegate::check(ipam, req),
            None => Ok(()),
        }
    }

    /// Undoes this network's attachments that `cni.dev/valid-attachments` does not list
    /// (another network's records are in another directory and never looked at), keeps going
    /// past errors, then forwards GC to the IPAM delegate.
    fn gc(&self, req: &Request) -> conf::Result<()> {
        let valid = req.conf.valid_attachment_keys()?;
        let mut errors = Vec::new();
        let outcome = self.with_ctx(req, |ctx| {
            ctx.store.sweep_temps();
            let mut failures = Vec::new();
            for key in ctx.store.keys(&req.conf.name)? {
                if valid.contains(&key) {
                    continue;
                }
                tracing::info!(%key, "GC: attachment no longer valid");
                if let Err(e) = release(ctx, &key) {
                    failures.push(format!("{key}: {e}"));
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(
                    conf::Error::new(code::HOST, "GC could not release every stale VF")
                        .with_details(failures.join("; "))
                        .into(),
                )
            }
        });
        if let Err(e) = outcome {
            errors.push(e);
        }
        if let Some(ipam) = vf::ipam_type(req) {
            if let Err(e) = conf::delegate::gc(ipam, req) {
                errors.push(e);
            }
        }
        combine(errors)
    }

    /// Cheap: sysfs shows PCI devices, rtnetlink answers, and the IPAM delegate is ready.
    fn status(&self, req: &Request) -> conf::Result<()> {
        let (_, sysfs, _) = self.context(&Logging::from_request(req));
        let devices = sysfs.pci_devices();
        if let Err(e) = std::fs::read_dir(&devices) {
            return Err(Error::new(
                code::NOT_AVAILABLE,
                format!("cannot list PCI devices in {}: {e}", devices.display()),
            ));
        }
        if let Err(e) = host::link_by_name(None, "lo") {
            return Err(Error::new(
                code::NOT_AVAILABLE,
                format!("rtnetlink is not usable: {e}"),
            ));
        }
        match vf::ipam_type(req) {
            Some(ipam) => conf::delegate::status(ipam, req),
            None => Ok(()),
        }
    }
}

fn check(ctx: &Ctx, req: &Request, conf: &SriovConf) -> Result<(), SriovError> {
    let key = req.attachment()?;
    let Some((_, rec)) = ctx.store.find::<Record>(&key)? else {
        return Err(SriovError::CheckFailed(format!(
            "no weft-sriov attachment for {key}"
        )));
    };
    let mut problems = Vec::new();
    if rec.pci != conf.device_id {
        problems.push(format!(
            "attached VF is {}, the config names {}",
            rec.pci, conf.device_id
        ));
    }
    match ctx.vfs.owner(&rec.pci)? {
        Some(o) if o.key()? == key => {}
        Some(o) => problems.push(format!("VF {} now belongs to {}", rec.pci, o.key()?)),
        None => problems.push(format!("VF {} is not allocated to {key}", rec.pci)),
    }
    if let (Some(pf), false) = (&rec.pf, rec.pf_settings.is_empty()) {
        let state = ctx
            .pf
            .vf_state(pf, rec.vf_index)
            .map_err(|e| SriovError::pf(&rec.pci, e))?;
        for s in rec.pf_settings.iter().filter(|s| !s.holds_in(&state)) {
            problems.push(format!("PF {pf} VF {}: {s} is not in effect", rec.vf_index));
        }
    }
    let prev = req.conf.prev_result()?;
    let prev_iface = prev.as_ref().and_then(|p| {
        p.interfaces
            .iter()
            .find(|i| i.name == rec.ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    });
    match &rec.mode {
        Mode::Netdev { mac, mtu, .. } => {
            let netns = req.env.netns.clone().unwrap_or_else(|| rec.netns.clone());
            let ifname = rec.ifname.clone();
            let (dev, addrs) = host::link::netlink(Some(&netns), move |h| async move {
                match host::netdev::get(&h, host::netdev::LinkRef::Name(&ifname)).await? {
                    Some(d) => {
                        let a = host::netdev::addresses(&h, d.index).await?;
                        Ok((Some(d), a))
                    }
                    None => Ok((None, Vec::new())),
                }
            })?;
            match dev {
                None => problems.push(format!(
                    "{} is missing from {}",
                    rec.ifname,
                    netns.display()
                )),
                Some(dev) => {
                    // Later plugins may change MAC/MTU; prevResult says what they should be.
                    let want_mac = prev_iface
                        .and_then(|i| i.mac.clone())
                        .or(mac.map(|m| m.to_string()));
                    if let Some(want) = want_mac {
                        if dev.mac.as_deref() != Some(want.to_ascii_lowercase().as_str()) {
                            problems.push(format!(
                                "{} has MAC {}, expected {want}",
                                rec.ifname,
                                dev.mac.as_deref().unwrap_or("none")
                            ));
                        }
                    }
                    if let Some(want) = prev_iface.and_then(|i| i.mtu).or(*mtu) {
                        if dev.mtu != want {
                            problems.push(format!(
                                "{} has MTU {}, expected {want}",
                                rec.ifname, dev.mtu
                            ));
                        }
                    }
                    if !dev.up {
                        problems.push(format!("{} is down", rec.ifname));
                    }
                    if let Some(prev) = &prev {
                        let index = prev_iface
                            .and_then(|i| prev.interfaces.iter().position(|j| std::ptr::eq(i, j)));
                        for ip in prev
                            .ips
                            .iter()
                            .filter(|ip| ip.interface.is_none() || ip.interface == index)
                        {
                            if !addrs.contains(&ip.address) {
                                problems.push(format!(
                                    "{} lacks prevResult address {}",
                                    rec.ifname, ip.address
                                ));
                            }
                        }
                    }
                }
            }
        }
        Mode::Dpdk { driver } => {
            let now = ctx.sysfs.driver(&rec.pci)?;
            if now.as_deref() != Some(driver.as_str()) {
                problems.push(format!(
                    "VF {} is bound to {}, expected {driver}",
                    rec.pci,
                    now.as_deref().unwrap_or("no driver")
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SriovError::CheckFailed(format!(
            "weft-sriov attachment {key} differs: {}",
            problems.join("; ")
        )))
    }
}
