//! Reservation stores. A reservation maps one address to its owner, the attachment
//! `(network, containerID, ifname)` ([`conf::AttachmentKey`]). The network is the CNI network's
//! `name`, not the pool's `network_name`: several networks may share one pool (that is what
//! `network_name` is for), and GC of one of them frees only its own reservations.
//!
//! Both stores share the decision logic in [`Reservations::plan`] (idempotency, static requests,
//! lowest free address) and differ only in how they make the decision stick:
//! - [`file`](mod@file): one pool file per network, read and rewritten atomically under `flock`
//!   ([`pool_file`]: the file's text, indexed, edited without building the whole [`Pool`]).
//! - [`etcd`]: per-node blocks claimed with create-if-absent transactions in etcd, addresses
//!   served from them by the file store on each node ([`blocks`]); no cluster-wide lock.

pub mod blocks;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
pub mod pool_file;
#[cfg(test)]
pub(crate) mod test_support;
pub mod text;

use crate::config::StoreConfig;
use crate::error::{IpamError, Result};
use crate::range::Range;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

pub use pool_file::PoolFile;

/// Who holds an address: the attachment, validated before it reaches a file or a key.
/// Reservations written before network scoping have a legacy owner (no network): they answer
/// to their interface in every network and are adopted by the first verb that names them.
pub type Owner = conf::AttachmentKey;

/// One address wanted from one range: any free one (lowest first) or a specific one.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub range: &'a Range,
    pub want: Option<IpAddr>,
}

/// What a store does. Every method is one atomic step against the store.
pub trait Store {
    /// One address per claim for `owner`, all or nothing. Idempotent: addresses the owner
    /// already holds in a claimed range are returned again.
    fn reserve(&self, owner: &Owner, claims: &[Claim<'_>]) -> Result<Vec<IpAddr>>;
    /// Frees every address `owner` holds; returns them (empty when nothing was held).
    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>>;
    /// The addresses `owner` holds.
    fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>>;
    /// GC of `network`: frees every reservation of `network` whose owner is not in `keep`, and
    /// adopts legacy reservations that `keep` names into `network`; reservations of other
    /// networks and unnamed legacy ones stay. Returns what was freed.
    fn retain(&self, network: &str, keep: &HashSet<Owner>) -> Result<Vec<(IpAddr, Owner)>>;
    /// Reachable, writable, and what it holds is consistent with `ranges` (the configured
    /// ranges; empty when the config cannot be read): the caller maps a failure to code 50.
    fn status(&self, ranges: &[Range]) -> Result<()>;
}

/// Opens the store a config names, for one network.
pub fn open(network: &str, cfg: &StoreConfig) -> Result<Box<dyn Store>> {
    match cfg {
        StoreConfig::File { dir } => Ok(Box::new(file::FileStore::new(dir, network)?)),
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(e) => Ok(Box::new(etcd::EtcdStore::new(e, network)?)),
        #[cfg(not(feature = "etcd"))]
        StoreConfig::Etcd(_) => Err(IpamError::Config(
            "this weft-ipam was built without the etcd store".into(),
        )),
    }
}

/// A set of reservations (all of a network, or the part a decision needs) in address order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    pub map: BTreeMap<IpAddr, Owner>,
}

/// The outcome of [`Reservations::plan`]: one address per claim, and whether it is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub addrs: Vec<IpAddr>,
    pub new: Vec<IpAddr>,
}

/// One claim's outcome in [`Reservations::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The owner already holds this address in the range (an idempotent ADD).
    Held(IpAddr),
    /// A free address to reserve.
    New(IpAddr),
    /// Nothing the caller may hand out fits: the caller decides what that means (exhausted
    /// for a whole-range pool, "claim a block first" for the etcd store's node pool).
    Unplaced,
}

impl Plan {
    /// Adds a decided address; `false` for [`Decision::Unplaced`].
    pub fn take(&mut self, decision: Decision) -> bool {
        match decision {
            Decision::Held(ip) => self.addrs.push(ip),
            Decision::New(ip) => {
                self.addrs.push(ip);
                self.new.push(ip);
            }
            Decision::Unplaced => return false,
        }
        true
    }
}

/// What the allocation rules read: reservations in address order. Implemented by the in-memory
/// [`Pool`] and by the file store's [`PoolFile`], which answers from the pool file's text without
/// building an owner per reservation (so a verb's cost stays flat as a node fills up).
pub trait Reservations {
    /// The held addresses in `[lo, hi]`, ascending.
    fn held_in(&self, lo: IpAddr, hi: IpAddr) -> impl Iterator<Item = IpAddr> + '_;
    /// The lowest address in `[lo, hi]` whose holder answers to `owner` (its own, or a legacy
    /// reservation of its interface).
    fn held_by(&self, owner: &Owner, lo: IpAddr, hi: IpAddr) -> Option<IpAddr>;
    /// Who holds `ip`, for messages.
    fn holder(&self, ip: IpAddr) -> Option<String>;

    /// The rules every store shares for one claim: idempotent per owner and range, a different
    /// requested address while one is held is 7, a requested address held by someone else is 11
    /// (it may be freed soon). `servable` says whether a requested address is the caller's to
    /// hand out; `lowest_free` finds the lowest free address the caller may hand out.
    fn decide(
        &self,
        owner: &Owner,
        claim: &Claim<'_>,
        servable: impl Fn(IpAddr) -> bool,
        lowest_free: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<Decision> {
        let r = claim.range;
        match (self.held_by(owner, r.start, r.end), claim.want) {
            (Some(have), Some(want)) if have != want => Err(IpamError::Config(format!(
                "{owner} already holds {have} in range {}-{}; it cannot also get the requested {want}",
                r.start, r.end
            ))),
            (Some(have), _) => Ok(Decision::Held(have)),
            (None, Some(want)) if servable(want) => match self.holder(want) {
                Some(other) => Err(IpamError::Busy(format!(
                    "requested address {want} is held by another container ({other})"
                ))),
                None => Ok(Decision::New(want)),
            },
            (None, Some(_)) => Ok(Decision::Unplaced),
            (None, None) => Ok(lowest_free().map_or(Decision::Unplaced, Decision::New)),
        }
    }

    /// Decides the addresses for `claims` over whole ranges, without changing anything.
    /// Errors: those of [`Reservations::decide`], and exhaustion (104).
    fn plan(&self, owner: &Owner, claims: &[Claim<'_>]) -> Result<Plan> {
        let mut plan = Plan {
            addrs: Vec::with_capacity(claims.len()),
            new: Vec::new(),
        };
        for claim in claims {
            let r = claim.range;
            let decision = self.decide(
                owner,
                claim,
                |_| true,
                || r.lowest_free(self.held_in(r.start, r.end)),
            )?;
            if !plan.take(decision) {
                return Err(exhausted(r));
            }
        }
        Ok(plan)
    }
}

impl Reservations for Pool {
    fn held_in(&self, lo: IpAddr, hi: IpAddr) -> impl Iterator<Item = IpAddr> + '_ {
        self.map.range(lo..=hi).map(|(ip, _)| *ip)
    }

    fn held_by(&self, owner: &Owner, lo: IpAddr, hi: IpAddr) -> Option<IpAddr> {
        self.map
            .range(lo..=hi)
            .find(|(_, o)| o.answers_to(owner))
            .map(|(ip, _)| *ip)
    }

    fn holder(&self, ip: IpAddr) -> Option<String> {
        self.map.get(&ip).map(Owner::to_string)
    }
}

impl Pool {
    /// The addresses held by `owner` (its own reservations and legacy ones of its interface).
    pub fn owned_by(&self, owner: &Owner) -> Vec<IpAddr> {
        self.map
            .iter()
            .filter(|(_, o)| o.answers_to(owner))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Stamps `owner` on the legacy reservations of `addrs` that answer to it; whether any did.
    pub fn adopt(&mut self, owner: &Owner, addrs: &[IpAddr]) -> bool {
        let mut changed = false;
        for ip in addrs {
            if let Some(o) = self.map.get_mut(ip) {
                if o.is_legacy() && o.answers_to(owner) {
                    *o = owner.clone();
                    changed = true;
                }
            }
        }
        changed
    }

    /// Every address `owner` holds, freed (see [`Store::release`]).
    pub fn release(&mut self, owner: &Owner) -> Vec<IpAddr> {
        let mine = self.owned_by(owner);
        for ip in &mine {
            self.map.remove(ip);
        }
        mine
    }

    /// GC of `network` (see [`Store::retain`]): returns what was freed and whether anything
    /// changed (frees or adoptions).
    pub fn retain(&mut self, network: &str, keep: &HashSet<Owner>) -> (Vec<(IpAddr, Owner)>, bool) {
        let mut freed = Vec::new();
        let mut adopted = false;
        self.map.retain(|ip, owner| match owner.network() {
            Some(n) if n == network => {
                let k = keep.contains(owner);
                if !k {
                    freed.push((*ip, owner.clone()));
                }
                k
            }
            Some(_) => true,
            None => {
                if let Some(listed) = keep.iter().find(|k| k.same_interface(owner)) {
                    *owner = listed.clone();
                    adopted = true;
                }
                true
            }
        });
        let changed = adopted || !freed.is_empty();
        (freed, changed)
    }
}

pub fn exhausted(r: &Range) -> IpamError {
    IpamError::Exhausted(format!(
        "address pool {}-{} ({}) is exhausted",
        r.start, r.end, r.subnet
    ))
}

#[cfg(test)]
mod tests {
    use super::test_support::{ip, range};
    use super::*;

    #[test]
    fn plan_is_idempotent_and_respects_other_owners() {
        let r = range("10.0.0.0/29");
        let a = Owner::new("n", "a", "eth0").unwrap();
        let b = Owner::new("n", "b", "eth0").unwrap();
        let mut pool = Pool::default();
        let claims = [Claim {
            range: &r,
            want: None,
        }];
        let p = pool.plan(&a, &claims).unwrap();
        assert_eq!(p.addrs, vec![ip("10.0.0.2")]);
        pool.map.insert(p.addrs[0], a.clone());
        let again = pool.plan(&a, &claims).unwrap();
        assert_eq!((again.addrs, again.new), (vec![ip("10.0.0.2")], vec![]));
        assert_eq!(pool.plan(&b, &claims).unwrap().addrs, vec![ip("10.0.0.3")]);
        let e = pool
            .plan(
                &b,
                &[Claim {
                    range: &r,
                    want: Some(ip("10.0.0.2")),
                }],
            )
            .unwrap_err();
        assert_eq!(e.code(), conf::code::TRY_AGAIN);
    }

    #[test]
    fn exhaustion_is_104() {
        let r = range("10.0.0.0/30");
        let mut pool = Pool::default();
        pool.map
            .insert(ip("10.0.0.2"), Owner::new("n", "a", "eth0").unwrap());
        let e = pool
            .plan(
                &Owner::new("n", "b", "eth0").unwrap(),
                &[Claim {
                    range: &r,
                    want: None,
                }],
            )
            .unwrap_err();
        assert_eq!(e.code(), 104);
        assert!(e.to_string().contains("exhausted"), "{e}");
    }

    #[test]
    fn owner_rejects_path_tricks() {
        assert!(Owner::new("n", "../etc", "eth0").is_err());
        assert!(Owner::new("n", "abc", "eth0/x").is_err());
        assert!(Owner::new("n", "abc", "a b").is_err());
        assert!(Owner::new("n", "abc", "0123456789abcdef").is_err());
        assert!(Owner::new("../n", "abc", "eth0").is_err());
    }

    #[test]
    fn gc_frees_only_its_own_network_and_adopts_named_legacy_reservations() {
        let mine = Owner::new("ga", "ga1", "eth0").unwrap();
        let gone = Owner::new("ga", "ga2", "eth0").unwrap();
        let theirs = Owner::new("gb", "gb1", "eth0").unwrap();
        let legacy_named = Owner::legacy("old1", "eth0").unwrap();
        let legacy_other = Owner::legacy("old2", "eth0").unwrap();
        let mut pool = Pool::default();
        for (i, o) in [&mine, &gone, &theirs, &legacy_named, &legacy_other]
            .into_iter()
            .enumerate()
        {
            pool.map.insert(ip(&format!("10.0.0.{}", i + 2)), o.clone());
        }
        let keep: HashSet<Owner> = [mine.clone(), legacy_named.in_network("ga")].into();
        let (freed, changed) = pool.retain("ga", &keep);
        assert!(changed);
        assert_eq!(freed, vec![(ip("10.0.0.3"), gone)]);
        assert_eq!(pool.map[&ip("10.0.0.4")], theirs, "another network's stays");
        assert_eq!(pool.map[&ip("10.0.0.5")], legacy_named.in_network("ga"));
        assert_eq!(
            pool.map[&ip("10.0.0.6")],
            legacy_other,
            "unnamed legacy stays"
        );
    }

    #[test]
    fn legacy_reservations_answer_to_their_interface_and_are_adopted() {
        let r = range("10.0.0.0/29");
        let old = Owner::legacy("a", "eth0").unwrap();
        let now = Owner::new("n1", "a", "eth0").unwrap();
        let mut pool = Pool::default();
        pool.map.insert(ip("10.0.0.2"), old);
        let claims = [Claim {
            range: &r,
            want: None,
        }];
        let p = pool.plan(&now, &claims).unwrap();
        assert_eq!((p.addrs.clone(), p.new), (vec![ip("10.0.0.2")], vec![]));
        assert!(pool.adopt(&now, &p.addrs));
        assert_eq!(pool.map[&ip("10.0.0.2")], now);
        let other = Owner::new("n2", "a", "eth0").unwrap();
        assert!(pool.owned_by(&other).is_empty(), "adopted: n1's now");
    }
}
