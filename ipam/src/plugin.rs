//! The CNI verbs of weft-ipam. The dispatcher in `conf` has already validated the env, the
//! container ID, the ifname and the version; this module turns a request into store calls.

use crate::config::Config;
use crate::error::{IpamError, Result};
use crate::range::Range;
use crate::store::{self, Claim, Owner, Store};
use conf::{code, CniResult, IpConfig, Request, Verbs};
use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::IpAddr;

pub struct IpamPlugin;

fn ipam_object(req: &Request) -> Result<&Map<String, Value>> {
    let ipam = req
        .conf
        .ipam
        .as_ref()
        .ok_or_else(|| IpamError::Config("config has no \"ipam\" section".into()))?;
    // Logs go to ipam.log_file (appended) or stderr, never stdout; default level warn.
    host::logging::init(
        ipam.get("log_level").and_then(Value::as_str),
        ipam.get("log_file")
            .and_then(Value::as_str)
            .map(std::path::Path::new),
    );
    Ok(ipam)
}

/// Everything but ADD needs only where the reservations live, not the ranges: DEL and GC must
/// still work after an operator edited a range into something invalid. Returns the ranges too
/// when the config has valid ones (STATUS checks the store against them).
fn open_store_and_ranges(req: &Request) -> Result<(Box<dyn Store>, Vec<Range>)> {
    let ipam = ipam_object(req)?;
    let (network, store, ranges) = match Config::from_ipam(ipam, &req.conf.name) {
        Ok(cfg) => (cfg.network, cfg.store, cfg.ranges),
        Err(e) if e.code() == code::INVALID_CONFIG => {
            let (network, store) = Config::store_only(ipam, &req.conf.name).map_err(|_| e)?;
            (network, store, Vec::new())
        }
        Err(e) => return Err(e),
    };
    Ok((store::open(&network, &store)?, ranges))
}

fn open_store(req: &Request) -> Result<Box<dyn Store>> {
    open_store_and_ranges(req).map(|(store, _)| store)
}

/// The attachment that holds the addresses: this CNI network's `name` (not the pool's
/// `network_name`, which several networks may share), container ID and ifname.
fn owner(req: &Request) -> Result<Owner> {
    Ok(req.attachment()?)
}

/// Static addresses from `runtimeConfig.ips` (capability `ips`), `args.cni.ips`, and
/// `IP=a,b` (`args.cni.IP`, else `CNI_ARGS`). Entries may carry a prefix ("10.1.0.5/24"); only the address counts.
fn requested_ips(req: &Request) -> Result<Vec<IpAddr>> {
    let mut texts: Vec<String> = req.conf.runtime::<Vec<String>>("ips")?.unwrap_or_default();
    if let Some(ips) = req.conf.args.as_ref().and_then(|a| a.pointer("/cni/ips")) {
        let list: Vec<String> = serde_json::from_value(ips.clone())
            .map_err(|e| IpamError::Config(format!("args.cni.ips: {e}")))?;
        texts.extend(list);
    }
    if let Some(ip) = req.arg("IP") {
        texts.extend(
            ip.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for t in texts {
        let addr = t.split_once('/').map_or(t.as_str(), |(a, _)| a);
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| IpamError::Config(format!("requested IP {t:?} is not an IP address")))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Pairs every range with the static address requested in it, if any.
fn claims<'a>(ranges: &'a [Range], wanted: &[IpAddr]) -> Result<Vec<Claim<'a>>> {
    let mut claims: Vec<Claim<'a>> = ranges
        .iter()
        .map(|range| Claim { range, want: None })
        .collect();
    for ip in wanted {
        let claim = claims
            .iter_mut()
            .find(|c| c.range.contains(*ip))
            .ok_or_else(|| {
                IpamError::Config(format!(
                    "requested IP {ip} is not inside any configured range"
                ))
            })?;
        if claim.range.is_reserved(*ip) {
            return Err(IpamError::Config(format!(
                "requested IP {ip} is reserved (network, broadcast, gateway or exclude)"
            )));
        }
        if let Some(prev) = claim.want.replace(*ip) {
            return Err(IpamError::Config(format!(
                "requested IPs {prev} and {ip} fall in the same range; one address per range"
            )));
        }
    }
    Ok(claims)
}

/// The verbs, in weft-ipam's own error type (codes are decided in `error`).
impl Verbs for IpamPlugin {
    type Error = IpamError;

    fn add(&self, req: &Request) -> Result<CniResult> {
        let cfg = Config::from_ipam(ipam_object(req)?, &req.conf.name)?;
        let owner = owner(req)?;
        let wanted = requested_ips(req)?;
        let claims = claims(&cfg.ranges, &wanted)?;
        let store = store::open(&cfg.network, &cfg.store)?;
        let addrs = store.reserve(&owner, &claims)?;
        tracing::info!(network = %cfg.network, %owner, ?addrs, "reserved");
        let ips = cfg
            .ranges
            .iter()
            .zip(&addrs)
            .map(|(r, ip)| {
                let net = IpNetwork::new(*ip, r.subnet.prefix())
                    .expect("prefix comes from a valid subnet");
                IpConfig::new(net, r.gateway)
            })
            .collect();
        Ok(CniResult {
            ips,
            routes: cfg.routes.clone(),
            dns: cfg.dns.clone().unwrap_or_default(),
            ..Default::default()
        })
    }

    fn del(&self, req: &Request) -> Result<()> {
        let store = open_store(req)?;
        let freed = store.release(&owner(req)?)?;
        tracing::info!(owner = %owner(req)?, ?freed, "released");
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<()> {
        let owner = owner(req)?;
        let held = open_store(req)?.held(&owner)?;
        let failed = IpamError::CheckFailed;
        if held.is_empty() {
            return Err(failed(format!(
                "no address is reserved for {owner} in network {}",
                req.conf.name
            )));
        }
        let Some(prev) = req.conf.prev_result()? else {
            return Ok(());
        };
        let reported: HashSet<IpAddr> = prev.ips.iter().map(|c| c.address.ip()).collect();
        if let Some(ip) = held.iter().find(|ip| !reported.contains(ip)) {
            return Err(failed(format!(
                "{owner} holds {ip}, which prevResult does not list"
            )));
        }
        // prevResult addresses in our ranges must be ours (another plugin's ranges are not).
        if let Ok(cfg) = Config::from_ipam(ipam_object(req)?, &req.conf.name) {
            for ip in &reported {
                if cfg.ranges.iter().any(|r| r.contains(*ip)) && !held.contains(ip) {
                    return Err(failed(format!(
                        "prevResult lists {ip}, which is not reserved for {owner}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<()> {
        open_store_and_ranges(req)
            .and_then(|(s, ranges)| s.status(&ranges))
            .map_err(IpamError::not_available)
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let keep = req.conf.valid_attachment_keys()?;
        let freed = open_store(req)?.retain(&req.conf.name, &keep)?;
        tracing::info!(count = freed.len(), ?freed, "gc freed");
        Ok(())
    }
}
