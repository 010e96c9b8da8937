//! Telling the neighbours that an address now lives behind another MAC, as a main plugin that
//! hands a reused IP to a new device must (sriov-cni does the same after IPAM): neighbours keep
//! the old pod's MAC in their caches for minutes otherwise.
//!
//! - IPv4: one gratuitous ARP request (sender = target = the address) per address, broadcast
//!   from the interface over an `AF_PACKET` socket. Linux neighbours update an existing entry
//!   from it (after their `locktime`), whatever `arp_accept` says.
//! - IPv6: a new address is tentative until DAD completes and must not be a source before that,
//!   so no NA can be sent right away. Instead [`enable_notify`] sets `ndisc_notify`, and the
//!   kernel itself sends an unsolicited NA (override flag set) for every address when its DAD
//!   completes; `arp_notify` likewise makes it send gratuitous ARPs when the link comes back up
//!   or the MAC changes later.
//!
//! All of it works on the calling thread's network namespace (run it on a netns thread).

use std::{io, net::Ipv4Addr, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

/// Sets `net.ipv4.conf.<ifname>.arp_notify` and `net.ipv6.conf.<ifname>.ndisc_notify` to 1 in
/// the calling thread's netns (`/proc/sys/net` follows the opening thread's netns). IPv6 may be
/// disabled: its knob is then skipped.
pub fn enable_notify(ifname: &str) -> io::Result<()> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify"), b"1")?;
    match std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify"),
        b"1",
    ) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

const ETH_P_ARP: u16 = 0x0806;

/// The 28-byte ARP payload of a gratuitous ARP request for `ip` at `mac`.
pub fn gratuitous_arp_payload(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype: IPv4
    p[4] = 6; // hlen
    p[5] = 4; // plen
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // oper: request
    p[8..14].copy_from_slice(&mac); // sender hardware address
    p[14..18].copy_from_slice(&ip.octets()); // sender protocol address
                                             // target hardware address: zero (unknown), target protocol address: the same IP
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// Broadcasts a gratuitous ARP request for `ip` (owned by `mac`) out of link `ifindex`.
pub fn gratuitous_arp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zero is valid for every field.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let payload = gratuitous_arp_payload(mac, ip);
    // SAFETY: the buffer and the address point at live locals of the stated sizes.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_payload_layout() {
        let p = gratuitous_arp_payload([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 35, 1, 65));
        assert_eq!(
            p,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 35, 1, 65, 0, 0, 0, 0, 0, 0, 10, 35,
                1, 65
            ]
        );
    }

    #[test]
    fn bad_names_touch_no_file() {
        for bad in ["", "../x", ".."] {
            assert!(enable_notify(bad).is_err(), "{bad:?}");
        }
    }
}
