//! Network-namespace helpers: run code inside a netns on a dedicated thread, and read
//! netns cookies (the `managed` map key).
//!
//! setns(CLONE_NEWNET) only affects the calling thread, so each call gets a fresh OS
//! thread that enters the namespace and then exits: no other code ever runs on a thread
//! left in the wrong namespace.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// `SO_NETNS_COOKIE` (Linux >= 5.14); not in every libc crate version.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Run `f` on a new thread inside the network namespace at `path` (e.g.
/// `/run/netns/<name>` or `/proc/<pid>/ns/net`).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on an fd we own; affects only this thread, which ends below.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Run `f` on a new thread inside a brand-new, empty network namespace that disappears
/// when `f` returns (used by feature probes so they touch no real interface).
pub fn in_throwaway_netns<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: unshare affects only this thread, which ends below.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Cookie of the calling thread's network namespace.
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: plain socket syscall; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Cookie of the network namespace at `path` (the key of the `managed` map).
pub fn cookie(path: &Path) -> io::Result<u64> {
    in_netns(path, current_cookie)?
}
