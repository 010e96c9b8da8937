//! File operations weft does on a node: atomic replacement that keeps mode and owner, content
//! hashes for "is this still what we wrote", and bounded child processes.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Mode and owner a new or replaced file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attrs {
    pub fn of(path: &Path) -> Option<Attrs> {
        let m = fs::metadata(path).ok()?;
        Some(Attrs {
            mode: m.permissions().mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// Root-owned with `mode`.
    pub fn root(mode: u32) -> Attrs {
        Attrs {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// The temp-file suffix: no CNI loader reads `*.weft-tmp-*` (only `.conf`, `.conflist`,
/// `.json`), so a crash mid-write never exposes a half-written config.
pub const TEMP_MARK: &str = ".weft-tmp-";

/// Replaces `path` with `bytes` atomically: a temp file in the same directory, written, fsynced,
/// given `attrs`, renamed over `path`, and the directory fsynced. A reader sees the old or the
/// new content, never a mix, also after a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], attrs: Attrs) -> Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}{TEMP_MARK}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        // Owner first: chown clears set-id bits, the chmod after it sets the final mode.
        if let Err(e) = std::os::unix::fs::fchown(&f, Some(attrs.uid), Some(attrs.gid)) {
            // Not root (tests, dry runs): keep our own ownership, which is the best we can do.
            tracing::debug!(error = %e, file = %tmp.display(), "cannot chown");
        }
        f.set_permissions(fs::Permissions::from_mode(attrs.mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Drops `path`'s pages from the page cache (write it durably first: dirty pages stay), so the
/// next exec reads the file back from disk, as the first exec after a reboot does. Why: how a
/// file came into the page cache changes how much of it an exec maps per fault. Measured on
/// the same weft-ipam binary, peak RSS of one ADD: 1496 KiB while the pages `install` wrote
/// were cached, 1172 KiB once read back by an exec. Costs one read of the binary from disk.
/// Best effort: a file that cannot be opened only keeps the larger footprint.
pub fn drop_cached(path: &Path) {
    if let Ok(f) = File::open(path) {
        let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
        if let Err(e) = nix::fcntl::posix_fadvise(&f, 0, 0, advice) {
            tracing::debug!(error = %e, file = %path.display(), "cannot drop cached pages");
        }
    }
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// Removes `path`; `Ok(false)` if it was not there.
pub fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = sync_dir(dir);
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// Reads a file; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// FNV-1a over the bytes: a stable fingerprint to recognise a file weft wrote (not a security
/// measure: it only decides whether uninstall may remove a binary someone replaced since).
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}:{}", bytes.len())
}

/// What a bounded child printed.
#[derive(Debug, Clone)]
pub struct Ran {
    pub stdout: String,
    pub stderr: String,
    pub ok: bool,
}

/// Runs `cmd` with `stdin`, killing it (by its PID) after `limit`.
pub fn run_bounded(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Result<Ran> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("exec {:?}", cmd.get_program()))?;
    if let Some(mut i) = child.stdin.take() {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = i.write_all(&data);
        });
    }
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "{:?} did not finish within {} ms",
                cmd.get_program(),
                limit.as_millis()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(Ran {
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        ok: status.success(),
    })
}

/// The first directory of `dirs` holding an executable `name`.
pub fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_given_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.conflist");
        write_atomic(&p, b"one", Attrs::root(0o640)).unwrap();
        write_atomic(&p, b"two", Attrs::of(&p).unwrap()).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(Attrs::of(&p).unwrap().mode, 0o640);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn fingerprints_differ_and_are_stable() {
        assert_eq!(fingerprint(b""), "fnv1a64:cbf29ce484222325:0");
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    }

    #[test]
    fn bounded_child_is_killed() {
        let e = run_bounded(
            Command::new("sh").args(["-c", "sleep 5"]),
            b"",
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        let r = run_bounded(
            Command::new("sh").args(["-c", "cat"]),
            b"hi",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((r.stdout.as_str(), r.ok), ("hi", true));
    }
}
