//! The embedded store: one pool file per network, no daemon, no setup.
//!
//! Layout under the store dir (default `/var/lib/cni/weft-ipam`, mode 0700):
//! ```text
//! <network>/lock           flock(2) target, never deleted (deleting a lock file races its users)
//! <network>/pool           every reservation of the network, sorted by address (0600)
//! <network>/.tmp-<pid>-<n> the next version being written (0600, O_EXCL | O_NOFOLLOW)
//! ```
//! `pool` is text, one reservation per line in address order, between a header and a trailer
//! carrying the line count ([`super::pool_file`] has the format and its readers).
//!
//! **One verb = one transaction**: take `flock(LOCK_EX)` on `lock` (released by the kernel when
//! the process dies, so a `kill -9` never leaves a stale lock), read `pool`
//! ([`PoolFile::read`]), decide with [`Reservations::plan`], write a temp file and `rename` it
//! over `pool` ([`host::fsio::write_atomic`]). rename(2) is atomic, so every reader sees either
//! the old or the new pool; a process killed at any point leaves at worst a stale temp file
//! (swept by the next transaction: under the lock no other writer can own one) and possibly a
//! reservation whose result was never printed (freed by DEL or GC). Duplicates are impossible
//! because every decision is made on the latest pool under the exclusive lock.
//!
//! **Durability** ([`pool_durability`]): the pool is not fsynced where the filesystem itself
//! writes a file's data before a rename over another file commits (ext4's default
//! `auto_da_alloc` in `data=ordered`, btrfs; tmpfs has nothing to lose), and fdatasynced
//! elsewhere (XFS and the rest), never with the directory. Why that is enough: a crash of the
//! plugin alone loses nothing (the page cache holds every write, and a reader sees it), and a
//! power loss or kernel crash ends every pod of the node, so an older pool after the reboot
//! lacks only reservations nobody holds any more, or holds some that DEL/GC frees. A lost write
//! can never yield a duplicate; the sync only keeps a power loss from leaving a *torn* pool on
//! filesystems that do not order the data themselves, which every verb would refuse (code 101)
//! until an operator removed it. ipam/README.md has the measurements.
//!
//! **Cost per verb**: one open+flock, one read of this network's pool (30–100 bytes per
//! reservation), a check of every line's structure and address, a decision that reads only the
//! owners of the claimed range as text, one write + rename of the whole file. Most of that
//! grows with the number of reservations, slowly (`weft-bench ipam-scale`, ipam/README.md).
//!
//! Locking is `host::lock` and writing `host::fsio`, shared with the record store.

pub use super::pool_file::{parse, render};
use super::{Claim, Owner, Pool, PoolFile, Reservations, Store};
use crate::config::validate_network_name;
use crate::error::{IpamError, Result};
use host::fsio::Durability;
use host::lock::{lock_file, Locked};
use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The spare kept so that freeing addresses works on a full disk (see `save_shrunk`).
const SPARE: &str = "spare";
const SPARE_STEP: u64 = 4096;

pub struct FileStore {
    /// `<store dir>/<network>`
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> IpamError {
    IpamError::Io(format!("{what} {}: {e}", path.display()))
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

    /// The pool's lock. The store directory and the pool's own are made private first (0700,
    /// ours, not symlinks): everything below is trusted only because nobody else can write it.
    fn lock(&self, exclusive: bool) -> Result<Locked> {
        if let Some(store) = self.dir.parent() {
            host::fsio::ensure_private_dir(store)?;
        }
        host::fsio::ensure_private_dir(&self.dir)?;
        Ok(lock_file(&self.dir.join("lock"), exclusive)?)
    }

    /// Reads the pool; a missing file is an empty pool. Call with the lock held.
    fn load(&self) -> Result<PoolFile> {
        let Some(text) = self.read_optional("pool")? else {
            return Ok(PoolFile::default());
        };
        PoolFile::read(text).map_err(|why| self.corrupt(&why))
    }

    fn corrupt(&self, why: &str) -> IpamError {
        IpamError::Corrupt(format!(
            "pool file {} is corrupt: {why}",
            self.pool_path().display()
        ))
    }

    /// Replaces the pool atomically. Call with the lock held.
    fn save(&self, pool: &PoolFile) -> Result<()> {
        let text = pool.render();
        self.write_pool(&text)?;
        self.keep_spare(text.len() as u64);
        Ok(())
    }

    /// A write that only frees reservations (DEL, GC) must finish on a full disk too, yet the
    /// new pool needs new blocks before the old ones go. So the store keeps `spare`, a file at
    /// least as large as the pool: when such a write finds no space, the spare is given up,
    /// the write retried, and the spare made again when there is room.
    fn save_shrunk(&self, pool: &PoolFile) -> Result<()> {
        let text = pool.render();
        match self.write_pool(&text) {
            Err(IpamError::Host(e)) if e.is_no_space() => {
                tracing::warn!(dir = %self.dir.display(), "disk full: using the spare to free addresses");
                let _ = fs::remove_file(self.dir.join(SPARE));
                self.write_pool(&text)?;
                self.keep_spare(text.len() as u64);
                Ok(())
            }
            other => other,
        }
    }

    /// Grows `spare` (allocated for real, not sparse) to cover a pool of `len` bytes; best
    /// effort, and a no-op unless the pool outgrew it (every 4 KiB of pool, ~60 reservations).
    fn keep_spare(&self, len: u64) {
        let want = len.div_ceil(SPARE_STEP).max(1) * SPARE_STEP;
        let path = self.dir.join(SPARE);
        let have = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        if have >= want {
            return;
        }
        let grown = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, want as i64)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = grown {
            tracing::debug!(error = %e, "could not grow the spare (disk full?)");
        }
    }

    /// Replaces `<dir>/<name>` atomically ([`host::fsio::write_atomic`]) as durably as asked.
    /// Call with the lock held (the etcd store keeps its block list next to the pool this way).
    pub(crate) fn write_atomic(
        &self,
        name: &str,
        text: &str,
        durability: Durability,
    ) -> Result<()> {
        test_pause();
        Ok(host::fsio::write_atomic(
            &self.dir,
            name,
            text.as_bytes(),
            durability,
        )?)
    }

    /// Replaces the pool file (see [`pool_durability`]).
    fn write_pool(&self, text: &str) -> Result<()> {
        self.write_atomic("pool", text, pool_durability(&self.dir))
    }

    /// `<dir>/<name>` as text; `None` if it does not exist. Call with the lock held.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn read_optional(&self, name: &str) -> Result<Option<String>> {
        let path = self.dir.join(name);
        // Never through a link planted at the file's name: state is only what we wrote.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path);
        let mut text = String::new();
        match file {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .map(|_| Some(text))
                .map_err(|e| io_err("cannot read", &path, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot open", &path, e)),
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
        self.load()?.to_pool().map_err(|why| self.corrupt(&why))
    }

    /// Runs `f` on the pool under the exclusive lock and saves the pool if `f` says it changed.
    pub(crate) fn transact<T>(
        &self,
        f: impl FnOnce(&mut PoolFile) -> Result<(T, bool)>,
    ) -> Result<T> {
        let _lock = self.lock(true)?;
        host::fsio::sweep_stale_temps(&self.dir);
        test_pause();
        let mut pool = self.load()?;
        let before = pool.len();
        let (out, changed) = f(&mut pool)?;
        if changed && pool.len() < before {
            self.save_shrunk(&pool)?;
        } else if changed {
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
            let adopted = pool.adopt(owner, &plan.addrs);
            for ip in &plan.new {
                pool.insert(*ip, owner);
            }
            Ok((plan.addrs, adopted || !plan.new.is_empty()))
        })
    }

    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        self.transact(|pool| {
            let mine = pool.release(owner);
            let changed = !mine.is_empty();
            Ok((mine, changed))
        })
    }

    fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let _lock = self.lock(false)?;
        Ok(self.load()?.owned_by(owner))
    }

    /// GC works on the whole [`Pool`] (it looks at every owner anyway).
    fn retain(&self, network: &str, keep: &HashSet<Owner>) -> Result<Vec<(IpAddr, Owner)>> {
        self.transact(|file| {
            let mut pool = file.to_pool().map_err(|why| self.corrupt(&why))?;
            let (freed, changed) = pool.retain(network, keep);
            if changed {
                *file = PoolFile::from_pool(&pool);
            }
            Ok((freed, changed))
        })
    }

    /// Writable (the directory can be created and the lock file opened for writing and
    /// locked) and the pool file reads back.
    fn status(&self, _ranges: &[crate::range::Range]) -> Result<()> {
        let _lock = self.lock(true)?;
        self.load().map(drop)
    }
}

/// How durable a pool write must be (the module docs say why): no sync where the filesystem
/// orders a file's data before a rename over another file (ext4 `data=ordered` with its default
/// `auto_da_alloc`, btrfs) or keeps nothing across a reboot (tmpfs); fdatasync of the file
/// elsewhere. The directory is never synced: an older pool after a power loss is harmless.
/// ext4 mounted `data=writeback` or `noauto_da_alloc` is taken for ext4: a power loss may then
/// tear the pool, which is refused (code 101), never read as a smaller pool.
pub fn pool_durability(dir: &Path) -> Durability {
    use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC};
    match statfs(dir).map(|s| s.filesystem_type()) {
        Ok(t) if [EXT4_SUPER_MAGIC, BTRFS_SUPER_MAGIC, TMPFS_MAGIC].contains(&t) => {
            Durability::Cache
        }
        _ => Durability::Data,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{ip, owner, range};
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
        assert_eq!(e.code(), 104);
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
        let freed = store.retain("net1", &keep).unwrap();
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
        assert_eq!(e.code(), conf::code::STATE);
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(parse("weft-ipam pool v1\n10.0.0.2 a eth0\n10.0.0.2 b eth0\nend 2\n").is_err());
        assert!(parse("weft-ipam pool v1\n10.0.0.2 ../x eth0\nend 1\n").is_err());
        assert!(parse("weft-ipam pool v2\n10.0.0.2 n a eth0\n10.0.0.2 n b eth0\nend 2\n").is_err());
        assert!(parse("weft-ipam pool v2\n10.0.0.2 ../n a eth0\nend 1\n").is_err());
        assert!(parse("weft-ipam pool v2\n10.0.0.2 a eth0\nend 1\n").is_err());
        assert!(parse("weft-ipam pool v1\n10.0.0.2 n a eth0\nend 1\n").is_err());
    }

    #[test]
    fn pools_of_the_previous_release_are_read_served_and_upgraded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path(), "shared").unwrap();
        fs::create_dir_all(store.dir()).unwrap();
        fs::write(
            store.pool_path(),
            "weft-ipam pool v1\n10.0.0.2 ga1 eth0\n10.0.0.3 gb1 eth0\nend 2\n",
        )
        .unwrap();
        let r = range("10.0.0.0/24");
        let any = [Claim {
            range: &r,
            want: None,
        }];
        // An idempotent ADD of ga1 through network ga gets its address back, now owned by ga.
        let ga1 = Owner::new("ga", "ga1", "eth0").unwrap();
        assert_eq!(store.reserve(&ga1, &any).unwrap(), vec![ip("10.0.0.2")]);
        let text = fs::read_to_string(store.pool_path()).unwrap();
        assert!(text.starts_with("weft-ipam pool v2\n"), "{text}");
        assert!(text.contains("10.0.0.2 ga ga1 eth0\n"), "{text}");
        assert!(text.contains("10.0.0.3 - gb1 eth0\n"), "{text}");
        // GC of ga does not free gb1's legacy reservation (it may be gb's).
        let keep: HashSet<Owner> = [ga1.clone()].into();
        assert!(store.retain("ga", &keep).unwrap().is_empty());
        // DEL of gb1 through gb frees it.
        let gb1 = Owner::new("gb", "gb1", "eth0").unwrap();
        assert_eq!(store.release(&gb1).unwrap(), vec![ip("10.0.0.3")]);
        assert_eq!(store.list().unwrap().map.len(), 1);
    }

    #[test]
    fn pools_are_synced_only_where_the_filesystem_does_not_order_renames() {
        // tmpfs keeps nothing across a reboot; procfs stands for any filesystem not known to
        // write a file's data before a rename over another file commits (XFS, ...).
        assert_eq!(pool_durability(Path::new("/dev/shm")), Durability::Cache);
        assert_eq!(pool_durability(Path::new("/proc")), Durability::Data);
    }

    #[test]
    fn network_name_cannot_escape_the_store_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(FileStore::new(tmp.path(), "../x").is_err());
        assert!(FileStore::new(tmp.path(), "a/b").is_err());
    }
}
