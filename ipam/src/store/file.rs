//! The embedded store: one pool file per network, no daemon, no setup.
//!
//! Layout under the store dir (default `/var/lib/cni/weft-ipam`, mode 0700):
//! ```text
//! <network>/lock       flock(2) target, never deleted (deleting a lock file races its users)
//! <network>/pool       every reservation of the network, sorted by address (0600)
//! <network>/pool.tmp   the next version being written (0600)
//! ```
//! `pool` is text, one reservation per line, between a header and a trailer that carries the
//! line count, so a truncated file is detected instead of silently losing reservations:
//! ```text
//! weft-ipam pool v1
//! 10.1.0.2 <containerID> <ifname>
//! end 1
//! ```
//!
//! **One verb = one transaction**: take `flock(LOCK_EX)` on `lock` (released by the kernel when
//! the process dies, so a `kill -9` never leaves a stale lock), read `pool` into a `BTreeMap`,
//! decide with [`Pool::plan`], write `pool.tmp`, `fdatasync` it, `rename` it over `pool`.
//! rename(2) is atomic, so every reader sees either the old or the new pool; a process killed
//! at any point leaves at worst a stale `pool.tmp` (overwritten by the next writer) and
//! possibly a reservation whose result was never printed (freed by DEL or GC). Duplicates are
//! impossible because every decision is made on the latest pool under the exclusive lock.
//!
//! **Cost per verb**: one open+flock, one read of this network's pool (~60 bytes per
//! reservation: 60 KB at 1,000 pods), an in-memory decision that walks only the leading run of
//! occupied addresses of the range (`O(log n)` to seek, no directory scan, no per-address files:
//! host-local opens one file per address on DEL), one write + fdatasync + rename. The directory
//! is not fsynced after the rename: after a power loss the worst case is the previous pool,
//! which only lacks reservations of containers that did not survive the reboot either.
//!
//! Locking is `host::lock` (shared with the record store); the pool write stays here because
//! it is the pool's own protocol (fixed temp name under the lock, fdatasync, rename).

use super::{Claim, Owner, Pool, Store};
use crate::config::validate_network_name;
use conf::{code, Error, Result};
use host::lock::{lock_file, Locked};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const HEADER: &str = "weft-ipam pool v1";

pub struct FileStore {
    /// `<store dir>/<network>`
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}: {e}", path.display()))
}

impl FileStore {
    /// Cheap: touches nothing until a verb runs.
    pub fn new(store_dir: &Path, network: &str) -> Result<FileStore> {
        validate_network_name(network)?;
        Ok(FileStore {
            dir: store_dir.join(network),
        })
    }

    pub fn pool_path(&self) -> PathBuf {
        self.dir.join("pool")
    }

    fn lock(&self, exclusive: bool) -> Result<Locked> {
        Ok(lock_file(&self.dir.join("lock"), exclusive)?)
    }

    /// Reads the pool; a missing file is an empty pool. Call with the lock held.
    fn load(&self) -> Result<Pool> {
        let path = self.pool_path();
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .map_err(|e| io_err("cannot read", &path, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Pool::default()),
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        parse(&text).map_err(|why| {
            Error::new(
                code::STATE,
                format!("pool file {} is corrupt: {why}", path.display()),
            )
        })
    }

    /// Replaces the pool atomically. Call with the lock held.
    fn save(&self, pool: &Pool) -> Result<()> {
        self.write_atomic("pool", &render(pool))
    }

    /// Replaces `<dir>/<name>` atomically: write `<name>.tmp`, fdatasync, rename. Call with the
    /// lock held (the etcd store keeps its block list next to the pool this way).
    pub(crate) fn write_atomic(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| io_err("cannot create", &tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| io_err("cannot write", &tmp, e))?;
        drop(f);
        test_pause();
        fs::rename(&tmp, &path).map_err(|e| io_err("cannot replace", &path, e))
    }

    /// `<dir>/<name>` as text; `None` if it does not exist. Call with the lock held.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn read_optional(&self, name: &str) -> Result<Option<String>> {
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
    }

    /// This store's directory (`<store dir>/<network>`).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A consistent snapshot of every reservation (for tests, `weft inspect`).
    pub fn list(&self) -> Result<Pool> {
        let _lock = self.lock(false)?;
        self.load()
    }

    /// Runs `f` on the pool under the exclusive lock and saves the pool if `f` says it changed.
    pub(crate) fn transact<T>(&self, f: impl FnOnce(&mut Pool) -> Result<(T, bool)>) -> Result<T> {
        let _lock = self.lock(true)?;
        test_pause();
        let mut pool = self.load()?;
        let (out, changed) = f(&mut pool)?;
        if changed {
            self.save(&pool)?;
        }
        test_pause();
        Ok(out)
    }
}

impl Store for FileStore {
    fn reserve(&self, owner: &Owner, claims: &[Claim<'_>]) -> Result<Vec<IpAddr>> {
        self.transact(|pool| {
            let plan = pool.plan(owner, claims)?;
            for ip in &plan.new {
                pool.map.insert(*ip, owner.clone());
            }
            Ok((plan.addrs, !plan.new.is_empty()))
        })
    }

    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.transact(|pool| {
            let mine = pool.owned_by(owner);
            for ip in &mine {
                pool.map.remove(ip);
            }
            let changed = !mine.is_empty();
            Ok((mine, changed))
        })
    }

    fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        Ok(self.list()?.owned_by(owner))
    }

    fn retain(&self, keep: &HashSet<Owner>) -> Result<Vec<(IpAddr, Owner)>> {
        self.transact(|pool| {
            let mut freed = Vec::new();
            pool.map.retain(|ip, owner| {
                let k = keep.contains(owner);
                if !k {
                    freed.push((*ip, owner.clone()));
                }
                k
            });
            let changed = !freed.is_empty();
            Ok((freed, changed))
        })
    }

    /// Writable = the directory can be created and the lock file opened for writing and locked.
    fn status(&self) -> Result<()> {
        self.lock(true).map(drop)
    }
}

/// Debug builds only: `WEFT_IPAM_TEST_STEP_DELAY_US` widens the steps of a transaction so the
/// kill -9 test lands SIGKILLs inside it (locked, temp written, renamed), not only around it.
#[cfg(debug_assertions)]
fn test_pause() {
    if let Some(us) = std::env::var("WEFT_IPAM_TEST_STEP_DELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_micros(us));
    }
}
#[cfg(not(debug_assertions))]
fn test_pause() {}

fn render(pool: &Pool) -> String {
    let mut s = String::with_capacity(32 + pool.map.len() * 64);
    s.push_str(HEADER);
    s.push('\n');
    for (ip, o) in &pool.map {
        let _ = writeln!(s, "{ip} {} {}", o.container_id, o.ifname);
    }
    let _ = writeln!(s, "end {}", pool.map.len());
    s
}

fn parse(text: &str) -> std::result::Result<Pool, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("first line is not {HEADER:?}"));
    }
    let mut pool = Pool::default();
    for (n, line) in lines.enumerate() {
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>() != Ok(pool.map.len()) {
                return Err(format!(
                    "trailer says {count} reservations, found {}",
                    pool.map.len()
                ));
            }
            return Ok(pool);
        }
        let mut f = line.split(' ');
        let (Some(ip), Some(cid), Some(ifname), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(format!(
                "line {}: expected \"<address> <containerID> <ifname>\"",
                n + 2
            ));
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("line {}: bad address {ip:?}", n + 2))?;
        let owner = Owner::new(cid, ifname).map_err(|e| format!("line {}: {}", n + 2, e.msg))?;
        if pool.map.insert(ip, owner).is_some() {
            return Err(format!("line {}: {ip} listed twice", n + 2));
        }
    }
    Err("no trailer (truncated file)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{owner, range};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reserve_release_roundtrip_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path(), "net1").unwrap();
        let (v4, v6) = (range("10.0.0.0/24"), range("fd00::/120"));
        let claims = [
            Claim {
                range: &v4,
                want: None,
            },
            Claim {
                range: &v6,
                want: None,
            },
        ];
        let a = store.reserve(&owner("a"), &claims).unwrap();
        let b = store.reserve(&owner("b"), &claims).unwrap();
        assert_eq!(
            a,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(
            b,
            vec![
                "10.0.0.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        assert_eq!(
            store.reserve(&owner("a"), &claims).unwrap(),
            a,
            "idempotent"
        );
        let mode = fs::metadata(store.pool_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.release(&owner("a")).unwrap(), a);
        assert!(
            store.release(&owner("a")).unwrap().is_empty(),
            "second DEL frees nothing"
        );
        assert_eq!(store.held(&owner("b")).unwrap(), b, "b untouched");
        // The lowest free address is reused.
        assert_eq!(store.reserve(&owner("c"), &claims).unwrap(), a);
    }

    #[test]
    fn all_or_nothing_when_one_range_is_exhausted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path(), "net1").unwrap();
        let (v4, tiny) = (range("10.0.0.0/24"), range("10.9.0.0/30"));
        let claims = [
            Claim {
                range: &v4,
                want: None,
            },
            Claim {
                range: &tiny,
                want: None,
            },
        ];
        store.reserve(&owner("a"), &claims).unwrap();
        let e = store.reserve(&owner("b"), &claims).unwrap_err();
        assert_eq!(e.code, 104);
        assert!(store.held(&owner("b")).unwrap().is_empty());
        assert_eq!(store.list().unwrap().map.len(), 2);
    }

    #[test]
    fn retain_frees_only_unlisted_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path(), "n").unwrap();
        let r = range("10.0.0.0/24");
        for c in ["a", "b", "c"] {
            store
                .reserve(
                    &owner(c),
                    &[Claim {
                        range: &r,
                        want: None,
                    }],
                )
                .unwrap();
        }
        let keep: HashSet<Owner> = [owner("b")].into();
        let freed = store.retain(&keep).unwrap();
        assert_eq!(freed.len(), 2);
        assert_eq!(store.list().unwrap().owned_by(&owner("b")).len(), 1);
        assert_eq!(store.list().unwrap().map.len(), 1);
    }

    #[test]
    fn corrupt_or_truncated_pool_is_a_clear_error_not_an_empty_pool() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path(), "n").unwrap();
        let r = range("10.0.0.0/24");
        store
            .reserve(
                &owner("a"),
                &[Claim {
                    range: &r,
                    want: None,
                }],
            )
            .unwrap();
        let text = fs::read_to_string(store.pool_path()).unwrap();
        let cut = text.trim_end().rsplit_once('\n').unwrap().0.to_string();
        fs::write(store.pool_path(), cut).unwrap();
        let e = store
            .reserve(
                &owner("b"),
                &[Claim {
                    range: &r,
                    want: None,
                }],
            )
            .unwrap_err();
        assert_eq!(e.code, code::STATE);
        assert!(e.msg.contains("truncated"), "{}", e.msg);
        assert!(parse("weft-ipam pool v1\n10.0.0.2 a eth0\n10.0.0.2 b eth0\nend 2\n").is_err());
        assert!(parse("weft-ipam pool v1\n10.0.0.2 ../x eth0\nend 1\n").is_err());
    }

    #[test]
    fn network_name_cannot_escape_the_store_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(FileStore::new(tmp.path(), "../x").is_err());
        assert!(FileStore::new(tmp.path(), "a/b").is_err());
    }
}
