//! The cluster store: per-node address blocks claimed in etcd, addresses served node-locally.
//!
//! **Blocks.** Each range is cut into aligned blocks of `node_slice_size` (default /26 for IPv4,
//! /122 for IPv6: 64 addresses; the whole subnet if it is smaller). A node holds a block when it
//! created its key in etcd (`<p>` = `store.prefix` + `/` + network, addresses as
//! order-preserving hex, see [`key_hex`]):
//! ```text
//! <p>/blocks/4-0a280040   -> "node3"          (10.40.0.64/26 belongs to node3)
//! ```
//! The key is the block's own start, not the range's: nodes whose configs differ in
//! `range_start`/`range_end` still meet on the same keys. The value names the holder and the
//! block size, `{"node":"node3","prefix":26}`; a bare node name is what releases before that
//! wrote (read as a block of the configured size).
//!
//! A block is claimed with ONE transaction: `if no key exists inside the block's span and no key
//! that could cover it changed since we listed it, then put(key, value) else list again`. etcd
//! applies transactions serially through raft, so two nodes can never both create a key inside
//! one span: two nodes never hold overlapping blocks, also while a member dies (a transaction is
//! committed by a quorum or not at all), and also when one of them runs with another
//! `node_slice_size`. Losers retry with the else-branch's listing, picking randomly among the
//! lowest `2^attempt` free blocks so N racing nodes spread out in O(log N) rounds. No lock spans
//! the cluster.
//!
//! **Nothing read back is trusted.** Every key listed is checked before it is listed as a block
//! or served from ([`check_listing`]): a block key (parseable start), of this range's family, the
//! configured size, aligned to it, overlapping no other key, and a valid holder name. Anything
//! else (a node with another `node_slice_size`, foreign data under the prefix) is a conflict:
//! ADDs that need etcd fail with code 7 naming the keys and the way out, and STATUS says 50.
//! The local block list is held to the same rule.
//!
//! **Addresses.** Inside its blocks a node allocates exactly like the file store (it *is* the
//! file store: flock + atomic pool file, [`super::file`]), in
//! `<store.dir>/_etcd/<node>/<network>/` with the list of held blocks next to the pool
//! ([`super::blocks`]). So most ADDs never touch etcd: one flock, one read, one atomic write.
//! An address is handed out only from a block in the local list, and the local list only ever
//! holds blocks this node holds in etcd:
//! - a block is added to the list after its claim committed;
//! - GC removes empty blocks from the list first and deletes their keys afterwards
//!   (`if value == node`), so a crash in between leaves an *orphan* (ours in etcd, not listed);
//! - an orphan (also: a claim whose reply or local write was lost) is adopted back into the list
//!   the next time the node needs a block;
//! - claims, adoptions and releases of one node run under its claim lock
//!   (`.../claim.lock`), so an adoption never races a release.
//!
//! Hence duplicates are impossible: two nodes never share a block, and inside a node the pool
//! file is changed under flock. Requirements: node names are unique (`NODENAME`, else the
//! hostname) and `node_slice_size` is the same on every node of a network.
//!
//! **ADD** plans against the local pool and block list under the pool lock. If a range needs a
//! block, the process drops the pool lock (never held across etcd), takes the claim lock and
//! re-plans (another process of this node usually claimed one meanwhile); only if still needed
//! does it connect to etcd, claim (or adopt) a block, and then register it and allocate in one
//! local transaction. No free block in the cluster and the node's blocks full: code 104 (free
//! addresses in other nodes' blocks are not borrowed). etcd is needed only for a new block: a
//! node with free addresses in its blocks keeps serving them while etcd is down (safe: a block
//! stays ours until we release it). When etcd is needed and does not answer within
//! `store.timeout_ms` (default 5 s), the ADD fails with code 11.
//!
//! **Static addresses** (runtimeConfig.ips, `IP=`) are served from the block that holds them:
//! one of ours, or a free block that this node then claims (and also uses for later ADDs).
//! An address in another node's block is code 11 (that node serves it; GC releases a block once
//! it is empty, after which it can move).
//!
//! **DEL, CHECK** are local. **GC** frees stale reservations locally, then releases this node's
//! empty blocks in etcd (best effort: if etcd is down they stay orphans and are adopted later).
//! **STATUS** needs a linearizable etcd read (code 50 if it fails) and a writable local dir.
//! The tokio runtime (current-thread) is built only when a verb actually talks to etcd.

use super::blocks::{self, Local, Need, BLOCKS_FILE};
use super::file::FileStore;
use super::{Claim, Owner, PoolFile, Store};
use crate::config::{validate_network_name, EtcdConfig};
use crate::error::{IpamError, Result};
use crate::range::{from_u128, key_hex, parse_key_hex, Block, Family, Range};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use host::fsio::Durability;
use host::lock::{lock_file_within, Locked};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Local plan -> claim lock -> etcd -> register: a few rounds; more means something keeps
/// taking what we claim (not expected), so give up with 11 rather than loop.
const MAX_ROUNDS: usize = 8;

pub struct EtcdStore {
    cfg: EtcdConfig,
    /// `<prefix>/<network>`
    base: String,
    node: String,
    /// This node's addresses and block list: `<store.dir>/_etcd/<node>/<network>/`.
    local: FileStore,
}

/// The node this process runs on: `NODENAME`, else the kernel hostname.
pub fn node_name() -> Result<String> {
    let name = std::env::var("NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    validate_network_name(&name).map_err(|_| {
        IpamError::Env(format!(
            "node name {name:?} (from NODENAME or hostname) is not a valid key segment"
        ))
    })?;
    Ok(name)
}

fn etcd_err(e: etcd_client::Error) -> IpamError {
    IpamError::EtcdUnavailable(format!("etcd request failed: {e}"))
}

/// Who holds a block, as its etcd value says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub prefix: u8,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HolderValue {
    node: String,
    prefix: u8,
}

impl Holder {
    /// The value this release writes.
    pub fn encode(&self) -> String {
        serde_json::to_string(&HolderValue {
            node: self.node.clone(),
            prefix: self.prefix,
        })
        .expect("plain struct")
    }

    /// A value read back: this release's JSON, or a bare node name (earlier releases, whose
    /// blocks had the configured size `slice`).
    pub fn decode(value: &[u8], slice: u8) -> std::result::Result<Holder, String> {
        let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
        let holder = if text.starts_with('{') {
            let v: HolderValue =
                serde_json::from_str(text).map_err(|e| format!("value {text:?}: {e}"))?;
            Holder {
                node: v.node,
                prefix: v.prefix,
            }
        } else {
            Holder {
                node: text.to_string(),
                prefix: slice,
            }
        };
        validate_network_name(&holder.node)
            .map_err(|_| format!("value {text:?} does not name a node"))?;
        Ok(holder)
    }
}

/// A block key read back: `(key, value, mod_revision)`.
pub type RawKey = (String, Vec<u8>, i64);

/// The blocks of `r` that etcd lists, checked (see the module docs). `Err` lists every key that
/// conflicts with this config.
pub fn check_listing(
    r: &Range,
    keys: &[RawKey],
) -> std::result::Result<BTreeMap<IpAddr, Holder>, Vec<String>> {
    let mut ok: BTreeMap<IpAddr, Holder> = BTreeMap::new();
    let mut conflicts = Vec::new();
    let family = r.family();
    for (key, value, _) in keys {
        let suffix = key.rsplit('/').next().unwrap_or_default();
        let Some(start) = parse_key_hex(suffix) else {
            conflicts.push(format!("{key}: not a block key"));
            continue;
        };
        let holder = match Holder::decode(value, r.slice) {
            Ok(h) => h,
            Err(why) => {
                conflicts.push(format!("{key}: {why}"));
                continue;
            }
        };
        let why = if Family::of(start) != family {
            Some("another address family".to_string())
        } else if holder.prefix != r.slice {
            Some(format!(
                "a /{} block (node {}), this config uses /{}",
                holder.prefix, holder.node, r.slice
            ))
        } else if r.block_of(start).start != start {
            Some(format!(
                "{start} is not aligned to /{} (node {})",
                r.slice, holder.node
            ))
        } else {
            None
        };
        match why {
            Some(why) => conflicts.push(format!("{key}: {why}")),
            None => {
                ok.insert(start, holder);
            }
        }
    }
    // Aligned blocks of one size cannot overlap; keys that failed above are the ones that do.
    if conflicts.is_empty() {
        Ok(ok)
    } else {
        Err(conflicts)
    }
}

/// The code-7 error for keys that conflict with this config, with the way out.
fn conflict_error(base: &str, r: &Range, conflicts: &[String]) -> IpamError {
    IpamError::Config(format!(
        "etcd block keys under {base}/blocks/ conflict with this config (range {}-{}, \
         node_slice_size /{}): {}. They were written with another node_slice_size or by \
         something other than weft-ipam. Way out: set node_slice_size back to what the cluster \
         uses, or drain the network (DEL every pod; GC releases the blocks) before changing \
         it; remove keys no node uses with `etcdctl del <key>`",
        r.start,
        r.end,
        r.slice,
        conflicts.join("; ")
    ))
}

/// Local blocks whose size differs from the config's for their family (code 7).
fn check_local_blocks(list: &BTreeSet<Block>, claims: &[Claim<'_>]) -> Result<()> {
    let bad: Vec<String> = list
        .iter()
        .filter(|b| {
            claims
                .iter()
                .any(|c| c.range.family() == Family::of(b.start) && c.range.slice != b.prefix)
        })
        .map(|b| b.to_string())
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(IpamError::Config(format!(
        "this node holds blocks of another size than node_slice_size says ({}): set \
         node_slice_size back, or drain the network (DEL every pod; GC releases the blocks) \
         before changing it",
        bad.join(", ")
    )))
}

/// The start of the aligned `/prefix` block holding `ip`.
fn aligned(ip: IpAddr, prefix: u8) -> IpAddr {
    ipnetwork::IpNetwork::new(ip, prefix)
        .expect("prefix fits the family")
        .network()
}

impl EtcdStore {
    /// Cheap: no etcd connection, no runtime, no file touched until a verb needs them.
    pub fn new(cfg: &EtcdConfig, network: &str) -> Result<EtcdStore> {
        validate_network_name(network)?;
        let node = node_name()?;
        // "_etcd" cannot be a network name (those start alphanumeric), so it never meets a
        // file-store network in the same directory. The node name is part of the path so that
        // simulated nodes sharing one directory (tests, benches) stay apart.
        let local = FileStore::new(&cfg.lock_dir.join("_etcd").join(&node), network)?;
        Ok(EtcdStore {
            cfg: cfg.clone(),
            base: format!("{}/{network}", cfg.prefix),
            node,
            local,
        })
    }

    fn block_key(&self, start: IpAddr) -> String {
        format!("{}/blocks/{}", self.base, key_hex(start))
    }

    /// Every key that can stand for a block overlapping `r` (its own size or smaller) as a key
    /// range `[from, to)`: from the first block's start to the last block's last address.
    fn block_keys(&self, r: &Range) -> (String, Vec<u8>) {
        let from = self.block_key(r.block_of(r.start).start);
        let (_, last) = r.block_of(r.end).span();
        let to = key_after(&self.block_key(from_u128(r.family(), last)));
        (from, to)
    }

    fn load_blocks(&self) -> Result<BTreeSet<Block>> {
        let Some(text) = self.local.read_optional(BLOCKS_FILE)? else {
            return Ok(BTreeSet::new());
        };
        blocks::parse(&text).map_err(|why| {
            IpamError::Corrupt(format!(
                "block list {} is corrupt: {why}",
                self.local.dir().join(BLOCKS_FILE).display()
            ))
        })
    }

    /// Writes the block list. `durability`: a block added after its claim committed needs no
    /// sync (lost by a power loss, it is an orphan, adopted back on the next claim); a block
    /// removed before its key is deleted in etcd needs [`Durability::Full`] (file and directory):
    /// were the removal lost after the delete, this node would serve a block another node may
    /// already hold.
    fn save_blocks(&self, list: &BTreeSet<Block>, durability: Durability) -> Result<()> {
        self.local
            .write_atomic(BLOCKS_FILE, &blocks::render(list), durability)
    }

    /// The node's claim lock, waited for until `deadline`; past it: code 11.
    fn claim_lock(&self, deadline: Instant) -> Result<Locked> {
        let path = self.local.dir().join("claim.lock");
        let wait = deadline.saturating_duration_since(Instant::now());
        lock_file_within(&path, wait.max(Duration::from_millis(1)))?.ok_or_else(|| {
            IpamError::Busy(format!(
                "another weft-ipam process of node {} held the block claim lock for {} ms",
                self.node,
                self.cfg.timeout.as_millis()
            ))
        })
    }

    /// Runs `f` against etcd, connecting first, bounded by `deadline`; past it: code 11.
    fn run<T, F: Future<Output = Result<T>>>(
        &self,
        deadline: Instant,
        f: impl FnOnce(Client) -> F,
    ) -> Result<T> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let endpoints = self.cfg.endpoints.clone();
        let opts = self.connect_options()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| IpamError::Internal(format!("cannot start tokio runtime: {e}")))?;
        rt.block_on(async move {
            let work = async move {
                let client = Client::connect(&endpoints, Some(opts))
                    .await
                    .map_err(etcd_err)?;
                f(client).await
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(IpamError::EtcdUnavailable(format!(
                    "etcd at {} did not answer within {} ms",
                    self.cfg.endpoints.join(","),
                    self.cfg.timeout.as_millis()
                ))),
            }
        })
    }

    fn connect_options(&self) -> Result<ConnectOptions> {
        // A third of the verb's bound per request leaves room for retries on another member.
        let per_request = self.cfg.timeout / 3;
        let mut o = ConnectOptions::new()
            .with_connect_timeout(per_request)
            .with_timeout(per_request)
            .with_require_leader(true);
        if let (Some(user), Some(pw_file)) = (&self.cfg.username, &self.cfg.password_file) {
            let user = user.resolve()?;
            let pw = std::fs::read_to_string(pw_file).map_err(|e| {
                IpamError::Config(format!("store.password_file {}: {e}", pw_file.display()))
            })?;
            o = o.with_user(user.clone(), pw.trim_end_matches(['\n', '\r']).to_string());
        }
        if let Some(tls) = &self.cfg.tls {
            o = o.with_tls(tls_options(tls)?);
        }
        Ok(o)
    }

    /// Keys that could hold a block larger than `r.slice` covering part of `r` but starting
    /// before the listing window (written with a smaller node_slice_size).
    fn enclosing_keys(&self, r: &Range, start: IpAddr) -> Vec<String> {
        let own = self.block_key(start);
        (r.subnet.prefix()..r.slice)
            .map(|q| self.block_key(aligned(start, q)))
            .filter(|k| *k != own)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The ops that read everything a claim in `r` depends on: the range's window of block keys
    /// and the keys of larger blocks that could cover its start.
    fn listing_ops(&self, r: &Range) -> Vec<TxnOp> {
        let (from, to) = self.block_keys(r);
        let mut ops = vec![TxnOp::get(
            from.clone(),
            Some(GetOptions::new().with_range(to)),
        )];
        for k in self.enclosing_keys(r, r.block_of(r.start).start) {
            if k < from {
                ops.push(TxnOp::get(k, None));
            }
        }
        ops
    }

    /// The keys a listing read, in key order, without duplicates.
    fn raw_keys(ops: &[etcd_client::TxnOpResponse]) -> Vec<RawKey> {
        let mut out: BTreeMap<String, RawKey> = BTreeMap::new();
        for op in ops {
            if let etcd_client::TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    out.insert(key.clone(), (key, kv.value().to_vec(), kv.mod_revision()));
                }
            }
        }
        out.into_values().collect()
    }

    /// Every block key of `r` as read back, checked; a conflict is code 7.
    fn checked(&self, r: &Range, raw: &[RawKey]) -> Result<BTreeMap<IpAddr, Holder>> {
        check_listing(r, raw).map_err(|c| conflict_error(&self.base, r, &c))
    }

    async fn list_raw(&self, client: &Client, r: &Range) -> Result<Vec<RawKey>> {
        let kv = client.kv_client();
        let ops = self.listing_ops(r);
        let resp = retrying(|| {
            let (txn, mut kv) = (Txn::new().and_then(ops.clone()), kv.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        Ok(Self::raw_keys(resp.op_responses().as_slice()))
    }

    /// The claim of `target` in `r`: commits only if no key exists inside the block's span and
    /// none of the keys that could cover it changed since `raw` was read.
    fn claim_txn(&self, r: &Range, target: Block, raw: &[RawKey]) -> Txn {
        let key = self.block_key(target.start);
        let (_, hi) = target.span();
        let end = key_after(&self.block_key(from_u128(r.family(), hi)));
        let mut when =
            vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0).with_range(end)];
        for k in self.enclosing_keys(r, target.start) {
            let rev = raw
                .iter()
                .find(|(rk, _, _)| *rk == k)
                .map_or(0, |(_, _, rev)| *rev);
            when.push(Compare::mod_revision(k, CompareOp::Equal, rev));
        }
        let holder = Holder {
            node: self.node.clone(),
            prefix: r.slice,
        };
        Txn::new()
            .when(when)
            .and_then([TxnOp::put(key, holder.encode(), None)])
            .or_else(self.listing_ops(r))
    }

    /// Gets from etcd what `needs` asks for. Returns the blocks to add to the local list:
    /// orphans of this node if there are any (adopting them may already serve the ADD; the
    /// caller re-plans), else one newly claimed block per need. Call with the claim lock held
    /// and `mine` read under it.
    fn claim_blocks(
        &self,
        needs: &[Need],
        claims: &[Claim<'_>],
        mine: &BTreeSet<Block>,
        deadline: Instant,
    ) -> Result<Vec<Block>> {
        self.run(deadline, |client| async move {
            let mut out: Vec<Block> = Vec::new();
            for need in needs {
                let got = self
                    .claim_one(&client, *need, claims[need.claim].range, mine, &out)
                    .await?;
                out.extend(got);
            }
            Ok(out)
        })
    }

    /// One need: this node's orphans in `r` if it has any (adopted instead of claiming), else
    /// one block claimed by a transaction, retried on a lost race with a fresh listing.
    async fn claim_one(
        &self,
        client: &Client,
        need: Need,
        r: &Range,
        mine: &BTreeSet<Block>,
        claimed: &[Block],
    ) -> Result<Vec<Block>> {
        let mut seed = (std::process::id() as u64) << 32 | 0x9e37_79b9;
        let mut raw = self.list_raw(client, r).await?;
        for attempt in 0u32.. {
            let listing = self.checked(r, &raw)?;
            let orphans = self.orphans(&listing, mine, claimed);
            if !orphans.is_empty() {
                tracing::warn!(
                    ?orphans,
                    "adopting blocks this node holds in etcd but had not listed"
                );
                return Ok(orphans);
            }
            let target = pick_target(r, need.want, &listing, attempt, &mut seed)?;
            let mut kv = client.kv_client();
            match kv.txn(self.claim_txn(r, target, &raw)).await {
                Ok(resp) if resp.succeeded() => {
                    tracing::info!(attempt, block = %target, "etcd block claimed");
                    return Ok(vec![target]);
                }
                Ok(resp) => {
                    tracing::debug!(attempt, block = %target, "block taken or changed, retrying");
                    raw = Self::raw_keys(resp.op_responses().as_slice());
                }
                Err(e) if is_permanent(&e) => return Err(IpamError::EtcdRefused(e.to_string())),
                // Unknown outcome (member died, timeout): a fresh listing tells; a claim that
                // did commit shows up as an orphan of ours and is adopted.
                Err(e) => {
                    tracing::debug!("etcd txn error, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    raw = self.list_raw(client, r).await?;
                }
            }
        }
        unreachable!("the attempts never run out; the caller's deadline ends the loop")
    }

    /// Blocks etcd says this node holds that it does not list (and did not just claim).
    fn orphans(
        &self,
        listing: &BTreeMap<IpAddr, Holder>,
        mine: &BTreeSet<Block>,
        claimed: &[Block],
    ) -> Vec<Block> {
        listing
            .iter()
            .filter(|(_, h)| h.node == self.node)
            .map(|(start, h)| Block {
                start: *start,
                prefix: h.prefix,
            })
            .filter(|b| !mine.contains(b) && !claimed.contains(b))
            .collect()
    }

    /// GC's second half: drop this node's empty blocks from the local list, then delete their
    /// keys (`if value == node`). Best effort: a key left behind is an orphan, adopted later.
    fn release_empty_blocks(&self) -> Result<Vec<Block>> {
        let deadline = Instant::now() + self.cfg.timeout;
        let _claim = self.claim_lock(deadline)?;
        let empty = self.local.transact(|pool| {
            let mut list = self.load_blocks()?;
            let empty: Vec<Block> = list
                .iter()
                .filter(|b| blocks::used_in(pool, b) == 0)
                .copied()
                .collect();
            if !empty.is_empty() {
                list.retain(|b| !empty.contains(b));
                self.save_blocks(&list, Durability::Full)?;
            }
            Ok((empty, false))
        })?;
        if empty.is_empty() {
            return Ok(empty);
        }
        let gone = &empty;
        self.run(deadline, |client| async move {
            for b in gone {
                // Delete only what this node holds: read the holder, then delete if the key has
                // not changed since (a bare node name of an earlier release counts too).
                let key = self.block_key(b.start);
                let kv = client.kv_client();
                let resp = retrying(|| {
                    let (key, mut kv) = (key.clone(), kv.clone());
                    async move { kv.get(key, None).await }
                })
                .await?;
                let Some(item) = resp.kvs().first() else { continue };
                match Holder::decode(item.value(), b.prefix) {
                    Ok(h) if h.node == self.node => {}
                    _ => {
                        tracing::warn!(block = %b, "block key no longer names this node; left alone");
                        continue;
                    }
                }
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, item.mod_revision())])
                    .and_then([TxnOp::delete(key, None)]);
                retrying(|| {
                    let (txn, mut kv) = (txn.clone(), kv.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
            }
            Ok(())
        })?;
        Ok(empty)
    }
}

impl EtcdStore {
    /// Deletes every block key of this network held by `node` (`weft ipam release-node`): for a
    /// node gone for good, whose pools went with it. Each delete is conditional on the key being
    /// unchanged since it was read (`mod_revision`), so a block claimed anew meanwhile stays.
    /// Returns the deleted keys.
    pub fn release_node_blocks(&self, node: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + self.cfg.timeout;
        let prefix = format!("{}/blocks/", self.base);
        self.run(deadline, |client| async move {
            let kv = client.kv_client();
            let resp = retrying(|| {
                let (p, mut kv) = (prefix.clone(), kv.clone());
                async move { kv.get(p, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
            let mut out = Vec::new();
            for item in resp.kvs() {
                let key = String::from_utf8_lossy(item.key()).into_owned();
                // Only the holder matters here, not the block size.
                match Holder::decode(item.value(), 0) {
                    Ok(h) if h.node == node => {}
                    _ => continue,
                }
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        item.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(key.clone(), None)]);
                let r = retrying(|| {
                    let (txn, mut kv) = (txn.clone(), kv.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
                if r.succeeded() {
                    out.push(key);
                }
            }
            Ok(out)
        })
    }
}

/// The block to claim: the one holding a requested static address (free, or code 11 naming its
/// holder), or one of the lowest `2^attempt` free blocks picked at random so racing nodes spread.
fn pick_target(
    r: &Range,
    want: Option<IpAddr>,
    listing: &BTreeMap<IpAddr, Holder>,
    attempt: u32,
    seed: &mut u64,
) -> Result<Block> {
    if let Some(ip) = want {
        let b = r.block_of(ip);
        return match listing.get(&b.start) {
            Some(h) => Err(IpamError::Busy(format!(
                "requested address {ip} lies in block {b}, which node {} holds; a static address is served by the node holding its block",
                h.node
            ))),
            None => Ok(b),
        };
    }
    let taken: BTreeSet<IpAddr> = listing.keys().copied().collect();
    let free = r.free_blocks(&taken, 1 << attempt.min(6));
    if free.is_empty() {
        return Err(blocks_exhausted(r));
    }
    Ok(free[spread(seed, free.len())])
}

fn blocks_exhausted(r: &Range) -> IpamError {
    IpamError::Exhausted(format!(
        "address pool {}-{} ({}) is exhausted: this node's blocks are full and no free /{} block is left in the cluster",
        r.start, r.end, r.subnet, r.slice
    ))
}

impl Store for EtcdStore {
    fn reserve(&self, owner: &Owner, claims: &[Claim<'_>]) -> Result<Vec<IpAddr>> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut claim_lock: Option<Locked> = None;
        let mut fresh: Vec<Block> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let step = self.local.transact(|pool: &mut PoolFile| {
                let mut list = self.load_blocks()?;
                check_local_blocks(&list, claims)?;
                if !fresh.is_empty() {
                    list.extend(fresh.iter().copied());
                    self.save_blocks(&list, Durability::Cache)?;
                }
                match blocks::plan(pool, &list, owner, claims)? {
                    Local::Done(plan) => {
                        let adopted = pool.adopt(owner, &plan.addrs);
                        for ip in &plan.new {
                            pool.insert(*ip, owner);
                        }
                        Ok((Ok(plan.addrs), adopted || !plan.new.is_empty()))
                    }
                    Local::Need(needs) => Ok((Err((needs, list)), false)),
                }
            })?;
            fresh.clear();
            let (needs, mine) = match step {
                Ok(addrs) => return Ok(addrs),
                Err(x) => x,
            };
            if claim_lock.is_none() {
                // One process per node talks to etcd for blocks; the others wait here and then
                // usually find the block it claimed.
                claim_lock = Some(self.claim_lock(deadline)?);
                continue;
            }
            tracing::debug!(?needs, "node needs blocks from etcd");
            fresh = self.claim_blocks(&needs, claims, &mine, deadline)?;
        }
        Err(IpamError::Busy(format!(
            "no block for this ADD after {MAX_ROUNDS} rounds"
        )))
    }

    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.local.release(owner)
    }

    fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.local.held(owner)
    }

    fn retain(&self, network: &str, keep: &HashSet<Owner>) -> Result<Vec<(IpAddr, Owner)>> {
        let freed = self.local.retain(network, keep)?;
        match self.release_empty_blocks() {
            Ok(released) if !released.is_empty() => {
                tracing::info!(?released, "gc released empty blocks")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("gc could not release empty blocks (kept as orphans): {e}"),
        }
        Ok(freed)
    }

    /// A linearizable read needs a quorum with a leader, the same condition a claim needs;
    /// the local directory must be writable too.
    fn status(&self, ranges: &[Range]) -> Result<()> {
        self.local.status(ranges)?;
        let list = self.local.transact(|_| Ok((self.load_blocks()?, false)))?;
        let claims: Vec<Claim<'_>> = ranges
            .iter()
            .map(|range| Claim { range, want: None })
            .collect();
        check_local_blocks(&list, &claims)?;
        self.run(Instant::now() + self.cfg.timeout, |client| async move {
            let mut kv = client.kv_client();
            kv.get(self.base.clone(), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(etcd_err)?;
            for r in ranges {
                let raw = self.list_raw(&client, r).await?;
                self.checked(r, &raw)?;
            }
            Ok(())
        })
    }
}

fn tls_options(tls: &crate::config::EtcdTls) -> Result<etcd_client::TlsOptions> {
    // A file that is not PEM can never work: code 7 here, not 11 from a failed handshake.
    let read = |p: &std::path::Path| {
        let bytes = std::fs::read(p)
            .map_err(|e| IpamError::Config(format!("store.tls file {}: {e}", p.display())))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(IpamError::Config(format!(
                "store.tls file {} is not PEM (no -----BEGIN line)",
                p.display()
            )));
        }
        Ok(bytes)
    };
    let mut t = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => t = t.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(IpamError::Config(
                "store.tls needs both cert and key (or neither)".into(),
            ))
        }
    }
    Ok(t)
}

/// Retries `op` on transient etcd errors until the caller's deadline cancels it.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut delay = Duration::from_millis(20);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_permanent(&e) => return Err(IpamError::EtcdRefused(e.to_string())),
            Err(e) => {
                tracing::debug!("etcd transient error, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(400));
            }
        }
    }
}

/// Errors a retry cannot fix: gRPC InvalidArgument (3), PermissionDenied (7),
/// FailedPrecondition (9), Unauthenticated (16), and bad arguments on our side.
fn is_permanent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(i32::from(s.code()), 3 | 7 | 9 | 16),
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => true,
        _ => false,
    }
}

/// The first address after `ip` in key order (exclusive end of a range read).
fn key_after(key: &str) -> Vec<u8> {
    let mut k = key.as_bytes().to_vec();
    k.push(0);
    k
}

/// Cheap xorshift seeded per process: only spreads retries, never decides correctness.
fn spread(seed: &mut u64, window: usize) -> usize {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % window as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::range_sliced;

    fn raw(key: &str, value: &str) -> RawKey {
        (format!("/p/n/blocks/{key}"), value.as_bytes().to_vec(), 1)
    }

    #[test]
    fn listings_of_the_configured_size_are_served_everything_else_conflicts() {
        let r = range_sliced("10.0.0.0/24", Some(26));
        let ok = check_listing(
            &r,
            &[
                raw("4-0a000000", "n1"),
                raw("4-0a000040", r#"{"node":"n2","prefix":26}"#),
            ],
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[&"10.0.0.0".parse::<IpAddr>().unwrap()].node, "n1");
        for (key, value, why) in [
            ("4-0a000011", "n1", "not aligned"),
            ("4-0a0000e0", r#"{"node":"n1","prefix":27}"#, "/27"),
            ("4-0a000080", r#"{"node":"n1","prefix":25}"#, "/25"),
            ("4-0a0000c1junk", "n1", "not a block key"),
            ("4-0a0000c0", "../etc", "does not name a node"),
            ("4-0a0000c0", "{not json", "value"),
            ("6-fd000000000000000000000000000000", "n1", "family"),
        ] {
            let err = check_listing(&r, &[raw("4-0a000000", "n1"), raw(key, value)]).unwrap_err();
            assert_eq!(err.len(), 1, "{key}: {err:?}");
            assert!(err[0].contains(why), "{key}: {err:?} lacks {why:?}");
        }
    }

    #[test]
    fn holder_values_round_trip_and_read_the_previous_format() {
        let h = Holder {
            node: "n1".into(),
            prefix: 26,
        };
        assert_eq!(Holder::decode(h.encode().as_bytes(), 28).unwrap(), h);
        let legacy = Holder::decode(b"n1", 26).unwrap();
        assert_eq!(legacy, h, "a bare name is a block of the configured size");
    }

    #[test]
    fn local_blocks_of_another_size_are_refused() {
        let r = range_sliced("10.0.0.0/24", Some(26));
        let claims = [Claim {
            range: &r,
            want: None,
        }];
        let ok: BTreeSet<Block> = ["10.0.0.64/26".parse().unwrap()].into();
        assert!(check_local_blocks(&ok, &claims).is_ok());
        let old: BTreeSet<Block> = ["10.0.0.16/28".parse().unwrap()].into();
        let e = check_local_blocks(&old, &claims).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("10.0.0.16/28"), "{e}");
    }
}
