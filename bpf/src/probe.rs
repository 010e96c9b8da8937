//! Runtime feature probes: what this kernel actually accepts, found by trying it
//! (never by parsing the kernel version string).

use aya::{
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, ProgramType, SchedClassifier, TcAttachType,
    },
    sys::{is_helper_supported, BpfHelper},
};
use serde::Serialize;

use crate::{objects, pin};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    /// tcx links on a device's ingress can be created (kernel >= 6.6).
    pub tcx: bool,
    /// A clsact qdisc and a direct-action cls_bpf filter can be installed.
    pub clsact: bool,
    /// tc programs may call `bpf_redirect_peer()` (kernel >= 5.10).
    pub redirect_peer: bool,
    /// A BPF filesystem is mounted at /sys/fs/bpf, or the kernel offers one to mount.
    pub bpffs: bool,
}

impl Features {
    /// Can the fast path work at all, and with which attach mode (what `mode: auto` uses)?
    ///
    /// clsact + cls_bpf first, tcx where the kernel has no clsact: per pod, creating and
    /// releasing a tcx link each wait for an RCU grace period (`synchronize_rcu` in the tcx
    /// entry update, ~10 ms each here), while adding and deleting a cls_bpf filter at weft's own
    /// priority costs about 1 ms each (issue 12, `weft-bench chain` prints both against the
    /// kernel floor). Both coexist with other tc users; `mode: tcx` still picks tcx.
    pub fn mode(&self) -> Option<crate::Mode> {
        if !self.redirect_peer || !self.bpffs {
            None
        } else if self.clsact {
            Some(crate::Mode::Tc)
        } else if self.tcx {
            Some(crate::Mode::Tcx)
        } else {
            None
        }
    }
}

/// The probes that attach a program for real (tcx, clsact + cls_bpf) to the loopback device of
/// the calling thread's netns: run them in a namespace that exists only for the probe, so no
/// interface anyone uses is touched (netns handling is the caller's: it lives in `host`).
pub fn attach_probes() -> (bool, bool) {
    (probe_tcx(), probe_clsact())
}

/// Probe the running kernel, given the results of [`attach_probes`] (`None`: they could not
/// run, e.g. no throwaway netns). Never fails: a probe that cannot run reports `false` (the
/// reason is logged at debug level). Needs CAP_SYS_ADMIN/CAP_BPF/CAP_NET_ADMIN.
pub fn features(attach: Option<(bool, bool)>) -> Features {
    let redirect_peer = is_helper_supported(
        ProgramType::SchedClassifier,
        BpfHelper::BPF_FUNC_redirect_peer,
    )
    .unwrap_or_else(|e| {
        tracing::debug!(error = %e, "redirect_peer probe failed");
        false
    });
    let bpffs = pin::is_bpffs(std::path::Path::new(pin::BPFFS)).unwrap_or(false)
        || std::fs::read_to_string("/proc/filesystems")
            .map(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().last() == Some("bpf"))
            })
            .unwrap_or(false);
    let (tcx, clsact) = attach.unwrap_or((false, false));
    Features {
        tcx,
        clsact,
        redirect_peer,
        bpffs,
    }
}

fn with_probe_prog(f: impl FnOnce(&mut SchedClassifier) -> Result<(), String>) -> bool {
    let run = || -> Result<(), String> {
        let mut ebpf = aya::Ebpf::load(objects::PROBE).map_err(|e| e.to_string())?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(objects::PROBE_PROG)
            .ok_or("probe program missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.load().map_err(|e| e.to_string())?;
        f(prog)
    };
    match run() {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "feature probe failed");
            false
        }
    }
}

fn probe_tcx() -> bool {
    with_probe_prog(|prog| {
        prog.attach_with_options(
            "lo",
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::last()),
        )
        .map(drop)
        .map_err(|e| format!("tcx attach: {e}"))
    })
}

fn probe_clsact() -> bool {
    with_probe_prog(|prog| {
        tc::qdisc_add_clsact("lo").map_err(|e| format!("clsact: {e}"))?;
        prog.attach_with_options(
            "lo",
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map(drop)
        .map_err(|e| format!("cls_bpf attach: {e}"))
    })
}
