//! `kmesh-cni`: a chained plugin. This first cut passes the previous plugin's result through
//! unchanged; the eBPF fast path and mesh enrolment attach here (issue #4).

pub mod config;

use conf::{CniResult, Error, Plugin, Request, Result};

pub struct KmeshCni;

impl KmeshCni {
    /// The result of the main plugin before us. A chained plugin without one was configured
    /// first in a chain (or alone), which is a config error, not something to paper over.
    fn prev_result(req: &Request) -> Result<CniResult> {
        req.conf.prev_result()?.ok_or_else(|| {
            Error::invalid_config(
                "kmesh-cni is a chained plugin: it must follow a main plugin (bridge, ptp, ...) \
                 that provides prevResult",
            )
        })
    }
}

impl Plugin for KmeshCni {
    fn add(&self, req: &Request) -> Result<CniResult> {
        Self::prev_result(req)
    }

    /// Nothing is attached yet, so there is nothing to undo. DEL never fails on a missing or
    /// unreadable prevResult: a failing DEL stops the runtime from running the plugins after
    /// us, which is how addresses leak (cilium #8313).
    fn del(&self, _req: &Request) -> Result<()> {
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<()> {
        Self::prev_result(req).map(drop)
    }
}
