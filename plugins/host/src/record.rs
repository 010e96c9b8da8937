//! Attachment records under `/var/lib/cni/<plugin>/`: one JSON file per attachment.
//!
//! Layout (records 0600, directories 0700):
//! ```text
//! <plugin>/lock                          flock(2) target for read-modify-write of shared state
//! <plugin>/<network>/<containerID>:<ifname>   one record per attachment of <network>
//! <plugin>/<containerID>:<ifname>        legacy: written before records named their network
//! ```
//! The network is a directory, so GC of one network lists only its own records and can never
//! touch another network's (see [`conf::AttachmentKey`] for how legacy records are served and
//! adopted). The file name separator must be a character neither part can contain, otherwise
//! `a-b` + `c` and `a` + `b-c` collide (sriov-cni's `<id>-<ifname>` has that flaw). Container
//! IDs are `[A-Za-z0-9][A-Za-z0-9_.-]*` and the kernel forbids `:` in ifnames (it marks alias
//! labels), so `:` is unambiguous and a file name splits back into its key. Temp files start
//! with `.` (no container ID does) and the lock file is `lock` (no `:`), so a listing can tell
//! records from everything else.
//!
//! Writes are [`fsio::write_atomic`] (O_EXCL temp, rename): a reader sees the old record or the
//! new one, never a torn one, also after the writer was killed. By default with full durability
//! (fsync of the file and of the directory, also on remove), so a record survives a power loss;
//! a plugin whose records describe only kernel state that a power loss erases anyway may choose
//! less ([`RecordStore::with_durability`]). Directories are [`fsio::ensure_private_dir`] (0700,
//! ours, no symlink).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use conf::AttachmentKey;
use serde::{de::DeserializeOwned, Serialize};

use crate::fsio::{self, Durability};
use crate::HostError;

const SEPARATOR: char = ':';
const LOCK_FILE: &str = "lock";
/// NAME_MAX: the longest file (and directory) name.
const NAME_MAX: usize = 255;
/// Prefix of the file name of a record whose `<id>:<ifname>` would not fit NAME_MAX. No
/// container ID starts with `~`, so such a name never reads as a key.
const HASHED_PREFIX: char = '~';

/// The network directory name fits (record dirs are named after networks).
fn check_network(key: &AttachmentKey) -> Result<(), HostError> {
    match key.network() {
        Some(n) if n.len() > NAME_MAX => Err(HostError::InvalidKey {
            what: "network name",
            value: n.to_owned(),
            reason: format!("network name is longer than {NAME_MAX} bytes"),
        }),
        _ => Ok(()),
    }
}

/// `<containerID>:<ifname>`, or for a key too long for a file name (libcni sets no limit on
/// container IDs) `~<128-bit hash of the key>`, a file that also holds the full key.
fn file_name(key: &AttachmentKey) -> String {
    let plain = format!("{}{SEPARATOR}{}", key.container_id(), key.ifname());
    if plain.len() <= NAME_MAX {
        return plain;
    }
    let parts = [
        key.network().unwrap_or_default(),
        key.container_id(),
        key.ifname(),
    ];
    // Two FNV-1a runs with different offsets: 128 bits, stable across builds; the key stored
    // in the file settles the (astronomically unlikely) collision.
    let fnv = |mut h: u64| {
        for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        h
    };
    format!(
        "{HASHED_PREFIX}{:016x}{:016x}",
        fnv(0xcbf29ce484222325),
        fnv(0x84222325cbf29ce4)
    )
}

fn is_hashed(name: &str) -> bool {
    name.starts_with(HASHED_PREFIX)
}

/// What a hashed-name record file holds: the key its name cannot, and the record.
#[derive(Serialize, serde::Deserialize)]
struct Envelope<T> {
    weft_key: StoredKey,
    record: T,
}

#[derive(Serialize, serde::Deserialize, PartialEq)]
struct StoredKey {
    network: Option<String>,
    container_id: String,
    ifname: String,
}

impl StoredKey {
    fn of(key: &AttachmentKey) -> Self {
        StoredKey {
            network: key.network().map(str::to_owned),
            container_id: key.container_id().to_owned(),
            ifname: key.ifname().to_owned(),
        }
    }

    fn key(&self) -> Option<AttachmentKey> {
        match &self.network {
            Some(n) => AttachmentKey::new(n, &self.container_id, &self.ifname),
            None => AttachmentKey::legacy(&self.container_id, &self.ifname),
        }
        .ok()
    }
}

/// The key a record file in `dir` stands for; `None` for temp files, the lock and foreign
/// names. A hashed name is read for its key.
fn key_from_file_name(dir: &Path, network: Option<&str>, name: &str) -> Option<AttachmentKey> {
    if is_hashed(name) {
        let bytes = fs::read(dir.join(name)).ok()?;
        let env: Envelope<serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
        return env
            .weft_key
            .key()
            .filter(|k| k.network() == network && file_name(k) == name);
    }
    let (cid, ifname) = name.split_once(SEPARATOR)?;
    match network {
        Some(n) => AttachmentKey::new(n, cid, ifname),
        None => AttachmentKey::legacy(cid, ifname),
    }
    .ok()
}

/// A directory of attachment records for one plugin.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
    durability: Durability,
}

/// An exclusive `flock` on the store's `lock` file; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: crate::lock::Locked,
}

impl RecordStore {
    /// A store in `dir` (created 0700 on first write or lock).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecordStore {
            dir: dir.into(),
            durability: Durability::Full,
        }
    }

    /// How far writes and removes go before they return: [`Durability::Full`] (the default)
    /// survives a power loss; [`Durability::Cache`] survives the writer being killed (the page
    /// cache holds it) but not a power loss, and costs no disk flush. A record may be lost or
    /// empty after a power loss then, which DEL and GC of such a plugin must take in stride.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// `<state dir>/<plugin>` ([`fsio::state_dir`]: `/var/lib/cni`, or `$WEFT_STATE_DIR`).
    ///
    /// # Panics
    /// If `plugin` is not a plain file name: plugin names are constants in our own binaries.
    pub fn for_plugin(plugin: &str) -> Self {
        assert!(
            !plugin.is_empty() && plugin != "." && plugin != ".." && !plugin.contains('/'),
            "plugin name {plugin:?} must be a plain file name"
        );
        RecordStore::new(fsio::state_dir().join(plugin))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory holding `key`'s record: the network's, or the store's own for a legacy key.
    fn dir_of(&self, key: &AttachmentKey) -> PathBuf {
        match key.network() {
            Some(n) => self.dir.join(n),
            None => self.dir.clone(),
        }
    }

    /// Where the record for `key` lives (whether or not it exists).
    pub fn path(&self, key: &AttachmentKey) -> PathBuf {
        self.dir_of(key).join(file_name(key))
    }

    /// Atomically replaces the record for `key` with `value` as JSON.
    pub fn write<T: Serialize>(&self, key: &AttachmentKey, value: &T) -> Result<(), HostError> {
        check_network(key)?;
        let name = file_name(key);
        let encoded = if is_hashed(&name) {
            serde_json::to_vec_pretty(&Envelope {
                weft_key: StoredKey::of(key),
                record: value,
            })
        } else {
            serde_json::to_vec_pretty(value)
        };
        let mut bytes = encoded
            .map_err(|e| HostError::io(format!("encode record {key}"), io::Error::other(e)))?;
        bytes.push(b'\n');
        let dir = self.dir_of(key);
        fsio::ensure_private_dir(&self.dir)?;
        fsio::ensure_private_dir(&dir)?;
        fsio::write_atomic(&dir, &name, &bytes, self.durability)
    }

    /// The record for `key`; `Ok(None)` if there is none. A record that does not decode as `T`
    /// is [`HostError::CorruptRecord`].
    pub fn read<T: DeserializeOwned>(&self, key: &AttachmentKey) -> Result<Option<T>, HostError> {
        if check_network(key).is_err() {
            return Ok(None); // a record that could not have been written is not there
        }
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::io(format!("read {}", path.display()), e)),
        };
        let corrupt = |e: serde_json::Error| HostError::CorruptRecord {
            path: path.clone(),
            reason: e.to_string(),
        };
        if !is_hashed(&file_name(key)) {
            return serde_json::from_slice(&bytes).map(Some).map_err(corrupt);
        }
        let env: Envelope<T> = serde_json::from_slice(&bytes).map_err(corrupt)?;
        // Another key with the same hash: not this key's record.
        Ok((env.weft_key == StoredKey::of(key)).then_some(env.record))
    }

    /// The record serving a request for `key`: its own, else a legacy record of the same
    /// interface (see [`conf::AttachmentKey`]). Returns the key it is stored under.
    pub fn find<T: DeserializeOwned>(
        &self,
        key: &AttachmentKey,
    ) -> Result<Option<(AttachmentKey, T)>, HostError> {
        if let Some(v) = self.read(key)? {
            return Ok(Some((key.clone(), v)));
        }
        if key.is_legacy() {
            return Ok(None);
        }
        let legacy = AttachmentKey::legacy(key.container_id(), key.ifname())
            .expect("parts of a valid key are valid");
        Ok(self.read(&legacy)?.map(|v| (legacy, v)))
    }

    /// Removes the record for `key`; `Ok(false)` if there was none.
    pub fn remove(&self, key: &AttachmentKey) -> Result<bool, HostError> {
        if check_network(key).is_err() {
            return Ok(false);
        }
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {
                if self.durability == Durability::Full {
                    fsio::sync_dir(&self.dir_of(key))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(HostError::io(format!("remove {}", path.display()), e)),
        }
    }

    /// The keys of every record of `network`, sorted (for GC). Temp files, the lock and
    /// foreign files are skipped; a network that was never written has no keys.
    pub fn keys(&self, network: &str) -> Result<Vec<AttachmentKey>, HostError> {
        conf::env::validate_network_name(network).map_err(|e| HostError::InvalidKey {
            what: "network name",
            value: network.to_owned(),
            reason: e.msg,
        })?;
        list_keys(&self.dir.join(network), Some(network))
    }

    /// The keys of every record of every network, legacy ones included, sorted (for node-wide
    /// questions such as "does any record still use X"; GC of a network uses [`Self::keys`]).
    pub fn all_keys(&self) -> Result<Vec<AttachmentKey>, HostError> {
        let mut keys = self.legacy_keys()?;
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(HostError::io(format!("list {}", self.dir.display()), e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(network) = name.to_str() else {
                continue;
            };
            if entry.path().is_dir() && conf::env::validate_network_name(network).is_ok() {
                keys.extend(list_keys(&entry.path(), Some(network))?);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The keys of legacy records (written before records named their network), sorted.
    pub fn legacy_keys(&self) -> Result<Vec<AttachmentKey>, HostError> {
        list_keys(&self.dir, None)
    }

    /// Whether a record could be written now (STATUS): the directory is ours and a file can be
    /// created, written and removed in it (a read-only or full filesystem fails here).
    pub fn check_writable(&self) -> Result<(), HostError> {
        fsio::ensure_private_dir(&self.dir)?;
        let probe = format!(".status-probe-{}", std::process::id());
        // Enough bytes to need a data block: a full filesystem refuses them.
        let result = fsio::write_atomic(&self.dir, &probe, &[0u8; 4096], Durability::Cache);
        let _ = fs::remove_file(self.dir.join(&probe));
        result
    }

    /// Removes temp files left by processes killed mid-write, in the store and every network
    /// directory; returns how many (GC calls this).
    pub fn sweep_temps(&self) -> usize {
        let mut removed = fsio::sweep_stale_temps(&self.dir);
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    removed += fsio::sweep_stale_temps(&entry.path());
                }
            }
        }
        removed
    }

    /// Takes the store's exclusive lock, blocking until it is free. Runtimes serialize calls per
    /// container only, so read-modify-write of shared state must hold this.
    pub fn lock(&self) -> Result<StoreLock, HostError> {
        fsio::ensure_private_dir(&self.dir)?;
        let lock = crate::lock::lock_file(&self.dir.join(LOCK_FILE), true)?;
        Ok(StoreLock { _lock: lock })
    }
}

fn list_keys(dir: &Path, network: Option<&str>) -> Result<Vec<AttachmentKey>, HostError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io(format!("list {}", dir.display()), e)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        match name
            .to_str()
            .and_then(|n| key_from_file_name(dir, network, n))
        {
            Some(key) => keys.push(key),
            None => tracing::debug!(file = ?name, dir = %dir.display(), "not a record"),
        }
    }
    keys.sort();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, sync::Arc};

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Rec {
        netns: String,
        n: u64,
    }

    fn rec(netns: &str, n: u64) -> Rec {
        Rec {
            netns: netns.into(),
            n,
        }
    }

    fn store() -> (tempfile::TempDir, RecordStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = RecordStore::new(tmp.path().join("plugin"));
        (tmp, store)
    }

    fn key(c: &str, i: &str) -> AttachmentKey {
        AttachmentKey::new("net1", c, i).unwrap()
    }

    fn dir_names(store: &RecordStore) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_read_remove_roundtrip() {
        let (_t, s) = store();
        let k = key("abc123", "eth0");
        assert_eq!(s.read::<Rec>(&k).unwrap(), None);
        let r = rec("/var/run/netns/x", 1);
        s.write(&k, &r).unwrap();
        assert_eq!(s.read::<Rec>(&k).unwrap(), Some(r));
        let r2 = rec("/y", 2);
        s.write(&k, &r2).unwrap();
        assert_eq!(s.read::<Rec>(&k).unwrap(), Some(r2));
        assert!(s.remove(&k).unwrap());
        assert!(!s.remove(&k).unwrap());
        assert_eq!(s.read::<Rec>(&k).unwrap(), None);
    }

    #[test]
    fn no_temp_file_left_and_modes() {
        let (_t, s) = store();
        let k = key("c1", "net1");
        s.write(&k, &rec("a", 0)).unwrap();
        s.write(&k, &rec("b", 1)).unwrap();
        assert_eq!(dir_names(&s), vec!["net1".to_string()]);
        assert_eq!(s.keys("net1").unwrap(), vec![k.clone()]);
        let mode = fs::metadata(s.path(&k)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for dir in [s.dir().to_path_buf(), s.dir().join("net1")] {
            let dmode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(dmode, 0o700, "{}", dir.display());
        }
    }

    #[test]
    fn failed_encode_leaves_nothing() {
        struct Bad;
        impl Serialize for Bad {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("nope"))
            }
        }
        let (_t, s) = store();
        let k = key("c1", "eth0");
        s.write(&k, &rec("old", 7)).unwrap();
        assert!(s.write(&k, &Bad).is_err());
        assert_eq!(s.keys("net1").unwrap(), vec![k.clone()]);
        assert_eq!(fs::read_dir(s.dir().join("net1")).unwrap().count(), 1);
        assert_eq!(s.read::<Rec>(&k).unwrap().unwrap().n, 7);
    }

    #[test]
    fn corrupt_record_is_state_error() {
        let (_t, s) = store();
        let k = key("c1", "eth0");
        s.write(&k, &rec("a", 0)).unwrap();
        fs::write(s.path(&k), b"{\"netns\": \"a\", \"n\"").unwrap();
        let e = s.read::<Rec>(&k).unwrap_err();
        assert!(matches!(e, HostError::CorruptRecord { .. }), "{e}");
        assert_eq!(conf::Error::from(e).code, conf::code::STATE);
    }

    #[test]
    fn container_ids_too_long_for_a_file_name_are_stored_under_a_hash() {
        let (_t, s) = store();
        // libcni has no length limit; 1000 bytes is far past NAME_MAX.
        let long_id = "a".repeat(1000);
        let k = AttachmentKey::new("net1", &long_id, "eth0").unwrap();
        assert_eq!(s.read::<u8>(&k).unwrap(), None, "DEL of nothing: nothing");
        assert!(!s.remove(&k).unwrap());
        s.write(&k, &rec("ns", 5)).unwrap();
        let name = fs::read_dir(s.dir().join("net1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .next()
            .unwrap();
        assert!(name.starts_with('~') && name.len() == 33, "{name}");
        assert_eq!(s.read::<Rec>(&k).unwrap(), Some(rec("ns", 5)));
        assert_eq!(
            s.keys("net1").unwrap(),
            vec![k.clone()],
            "the key comes back whole"
        );
        // Another long ID (same length, other content) is another record.
        let other = AttachmentKey::new("net1", &"b".repeat(1000), "eth0").unwrap();
        assert_eq!(s.read::<Rec>(&other).unwrap(), None);
        assert!(s.remove(&k).unwrap());
        assert!(s.keys("net1").unwrap().is_empty());
        let too_long_net = AttachmentKey::new(&"n".repeat(300), "c1", "eth0").unwrap();
        assert!(s.write(&too_long_net, &1u8).is_err());
        assert_eq!(s.read::<u8>(&too_long_net).unwrap(), None);
    }

    #[test]
    fn longest_key_fits_in_a_file_name() {
        let (_t, s) = store();
        let k = key(&"a".repeat(NAME_MAX - 1 - 15), "0123456789abcde");
        s.write(&k, &1u8).unwrap();
        assert_eq!(s.keys("net1").unwrap(), vec![k]);
    }

    #[test]
    fn keys_are_unambiguous_and_skip_foreign_files() {
        let (_t, s) = store();
        // With a '-' separator these two would share a file name.
        let a = key("a-b", "c");
        let b = key("a", "b-c");
        s.write(&a, &1u8).unwrap();
        s.write(&b, &2u8).unwrap();
        let _lock = s.lock().unwrap();
        let net = s.dir().join("net1");
        fs::write(net.join(".tmp-1-1"), b"x").unwrap();
        fs::write(net.join("foreign"), b"x").unwrap();
        fs::write(net.join("x:0123456789abcdefg"), b"x").unwrap(); // ifname too long
        assert_eq!(
            s.keys("net1").unwrap(),
            vec![key("a", "b-c"), key("a-b", "c")]
        );
        assert_eq!(s.read::<u8>(&a).unwrap(), Some(1));
        assert_eq!(s.read::<u8>(&b).unwrap(), Some(2));
    }

    #[test]
    fn networks_are_apart_and_legacy_records_serve_every_network() {
        let (_t, s) = store();
        let a1 = AttachmentKey::new("net1", "c1", "eth0").unwrap();
        let a2 = AttachmentKey::new("net2", "c1", "eth0").unwrap();
        s.write(&a1, &1u8).unwrap();
        assert_eq!(s.keys("net1").unwrap(), vec![a1.clone()]);
        assert!(
            s.keys("net2").unwrap().is_empty(),
            "net2 sees nothing of net1"
        );
        assert_eq!(s.find::<u8>(&a2).unwrap(), None);
        assert_eq!(s.find::<u8>(&a1).unwrap(), Some((a1.clone(), 1)));
        // A record from before network scoping: <plugin>/<cid>:<ifname>.
        let old = AttachmentKey::legacy("c9", "net3").unwrap();
        fs::write(s.dir().join("c9:net3"), b"7").unwrap();
        assert_eq!(s.legacy_keys().unwrap(), vec![old.clone()]);
        let wanted = AttachmentKey::new("net2", "c9", "net3").unwrap();
        assert_eq!(s.find::<u8>(&wanted).unwrap(), Some((old.clone(), 7)));
        assert!(s.keys("net2").unwrap().is_empty());
        assert_eq!(s.all_keys().unwrap(), vec![old.clone(), a1.clone()]);
        assert!(s.remove(&old).unwrap());
        assert_eq!(s.find::<u8>(&wanted).unwrap(), None);
        assert!(s.keys("../x").is_err());
    }

    #[test]
    fn empty_store_has_no_keys() {
        let (_t, s) = store();
        assert!(s.keys("net1").unwrap().is_empty());
        assert!(s.legacy_keys().unwrap().is_empty());
        assert!(!s.remove(&key("a", "eth0")).unwrap());
    }

    #[test]
    #[should_panic(expected = "plain file name")]
    fn for_plugin_rejects_paths() {
        RecordStore::for_plugin("../etc");
    }

    /// Read-modify-write under the lock from many threads, each with its own open file
    /// description (flock locks belong to those, so threads exclude each other like processes).
    #[test]
    fn concurrent_writers_under_lock() {
        let (_t, s) = store();
        let s = Arc::new(s);
        let k = key("counter", "eth0");
        s.write(&k, &0u64).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&s);
                let k = k.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        let _g = s.lock().unwrap();
                        let n: u64 = s.read(&k).unwrap().unwrap();
                        std::thread::yield_now();
                        s.write(&k, &(n + 1)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.read::<u64>(&k).unwrap(), Some(200));
        assert_eq!(dir_names(&s), vec!["lock".to_string(), "net1".to_string()]);
        assert_eq!(s.keys("net1").unwrap(), vec![k]);
    }

    #[test]
    fn lock_is_exclusive() {
        let (_t, s) = store();
        let held = s.lock().unwrap();
        let path = s.dir().join(LOCK_FILE);
        let other = fs::File::open(&path).unwrap();
        use nix::fcntl::{Flock, FlockArg};
        let other = match Flock::lock(other, FlockArg::LockExclusiveNonblock) {
            Ok(_) => panic!("second exclusive lock granted while the first is held"),
            Err((f, errno)) => {
                assert_eq!(errno, nix::errno::Errno::EWOULDBLOCK);
                f
            }
        };
        drop(held);
        assert!(Flock::lock(other, FlockArg::LockExclusiveNonblock).is_ok());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
