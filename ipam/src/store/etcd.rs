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
//! `range_start`/`range_end` still meet on the same keys. A block is claimed with ONE
//! transaction, `if create_revision(key) == 0 then put(key, node) else get(all block keys of
//! the range)`. etcd applies transactions serially through raft, so two nodes can never both
//! create a key: two nodes never hold the same block, also while a member dies (a transaction is
//! committed by a quorum or not at all). Losers retry with the else-branch's listing, picking
//! randomly among the lowest `2^attempt` free blocks so N racing nodes spread out in O(log N)
//! rounds. No lock spans the cluster.
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
use super::{Claim, Owner, Pool, Store};
use crate::config::{validate_network_name, EtcdConfig};
use crate::range::{key_hex, parse_key_hex, Block, Range};
use conf::{code, Error, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
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
        Error::invalid_env(format!(
            "node name {name:?} (from NODENAME or hostname) is not a valid key segment"
        ))
    })?;
    Ok(name)
}

fn etcd_err(e: etcd_client::Error) -> Error {
    Error::try_again(format!("etcd request failed: {e}"))
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

    /// Every block key that can overlap `r`, as a key range `[from, to)`.
    fn block_keys(&self, r: &Range) -> (String, Vec<u8>) {
        let from = self.block_key(r.block_of(r.start).start);
        let to = key_after(&self.block_key(r.block_of(r.end).start));
        (from, to)
    }

    fn load_blocks(&self) -> Result<BTreeSet<Block>> {
        let Some(text) = self.local.read_optional(BLOCKS_FILE)? else {
            return Ok(BTreeSet::new());
        };
        blocks::parse(&text).map_err(|why| {
            Error::new(
                code::STATE,
                format!(
                    "block list {} is corrupt: {why}",
                    self.local.dir().join(BLOCKS_FILE).display()
                ),
            )
        })
    }

    fn save_blocks(&self, list: &BTreeSet<Block>) -> Result<()> {
        self.local.write_atomic(BLOCKS_FILE, &blocks::render(list))
    }

    /// The node's claim lock, waited for until `deadline`; past it: code 11.
    fn claim_lock(&self, deadline: Instant) -> Result<Locked> {
        let path = self.local.dir().join("claim.lock");
        let wait = deadline.saturating_duration_since(Instant::now());
        lock_file_within(&path, wait.max(Duration::from_millis(1)))?.ok_or_else(|| {
            Error::try_again(format!(
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
            .map_err(|e| Error::internal(format!("cannot start tokio runtime: {e}")))?;
        rt.block_on(async move {
            let work = async move {
                let client = Client::connect(&endpoints, Some(opts))
                    .await
                    .map_err(etcd_err)?;
                f(client).await
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(Error::try_again(format!(
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
            let pw = std::fs::read_to_string(pw_file).map_err(|e| {
                Error::invalid_config(format!("store.password_file {}: {e}", pw_file.display()))
            })?;
            o = o.with_user(user.clone(), pw.trim_end_matches(['\n', '\r']).to_string());
        }
        if let Some(tls) = &self.cfg.tls {
            o = o.with_tls(tls_options(tls)?);
        }
        Ok(o)
    }

    /// Block starts -> holding node, from a range read of block keys.
    fn parse_listing(&self, kvs: &[etcd_client::KeyValue], into: &mut BTreeMap<IpAddr, String>) {
        for item in kvs {
            let key = String::from_utf8_lossy(item.key());
            if let Some(start) = key.rsplit('/').next().and_then(parse_key_hex) {
                into.insert(start, String::from_utf8_lossy(item.value()).into_owned());
            }
        }
    }

    async fn list_blocks(&self, client: &Client, r: &Range) -> Result<BTreeMap<IpAddr, String>> {
        let (from, to) = self.block_keys(r);
        let kv = client.kv_client();
        let resp = retrying(|| {
            let (from, to, mut kv) = (from.clone(), to.clone(), kv.clone());
            async move { kv.get(from, Some(GetOptions::new().with_range(to))).await }
        })
        .await?;
        let mut out = BTreeMap::new();
        self.parse_listing(resp.kvs(), &mut out);
        Ok(out)
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
        let mut seed = (std::process::id() as u64) << 32 | 0x9e37_79b9;
        self.run(deadline, |client| async move {
            let mut out: Vec<Block> = Vec::new();
            for need in needs {
                let r = claims[need.claim].range;
                let mut listing = self.list_blocks(&client, r).await?;
                let mut attempt = 0u32;
                loop {
                    let orphans: Vec<Block> = listing
                        .iter()
                        .filter(|(_, node)| **node == self.node)
                        .map(|(start, _)| Block {
                            start: *start,
                            prefix: r.slice,
                        })
                        .filter(|b| !mine.contains(b) && !out.contains(b))
                        .collect();
                    if !orphans.is_empty() {
                        tracing::warn!(?orphans, "adopting blocks this node holds in etcd but had not listed");
                        out.extend(orphans);
                        break;
                    }
                    let target = match need.want {
                        Some(ip) => {
                            let b = r.block_of(ip);
                            if let Some(node) = listing.get(&b.start) {
                                return Err(Error::try_again(format!(
                                    "requested address {ip} lies in block {b}, which node {node} holds; a static address is served by the node holding its block"
                                )));
                            }
                            b
                        }
                        None => {
                            let taken: BTreeSet<IpAddr> = listing.keys().copied().collect();
                            let free = r.free_blocks(&taken, 1 << attempt.min(6));
                            if free.is_empty() {
                                return Err(blocks_exhausted(r));
                            }
                            free[spread(&mut seed, free.len())]
                        }
                    };
                    let key = self.block_key(target.start);
                    let (from, to) = self.block_keys(r);
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, self.node.clone(), None)])
                        .or_else([TxnOp::get(from, Some(GetOptions::new().with_range(to)))]);
                    let mut kv = client.kv_client();
                    match kv.txn(txn).await {
                        Ok(resp) if resp.succeeded() => {
                            tracing::info!(attempt, block = %target, "etcd block claimed");
                            out.push(target);
                            break;
                        }
                        Ok(resp) => {
                            tracing::debug!(attempt, block = %target, "block taken by another node, retrying");
                            listing.clear();
                            for op in resp.op_responses() {
                                if let etcd_client::TxnOpResponse::Get(g) = op {
                                    self.parse_listing(g.kvs(), &mut listing);
                                }
                            }
                        }
                        Err(e) if is_permanent(&e) => {
                            return Err(Error::io(format!("etcd refused the request: {e}")))
                        }
                        // Unknown outcome (member died, timeout): a fresh listing tells; a
                        // claim that did commit shows up as an orphan of ours and is adopted.
                        Err(e) => {
                            tracing::debug!("etcd txn error, retrying: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            listing = self.list_blocks(&client, r).await?;
                        }
                    }
                    attempt += 1;
                }
            }
            Ok(out)
        })
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
                self.save_blocks(&list)?;
            }
            Ok((empty, false))
        })?;
        if empty.is_empty() {
            return Ok(empty);
        }
        let gone = &empty;
        self.run(deadline, |client| async move {
            for b in gone {
                let key = self.block_key(b.start);
                let txn = Txn::new()
                    .when([Compare::value(
                        key.clone(),
                        CompareOp::Equal,
                        self.node.clone(),
                    )])
                    .and_then([TxnOp::delete(key, None)]);
                let kv = client.kv_client();
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

fn blocks_exhausted(r: &Range) -> Error {
    Error::new(
        code::POOL_EXHAUSTED,
        format!(
            "address pool {}-{} ({}) is exhausted: this node's blocks are full and no free /{} block is left in the cluster",
            r.start, r.end, r.subnet, r.slice
        ),
    )
}

impl Store for EtcdStore {
    fn reserve(&self, owner: &Owner, claims: &[Claim<'_>]) -> Result<Vec<IpAddr>> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut claim_lock: Option<Locked> = None;
        let mut fresh: Vec<Block> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let step = self.local.transact(|pool: &mut Pool| {
                let mut list = self.load_blocks()?;
                if !fresh.is_empty() {
                    list.extend(fresh.iter().copied());
                    self.save_blocks(&list)?;
                }
                match blocks::plan(pool, &list, owner, claims)? {
                    Local::Done(plan) => {
                        for ip in &plan.new {
                            pool.map.insert(*ip, owner.clone());
                        }
                        Ok((Ok(plan.addrs), !plan.new.is_empty()))
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
        Err(Error::try_again(format!(
            "no block for this ADD after {MAX_ROUNDS} rounds"
        )))
    }

    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.local.release(owner)
    }

    fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.local.held(owner)
    }

    fn retain(&self, keep: &HashSet<Owner>) -> Result<Vec<(IpAddr, Owner)>> {
        let freed = self.local.retain(keep)?;
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
    fn status(&self) -> Result<()> {
        self.local.status()?;
        self.run(Instant::now() + self.cfg.timeout, |client| async move {
            let mut kv = client.kv_client();
            kv.get(self.base.clone(), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(etcd_err)?;
            Ok(())
        })
    }
}

fn tls_options(tls: &crate::config::EtcdTls) -> Result<etcd_client::TlsOptions> {
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| Error::invalid_config(format!("store.tls file {}: {e}", p.display())))
    };
    let mut t = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => t = t.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(Error::invalid_config(
                "store.tls needs both cert and key (or neither)",
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
            Err(e) if is_permanent(&e) => {
                return Err(Error::io(format!("etcd refused the request: {e}")))
            }
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
