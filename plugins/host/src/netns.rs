//! Network namespaces: run code inside one on a dedicated OS thread, and identify them.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only. Entering and then
//! restoring on a shared thread risks leaking the pod's namespace into unrelated code when the
//! restore fails, and a tokio worker could run other tasks in between. So code that does work
//! inside a namespace runs on a fresh thread that exits when the closure returns: there is
//! nothing to restore ([`run_in_netns`]). The one exception is creating sockets
//! ([`sockets_in_netns`]): a socket keeps its namespace, the window holds no other code, and a
//! failed return aborts the process.
//!
//! Netns paths seen in the wild: `/var/run/netns/cni-<uuid>` (containerd), `/var/run/netns/<uuid>`
//! (CRI-O), `/proc/<pid>/ns/net` (podman rootful, tests). All are opened the same way.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    sched::{setns, CloneFlags},
    sys::statfs::{fstatfs, NSFS_MAGIC},
};

use crate::HostError;

/// `SO_NETNS_COOKIE` (Linux ≥ 5.14); not exported by the libc crate yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Opens `path` and checks that it is a namespace file.
///
/// A missing path is [`HostError::NetnsMissing`]. So is an *empty regular file*: that is what a
/// `/var/run/netns/<name>` bind-mount target looks like after its namespace was unmounted (a
/// runtime removing the netns, or a crash in between), i.e. the namespace is gone too.
/// Anything else that is not on nsfs is [`HostError::NotANetns`].
pub fn open_netns(path: &Path) -> Result<File, HostError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => HostError::NetnsMissing {
            path: path.to_path_buf(),
        },
        _ => HostError::io(format!("open netns {}", path.display()), e),
    })?;
    let fs = fstatfs(&file)
        .map_err(|e| HostError::io(format!("statfs {}", path.display()), e.into()))?;
    if fs.filesystem_type() == NSFS_MAGIC {
        return Ok(file);
    }
    let placeholder = file.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
    let path = path.to_path_buf();
    Err(if placeholder {
        HostError::NetnsMissing { path }
    } else {
        HostError::NotANetns { path }
    })
}

/// True when `path` names an existing namespace file.
pub fn netns_exists(path: &Path) -> bool {
    open_netns(path).is_ok()
}

/// Runs `f` inside the network namespace at `netns` and returns its value.
///
/// `f` runs on a new OS thread that enters the namespace and exits afterwards, so the caller's
/// thread never changes namespace. The namespace is opened on the caller's thread first, so a
/// missing netns is reported as [`HostError::NetnsMissing`] before any thread exists. A panic in
/// `f` is resumed on the caller's thread (the dispatcher turns it into a CNI error).
///
/// Inside `f`, netlink and sockets see the pod's namespace; `/sys` and `/proc/net` do not (they
/// follow the mount namespace / the process's main thread).
pub fn run_in_netns<T, F>(netns: &Path, f: F) -> Result<T, HostError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = open_netns(netns)?;
    let path = netns.to_path_buf();
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("weft-netns".into())
            .spawn_scoped(s, move || -> Result<T, HostError> {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| HostError::Setns { path, source })?;
                drop(file);
                Ok(f())
            })
            .map_err(HostError::Thread)?;
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `f`, which only creates sockets, on the calling thread inside the namespace `netns`
/// (opened with [`open_netns`]; `path` names it in errors), then puts the thread back in its
/// own namespace.
///
/// A socket belongs to the namespace it was created in for its whole life, so a netlink socket
/// made here talks to the pod's namespace from any thread. That spares a plugin the thread
/// [`run_in_netns`] costs (a clone, a stack, a malloc arena, a second tokio runtime). The
/// thread is in the pod's namespace only while `f` runs (it returns also when `f` panics), and
/// `f` must create sockets and do nothing else: nothing that blocks, yields or spawns, so no
/// other code ever runs there.
pub fn sockets_in_netns<T>(
    netns: &File,
    path: &Path,
    f: impl FnOnce() -> T,
) -> Result<T, HostError> {
    let own =
        File::open("/proc/thread-self/ns/net").map_err(|e| HostError::io("open own netns", e))?;
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(|source| HostError::Setns {
        path: path.to_path_buf(),
        source,
    })?;
    let _back = ReturnTo(own);
    Ok(f())
}

/// Puts the calling thread back into the namespace it holds when dropped. If the thread cannot
/// return, the process aborts rather than carry on in the pod's namespace (only sockets were
/// created there, so nothing is half done in either).
struct ReturnTo(File);

impl Drop for ReturnTo {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
            tracing::error!(error = %e, "cannot return to the host network namespace: aborting");
            std::process::abort();
        }
    }
}

/// Runs `f` on a new thread inside a brand-new, empty network namespace that disappears when
/// `f` returns (feature probes use it so they touch no interface anyone uses).
pub fn run_in_new_netns<T, F>(f: F) -> Result<T, HostError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("weft-new-netns".into())
            .spawn_scoped(s, move || -> Result<T, HostError> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| {
                    HostError::Setns {
                        path: PathBuf::from("(new netns)"),
                        source,
                    }
                })?;
                Ok(f())
            })
            .map_err(HostError::Thread)?;
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The netns cookie (`SO_NETNS_COOKIE`) of the namespace at `netns`: a 64-bit id that is unique
/// for the boot and never reused, unlike inode numbers or nsids. BPF programs see the same value
/// through `bpf_get_netns_cookie()`.
pub fn netns_cookie(netns: &Path) -> Result<u64, HostError> {
    run_in_netns(netns, current_netns_cookie)?
}

/// The netns cookie of the calling thread's network namespace.
pub fn current_netns_cookie() -> Result<u64, HostError> {
    // A socket belongs to the netns of the thread that created it.
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(HostError::io("socket", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    socket_netns_cookie(&sock)
}

/// The netns cookie of the namespace `socket` was created in (it keeps it for life).
pub fn socket_netns_cookie(socket: &impl AsRawFd) -> Result<u64, HostError> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the option value points at a u64 and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(HostError::io(
            "getsockopt(SO_NETNS_COOKIE) (needs Linux >= 5.14)",
            io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// The path of the calling thread's own network namespace (for comparisons and tests).
pub fn current_thread_netns() -> PathBuf {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    PathBuf::from(format!("/proc/self/task/{tid}/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_netns_missing() {
        let e =
            run_in_netns(Path::new("/var/run/netns/weft-definitely-absent"), || ()).unwrap_err();
        assert!(e.is_netns_missing(), "{e}");
        let e = open_netns(Path::new("/proc/999999999/ns/net")).unwrap_err();
        assert!(e.is_netns_missing(), "{e}");
        assert!(!netns_exists(Path::new(
            "/var/run/netns/weft-definitely-absent"
        )));
    }

    #[test]
    fn regular_files_are_not_netns() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("placeholder");
        std::fs::write(&empty, b"").unwrap();
        assert!(open_netns(&empty).unwrap_err().is_netns_missing());

        let full = dir.path().join("full");
        std::fs::write(&full, b"x").unwrap();
        assert!(matches!(
            open_netns(&full).unwrap_err(),
            HostError::NotANetns { .. }
        ));
        assert!(matches!(
            open_netns(dir.path()).unwrap_err(),
            HostError::NotANetns { .. }
        ));
    }

    #[test]
    fn own_netns_paths_open() {
        assert!(netns_exists(Path::new("/proc/self/ns/net")));
        assert!(netns_exists(&current_thread_netns()));
    }

    #[test]
    fn cookie_is_stable_for_one_netns() {
        let a = current_netns_cookie().unwrap();
        let b = current_netns_cookie().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn panics_resume_on_caller() {
        let r = std::panic::catch_unwind(|| {
            // Entering our own netns needs CAP_SYS_ADMIN; without it setns fails instead.
            let _ = run_in_netns(Path::new("/proc/self/ns/net"), || panic!("inside"));
        });
        if nix::unistd::geteuid().is_root() {
            assert!(r.is_err(), "panic inside the netns thread must propagate");
        }
    }
}
