//! The cluster store: reservations in etcd, claimed per address, no lock of any kind.
//!
//! Keys (`<p>` = `store.prefix` + `/` + network; addresses as order-preserving hex, see
//! [`key_hex`]):
//! ```text
//! <p>/ip/4-0a140002                           -> "<node> <containerID> <ifname>"
//! <p>/owner/<node>/<containerID>/<ifname>/4-0a140002 -> ""
//! ```
//! **ADD** reads the claimed ranges' `ip/` keys (one range read per range, sorted by address),
//! decides with the same [`Pool::plan`] as the file store, then commits every new address in
//! ONE transaction: `if create_revision(ip key) == 0 for each new address then put ip keys +
//! owner keys`. etcd applies transactions serially through raft, so two nodes can never both
//! create the same ip key: duplicates are impossible without any lock, also when a member dies
//! mid-run (a transaction is either committed by a quorum or not at all). If the compare fails,
//! another node won that address: re-read and retry. To keep N racing nodes from all chasing
//! the same lowest address, retry `k` picks randomly among the lowest `2^(k+2)` free addresses
//! (capped at 256), so contention resolves in O(log N) rounds while addresses stay packed low.
//! A failed compare returns the ranges' current keys in its else-branch, so a retry costs one
//! round trip. A transaction whose reply was lost is found on the next read as "already mine".
//!
//! ADDs of one node queue behind a node-local flock (`<store.dir>/etcd-<node>-<network>.lock`,
//! default dir `/var/lib/cni/weft-ipam`): only nodes race each other, not every pod of every
//! node, which keeps retries (and etcd load) low when a node starts many pods at once. It is
//! not a correctness device: two processes that ignore it still cannot get the same address,
//! and a process that waited half of `timeout_ms` for it goes ahead without it.
//!
//! **DEL/GC** list `owner/<node>/...` (this node's reservations only: GC on one node never frees
//! another node's pods) and delete each ip key only `if value == our owner string`.
//!
//! Node identity: `NODENAME`, else the hostname. Every verb is bounded by `store.timeout_ms`
//! (default 5 s): past it the verb fails with code 11 (STATUS: 50). The tokio runtime is
//! current-thread and created only when this store is used, so the file path pays nothing.

use super::file::lock_file_within;
use super::{Claim, Owner, Plan, Pool, Store};
use crate::config::{validate_network_name, EtcdConfig};
use crate::range::{key_hex, parse_key_hex, Range};
use conf::{Error, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

pub struct EtcdStore {
    cfg: EtcdConfig,
    network: String,
    /// `<prefix>/<network>`
    base: String,
    node: String,
    rt: tokio::runtime::Runtime,
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
    pub fn new(cfg: &EtcdConfig, network: &str) -> Result<EtcdStore> {
        validate_network_name(network)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start tokio runtime: {e}")))?;
        Ok(EtcdStore {
            cfg: cfg.clone(),
            network: network.to_string(),
            base: format!("{}/{network}", cfg.prefix),
            node: node_name()?,
            rt,
        })
    }

    fn ip_key(&self, ip: IpAddr) -> String {
        format!("{}/ip/{}", self.base, key_hex(ip))
    }

    fn owner_prefix(&self, owner: Option<&Owner>) -> String {
        match owner {
            Some(o) => format!(
                "{}/owner/{}/{}/{}/",
                self.base, self.node, o.container_id, o.ifname
            ),
            None => format!("{}/owner/{}/", self.base, self.node),
        }
    }

    fn owner_value(&self, owner: &Owner) -> String {
        format!("{} {} {}", self.node, owner.container_id, owner.ifname)
    }

    /// Runs one verb against etcd within the configured bound; past it: code 11.
    fn run<T, F: Future<Output = Result<T>>>(&self, f: impl FnOnce(Client) -> F) -> Result<T> {
        let timeout = self.cfg.timeout;
        let endpoints = self.cfg.endpoints.clone();
        let opts = self.connect_options()?;
        self.rt.block_on(async move {
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
                    timeout.as_millis()
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

impl EtcdStore {
    /// Reads the reservations inside the claimed ranges into a pool. Owners on other nodes get
    /// a container ID that cannot match a real one (`id@node`), so they are never "mine".
    async fn snapshot(&self, client: &Client, ranges: &[&Range]) -> Result<Pool> {
        let mut pool = Pool::default();
        for r in ranges {
            let (from, to) = (self.ip_key(r.start), key_after(&self.ip_key(r.end)));
            let kv = client.kv_client();
            let resp = retrying(|| {
                let (from, to, mut kv) = (from.clone(), to.clone(), kv.clone());
                async move { kv.get(from, Some(GetOptions::new().with_range(to))).await }
            })
            .await?;
            self.add_kvs(&mut pool, resp.kvs());
        }
        Ok(pool)
    }

    /// The range reads a failed claim returns instead of a separate read (saves a round trip).
    fn range_gets(&self, ranges: &[&Range]) -> Vec<TxnOp> {
        ranges
            .iter()
            .map(|r| {
                let to = key_after(&self.ip_key(r.end));
                TxnOp::get(self.ip_key(r.start), Some(GetOptions::new().with_range(to)))
            })
            .collect()
    }

    fn add_kvs(&self, pool: &mut Pool, kvs: &[etcd_client::KeyValue]) {
        {
            for item in kvs {
                let key = String::from_utf8_lossy(item.key());
                let Some(ip) = key.rsplit('/').next().and_then(parse_key_hex) else {
                    continue;
                };
                let val = String::from_utf8_lossy(item.value());
                let mut f = val.split(' ');
                let (Some(node), Some(cid), Some(ifname)) = (f.next(), f.next(), f.next()) else {
                    // Unparseable value: treat the address as taken by an unknown owner.
                    pool.map.insert(
                        ip,
                        Owner {
                            container_id: "?".into(),
                            ifname: "?".into(),
                        },
                    );
                    continue;
                };
                let container_id = if node == self.node {
                    cid.to_string()
                } else {
                    format!("{cid}@{node}")
                };
                pool.map.insert(
                    ip,
                    Owner {
                        container_id,
                        ifname: ifname.to_string(),
                    },
                );
            }
        }
    }

    /// On retry `attempt`, moves each dynamic pick to a random one of the lowest `2^attempt`
    /// free addresses (by planning against phantom reservations of the addresses skipped).
    fn spread_plan(
        &self,
        pool: &Pool,
        owner: &Owner,
        claims: &[Claim<'_>],
        attempt: u32,
        seed: &mut u64,
    ) -> Result<Plan> {
        let plan = pool.plan(owner, claims)?;
        if attempt == 0 {
            return Ok(plan);
        }
        let window = 1usize << (attempt + 2).min(8);
        let mut out = plan.clone();
        out.new.clear();
        for (i, claim) in claims.iter().enumerate() {
            if !plan.new.contains(&plan.addrs[i]) {
                continue;
            }
            if claim.want.is_some() {
                out.new.push(plan.addrs[i]);
                continue;
            }
            let skip = spread(seed, window);
            let mut scratch = pool.clone();
            let phantom = Owner {
                container_id: "phantom".into(),
                ifname: "-".into(),
            };
            let mut pick = plan.addrs[i];
            for _ in 0..skip {
                scratch.map.insert(pick, phantom.clone());
                match scratch.plan(owner, std::slice::from_ref(claim)) {
                    Ok(p) => pick = p.addrs[0],
                    Err(_) => break, // fewer free addresses than the window: keep the last one
                }
            }
            out.addrs[i] = pick;
            out.new.push(pick);
        }
        Ok(out)
    }

    /// Frees `ip` if it still belongs to `owner`, and drops the owner index key either way.
    fn release_txn(&self, owner: &Owner, ip: IpAddr) -> Txn {
        let ip_key = self.ip_key(ip);
        let owner_key = format!("{}{}", self.owner_prefix(Some(owner)), key_hex(ip));
        Txn::new()
            .when([Compare::value(
                ip_key.clone(),
                CompareOp::Equal,
                self.owner_value(owner),
            )])
            .and_then([
                TxnOp::delete(ip_key, None),
                TxnOp::delete(owner_key.clone(), None),
            ])
            .or_else([TxnOp::delete(owner_key, None)])
    }

    /// This node's reservations from the owner index: (owner, ip).
    async fn owned(&self, client: &Client, owner: Option<&Owner>) -> Result<Vec<(Owner, IpAddr)>> {
        let prefix = self.owner_prefix(owner);
        let kv = client.kv_client();
        let resp = retrying(|| {
            let (prefix, mut kv) = (prefix.clone(), kv.clone());
            async move {
                kv.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            }
        })
        .await?;
        let base = self.owner_prefix(None);
        let mut out = Vec::new();
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key());
            let rest = key.strip_prefix(&base).unwrap_or_default();
            let parts: Vec<&str> = rest.split('/').collect();
            if let [cid, ifname, hex] = parts[..] {
                if let (Ok(o), Some(ip)) = (Owner::new(cid, ifname), parse_key_hex(hex)) {
                    out.push((o, ip));
                }
            }
        }
        Ok(out)
    }

    async fn release_all(&self, client: &Client, items: &[(Owner, IpAddr)]) -> Result<()> {
        for (owner, ip) in items {
            let txn = self.release_txn(owner, *ip);
            let kv = client.kv_client();
            retrying(|| {
                let (txn, mut kv) = (txn.clone(), kv.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
        }
        Ok(())
    }
}

impl Store for EtcdStore {
    fn reserve(&self, owner: &Owner, claims: &[Claim<'_>]) -> Result<Vec<IpAddr>> {
        let ranges: Vec<&Range> = claims.iter().map(|c| c.range).collect();
        let mut seed = (std::process::id() as u64) << 32 | 0x9e37_79b9;
        // Queue this node's own ADDs behind a local flock: cross-node races stay lock-free
        // (etcd transactions), but N pods starting at once on one node no longer turn into N
        // clients racing for the same lowest address.
        // Waited for at most half the verb's bound, then we go ahead without it. Taken after
        // connecting, so connection set-up of queued ADDs overlaps; blocking the current-thread
        // runtime while we wait is fine, nothing else runs in this process.
        let lock_path = self
            .cfg
            .lock_dir
            .join(format!("etcd-{}-{}.lock", self.node, self.network));
        self.run(|client| async move {
            let _local = lock_file_within(&lock_path, self.cfg.timeout / 2)?;
            let mut attempt = 0u32;
            let mut pool = self.snapshot(&client, &ranges).await?;
            loop {
                let plan = self.spread_plan(&pool, owner, claims, attempt, &mut seed)?;
                if plan.new.is_empty() {
                    return Ok(plan.addrs);
                }
                let value = self.owner_value(owner);
                let owner_prefix = self.owner_prefix(Some(owner));
                let compares: Vec<Compare> = plan
                    .new
                    .iter()
                    .map(|ip| Compare::create_revision(self.ip_key(*ip), CompareOp::Equal, 0))
                    .collect();
                let puts: Vec<TxnOp> = plan
                    .new
                    .iter()
                    .flat_map(|ip| {
                        [
                            TxnOp::put(self.ip_key(*ip), value.clone(), None),
                            TxnOp::put(format!("{owner_prefix}{}", key_hex(*ip)), "", None),
                        ]
                    })
                    .collect();
                let txn = Txn::new()
                    .when(compares)
                    .and_then(puts)
                    .or_else(self.range_gets(&ranges));
                let mut kv = client.kv_client();
                match kv.txn(txn).await {
                    Ok(resp) if resp.succeeded() => {
                        tracing::info!(attempt, addrs = ?plan.addrs, "etcd claim committed");
                        return Ok(plan.addrs);
                    }
                    Ok(resp) => {
                        tracing::debug!(attempt, "address taken by another node, retrying");
                        pool = Pool::default();
                        for op in resp.op_responses() {
                            if let etcd_client::TxnOpResponse::Get(g) = op {
                                self.add_kvs(&mut pool, g.kvs());
                            }
                        }
                    }
                    Err(e) if is_permanent(&e) => {
                        return Err(Error::io(format!("etcd refused the request: {e}")))
                    }
                    // Unknown outcome (member died, timeout): a fresh read tells.
                    Err(e) => {
                        tracing::debug!("etcd txn error, retrying: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        pool = self.snapshot(&client, &ranges).await?;
                    }
                }
                attempt += 1;
            }
        })
    }

    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.run(|client| async move {
            let items = self.owned(&client, Some(owner)).await?;
            self.release_all(&client, &items).await?;
            Ok(items.into_iter().map(|(_, ip)| ip).collect())
        })
    }

    fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.run(|client| async move {
            let mut out = Vec::new();
            let value = self.owner_value(owner);
            for (_, ip) in self.owned(&client, Some(owner)).await? {
                let key = self.ip_key(ip);
                let kv = client.kv_client();
                let resp = retrying(|| {
                    let (key, mut kv) = (key.clone(), kv.clone());
                    async move { kv.get(key, None).await }
                })
                .await?;
                if resp
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == value.as_bytes())
                {
                    out.push(ip);
                }
            }
            Ok(out)
        })
    }

    fn retain(&self, keep: &HashSet<Owner>) -> Result<Vec<(IpAddr, Owner)>> {
        self.run(|client| async move {
            let stale: Vec<(Owner, IpAddr)> = self
                .owned(&client, None)
                .await?
                .into_iter()
                .filter(|(o, _)| !keep.contains(o))
                .collect();
            self.release_all(&client, &stale).await?;
            Ok(stale.into_iter().map(|(o, ip)| (ip, o)).collect())
        })
    }

    /// A linearizable read needs a quorum with a leader, the same condition a write needs.
    fn status(&self) -> Result<()> {
        self.run(|client| async move {
            let mut kv = client.kv_client();
            kv.get(self.base.clone(), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(etcd_err)?;
            Ok(())
        })
    }
}
