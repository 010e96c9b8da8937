//! Bringing back the fast path of pods that are still there but whose attachment is gone: after
//! bpffs was remounted (pins, maps and tcx links vanish with it), after an operator removed the
//! pin root, or after an upgrade replaced the program. The record says everything: netns, host
//! veth and its index, mode, every map entry with its owner. So no pod needs a restart.
//!
//! The steps are the ADD's (`kmesh_cni::fastpath::attach`), but a failure keeps the record: the
//! pod is alive and its DEL must still find it.

use crate::node::Node;
use crate::state::{self, Liveness};
use anyhow::{anyhow, Result};
use conf::AttachmentKey;
use kmesh_cni::record::{Record, State};

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything the record lists is in place.
    Intact,
    /// Re-attached; the problems that were found.
    Reattached(Vec<String>),
    /// Not ours to fix: the pod is gone (GC's business), the record is from an older map
    /// layout or never finished attaching.
    Skipped(String),
    Failed(String),
}

/// Checks every kmesh-cni record and re-attaches what is missing. Holds the record store's
/// lock, as every kmesh-cni exec does for changes.
pub fn run(node: &Node) -> Result<Vec<(AttachmentKey, Outcome)>> {
    let store = node.kmesh_store();
    if !store.dir().exists() {
        return Ok(Vec::new());
    }
    let _lock = store
        .lock()
        .map_err(|e| anyhow!("lock {}: {e}", store.dir().display()))?;
    let configured = node.bpf_root();
    let mut out = Vec::new();
    for r in state::kmesh_records(node) {
        let outcome = match &r.record {
            Err(e) => Outcome::Skipped(format!("unreadable record: {e}")),
            Ok(rec) => one(&store, &r.key, &configured, rec),
        };
        if let Outcome::Reattached(p) = &outcome {
            tracing::info!(key = %r.key, problems = ?p, "fast path re-attached");
        }
        out.push((r.key, outcome));
    }
    Ok(out)
}

fn one(
    store: &host::RecordStore,
    key: &AttachmentKey,
    configured: &bpf::PinRoot,
    rec: &Record,
) -> Outcome {
    if rec.is_layout_1() {
        return Outcome::Skipped("layout-1 record (served by the maps of its release)".into());
    }
    if rec.state != State::Attached {
        return Outcome::Skipped("attach never completed (DEL or GC cleans it)".into());
    }
    let live = state::liveness(rec);
    if live != Liveness::Alive {
        return Outcome::Skipped(format!("{} (weft gc reclaims it)", live.as_str()));
    }
    let pin_root = rec.pin_root(configured);
    if !bpf::is_bpffs(pin_root.path().parent().unwrap_or(pin_root.path())).unwrap_or(false)
        && !bpf::is_bpffs(pin_root.path()).unwrap_or(false)
    {
        return Outcome::Failed(format!(
            "pin root {} is not on a mounted bpffs",
            pin_root.path().display()
        ));
    }
    let problems = match kmesh_cni::fastpath::verify(configured, rec) {
        Ok(p) => p,
        Err(e) => vec![format!("cannot verify: {}", e)],
    };
    if problems.is_empty() {
        return Outcome::Intact;
    }
    // Entries now held by another pod are not ours to take back.
    if problems
        .iter()
        .any(|p| p.contains("belongs to another pod"))
    {
        return Outcome::Skipped(problems.join("; "));
    }
    match attach(store, key, &pin_root, rec) {
        Ok(()) => Outcome::Reattached(problems),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// The ADD's side effects, from the record: device entry, program, endpoints, enrolment.
fn attach(
    store: &host::RecordStore,
    key: &AttachmentKey,
    pin_root: &bpf::PinRoot,
    rec: &Record,
) -> Result<()> {
    let mut maps = bpf::Maps::open_or_create(pin_root)?;
    maps.devices.insert(rec.host_ifindex, &rec.device())?;
    let att = maps.attach(&rec.host_veth, rec.mode, &rec.attach_key)?;
    for ep in &rec.endpoints {
        maps.endpoints.insert(rec.network_id, ep.ip, &ep.to_bpf())?;
    }
    if let Some(cookie) = rec.netns_cookie {
        maps.managed.insert(cookie, &rec.managed())?;
    }
    let mut updated = rec.clone();
    updated.attachment = Some(att);
    store.write(key, &updated)?;
    Ok(())
}
