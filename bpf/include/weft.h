/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * weft.h - the ONE definition of every BPF map key/value layout weft uses.
 *
 * Included by the BPF programs (clang -target bpf) and by the host-side layout
 * generator that build.rs compiles and runs: the Rust mirrors in src/layout.rs
 * are checked against the sizes/offsets the C compiler computes from this file,
 * and the constants below are exported to Rust from here too.
 *
 * Rules for editing: fixed-width types only, no implicit padding (every hole is
 * an explicit, zeroed `pad` field), keep 8-byte alignment of 64-bit fields.
 * Changing a layout changes the pinned maps' key/value sizes: bump
 * WEFT_LAYOUT_VERSION, and teach src/legacy.rs to move the previous layout's
 * pins aside (pods attached before the upgrade keep them until their DEL).
 * open_or_create() refuses pins of an unknown layout instead of misreading them.
 */
#ifndef WEFT_H
#define WEFT_H

#include <linux/types.h>

/*
 * Version of the layouts below. 1: endpoints keyed by address alone (one
 * address space per node); 2: every entry scoped to its CNI network.
 */
#define WEFT_LAYOUT_VERSION 2

/* Map names: also the pin file names under the pin root (/sys/fs/bpf/weft). */
#define WEFT_MAP_ENDPOINTS "endpoints"
#define WEFT_MAP_DEVICES "devices"
#define WEFT_MAP_COUNTERS "counters"
#define WEFT_MAP_MANAGED "managed"

#define WEFT_ENDPOINTS_MAX 65536
#define WEFT_DEVICES_MAX 65536
#define WEFT_MANAGED_MAX 65536
#define WEFT_COUNTERS_MAX 1 /* one slot, per CPU */

/*
 * Networks. A node runs many CNI networks at once, and two of them may use the
 * same addresses. Userspace names each network by a 64-bit id (a hash of its
 * CNI network name, never 0); every entry carries the id of the network it
 * belongs to, and the program only redirects within the sending pod's network.
 */

/* --- devices: host-side veth ifindex -> the network of the pod behind it --- */

struct weft_device {
	__u64 network; /* network id of the pod behind this veth */
	__u64 owner;   /* opaque to BPF; userspace's ownership token */
};

/* --- endpoints: (network, destination pod address) -> how to reach it ---- */

#define WEFT_FAMILY_IPV4 4
#define WEFT_FAMILY_IPV6 6

struct weft_endpoint_key {
	__u64 network; /* network id (see above) */
	__u8 addr[16]; /* network byte order; IPv4 uses addr[0..4], rest zero */
	__u8 family;   /* WEFT_FAMILY_IPV4 or WEFT_FAMILY_IPV6 */
	__u8 pad[7];   /* must be zero (part of the hash key) */
};

/*
 * The normal path to this pod is routed by the host (ptp-style: gateway = host
 * veth). A redirected packet then gets what routing would have done to it:
 * TTL/hop limit decremented, src MAC = host veth, dst MAC = pod. Without the
 * flag the pod sits on an L2 bridge: the packet must already be addressed to
 * the pod's MAC and is delivered unchanged (a bridge does not touch TTL or MACs).
 */
#define WEFT_EP_F_ROUTED (1U << 0)

struct weft_endpoint {
	__u32 ifindex;     /* host-side veth of the destination pod */
	__u32 flags;       /* WEFT_EP_F_* */
	__u64 owner;       /* opaque to BPF; userspace's ownership token */
	__u8 pod_mac[6];   /* MAC of the pod's interface (inside its netns) */
	__u8 host_mac[6];  /* MAC of the host-side veth */
	__u8 pad[4];       /* must be zero */
};

/* --- counters: per-CPU array with one slot, summed by userspace --------- */

struct weft_counters {
	__u64 redirected_packets; /* handed to bpf_redirect_peer() */
	__u64 redirected_bytes;
	__u64 passed_packets;     /* left to the normal path (sum of the reasons below) */
	__u64 passed_bytes;
	__u64 pass_not_ip;        /* ARP and every other ethertype */
	__u64 pass_multicast;     /* L2 broadcast/multicast, IP multicast, IPv6 ND, link-local */
	__u64 pass_no_endpoint;   /* destination is not a local pod we know */
	__u64 pass_ttl;           /* routed endpoint but TTL/hop limit would expire: kernel answers */
	__u64 pass_l2_mismatch;   /* bridged endpoint but frame not addressed to its MAC */
	__u64 pass_malformed;     /* truncated or invalid headers */
	__u64 pass_hairpin;       /* destination behind the interface the packet came from */
	__u64 pass_no_device;     /* sending veth not known to weft (no network to look in) */
};

/* --- managed: netns cookie -> mesh enrolment ---------------------------- */

#define WEFT_MANAGED_F_ENROLLED (1U << 0) /* pod traffic is managed by the mesh dataplane */

struct weft_managed {
	__u32 flags;   /* WEFT_MANAGED_F_* */
	__u32 ifindex; /* host-side veth of the pod, 0 if unknown */
	__u64 owner;   /* opaque; the attachment that enrolled the pod (removes only its own) */
};

#endif /* WEFT_H */
