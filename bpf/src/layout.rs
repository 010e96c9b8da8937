//! `#[repr(C)]` mirrors of the map keys/values defined in `include/weft.h`.
//!
//! The header is the single source of truth. build.rs compiles `src/layout_gen.c` against it
//! and generates `C_FIELDS`/`C_SIZES` and the header's constants; the tests at the bottom
//! check every Rust mirror field-by-field against what the C compiler computed.

use std::net::IpAddr;

mod c {
    #![allow(dead_code)]
    include!(concat!(env!("OUT_DIR"), "/weft_layout.rs"));
}

pub use c::{
    WEFT_COUNTERS_MAX as COUNTERS_MAX, WEFT_DEVICES_MAX as DEVICES_MAX,
    WEFT_ENDPOINTS_MAX as ENDPOINTS_MAX, WEFT_EP_F_ROUTED as EP_F_ROUTED,
    WEFT_LAYOUT_VERSION as LAYOUT_VERSION, WEFT_MANAGED_F_ENROLLED as MANAGED_F_ENROLLED,
    WEFT_MANAGED_MAX as MANAGED_MAX, WEFT_MAP_COUNTERS as MAP_COUNTERS,
    WEFT_MAP_DEVICES as MAP_DEVICES, WEFT_MAP_ENDPOINTS as MAP_ENDPOINTS,
    WEFT_MAP_MANAGED as MAP_MANAGED,
};

/// The id of a CNI network in the maps: FNV-1a of its name, never 0 (0 is what a zeroed key
/// would carry). Stable across builds and processes, so every exec agrees on it.
pub fn network_id(name: &str) -> u64 {
    owner_token(&["network", name]).max(1)
}

/// `(family, 16 address bytes)` as the maps store an address.
pub(crate) fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut addr = [0u8; 16];
    let family = match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            c::WEFT_FAMILY_IPV4
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            c::WEFT_FAMILY_IPV6
        }
    };
    (family as u8, addr)
}

/// The address of `(family, addr)`; `None` for an unknown family.
pub(crate) fn addr_ip(family: u8, addr: &[u8; 16]) -> Option<IpAddr> {
    match u32::from(family) {
        c::WEFT_FAMILY_IPV4 => {
            let v4: [u8; 4] = addr[..4].try_into().expect("4 bytes");
            Some(IpAddr::from(v4))
        }
        c::WEFT_FAMILY_IPV6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

/// `struct weft_device`: the network of the pod behind a host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Device {
    /// [`network_id`] of the pod's network.
    pub network: u64,
    /// Ownership token chosen by userspace (see [`owner_token`]); never read by BPF.
    pub owner: u64,
}

/// `struct weft_endpoint_key`: a destination pod address in one network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// [`network_id`] of the network the address belongs to.
    pub network: u64,
    /// Network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// `WEFT_FAMILY_IPV4` (4) or `WEFT_FAMILY_IPV6` (6).
    pub family: u8,
    pub pad: [u8; 7],
}

impl EndpointKey {
    pub fn new(network: u64, ip: IpAddr) -> Self {
        let (family, addr) = addr_bytes(ip);
        EndpointKey {
            network,
            addr,
            family,
            pad: [0; 7],
        }
    }

    /// The address this key stands for; `None` for a key with an unknown family.
    pub fn ip(&self) -> Option<IpAddr> {
        addr_ip(self.family, &self.addr)
    }
}

/// `struct weft_endpoint`: how to deliver to a local pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host-side veth of the destination pod (the redirect_peer target).
    pub ifindex: u32,
    /// `EP_F_*` flags.
    pub flags: u32,
    /// Ownership token chosen by userspace (see [`owner_token`]); never read by BPF.
    pub owner: u64,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub pad: [u8; 4],
}

impl Endpoint {
    /// `routed`: the normal path to this pod is routed by the host (ptp), so a redirected
    /// packet gets its TTL decremented and MACs rewritten; otherwise it is bridged and
    /// delivered unchanged.
    pub fn new(
        ifindex: u32,
        pod_mac: [u8; 6],
        host_mac: [u8; 6],
        routed: bool,
        owner: u64,
    ) -> Self {
        Endpoint {
            ifindex,
            flags: if routed { c::WEFT_EP_F_ROUTED } else { 0 },
            owner,
            pod_mac,
            host_mac,
            pad: [0; 4],
        }
    }

    pub fn routed(&self) -> bool {
        self.flags & c::WEFT_EP_F_ROUTED != 0
    }
}

/// `struct weft_counters`: one CPU's counters, or the sum over CPUs from
/// [`crate::Maps::counters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub redirected_packets: u64,
    pub redirected_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub pass_not_ip: u64,
    pub pass_multicast: u64,
    pub pass_no_endpoint: u64,
    pub pass_ttl: u64,
    pub pass_l2_mismatch: u64,
    pub pass_malformed: u64,
    pub pass_hairpin: u64,
    pub pass_no_device: u64,
}

impl Counters {
    /// Field-wise sum (used to fold the per-CPU values).
    pub fn add(&mut self, o: &Counters) {
        self.redirected_packets += o.redirected_packets;
        self.redirected_bytes += o.redirected_bytes;
        self.passed_packets += o.passed_packets;
        self.passed_bytes += o.passed_bytes;
        self.pass_not_ip += o.pass_not_ip;
        self.pass_multicast += o.pass_multicast;
        self.pass_no_endpoint += o.pass_no_endpoint;
        self.pass_ttl += o.pass_ttl;
        self.pass_l2_mismatch += o.pass_l2_mismatch;
        self.pass_malformed += o.pass_malformed;
        self.pass_hairpin += o.pass_hairpin;
        self.pass_no_device += o.pass_no_device;
    }
}

/// `struct weft_managed`: mesh enrolment of a pod, keyed by its netns cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Managed {
    /// `MANAGED_F_*` flags.
    pub flags: u32,
    /// Host-side veth of the pod, 0 if unknown.
    pub ifindex: u32,
    /// The attachment that enrolled the pod ([`owner_token`]); it alone removes the entry.
    pub owner: u64,
}

// SAFETY: plain `repr(C)` structs of integers and byte arrays with no implicit padding
// (checked against C by the tests below), so every bit pattern is valid.
unsafe impl aya::Pod for Device {}
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for Managed {}

/// A stable 64-bit token for "this attachment" (e.g. container ID + ifname), stored in
/// [`Endpoint::owner`] so that removing an endpoint can prove it is still ours.
pub fn owner_token(parts: &[&str]) -> u64 {
    // FNV-1a with a separator byte between parts: stable across builds and processes.
    let mut h = 0xcbf29ce484222325u64;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// (C struct name, Rust size, Rust align, [(field, offset, size)]).
    type Layout = (
        &'static str,
        usize,
        usize,
        Vec<(&'static str, usize, usize)>,
    );

    fn rust_layouts() -> Vec<Layout> {
        macro_rules! fields {
            ($t:ty { $($f:ident),* $(,)? }) => {{
                // The size of a field, without needing a value of the struct.
                fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize { size_of::<F>() }
                vec![$((stringify!($f), offset_of!($t, $f), size_of_field(|s: &$t| &s.$f))),*]
            }};
        }
        vec![
            (
                "weft_device",
                size_of::<Device>(),
                align_of::<Device>(),
                fields!(Device { network, owner }),
            ),
            (
                "weft_endpoint_key",
                size_of::<EndpointKey>(),
                align_of::<EndpointKey>(),
                fields!(EndpointKey {
                    network,
                    addr,
                    family,
                    pad
                }),
            ),
            (
                "weft_endpoint",
                size_of::<Endpoint>(),
                align_of::<Endpoint>(),
                fields!(Endpoint {
                    ifindex,
                    flags,
                    owner,
                    pod_mac,
                    host_mac,
                    pad
                }),
            ),
            (
                "weft_counters",
                size_of::<Counters>(),
                align_of::<Counters>(),
                fields!(Counters {
                    redirected_packets,
                    redirected_bytes,
                    passed_packets,
                    passed_bytes,
                    pass_not_ip,
                    pass_multicast,
                    pass_no_endpoint,
                    pass_ttl,
                    pass_l2_mismatch,
                    pass_malformed,
                    pass_hairpin,
                    pass_no_device,
                }),
            ),
            (
                "weft_managed",
                size_of::<Managed>(),
                align_of::<Managed>(),
                fields!(Managed {
                    flags,
                    ifindex,
                    owner
                }),
            ),
        ]
    }

    #[test]
    fn rust_mirrors_match_c_header() {
        let rust = rust_layouts();
        // Every C struct has a mirror and vice versa.
        let mut c_names: Vec<_> = c::C_SIZES.iter().map(|s| s.0).collect();
        let mut r_names: Vec<_> = rust.iter().map(|r| r.0).collect();
        c_names.sort();
        r_names.sort();
        assert_eq!(c_names, r_names, "structs in weft.h vs Rust mirrors");

        for (name, size, align, fields) in &rust {
            let &(_, c_size, c_align) = c::C_SIZES.iter().find(|s| s.0 == *name).unwrap();
            assert_eq!(*size, c_size, "sizeof(struct {name})");
            assert_eq!(*align, c_align, "alignof(struct {name})");
            let c_fields: Vec<_> = c::C_FIELDS
                .iter()
                .filter(|f| f.0 == *name)
                .map(|f| (f.1, f.2, f.3))
                .collect();
            assert_eq!(
                fields, &c_fields,
                "fields (name, offset, size) of struct {name}"
            );
            // The listed fields tile the struct: no holes, so no field was forgotten
            // in layout_gen.c and no implicit padding leaks garbage into hash keys.
            let mut end = 0;
            for (f, off, sz) in &c_fields {
                assert_eq!(*off, end, "hole before {name}.{f}");
                end = off + sz;
            }
            assert_eq!(end, c_size, "hole at the end of struct {name}");
        }
    }

    #[test]
    fn endpoint_key_round_trips_addresses() {
        for ip in ["10.1.2.3", "fd00::1", "::ffff:10.1.2.3", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(EndpointKey::new(7, ip).ip(), Some(ip));
        }
        // An IPv4 address and its IPv4-mapped IPv6 form are different keys.
        let v4 = EndpointKey::new(7, "10.1.2.3".parse::<IpAddr>().unwrap());
        let mapped = EndpointKey::new(7, "::ffff:10.1.2.3".parse::<IpAddr>().unwrap());
        assert_ne!(v4, mapped);
        assert_eq!(&v4.addr[..4], &[10, 1, 2, 3]);
        assert_eq!(v4.addr[4..], [0; 12]);
        // The same address in two networks: two keys.
        assert_ne!(
            v4,
            EndpointKey::new(8, "10.1.2.3".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn network_ids_differ_per_name_and_are_never_zero() {
        assert_ne!(network_id("net1"), network_id("net2"));
        assert_eq!(network_id("net1"), network_id("net1"));
        assert_ne!(network_id(""), 0);
    }

    #[test]
    fn owner_token_separates_parts() {
        assert_ne!(owner_token(&["ab", "c"]), owner_token(&["a", "bc"]));
        assert_eq!(owner_token(&["id", "eth0"]), owner_token(&["id", "eth0"]));
    }
}
