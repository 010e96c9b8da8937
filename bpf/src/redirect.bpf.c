// SPDX-License-Identifier: GPL-2.0-only
/*
 * Same-node fast path. Attached to the ingress of a pod's host-side veth (that
 * is: the pod's egress). A packet for another local pod is handed straight to
 * that pod's interface with bpf_redirect_peer(), skipping the bridge/routing,
 * netfilter and the backlog queue. Everything this program is not sure about
 * goes the normal way untouched (TC_ACT_OK), so the worst a bug in the map
 * contents can cost is the fast path, never connectivity.
 *
 * Headers are read with bpf_skb_load_bytes() into stack copies, so the program
 * does not depend on how much of the packet is linear.
 *
 * Networks: the sending veth's network comes from the devices map, and the
 * destination is looked up in that network only, so pods of two networks that
 * share addresses never reach each other through this program.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "weft.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_ENDPOINTS_MAX);
	__type(key, struct weft_endpoint_key);
	__type(value, struct weft_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_DEVICES_MAX);
	__type(key, __u32);
	__type(value, struct weft_device);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEFT_COUNTERS_MAX);
	__type(key, __u32);
	__type(value, struct weft_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* Not read here: filled by the CNI plugin for a mesh dataplane to consume. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MANAGED_MAX);
	__type(key, __u64);
	__type(value, struct weft_managed);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} managed SEC(".maps");

#define ETH_HLEN_ sizeof(struct ethhdr)
#define IP4_TTL_OFF (ETH_HLEN_ + offsetof(struct iphdr, ttl))
#define IP4_CSUM_OFF (ETH_HLEN_ + offsetof(struct iphdr, check))
#define IP6_HOPLIMIT_OFF (ETH_HLEN_ + offsetof(struct ipv6hdr, hop_limit))

/* clang emits a libc call for __builtin_memcmp, which BPF cannot link: compare by hand. */
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline int pass(struct __sk_buff *skb, struct weft_counters *c, __u64 *reason)
{
	if (c) {
		c->passed_packets++;
		c->passed_bytes += skb->len;
		(*reason)++;
	}
	return TC_ACT_OK;
}

/* Rewrite L2 (and TTL for routed endpoints) and redirect into the peer netns. */
static __always_inline int deliver(struct __sk_buff *skb, struct weft_counters *c,
				   const struct ethhdr *eth, const struct weft_endpoint *ep,
				   int is_v4, __u8 ttl)
{
	if (ep->ifindex == skb->ifindex)
		return pass(skb, c, &c->pass_hairpin);

	if (ep->flags & WEFT_EP_F_ROUTED) {
		/* Routing would drop it and send ICMP time exceeded: let the kernel do that. */
		if (ttl <= 1)
			return pass(skb, c, &c->pass_ttl);
		__u8 new_ttl = ttl - 1;
		if (is_v4) {
			/* TTL shares a 16-bit checksum word with the protocol byte;
			 * the header sum is unchanged overall, so skb->csum stays valid. */
			__u8 proto;
			if (bpf_skb_load_bytes(skb, IP4_TTL_OFF + 1, &proto, 1))
				return pass(skb, c, &c->pass_malformed);
			__u16 old_word = 0, new_word = 0;
			((__u8 *)&old_word)[0] = ttl;
			((__u8 *)&old_word)[1] = proto;
			((__u8 *)&new_word)[0] = new_ttl;
			((__u8 *)&new_word)[1] = proto;
			if (bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old_word, new_word, 2) ||
			    bpf_skb_store_bytes(skb, IP4_TTL_OFF, &new_ttl, 1, 0))
				return pass(skb, c, &c->pass_malformed);
		} else {
			if (bpf_skb_store_bytes(skb, IP6_HOPLIMIT_OFF, &new_ttl, 1,
						BPF_F_RECOMPUTE_CSUM))
				return pass(skb, c, &c->pass_malformed);
		}
		/* What the host would put on the wire towards the pod: from its veth to the pod. */
		__u8 macs[12];
		__builtin_memcpy(macs, ep->pod_mac, 6);
		__builtin_memcpy(macs + 6, ep->host_mac, 6);
		if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), BPF_F_RECOMPUTE_CSUM))
			return pass(skb, c, &c->pass_malformed);
	} else {
		/* Bridged: only a frame the bridge would switch to this pod unchanged. */
		if (!mac_eq(eth->h_dest, ep->pod_mac))
			return pass(skb, c, &c->pass_l2_mismatch);
	}

	c->redirected_packets++;
	c->redirected_bytes += skb->len;
	return bpf_redirect_peer(ep->ifindex, 0);
}

SEC("classifier")
int weft_redirect(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct weft_counters *c = bpf_map_lookup_elem(&counters, &zero);
	if (!c)
		return TC_ACT_OK; /* cannot happen for an array; keeps the verifier happy */

	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return pass(skb, c, &c->pass_malformed);
	if (eth.h_dest[0] & 1) /* broadcast or multicast group bit */
		return pass(skb, c, &c->pass_multicast);

	__u32 ifindex = skb->ifindex;
	const struct weft_device *dev = bpf_map_lookup_elem(&devices, &ifindex);
	if (!dev)
		return pass(skb, c, &c->pass_no_device);

	struct weft_endpoint_key key = {};
	const struct weft_endpoint *ep;
	key.network = dev->network;

	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)))
			return pass(skb, c, &c->pass_malformed);
		if (ip.version != 4 || ip.ihl < 5)
			return pass(skb, c, &c->pass_malformed);
		/* 224.0.0.0/4 multicast, 255.255.255.255 limited broadcast */
		__u8 first = ((__u8 *)&ip.daddr)[0];
		if ((first & 0xf0) == 0xe0 || ip.daddr == 0xffffffff)
			return pass(skb, c, &c->pass_multicast);
		key.family = WEFT_FAMILY_IPV4;
		__builtin_memcpy(key.addr, &ip.daddr, 4);
		ep = bpf_map_lookup_elem(&endpoints, &key);
		if (!ep)
			return pass(skb, c, &c->pass_no_endpoint);
		return deliver(skb, c, &eth, ep, 1, ip.ttl);
	}

	if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6)))
			return pass(skb, c, &c->pass_malformed);
		if (ip6.version != 6)
			return pass(skb, c, &c->pass_malformed);
		__u8 d0 = ip6.daddr.in6_u.u6_addr8[0];
		__u8 d1 = ip6.daddr.in6_u.u6_addr8[1];
		/* ff00::/8 multicast, fe80::/10 link-local: neighbour business, not ours */
		if (d0 == 0xff || (d0 == 0xfe && (d1 & 0xc0) == 0x80))
			return pass(skb, c, &c->pass_multicast);
		if (ip6.nexthdr == IPPROTO_ICMPV6) {
			__u8 type;
			if (bpf_skb_load_bytes(skb, ETH_HLEN_ + sizeof(ip6), &type, 1))
				return pass(skb, c, &c->pass_malformed);
			/* Router/neighbour discovery and redirects (133..137) keep the normal path. */
			if (type >= 133 && type <= 137)
				return pass(skb, c, &c->pass_multicast);
		}
		key.family = WEFT_FAMILY_IPV6;
		__builtin_memcpy(key.addr, &ip6.daddr, 16);
		ep = bpf_map_lookup_elem(&endpoints, &key);
		if (!ep)
			return pass(skb, c, &c->pass_no_endpoint);
		return deliver(skb, c, &eth, ep, 0, ip6.hop_limit);
	}

	return pass(skb, c, &c->pass_not_ip);
}

char LICENSE[] SEC("license") = "GPL";
