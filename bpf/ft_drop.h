/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Kernel drops from the kfree_skb tracepoint. Two entry programs share one
 * handler: tp_btf (cheap, typed) and raw_tp for kernels or setups where the
 * BTF-typed attach is refused. The handler only uses BPF_CORE_READ so it is
 * valid in both contexts. Drops are never sampled.
 */
#ifndef FT_DROP_H
#define FT_DROP_H

#include "ft_event.h"
#include "ft_maps.h"
#include "ft_config.h"
#include "ft_parse.h"
#include "ft_ct.h"

/* skb->network_header when it was never set (see skb_network_header_was_set). */
#define FT_HDR_UNSET 0xffff

static __always_inline __u32 ft_skb_netns(struct sk_buff *skb, __u32 *ifindex)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	struct sock *sk;
	__u32 inum = 0;

	*ifindex = 0;
	if (dev) {
		*ifindex = BPF_CORE_READ(dev, ifindex);
		inum = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	}
	if (!inum) {
		sk = BPF_CORE_READ(skb, sk);
		if (sk)
			inum = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	return inum;
}

/*
 * has_reason is a compile-time constant per program: kernels before 5.17
 * pass no reason (and call consume_skb, not kfree_skb, for normal frees).
 */
static __always_inline int ft_handle_drop(struct sk_buff *skb, __u64 location, __u32 reason,
					  int has_reason)
{
	struct ft_drop_event *e;
	struct ft_src src = {};
	__u32 ifindex, netns;
	__u16 nh;
	__u64 now;

	if (has_reason && (reason == ft_reason_not_dropped || reason == ft_reason_consumed))
		return 0;
	ft_stat_inc(FT_STAT_DROPS_SEEN);

	netns = ft_skb_netns(skb, &ifindex);
	if (!ft_scope_all_netns && !bpf_map_lookup_elem(&ft_netns_scope, &netns)) {
		ft_stat_inc(FT_STAT_DROPS_OUT_OF_SCOPE);
		return 0;
	}

	e = ft_rb_reserve(sizeof(*e));
	if (!e)
		return 0;
	now = bpf_ktime_get_boot_ns();
	ft_fill_hdr(&e->hdr, FT_EV_DROP, sizeof(*e), now);
	__builtin_memset(&e->tuple, 0, sizeof(e->tuple));
	e->location = location;
	e->first_ns = now;
	e->last_ns = now;
	e->reason = reason;
	e->ifindex = ifindex;
	e->skb_iif = BPF_CORE_READ(skb, skb_iif);
	e->netns = netns;
	e->pkt_len = BPF_CORE_READ(skb, len);
	e->count = 1;

	src.head = BPF_CORE_READ(skb, head);
	src.end = BPF_CORE_READ(skb, tail);
	nh = BPF_CORE_READ(skb, network_header);
	/* Early drops may happen before the network header was set. */
	if (nh == FT_HDR_UNSET || nh == 0 || nh >= src.end) {
		e->tuple.ethertype = bpf_ntohs(BPF_CORE_READ(skb, protocol));
		e->tuple.status = FT_PARSE_TRUNCATED;
	} else {
		struct ft_pmeta m = {};

		e->tuple.status = ft_parse_l3(&src, nh, bpf_ntohs(BPF_CORE_READ(skb, protocol)),
					      &e->tuple, &m);
	}
	ft_ct_from_kskb(skb, &e->tuple, &e->ct, 0);
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_DROP_EVENTS);
	return 0;
}

/*
 * args: skb, location, enum skb_drop_reason reason (5.17+), struct sock
 * *rx_sk (6.11+). tp_btf refuses a program reading an argument the
 * tracepoint lacks, and raw_tp refuses it at attach (EINVAL), so there is a
 * two-argument variant of each; the loader picks by the arity of
 * btf_trace_kfree_skb in kernel BTF.
 */
SEC("tp_btf/kfree_skb")
int BPF_PROG(ft_kfree_btf, struct sk_buff *skb, void *location, __u32 reason)
{
	return ft_handle_drop(skb, (__u64)location, reason, 1);
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(ft_kfree_raw, struct sk_buff *skb, void *location, __u32 reason)
{
	return ft_handle_drop(skb, (__u64)location, reason, 1);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(ft_kfree_btf2, struct sk_buff *skb, void *location)
{
	return ft_handle_drop(skb, (__u64)location, 0, 0);
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(ft_kfree_raw2, struct sk_buff *skb, void *location)
{
	return ft_handle_drop(skb, (__u64)location, 0, 0);
}

#endif /* FT_DROP_H */
