//! The one rtnetlink query aya does not expose: "is there a tc filter at this
//! priority/handle on the ingress hook of this device?" (RTM_GETTFILTER dump).

use std::{io, mem::size_of};

use crate::{Error, Result};

const TC_H_CLSACT_INGRESS: u32 = 0xFFFF_FFF2; // TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
const NLMSG_HDRLEN: usize = size_of::<libc::nlmsghdr>();

#[repr(C)]
#[derive(Default)]
struct TcMsg {
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
struct Request {
    hdr: libc::nlmsghdr,
    tc: TcMsg,
}

/// Does `ifindex` (in the calling thread's netns) have an ingress filter with this
/// priority and handle? A device without a clsact qdisc has none.
pub(crate) fn has_filter(ifindex: u32, priority: u16, handle: u32) -> Result<bool> {
    let err = |e| Error::io("rtnetlink filter dump", e);
    // SAFETY: plain socket syscall; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);

    let req = Request {
        hdr: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: libc::RTM_GETTFILTER,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc: TcMsg {
            family: libc::AF_UNSPEC as u8,
            ifindex: ifindex as i32,
            parent: TC_H_CLSACT_INGRESS,
            ..Default::default()
        },
    };
    // SAFETY: sending a fully initialised repr(C) struct.
    let sent = unsafe {
        libc::send(
            raw,
            &req as *const Request as *const libc::c_void,
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(err(io::Error::last_os_error()));
    }

    let mut buf = vec![0u8; 64 * 1024];
    let mut found = false;
    loop {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + NLMSG_HDRLEN <= n {
            // SAFETY: bounds checked above; read_unaligned copes with any alignment.
            let hdr: libc::nlmsghdr =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr() as *const libc::nlmsghdr) };
            let len = hdr.nlmsg_len as usize;
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(err(io::Error::other("truncated netlink message")));
            }
            match i32::from(hdr.nlmsg_type) {
                libc::NLMSG_DONE => return Ok(found),
                libc::NLMSG_ERROR => {
                    let code = if len >= NLMSG_HDRLEN + 4 {
                        i32::from_ne_bytes(
                            buf[off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + 4]
                                .try_into()
                                .unwrap(),
                        )
                    } else {
                        0
                    };
                    return match -code {
                        0 => Ok(found),
                        // No clsact qdisc (or device): no filter either.
                        libc::ENOENT | libc::EINVAL | libc::ENODEV => Ok(false),
                        e => Err(err(io::Error::from_raw_os_error(e))),
                    };
                }
                t if t == i32::from(libc::RTM_NEWTFILTER)
                    && len >= NLMSG_HDRLEN + size_of::<TcMsg>() =>
                {
                    // SAFETY: length checked; TcMsg is plain integers.
                    let tc: TcMsg = unsafe {
                        std::ptr::read_unaligned(buf[off + NLMSG_HDRLEN..].as_ptr() as *const TcMsg)
                    };
                    if tc.handle == handle && (tc.info >> 16) as u16 == priority {
                        found = true;
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}
