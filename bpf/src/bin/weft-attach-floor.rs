//! The kernel's floor for P1-chain (issue 12): the smallest program that does the kernel work
//! kmesh-cni's ADD and DEL do to a pod's veth, and nothing else. It attaches the redirect
//! program kmesh-cni pinned (the same program, so the verifier and the kernel see the same
//! object) to a veth's ingress, or detaches it, in the mode kmesh-cni chose, and exits.
//! `weft-bench chain` execs it beside the plugin and prints the two side by side.
//!
//!   weft-attach-floor attach|detach tc|tcx <pin root> <ifname>
//!
//! tc: clsact qdisc (if missing) + cls_bpf filter at a priority of its own; tcx: a link pinned
//! at `<pin root>/links/floor-<ifname>`. No maps, no records, no netns entry, no config.

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{Link, LinkOrder, SchedClassifier, TcAttachType};

/// Not kmesh-cni's priority: the floor must never touch a plugin's filter.
const PRIORITY: u16 = 0x464c; // "FL"
const HANDLE: u16 = 0x464c;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [verb, mode, root, ifname] = args.as_slice() else {
        return Err("usage: weft-attach-floor attach|detach tc|tcx <pin root> <ifname>".into());
    };
    let root = Path::new(root);
    match (verb.as_str(), mode.as_str()) {
        ("attach", "tc") => attach_tc(&mut program(root)?, ifname),
        ("attach", "tcx") => attach_tcx(&mut program(root)?, root, ifname),
        ("detach", "tc") => {
            let filter = SchedClassifierLink::attached(
                ifname,
                TcAttachType::Ingress,
                PRIORITY,
                TcHandle::new(0, HANDLE),
                None,
            )?;
            Ok(Link::detach(filter)?)
        }
        ("detach", "tcx") => {
            // Unpinned, the link goes when this last fd closes: the detach.
            PinnedLink::from_pin(link_pin(root, ifname))?.unpin()?;
            Ok(())
        }
        _ => Err(format!("unknown verb/mode {verb} {mode}").into()),
    }
}

/// The redirect program kmesh-cni pinned under `root` (this build's).
fn program(root: &Path) -> Result<SchedClassifier> {
    bpf::pinned_program(&bpf::PinRoot::new(root))?
        .ok_or_else(|| "no pinned redirect program of this build: run a kmesh-cni ADD first".into())
}

fn attach_tc(prog: &mut SchedClassifier, ifname: &str) -> Result<()> {
    match tc::qdisc_add_clsact(ifname) {
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
        other => other?,
    }
    let opts = TcAttachOptions::Netlink(NlOptions {
        priority: PRIORITY,
        handle: TcHandle::new(0, HANDLE),
        classid: None,
    });
    let id = prog.attach_with_options(ifname, TcAttachType::Ingress, opts)?;
    // The filter must outlive this process (dropping the link would delete it).
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

fn attach_tcx(prog: &mut SchedClassifier, root: &Path, ifname: &str) -> Result<()> {
    let opts = TcAttachOptions::TcxOrder(LinkOrder::last());
    let id = prog.attach_with_options(ifname, TcAttachType::Ingress, opts)?;
    let link = FdLink::try_from(prog.take_link(id)?)?;
    let pin = link_pin(root, ifname);
    // Dropping the returned PinnedLink closes only our fd; the pin keeps the link attached.
    link.pin(&pin)?;
    Ok(())
}

fn link_pin(root: &Path, ifname: &str) -> PathBuf {
    root.join("links").join(format!("floor-{ifname}"))
}
