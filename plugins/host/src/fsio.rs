//! The one way weft writes state files: where state lives, private directories, and an atomic
//! replace that cannot be hijacked.
//!
//! `write_atomic` writes a temp file created with O_EXCL | O_NOFOLLOW (0600) in the target's
//! directory, syncs it as asked, and renames it over the target: a reader sees the old file or
//! the new one, never a torn one, also after a crash; nothing is ever written through a file or
//! symlink someone else placed there. Temp files are `.tmp-<pid>-<n>`; one left by a process
//! killed mid-write is removed by [`sweep_stale_temps`] once that pid is gone.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::HostError;

/// Default parent of every plugin's state: `/var/lib/cni`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni";
/// Environment variable replacing [`DEFAULT_STATE_DIR`] (tests, non-standard installs).
pub const STATE_DIR_ENV: &str = "WEFT_STATE_DIR";

/// Prefix of temp files: no record, pool or key file starts with a dot.
pub const TEMP_PREFIX: &str = ".tmp-";

/// `$WEFT_STATE_DIR` when set and non-empty, else `/var/lib/cni`: the one state-dir lookup.
pub fn state_dir() -> PathBuf {
    state_dir_from(std::env::var_os(STATE_DIR_ENV))
}

fn state_dir_from(var: Option<OsString>) -> PathBuf {
    var.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// How durable a replace must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and the directory: the new file survives a power loss (records).
    Full,
    /// fdatasync the file, not the directory: after a power loss the old or the new file.
    Data,
    /// No sync: a cache that can be recomputed.
    Cache,
}

/// Creates `dir` (and missing parents) with `dir` itself 0700, and makes sure an existing one
/// is really ours: a directory, not a symlink, owned by this user, not writable by group or
/// others. Group/other permission bits on our own directory are removed (a pre-existing 0755
/// store dir is repaired); a symlink or a directory owned by someone else is refused.
pub fn ensure_private_dir(dir: &Path) -> Result<(), HostError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => check_private(dir, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| HostError::io(format!("create {}", parent.display()), e))?;
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                // Make the new directory's own entry durable, like the files inside it.
                Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("/"))),
                // Another process won the race: check what it made.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = fs::symlink_metadata(dir)
                        .map_err(|e| HostError::io(format!("stat {}", dir.display()), e))?;
                    check_private(dir, &meta)
                }
                Err(e) => Err(HostError::io(format!("create {}", dir.display()), e)),
            }
        }
        Err(e) => Err(HostError::io(format!("stat {}", dir.display()), e)),
    }
}

fn check_private(dir: &Path, meta: &fs::Metadata) -> Result<(), HostError> {
    let unsafe_dir = |why: String| {
        HostError::io(
            format!("refusing state directory {}", dir.display()),
            io::Error::new(io::ErrorKind::PermissionDenied, why),
        )
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this user ({me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "state directory was open to others; setting 0700");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| HostError::io(format!("chmod 0700 {}", dir.display()), e))?;
    }
    Ok(())
}

/// Atomically replaces `<dir>/<name>` with `bytes` (0600), as durable as `durability` says.
/// `dir` must exist (see [`ensure_private_dir`]).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), HostError> {
    let target = dir.join(name);
    let mut temp = TempFile::create(dir)?;
    let ctx = |what: &str, path: &Path| format!("{what} {}", path.display());
    let file = temp.file.as_mut().expect("open until persisted");
    file.write_all(bytes)
        .map_err(|e| HostError::io(ctx("write", &temp.path), e))?;
    match durability {
        Durability::Full => file.sync_all(),
        Durability::Data => file.sync_data(),
        Durability::Cache => Ok(()),
    }
    .map_err(|e| HostError::io(ctx("sync", &temp.path), e))?;
    temp.persist(&target)?;
    if durability == Durability::Full {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), HostError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HostError::io(format!("fsync {}", dir.display()), e))
}

/// Removes temp files of processes that no longer exist (killed mid-write); returns how many.
/// A temp of a live process (or of a pid reused since) is left alone.
pub fn sweep_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists()
            && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// A uniquely named temp file; removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dir: &Path) -> Result<Self, HostError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{TEMP_PREFIX}{pid}-{n}"));
            // O_EXCL: never write through a file or symlink someone else placed there.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    })
                }
                // Left over by a crashed process that had our pid: try the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(HostError::io(format!("create {}", path.display()), e)),
            }
        }
    }

    fn persist(mut self, target: &Path) -> Result<(), HostError> {
        drop(self.file.take());
        fs::rename(&self.path, target).map_err(|e| {
            HostError::io(
                format!("rename {} to {}", self.path.display(), target.display()),
                e,
            )
        })?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_lookup() {
        assert_eq!(state_dir_from(Some("/tmp/st".into())), Path::new("/tmp/st"));
        for unset in [None, Some("".into())] {
            assert_eq!(state_dir_from(unset), Path::new(DEFAULT_STATE_DIR));
        }
    }

    #[test]
    fn replaces_atomically_0600_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        for d in [Durability::Full, Durability::Data, Durability::Cache] {
            write_atomic(tmp.path(), "f", format!("{d:?}").as_bytes(), d).unwrap();
            assert_eq!(
                fs::read_to_string(tmp.path().join("f")).unwrap(),
                format!("{d:?}")
            );
        }
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        let mode = fs::metadata(tmp.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_planted_symlink_is_replaced_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("pool")).unwrap();
        write_atomic(tmp.path(), "pool", b"new", Durability::Data).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let meta = fs::symlink_metadata(tmp.path().join("pool")).unwrap();
        assert!(meta.is_file(), "the link was replaced by a regular file");
    }

    #[test]
    fn private_dirs_are_created_repaired_or_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o757)).unwrap();
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err(), "symlinked state dir");
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
        if nix::unistd::geteuid().is_root() {
            let foreign = tmp.path().join("foreign");
            fs::create_dir(&foreign).unwrap();
            nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(ensure_private_dir(&foreign).is_err(), "dir owned by nobody");
        }
    }

    #[test]
    fn stale_temps_of_dead_processes_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        // pid 0 never names a live process in /proc; our own pid does.
        fs::write(tmp.path().join(".tmp-0-1"), b"x").unwrap();
        let mine = format!(".tmp-{}-9", std::process::id());
        fs::write(tmp.path().join(&mine), b"x").unwrap();
        fs::write(tmp.path().join("record"), b"x").unwrap();
        assert_eq!(sweep_stale_temps(tmp.path()), 1);
        assert!(tmp.path().join(&mine).exists() && tmp.path().join("record").exists());
    }
}
