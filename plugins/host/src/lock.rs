//! Lock files: flock(2) on a file that is never deleted (deleting a lock file races its users).
//! The kernel drops the lock of a dead holder, so waiting never deadlocks on a crash.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::HostError;

/// An open, locked lock file; the lock is released when it is dropped (or the process dies).
#[derive(Debug)]
pub struct Locked(#[allow(dead_code)] File);

/// Creates the parent directory (0700) and the lock file (0600) if needed, then flock()s it.
/// Blocking: the kernel drops the lock of a dead holder, so waiting never deadlocks on a crash.
pub fn lock_file(path: &Path, exclusive: bool) -> Result<Locked, HostError> {
    let file = open_lock(path)?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(Locked(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(HostError::io(format!("flock {}", path.display()), e));
        }
    }
}

static ALARM_FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_alarm(_: libc::c_int) {
    ALARM_FIRED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Exclusive lock, waiting at most `timeout`; `None` if it was not obtained in time.
///
/// The wait is a blocking flock(2) interrupted by a one-shot SIGALRM sent to this thread only
/// (handler installed without SA_RESTART, restored afterwards): waiters sleep in the kernel
/// instead of polling, which matters when a node starts a hundred pods at once.
/// `ALARM_FIRED` is process-wide: one caller at a time per process (each exec does one verb).
pub fn lock_file_within(
    path: &Path,
    timeout: std::time::Duration,
) -> Result<Option<Locked>, HostError> {
    use std::sync::atomic::Ordering;
    let file = open_lock(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on our own descriptor.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(Locked(file)));
    }
    ALARM_FIRED.store(false, Ordering::SeqCst);
    // SAFETY: plain libc calls with zero-initialised, fully set structs; the handler only
    // stores to an atomic (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGALRM, &sa, &mut old);
        // A POSIX timer aimed at this thread (SIGEV_THREAD_ID), so the signal interrupts our
        // flock even when other threads exist (test harness, a runtime's helpers).
        let mut sev: libc::sigevent = std::mem::zeroed();
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGALRM;
        sev.sigev_notify_thread_id = libc::gettid();
        let mut timer: libc::timer_t = std::mem::zeroed();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) != 0 {
            let e = std::io::Error::last_os_error();
            libc::sigaction(libc::SIGALRM, &old, std::ptr::null_mut());
            return Err(HostError::io(
                format!("lock timer for {}", path.display()),
                e,
            ));
        }
        let mut spec: libc::itimerspec = std::mem::zeroed();
        spec.it_value.tv_sec = timeout.as_secs() as libc::time_t;
        spec.it_value.tv_nsec = timeout.subsec_nanos().max(1) as libc::c_long;
        libc::timer_settime(timer, 0, &spec, std::ptr::null_mut());
        let outcome = loop {
            if libc::flock(fd, libc::LOCK_EX) == 0 {
                break Ok(true);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                break Err(e);
            }
            if ALARM_FIRED.load(Ordering::SeqCst) {
                break Ok(false);
            }
        };
        libc::timer_delete(timer);
        libc::sigaction(libc::SIGALRM, &old, std::ptr::null_mut());
        match outcome {
            Ok(true) => Ok(Some(Locked(file))),
            Ok(false) => Ok(None),
            Err(e) => Err(HostError::io(format!("flock {}", path.display()), e)),
        }
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
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| HostError::io(format!("open {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_within_times_out_then_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/l.lock");
        let held = lock_file(&path, true).unwrap();
        // A second open file description conflicts even within one process.
        let r = lock_file_within(&path, std::time::Duration::from_millis(100)).unwrap();
        assert!(r.is_none(), "must not get a lock someone holds");
        drop(held);
        assert!(
            lock_file_within(&path, std::time::Duration::from_millis(100))
                .unwrap()
                .is_some()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
