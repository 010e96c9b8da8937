//! weft's eBPF same-node fast path.
//!
//! A tc program on a pod's host-side veth ingress (the pod's egress) looks the destination
//! up in the `endpoints` map and, for a local pod, hands the packet straight to that pod's
//! interface with `bpf_redirect_peer()`. This crate builds the program (build.rs, clang),
//! mirrors its map layouts (`include/weft.h` is the single source of truth), probes the
//! kernel, loads and pins the maps and program once per node, and attaches/detaches the
//! program per pod (tcx links, or legacy clsact + cls_bpf). It stands on aya alone: what needs
//! netlink or network namespaces (the tc filter query, the throwaway netns for the attach
//! probes) is passed in by the plugin, which composes `bpf` and `host`.
//!
//! Typical use from a CNI ADD (each exec is a new process; everything lives in pins):
//! ```no_run
//! # fn f() -> bpf::Result<()> {
//! let root = bpf::PinRoot::default();
//! let mut maps = bpf::Maps::open_or_create(&root)?;
//! // The attach probes belong in a throwaway netns (the caller makes it; see kmesh-cni).
//! let attach = None;
//! let mode = bpf::probe::features(attach).mode().expect("kernel has the fast path");
//! let net = bpf::network_id("pods");                  // the CNI network's name
//! let owner = bpf::owner_token(&["pods", "c0ffee", "eth0"]);
//! let att = maps.attach("veth1234", mode, "c0ffee-eth0")?;   // store `att` in the record
//! let dev = bpf::Device { network: net, owner };
//! maps.devices.insert(att.ifindex, &dev)?;            // which network this veth's pod is in
//! let ep = bpf::Endpoint::new(att.ifindex, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], false, owner);
//! maps.endpoints.insert(net, "10.0.0.5".parse().unwrap(), &ep)?;
//! // DEL:
//! maps.endpoints.remove_if_owner(net, "10.0.0.5".parse().unwrap(), &ep)?;
//! maps.devices.remove_if_owner(att.ifindex, &dev)?;
//! bpf::detach(&root, &att)?;
//! # Ok(()) }
//! ```

mod attach;
mod error;
mod layout;
pub mod legacy;
mod maps;
mod pin;
pub mod probe;

pub use attach::{
    attach_program, detach, detach_key, is_attached, Attachment, Mode, TC_HANDLE, TC_PRIORITY,
};
pub use error::{Error, Result};
pub use layout::{
    network_id, owner_token, Counters, Device, Endpoint, EndpointKey, Managed, COUNTERS_MAX,
    DEVICES_MAX, ENDPOINTS_MAX, EP_F_ROUTED, LAYOUT_VERSION, MANAGED_F_ENROLLED, MANAGED_MAX,
    MAP_COUNTERS, MAP_DEVICES, MAP_ENDPOINTS, MAP_MANAGED,
};
pub use legacy::LegacyMaps;
pub use maps::{pinned_program, Devices, Endpoints, ManagedMap, Maps};
pub use pin::{ensure_bpffs, is_bpffs, validate_key, PinRoot, BPFFS};

mod objects {
    #![allow(dead_code)] // PROBE_OBJ_HASH is generated for symmetry
    include!(concat!(env!("OUT_DIR"), "/obj_hashes.rs"));

    /// The redirect program and its maps (src/redirect.bpf.c).
    pub static REDIRECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));
    /// A no-op tc program without maps, for feature probes (src/probe.bpf.c).
    pub static PROBE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe.bpf.o"));

    /// Name of the program in redirect.bpf.c.
    pub const REDIRECT_PROG: &str = "weft_redirect";
    pub const PROBE_PROG: &str = "weft_probe";
}
