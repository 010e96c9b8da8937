// SPDX-License-Identifier: GPL-2.0-only
/*
 * Feature probe: the smallest possible tc program, no maps. Loaded and attached
 * only inside a throwaway network namespace by probe::features() to find out
 * whether this kernel really accepts tcx links and clsact/cls_bpf filters.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int weft_probe(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC; /* tcx: continue with the next program; tc: no verdict */
}

char LICENSE[] SEC("license") = "GPL";
