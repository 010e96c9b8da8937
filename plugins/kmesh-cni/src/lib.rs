//! `kmesh-cni`: a chained plugin. After a veth-based main plugin (bridge, ptp) wired the pod,
//! it attaches the eBPF same-node fast path to the pod's host-side veth, records the pod in the
//! `endpoints` map (and, when enrolled, the `managed` map), and returns prevResult unchanged.

pub mod config;
pub mod error;
pub mod fastpath;
pub mod features;
pub mod pod;
pub mod record;
pub mod steps;

use conf::{AttachmentKey, CniResult, Request, Verbs};
use config::{FailurePolicy, KmeshConf};
use error::{KmeshError, Result};
use host::{HostError, RecordStore};
use record::Record;

pub const PLUGIN_NAME: &str = "kmesh-cni";

pub struct KmeshCni;

/// Everything a verb needs, derived from the request once.
struct Context {
    conf: KmeshConf,
    store: RecordStore,
    pin_root: bpf::PinRoot,
}

impl Context {
    /// For the verbs that create or read pins: the pin root must be valid first.
    fn new(req: &Request) -> Result<Context> {
        let ctx = Self::tolerant(req)?;
        ctx.conf.check_pin_root()?;
        Ok(ctx)
    }

    /// For DEL, which undoes what the record says and must finish whatever the config says
    /// now: an invalid `pinRoot` only means no map of a record without its own root is found.
    fn tolerant(req: &Request) -> Result<Context> {
        let conf = KmeshConf::from_request(req)?;
        host::logging::init(conf.log_level.as_deref(), conf.log_file.as_deref());
        Ok(Context {
            store: record::store(&host::fsio::state_dir().join(PLUGIN_NAME)),
            pin_root: bpf::PinRoot::new(&conf.pin_root),
            conf,
        })
    }
}

/// The result of the main plugin before us. A chained plugin without one was configured
/// first in a chain (or alone), which is a config error, not something to paper over.
fn prev_result(req: &Request) -> Result<CniResult> {
    req.conf.prev_result()?.ok_or_else(|| {
        KmeshError::Config(
            "kmesh-cni is a chained plugin: it must follow a main plugin (bridge, ptp, ...) \
             that provides prevResult"
                .into(),
        )
    })
}

/// The attachment this request is about: records and map entries are scoped to its network.
fn key(req: &Request) -> Result<AttachmentKey> {
    Ok(req.attachment()?)
}

impl KmeshCni {
    fn attach(&self, ctx: &Context, req: &Request, prev: &CniResult) -> Result<()> {
        let policy = ctx.conf.pod_policy(req)?;
        let mode = features::choose(
            if policy.fast_path {
                ctx.conf.mode
            } else {
                config::Mode::Off
            },
            ctx.store.dir(),
        )?;
        steps::mark("features");
        let Some(mode) = mode else {
            tracing::info!("fast path off for this pod");
            return Ok(());
        };
        let pod = pod::discover(req, prev)?;
        steps::mark("discover");
        let pod = match pod {
            Ok(pod) => pod,
            Err(why) => {
                tracing::info!(%why, "passing through without a fast path");
                return Ok(());
            }
        };
        let cookie = if policy.enrolled {
            Some(pod.netns_cookie.ok_or_else(|| {
                KmeshError::Link(format!(
                    "no netns cookie for {} (SO_NETNS_COOKIE needs Linux >= 5.14): mesh \
                     enrolment is keyed by it",
                    pod.netns.display()
                ))
            })?)
        } else {
            None
        };
        let key = key(req)?;
        let _lock = ctx.store.lock()?;
        // A retried ADD replaces what the previous try (or a release before network scoping)
        // left.
        if let Some((old_key, old)) = ctx.store.find::<Record>(&key)? {
            fastpath::detach(&ctx.store, &old_key, &ctx.pin_root, &old)?;
        }
        steps::mark("record-lookup");
        fastpath::attach(&ctx.store, &key, &ctx.pin_root, mode, &pod, cookie)?;
        Ok(())
    }
}

/// The verbs, in kmesh-cni's own error type (codes are decided in `error`).
impl Verbs for KmeshCni {
    type Error = KmeshError;

    fn add(&self, req: &Request) -> Result<CniResult> {
        steps::timed("ADD", || {
            let prev = prev_result(req)?;
            let ctx = Context::new(req)?;
            steps::mark("config");
            match self.attach(&ctx, req, &prev) {
                Ok(()) => Ok(prev),
                Err(e) if ctx.conf.failure_policy == FailurePolicy::Ignore => {
                    tracing::warn!(error = %e, "fast path not attached (failurePolicy: ignore)");
                    Ok(prev)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Undoes exactly what the record lists. DEL never fails for something already gone, nor
    /// on a missing or unreadable prevResult: a failing DEL stops the runtime from running the
    /// plugins after us, which is how addresses leak (cilium #8313).
    fn del(&self, req: &Request) -> Result<()> {
        steps::timed("DEL", || {
            let ctx = Context::tolerant(req)?;
            steps::mark("config");
            let key = key(req)?;
            let _lock = ctx.store.lock()?;
            let found = ctx.store.find::<Record>(&key);
            steps::mark("record-lookup");
            match found {
                Ok(Some((stored, record))) => {
                    fastpath::detach(&ctx.store, &stored, &ctx.pin_root, &record)
                }
                Ok(None) => Ok(()),
                Err(HostError::CorruptRecord { path, reason }) => {
                    // The pod's host veth, if the pod is still there: its tc filter is ours.
                    let host_veth = req.env.netns.as_deref().and_then(|netns| {
                        host::find_veth_pair(netns, &req.env.ifname)
                            .ok()
                            .flatten()
                            .map(|pair| pair.host.name)
                    });
                    discard_unreadable(&ctx, &key, host_veth.as_deref(), &path, &reason)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn check(&self, req: &Request) -> Result<()> {
        let prev = prev_result(req)?;
        let ctx = Context::new(req)?;
        let policy = ctx.conf.pod_policy(req)?;
        let record = ctx.store.find::<Record>(&key(req)?)?.map(|(_, r)| r);
        let wanted = policy.fast_path && pod::discover(req, &prev)?.is_ok();
        let record = match (record, wanted) {
            (None, false) => return Ok(()),
            (None, true) => {
                return Err(KmeshError::CheckFailed {
                    msg: "no kmesh-cni attachment for this container".into(),
                    details: String::new(),
                })
            }
            (Some(r), _) => r,
        };
        let mut problems = fastpath::verify(&ctx.pin_root, &record)?;
        let recorded: std::collections::HashSet<_> =
            record.endpoints.iter().map(|e| e.ip).collect();
        if let Some(ips) = pod::pod_ips(&prev, &req.env.ifname) {
            for ip in ips.into_iter().filter(|ip| !recorded.contains(ip)) {
                problems.push(format!("prevResult address {ip} has no endpoint entry"));
            }
        }
        if policy.enrolled != record.netns_cookie.is_some() {
            problems.push("mesh enrolment differs from the pod's annotations".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(KmeshError::CheckFailed {
                msg: "kmesh-cni attachment differs".into(),
                details: problems.join("; "),
            })
        }
    }

    /// Removes this network's attachments that the runtime no longer lists, and those whose
    /// host veth vanished (the pod's netns was torn down without a DEL). Never touches another
    /// network's records. Legacy records (no network) are adopted when the list names their
    /// interface, removed when their veth vanished, and otherwise left for their own network.
    /// Keeps going past errors.
    fn gc(&self, req: &Request) -> Result<()> {
        let ctx = Context::new(req)?;
        let network = &req.conf.name;
        let valid = req.conf.valid_attachment_keys()?;
        let _lock = ctx.store.lock()?;
        let swept = ctx.store.sweep_temps();
        if swept > 0 {
            tracing::info!(swept, "removed temp files of killed writers");
        }
        let mut failures = Vec::new();
        let mut fail = |key: &AttachmentKey, e: KmeshError| failures.push(format!("{key}: {e}"));
        for key in ctx.store.keys(network)? {
            let record = match ctx.store.read::<Record>(&key) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(HostError::CorruptRecord { path, reason }) if !valid.contains(&key) => {
                    if let Err(e) = discard_unreadable(&ctx, &key, None, &path, &reason) {
                        fail(&key, e);
                    }
                    continue;
                }
                Err(e) => {
                    fail(&key, e.into());
                    continue;
                }
            };
            if valid.contains(&key) && veth_still_there(&record) {
                continue;
            }
            if let Err(e) = fastpath::detach(&ctx.store, &key, &ctx.pin_root, &record) {
                fail(&key, e);
            }
        }
        for old in ctx.store.legacy_keys()? {
            let record = match ctx.store.read::<Record>(&old) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    fail(&old, e.into());
                    continue;
                }
            };
            let outcome = if !veth_still_there(&record) {
                fastpath::detach(&ctx.store, &old, &ctx.pin_root, &record)
            } else if let Some(listed) = valid.iter().find(|k| k.same_interface(&old)) {
                adopt(&ctx.store, &old, listed, record)
            } else {
                Ok(())
            };
            if let Err(e) = outcome {
                fail(&old, e);
            }
        }
        if failures.is_empty() && !any_layout_1_record(&ctx.store)? {
            // No pod uses the layout-1 maps any more (the last record of that release is gone).
            if let Err(e) = bpf::legacy::remove_if_unused(&ctx.pin_root) {
                tracing::warn!(error = %e, "could not remove the unused layout-1 pins");
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(KmeshError::GcIncomplete {
                details: failures.join("; "),
            })
        }
    }

    /// Cheap: bpffs and the maps are reachable and the kernel has what the mode needs.
    fn status(&self, req: &Request) -> Result<()> {
        let ctx = Context::new(req)?;
        // ADD writes a record before anything else: a state dir that cannot take one now
        // (read-only, full) means every ADD would fail.
        ctx.store
            .check_writable()
            .map_err(KmeshError::from)
            .map_err(KmeshError::not_available)?;
        features::choose(ctx.conf.mode, ctx.store.dir()).map_err(KmeshError::not_available)?;
        if ctx.conf.mode != config::Mode::Off {
            bpf::Maps::open_or_create(&ctx.pin_root)
                .map_err(KmeshError::bpf("open maps"))
                .map_err(KmeshError::not_available)?;
        }
        Ok(())
    }
}

/// DEL (or GC) of an attachment whose record cannot be read. Records are not flushed to disk
/// (see [`record::store`]), so a power loss can leave one empty or cut short; everything it
/// listed lived in kernel memory and is gone too. What can be found without the record is
/// removed in case the kernel still has it (the tcx link pinned under the key's attach key;
/// weft's tc filter on `host_veth`, the pod's host veth when DEL could still find it), then
/// the file: DEL must finish when there is nothing left it can undo. Map entries only a
/// readable record could name are replaced by the next pod with the same address or veth.
fn discard_unreadable(
    ctx: &Context,
    key: &AttachmentKey,
    host_veth: Option<&str>,
    path: &std::path::Path,
    reason: &str,
) -> Result<()> {
    tracing::warn!(path = %path.display(), reason, "discarding an unreadable record");
    let legacy = AttachmentKey::legacy(key.container_id(), key.ifname())
        .expect("parts of a valid key are valid");
    let pins_reachable = bpf::is_bpffs(ctx.pin_root.path()).unwrap_or(false);
    for k in [key, &legacy] {
        if pins_reachable {
            bpf::detach_key(&ctx.pin_root, &fastpath::attach_key(k), host_veth)
                .map_err(KmeshError::bpf("detach"))?;
        }
        if ctx.store.path(k) == path {
            ctx.store.remove(k)?;
        }
    }
    Ok(())
}

/// Moves a legacy record into the network whose GC listed its interface: from then on it is that
/// network's (its entries stay where they are; the record still says which layout they are in).
fn adopt(
    store: &RecordStore,
    old: &AttachmentKey,
    listed: &AttachmentKey,
    mut record: Record,
) -> Result<()> {
    record.network = listed.network().map(str::to_owned);
    store.write(listed, &record)?;
    store.remove(old)?;
    tracing::info!(%old, network = ?listed.network(), "adopted a record of an earlier release");
    Ok(())
}

/// Whether any record on the node (any network, adopted or not) still has its entries in the
/// layout-1 maps. An unreadable record counts as one: its maps must not go.
fn any_layout_1_record(store: &RecordStore) -> Result<bool> {
    for key in store.all_keys()? {
        match store.read::<Record>(&key) {
            Ok(Some(r)) if !r.is_layout_1() => {}
            Ok(None) => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}

/// The record's host veth still exists under the same name and index.
fn veth_still_there(record: &Record) -> bool {
    matches!(host::link_by_index(None, record.host_ifindex), Ok(Some(l)) if l.name == record.host_veth)
}
