//! Where weft's BPF objects live in bpffs, and the lock that serialises weft processes.
//!
//! Layout under the pin root (default `/sys/fs/bpf/weft`):
//! ```text
//! endpoints, devices, counters,    maps, pinned by name (see include/weft.h)
//!   managed
//! prog_redirect_<objhash>          the loaded redirect program (one per build)
//! links/<key>                      one tcx link per attachment
//! legacy-v1/                       the maps of map layout 1, while pods still use them
//! ```
//! Each CNI exec is a new process: everything that must survive it is one of these pins.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::{Error, Result};

/// Where bpffs is expected to be mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The directory (on bpffs) that holds all of weft's pins. Tests use their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRoot(PathBuf);

impl Default for PinRoot {
    fn default() -> Self {
        PinRoot(PathBuf::from(BPFFS).join("weft"))
    }
}

impl PinRoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PinRoot(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn links_dir(&self) -> PathBuf {
        self.0.join("links")
    }

    /// Pin path of the tcx link of the attachment `key` (validated).
    pub fn link_pin(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.links_dir().join(key))
    }

    /// Make sure the root (and `links/`) exist on a bpffs, mounting bpffs at
    /// /sys/fs/bpf first if the root lives there and nothing is mounted yet.
    pub fn ensure(&self) -> Result<()> {
        if self.0.starts_with(BPFFS) {
            ensure_bpffs()?;
        }
        std::fs::create_dir_all(self.links_dir())
            .map_err(|e| Error::io(format!("create {}", self.links_dir().display()), e))?;
        if !is_bpffs(&self.0)? {
            return Err(Error::Bpffs(format!(
                "{} is not on a BPF filesystem",
                self.0.display()
            )));
        }
        Ok(())
    }

    /// Exclusive lock held while weft processes change shared pins or maps
    /// (creating the pins, compare-and-delete of endpoints). flock(2) on the root
    /// directory itself, so nothing extra is created; released on drop.
    pub(crate) fn lock(&self) -> Result<RootLock> {
        let dir =
            File::open(&self.0).map_err(|e| Error::io(format!("open {}", self.0.display()), e))?;
        let mut dir = dir;
        loop {
            match Flock::lock(dir, FlockArg::LockExclusive) {
                Ok(locked) => return Ok(RootLock(locked)),
                Err((d, Errno::EINTR)) => dir = d,
                Err((_, e)) => {
                    return Err(Error::io(format!("flock {}", self.0.display()), e.into()))
                }
            }
        }
    }
}

/// Held lock on the pin root; unlocks when dropped (the fd closes).
pub(crate) struct RootLock(#[allow(dead_code)] Flock<File>);

/// Attachment keys become file names under `links/`: refuse anything that could
/// escape the directory or collide with our own names.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if key.is_empty() || key.len() > 200 {
        return bad("must be 1..=200 bytes");
    }
    if key == "." || key == ".." {
        return bad("must not be . or ..");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Is `path` on a BPF filesystem?
pub fn is_bpffs(path: &Path) -> Result<bool> {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => Ok(st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::io(format!("statfs {}", path.display()), e.into())),
    }
}

/// Mount bpffs at /sys/fs/bpf unless one is already there. Idempotent.
pub fn ensure_bpffs() -> Result<()> {
    let target = Path::new(BPFFS);
    if is_bpffs(target)? {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io(format!("create {BPFFS}"), e))?;
    match nix::mount::mount(
        Some("bpf"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    ) {
        Ok(()) => {
            tracing::info!("mounted bpffs at {BPFFS}");
            Ok(())
        }
        // Lost a race with another process mounting it: fine if it is bpffs now.
        Err(_) if is_bpffs(target)? => Ok(()),
        Err(e) => Err(Error::Bpffs(format!("mount bpffs at {BPFFS}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_escape_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "x\0",
            "é",
            &"k".repeat(201),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["abc", "c0ffee-eth0", "a.b_c-D", &"k".repeat(200)] {
            validate_key(good).unwrap();
        }
        assert!(PinRoot::new("/x").link_pin("../y").is_err());
        assert_eq!(
            PinRoot::new("/x").link_pin("y").unwrap(),
            PathBuf::from("/x/links/y")
        );
    }
}
