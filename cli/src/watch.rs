//! `weft watch`: the DaemonSet's long-running mode.
//!
//! 1. Installs (idempotent): plugin binaries, then the chain when a primary exists.
//! 2. Re-attaches the fast path of pods whose records exist but whose attachment is gone.
//! 3. Keeps kmesh-cni in the primary config: inotify on the conf dir (a primary CNI rewriting,
//!    replacing or deleting and recreating its file is seen within milliseconds) plus a periodic
//!    reconcile (a missed event, a conf dir that was itself recreated).
//! 4. Ready (`/readyz`, `--ready-file`) only while the chain is in place.
//! 5. SIGTERM/SIGINT: stops, leaving the chain in place (an agent restart or upgrade must not
//!    pull the fast path out from under new pods), or uninstalls with `--uninstall-on-exit`.

use crate::chain::{self, Defaults, Target};
use crate::install::{self, InstallOptions};
use crate::metrics::Agent;
use crate::node::{Chained, Manifest, Node};
use crate::reattach;
use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub install: InstallOptions,
    pub resync: Duration,
    pub listen: Option<SocketAddr>,
    pub ready_file: Option<PathBuf>,
    pub uninstall_on_exit: bool,
    /// Reconcile once (install, re-attach, chain) and exit: for init containers and tests.
    pub once: bool,
    /// May write weft's default conflist when there is no primary.
    pub default_network: bool,
}

/// Blocks SIGTERM and SIGINT for this thread (and threads spawned afterwards) and returns a
/// signalfd that reports them. Call before any thread is spawned.
pub fn block_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().context("block SIGTERM/SIGINT")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")
}

struct Agentd {
    node: Node,
    opts: WatchOptions,
    agent: Arc<Agent>,
    reattached_once: bool,
}

impl Agentd {
    fn target(&self) -> Result<Target> {
        if let Target::File(f) = &self.opts.install.target {
            return Ok(Target::File(f.clone()));
        }
        let keeps_default = Manifest::load(&self.node)?.is_some_and(|m| {
            m.chained
                .iter()
                .any(|c| matches!(c, Chained::Default { .. }))
        });
        Ok(Target::Auto {
            default: self.opts.default_network || keeps_default,
        })
    }

    /// One pass; true when the chain is in place afterwards.
    fn reconcile(&mut self) -> bool {
        self.agent.reconciles.fetch_add(1, Ordering::Relaxed);
        let result = (|| -> Result<bool> {
            let mut manifest = Manifest::load(&self.node)?.unwrap_or_default();
            if manifest.entry.is_none() {
                manifest.entry = Some(self.node.entry());
            }
            let outcome = chain::ensure(
                &self.node,
                &self.target()?,
                &self.opts.install.defaults,
                &mut manifest,
            );
            manifest.save(&self.node)?;
            match outcome {
                Ok(o) => {
                    if o.changed() {
                        self.agent.rechains.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("{o}");
                        println!("weft watch: {o}");
                    }
                    Ok(true)
                }
                Err(e) if e.downcast_ref::<chain::NoPrimary>().is_some() => {
                    tracing::info!("{e}; waiting for the primary CNI");
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })();
        let chained = match result {
            Ok(c) => c,
            Err(e) => {
                self.agent.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("reconcile: {e:#}");
                eprintln!("weft watch: {e:#}");
                false
            }
        };
        if chained && !self.reattached_once {
            self.reattach();
        }
        self.agent.chain_present.store(chained, Ordering::Relaxed);
        self.set_ready(chained && self.reattached_once);
        chained
    }

    fn reattach(&mut self) {
        match reattach::run(&self.node) {
            Ok(list) => {
                self.reattached_once = true;
                for (key, outcome) in list {
                    match outcome {
                        reattach::Outcome::Reattached(problems) => {
                            self.agent.reattached.fetch_add(1, Ordering::Relaxed);
                            println!(
                                "weft watch: re-attached the fast path of {key} ({})",
                                problems.join("; ")
                            );
                        }
                        reattach::Outcome::Failed(e) => {
                            self.agent.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("weft watch: could not re-attach {key}: {e}");
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                self.agent.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("weft watch: re-attach pass failed: {e:#}");
            }
        }
    }

    fn set_ready(&self, ready: bool) {
        let was = self.agent.ready.swap(ready, Ordering::Relaxed);
        if let Some(f) = &self.opts.ready_file {
            let res = if ready {
                if was && f.exists() {
                    Ok(())
                } else {
                    std::fs::write(f, b"ready\n")
                }
            } else {
                match std::fs::remove_file(f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            };
            if let Err(e) = res {
                tracing::warn!(file = %f.display(), error = %e, "ready file");
            }
        }
        if ready != was {
            println!(
                "weft watch: {}",
                if ready {
                    "ready (kmesh-cni chained)"
                } else {
                    "not ready"
                }
            );
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT (or one pass with `once`). `signals` comes from
/// [`block_signals`], called before any thread started.
pub fn run(node: Node, opts: WatchOptions, signals: SignalFd) -> Result<()> {
    let agent = Arc::new(Agent::default());
    if let Some(addr) = opts.listen {
        let bound = crate::http::serve(addr, node.clone(), agent.clone())
            .with_context(|| format!("listen on {addr}"))?;
        println!("weft watch: serving /metrics, /readyz, /healthz on http://{bound}");
    }
    // Binaries first (never chain a plugin the runtime cannot find), then the chain.
    let mut install_opts = opts.install.clone();
    install_opts.target = Target::Auto { default: false };
    match install::install_binaries(&node, &install_opts) {
        Ok(lines) => lines.iter().for_each(|l| println!("weft watch: {l}")),
        Err(e) => eprintln!("weft watch: installing the binaries failed: {e:#}"),
    }
    let mut d = Agentd {
        node: node.clone(),
        opts: opts.clone(),
        agent,
        reattached_once: false,
    };
    if !d.reconcile() {
        println!(
            "weft watch: not ready: waiting for a primary CNI config in {}",
            node.conf_dir.display()
        );
    }
    if opts.once {
        return if d.agent.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            anyhow::bail!("the chain is not in place")
        };
    }
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify")?;
    let mut wd: Option<WatchDescriptor> = None;
    let mut next_resync = Instant::now() + opts.resync;
    loop {
        if wd.is_none() {
            wd = inotify
                .add_watch(
                    &node.conf_dir,
                    AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_CLOSE_WRITE
                        | AddWatchFlags::IN_MODIFY
                        | AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_MOVED_FROM
                        | AddWatchFlags::IN_DELETE
                        | AddWatchFlags::IN_ATTRIB
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                )
                .ok();
        }
        let healthy = d.agent.ready.load(Ordering::Relaxed);
        let wait = if healthy {
            next_resync.saturating_duration_since(Instant::now())
        } else {
            // Not chained (primary missing or unparsable): look again soon.
            Duration::from_millis(500).min(opts.resync)
        };
        let timeout =
            PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let (sig_ready, ino_ready) = {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll"),
            }
            let r = |f: &PollFd| f.revents().is_some_and(|e| e.contains(PollFlags::POLLIN));
            (r(&fds[0]), r(&fds[1]))
        };
        if sig_ready {
            if let Ok(Some(s)) = signals.read_signal() {
                println!("weft watch: signal {}, stopping", s.ssi_signo);
            }
            break;
        }
        if ino_ready {
            // Let a burst of writes (write, close, rename) settle, then look once.
            std::thread::sleep(Duration::from_millis(30));
            while let Ok(events) = inotify.read_events() {
                if events.iter().any(|e| {
                    e.mask.intersects(
                        AddWatchFlags::IN_IGNORED
                            | AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF,
                    )
                }) {
                    if let Some(w) = wd.take() {
                        let _ = inotify.rm_watch(w);
                    }
                }
                if events.is_empty() {
                    break;
                }
            }
        }
        d.reconcile();
        if Instant::now() >= next_resync {
            next_resync = Instant::now() + opts.resync;
        }
    }
    d.set_ready(false);
    if opts.uninstall_on_exit {
        for line in install::uninstall(&node, false)? {
            println!("weft watch: {line}");
        }
    }
    Ok(())
}

pub fn defaults() -> Defaults {
    Defaults::default()
}
