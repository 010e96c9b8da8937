//! Which attach mode this kernel supports, found by probing (bpf::probe), never by version
//! string. Probing creates a throwaway netns and loads a program, which is too slow to repeat
//! on every ADD, so the answer is cached per boot in the plugin's state dir (bpffs itself
//! holds only BPF objects).

use crate::config::Mode;
use crate::error::{KmeshError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    features: Probed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    pub tcx: bool,
    pub clsact: bool,
    pub redirect_peer: bool,
    pub bpffs: bool,
}

const CACHE_FILE: &str = "features.json";

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Probed features, from the per-boot cache in `state_dir` when present.
pub fn probed(state_dir: &Path) -> Probed {
    let cache = state_dir.join(CACHE_FILE);
    let boot = boot_id();
    if let Some(c) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
        .filter(|c| !boot.is_empty() && c.boot_id == boot)
    {
        return c.features;
    }
    // The attach probes attach for real: in a netns that exists only for them.
    let attach = host::netns::run_in_new_netns(bpf::probe::attach_probes)
        .map_err(|e| tracing::debug!(error = %e, "cannot create a throwaway netns for probes"))
        .ok();
    let f = bpf::probe::features(attach);
    let features = Probed {
        tcx: f.tcx,
        clsact: f.clsact,
        redirect_peer: f.redirect_peer,
        bpffs: f.bpffs,
    };
    // Best effort: a cache we cannot write only costs the next exec another probe. The state
    // dir also holds the records: private like them, the file 0600 like them.
    if let Ok(bytes) = serde_json::to_vec(&Cached {
        boot_id: boot,
        features,
    }) {
        let _ = host::fsio::ensure_private_dir(state_dir).and_then(|()| {
            host::fsio::write_atomic(state_dir, CACHE_FILE, &bytes, host::fsio::Durability::Cache)
        });
    }
    features
}

/// The attach mode to use for `wanted`; `None` for mode off.
pub fn choose(wanted: Mode, state_dir: &Path) -> Result<Option<bpf::Mode>> {
    if wanted == Mode::Off {
        return Ok(None);
    }
    let f = probed(state_dir);
    let missing = KmeshError::KernelLacks;
    if !f.redirect_peer {
        return Err(missing("bpf_redirect_peer"));
    }
    match wanted {
        Mode::Tcx if f.tcx => Ok(Some(bpf::Mode::Tcx)),
        Mode::Tcx => Err(missing("tcx links (mode: tcx)")),
        Mode::Tc if f.clsact => Ok(Some(bpf::Mode::Tc)),
        Mode::Tc => Err(missing("clsact + cls_bpf (mode: tc)")),
        // The cheaper attach first (see bpf::probe::Features::mode).
        Mode::Auto if f.clsact => Ok(Some(bpf::Mode::Tc)),
        Mode::Auto if f.tcx => Ok(Some(bpf::Mode::Tcx)),
        Mode::Auto => Err(missing("both clsact and tcx")),
        Mode::Off => unreachable!("handled above"),
    }
}
