//! Lock files: flock(2) on a file that is never deleted (deleting a lock file races its users).
//! The kernel drops the lock of a dead holder, so waiting never deadlocks on a crash.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::HostError;

/// An open, locked lock file; the lock is released when it is dropped (or the process dies).
#[derive(Debug)]
pub struct Locked(#[allow(dead_code)] Flock<File>);

/// Creates the parent directory (0700) and the lock file (0600) if needed, then flock()s it.
/// Blocking: the kernel drops the lock of a dead holder, so waiting never deadlocks on a crash.
pub fn lock_file(path: &Path, exclusive: bool) -> Result<Locked, HostError> {
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    let mut file = open_lock(path)?;
    loop {
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(Locked(locked)),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => {
                return Err(HostError::io(format!("flock {}", path.display()), e.into()))
            }
        }
    }
}

/// Exclusive lock, waiting at most `timeout`; `None` if it was not obtained in time.
///
/// Non-blocking attempts with a backoff from 1 ms to 25 ms: the deadline holds whatever
/// happens (no signal to lose, nothing process-wide), and a waiter costs a wake-up every 25 ms
/// at worst. The claim lock this serves is held for one etcd round trip, so waiters are few
/// and short-lived.
pub fn lock_file_within(path: &Path, timeout: Duration) -> Result<Option<Locked>, HostError> {
    let deadline = Instant::now() + timeout;
    let mut file = open_lock(path)?;
    let mut pause = Duration::from_millis(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(Some(Locked(locked))),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, e)) => {
                return Err(HostError::io(format!("flock {}", path.display()), e.into()))
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

fn open_lock(path: &Path) -> Result<File, HostError> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // Never lock (and create) through a link someone placed at the lock's name.
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| HostError::io(format!("open {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lock_within_times_out_then_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/l.lock");
        let held = lock_file(&path, true).unwrap();
        // A second open file description conflicts even within one process.
        let r = lock_file_within(&path, Duration::from_millis(100)).unwrap();
        assert!(r.is_none(), "must not get a lock someone holds");
        drop(held);
        assert!(lock_file_within(&path, Duration::from_millis(100))
            .unwrap()
            .is_some());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// A holder that never lets go (its own open file description, as another process has):
    /// the wait ends at the deadline, not later (and not never), however often it is asked.
    #[test]
    fn the_timeout_holds_against_a_holder_that_never_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("held.lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let keeper = std::thread::spawn(move || {
            let _held = lock_file(&p, true).unwrap();
            tx.send(()).unwrap();
            std::thread::park(); // never lets go until the test ends
        });
        rx.recv().unwrap();
        for timeout in [10, 50, 200] {
            let t = Instant::now();
            let got = lock_file_within(&path, Duration::from_millis(timeout)).unwrap();
            let took = t.elapsed();
            assert!(got.is_none());
            assert!(
                took >= Duration::from_millis(timeout),
                "gave up early: {took:?} < {timeout} ms"
            );
            assert!(
                took < Duration::from_millis(timeout) + Duration::from_millis(500),
                "overshot the deadline by far: {took:?} for {timeout} ms"
            );
        }
        keeper.thread().unpark();
        keeper.join().unwrap();
        assert!(lock_file_within(&path, Duration::from_millis(100))
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_lock_file_planted_as_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = tmp.path().join("lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(lock_file(&link, true).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
