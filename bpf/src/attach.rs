//! Attaching the redirect program to a pod's host-side veth ingress, and detaching it.
//!
//! Two mechanisms, chosen by the caller (use [`crate::probe::features`]):
//! - [`Mode::Tcx`] (kernel >= 6.6): a tcx link, pinned at `<root>/links/<key>`. The pin is
//!   the attachment: removing it detaches. Other tcx programs on the device are untouched.
//! - [`Mode::Tc`]: clsact qdisc + a cls_bpf filter (direct action) at a fixed weft
//!   priority/handle ([`TC_PRIORITY`], [`TC_HANDLE`]), so detach deletes exactly our
//!   filter and never someone else's, even without a record.
//!
//! Interface names and indexes are resolved in the calling thread's network namespace.

use std::{fs, io};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    Link, LinkOrder, SchedClassifier, TcAttachType,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::program_errno,
    pin::{validate_key, PinRoot},
    Error, Maps, Result,
};

/// Priority of weft's legacy tc filter ("WF"). Distinctive so that we never collide with
/// (and then delete) a filter someone else installed.
pub const TC_PRIORITY: u16 = 0x5746;
/// Handle (minor) of weft's legacy tc filter.
pub const TC_HANDLE: u16 = 0x5746;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// tcx link (kernel >= 6.6), pinned in bpffs.
    Tcx,
    /// clsact qdisc + cls_bpf filter (any kernel with redirect_peer).
    Tc,
}

/// What was attached: enough to detach exactly it later, from another process.
/// Serializable so the plugin can keep it in its attachment record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Caller's key (e.g. `<containerID>-<ifname>`), the tcx link pin name.
    pub key: String,
    /// Host-side veth the program is attached to.
    pub ifname: String,
    pub ifindex: u32,
    pub mode: Mode,
    /// Kernel id of the attached program.
    pub prog_id: u32,
}

impl Maps {
    /// Attach the redirect program to the ingress of `ifname` (a pod's host-side veth).
    ///
    /// Idempotent per `key`: attaching again replaces the previous attachment with this key
    /// (also across modes), so a retried ADD does not stack programs.
    pub fn attach(&mut self, ifname: &str, mode: Mode, key: &str) -> Result<Attachment> {
        let root = self.root.clone();
        attach_program(self.program()?, &root, ifname, mode, key)
    }
}

/// [`Maps::attach`] for a program already open, without the maps: also what the P1-chain
/// kernel floor (`weft-attach-floor`, with [`crate::pinned_program`]) runs, so the floor does
/// exactly kmesh-cni's kernel work.
pub fn attach_program(
    prog: &mut SchedClassifier,
    root: &PinRoot,
    ifname: &str,
    mode: Mode,
    key: &str,
) -> Result<Attachment> {
    validate_key(key)?;
    let ifindex = ifindex(ifname)?;
    let prog_id = prog
        .info()
        .map_err(|e| Error::program("program info", e))?
        .id();

    // A previous attachment under this key (retry, or mode switch) goes first: the
    // kernel refuses the same program twice on one tcx hook.
    remove_tcx_link(root, key)?;
    if mode == Mode::Tcx {
        remove_tc_filter(ifname, ifindex)?;
    }

    match mode {
        Mode::Tcx => attach_tcx(prog, root, ifname, key)?,
        Mode::Tc => attach_tc(prog, ifname)?,
    }
    tracing::debug!(
        ifname,
        ifindex,
        ?mode,
        key,
        prog_id,
        "attached redirect program"
    );
    Ok(Attachment {
        key: key.to_owned(),
        ifname: ifname.to_owned(),
        ifindex,
        mode,
        prog_id,
    })
}

/// Detach what [`Maps::attach`] attached. Succeeds when it is already gone (link pin
/// removed, filter deleted, interface deleted with its pod). Needs no loaded maps.
pub fn detach(root: &PinRoot, att: &Attachment) -> Result<()> {
    match att.mode {
        Mode::Tcx => remove_tcx_link(root, &att.key),
        Mode::Tc => remove_tc_filter(&att.ifname, att.ifindex),
    }
}

/// Detach without a record: removes the tcx link pinned under `key` and, if `ifname` is
/// given, weft's tc filter on it. Everything missing is fine.
pub fn detach_key(root: &PinRoot, key: &str, ifname: Option<&str>) -> Result<()> {
    remove_tcx_link(root, key)?;
    if let Some(ifname) = ifname {
        // An interface that is gone took its filter with it.
        if let Ok(idx) = ifindex(ifname) {
            remove_tc_filter(ifname, idx)?;
        }
    }
    Ok(())
}

/// Is the attachment still in place? (For CHECK.) The interface must still be the one
/// attached to. For tcx: the link pin exists and the interface's tcx ingress chain runs the
/// attachment's program. For tc: weft's filter ([`TC_PRIORITY`], [`TC_HANDLE`]) on the
/// interface's clsact ingress runs the attachment's program, which
/// `tc_filter_prog(ifindex, priority, handle)` answers with the filter's program id, `None`
/// without such a filter (aya cannot list tc filters; the caller has netlink).
pub fn is_attached(
    root: &PinRoot,
    att: &Attachment,
    tc_filter_prog: impl FnOnce(u32, u16, u32) -> io::Result<Option<u32>>,
) -> Result<bool> {
    match ifindex(&att.ifname) {
        Ok(idx) if idx == att.ifindex => {}
        _ => return Ok(false),
    }
    match att.mode {
        Mode::Tcx => {
            if !root.link_pin(&att.key)?.exists() {
                return Ok(false);
            }
            let (_, progs) =
                aya::programs::SchedClassifier::query_tcx(&att.ifname, TcAttachType::Ingress)
                    .map_err(|e| Error::program(format!("query tcx on {}", att.ifname), e))?;
            Ok(progs.iter().any(|p| p.id() == att.prog_id))
        }
        Mode::Tc => tc_filter_prog(att.ifindex, TC_PRIORITY, u32::from(TC_HANDLE))
            .map(|prog| prog == Some(att.prog_id))
            .map_err(|e| Error::io(format!("query tc filters on {}", att.ifname), e)),
    }
}

/// A tcx link on `ifname`'s ingress, pinned at `links/<key>`: the pin is the attachment.
fn attach_tcx(prog: &mut SchedClassifier, root: &PinRoot, ifname: &str, key: &str) -> Result<()> {
    let id = prog
        .attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::last()),
        )
        .map_err(|e| Error::program(format!("tcx attach to {ifname}"), e))?;
    let link = prog
        .take_link(id)
        .map_err(|e| Error::program("take tcx link", e))?;
    let link = FdLink::try_from(link).map_err(|e| Error::Io {
        context: format!("tcx link on {ifname}"),
        source: io::Error::other(e),
    })?;
    let pin = root.link_pin(key)?;
    // Dropping the returned PinnedLink only closes our fd; the pin keeps it attached.
    link.pin(&pin).map_err(|e| Error::Io {
        context: format!("pin tcx link at {}", pin.display()),
        source: io::Error::other(e),
    })?;
    Ok(())
}

/// A clsact qdisc (if missing) and weft's cls_bpf filter at its own priority/handle; a filter
/// already there (a retry) gets its program replaced in place.
fn attach_tc(prog: &mut SchedClassifier, ifname: &str) -> Result<()> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
        Err(e) => {
            return Err(Error::program(
                format!("add clsact qdisc to {ifname}"),
                e.into(),
            ))
        }
    }
    let opts = TcAttachOptions::Netlink(NlOptions {
        priority: TC_PRIORITY,
        handle: TcHandle::new(0, TC_HANDLE),
        classid: None,
    });
    let id = match prog.attach_with_options(ifname, TcAttachType::Ingress, opts) {
        Ok(id) => id,
        Err(e) if program_errno(&e) == Some(nix::libc::EEXIST) => {
            let existing = SchedClassifierLink::attached(
                ifname,
                TcAttachType::Ingress,
                TC_PRIORITY,
                TcHandle::new(0, TC_HANDLE),
                None,
            )
            .map_err(|e| Error::Interface {
                name: ifname.to_owned(),
                source: e,
            })?;
            prog.attach_to_link(existing)
                .map_err(|e| Error::program(format!("replace tc filter on {ifname}"), e))?
        }
        Err(e) => return Err(Error::program(format!("tc attach to {ifname}"), e)),
    };
    let link = prog
        .take_link(id)
        .map_err(|e| Error::program("take tc link", e))?;
    // Dropping the link would delete the filter; it must outlive this process.
    std::mem::forget(link);
    Ok(())
}

/// Unpin (and so detach) the tcx link of `key`, if any.
fn remove_tcx_link(root: &PinRoot, key: &str) -> Result<()> {
    let pin = root.link_pin(key)?;
    match PinnedLink::from_pin(&pin) {
        Ok(link) => {
            // Unpinning drops the last reference once our fd closes: the link detaches.
            link.unpin()
                .map_err(|e| Error::io(format!("unpin {}", pin.display()), e))?;
            Ok(())
        }
        Err(aya::programs::links::LinkError::SyscallError(s))
            if s.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => {
            // Not a link (or unreadable): remove the file anyway so the key is usable again.
            tracing::warn!(pin = %pin.display(), error = %e, "removing unusable link pin");
            match fs::remove_file(&pin) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(format!("remove {}", pin.display()), e)),
            }
        }
    }
}

/// Delete weft's tc filter from `ifname` if the interface still is `ifindex`.
fn remove_tc_filter(ifname: &str, ifindex_expected: u32) -> Result<()> {
    // A new interface that reuses the name is not ours to touch.
    match ifindex(ifname) {
        Ok(idx) if idx == ifindex_expected => {}
        _ => return Ok(()),
    }
    let link = match SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        TC_PRIORITY,
        TcHandle::new(0, TC_HANDLE),
        None,
    ) {
        Ok(l) => l,
        Err(_) => return Ok(()), // interface vanished meanwhile
    };
    match link.detach() {
        Ok(()) => Ok(()),
        // No such filter / no clsact qdisc / no device: nothing of ours is there.
        Err(e)
            if matches!(
                program_errno(&e),
                Some(nix::libc::ENOENT) | Some(nix::libc::EINVAL) | Some(nix::libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::program(format!("delete tc filter on {ifname}"), e)),
    }
}

/// if_nametoindex in the calling thread's netns.
pub(crate) fn ifindex(ifname: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| Error::Interface {
        name: ifname.to_owned(),
        source: e.into(),
    })
}
