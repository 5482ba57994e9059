/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * tc programs: observe forwarded traffic and aggregate it per connection.
 * They never decide: TC_ACT_UNSPEC (== TCX_NEXT) keeps flowtrace transparent
 * next to any other tc user.
 */
#ifndef FT_FLOW_H
#define FT_FLOW_H

#include "ft_event.h"
#include "ft_maps.h"
#include "ft_config.h"
#include "ft_parse.h"

#define FT_TC_ACT_UNSPEC (-1)

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

static __always_inline void ft_emit_flow(const struct ft_tuple *t, const struct ft_flow_key *k,
					 __u32 netns, __u32 pkt_len, __u64 now, __u8 reason,
					 __u64 packets, __u64 bytes, __u8 flags)
{
	struct ft_flow_event *e = ft_rb_reserve(sizeof(*e));

	if (!e)
		return;
	ft_fill_hdr(&e->hdr, FT_EV_FLOW, sizeof(*e), now);
	e->tuple = *t;
	e->tuple.tcp_flags = flags;
	e->packets = packets;
	e->bytes = bytes;
	e->ifindex = k->ifindex;
	e->netns = netns;
	e->pkt_len = pkt_len;
	e->dir = k->dir;
	e->reason = reason;
	e->_pad[0] = 0;
	e->_pad[1] = 0;
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_FLOW_EVENTS);
}

static __always_inline __u32 ft_tc_netns(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);

	return BPF_CORE_READ(kskb, dev, nd_net.net, ns.inum);
}

static __always_inline void ft_flow_account(struct __sk_buff *skb, const struct ft_tuple *t,
					    __u8 dir)
{
	struct ft_flow_key k = {};
	struct ft_flow_val *v;
	__u64 now = bpf_ktime_get_boot_ns();
	__u32 len = skb->len;
	__u32 netns;
	__u64 pk, by;
	__u8 reason = 0;
	__u8 fl;

	__builtin_memcpy(k.saddr, t->saddr, 16);
	__builtin_memcpy(k.daddr, t->daddr, 16);
	k.sport = t->sport;
	k.dport = t->dport;
	k.proto = t->proto;
	k.ip_version = t->ip_version;
	k.dir = dir;
	k.ifindex = skb->ifindex;

	v = bpf_map_lookup_elem(&ft_flows, &k);
	if (!v) {
		struct ft_flow_val nv = {};

		netns = ft_tc_netns(skb);
		nv.last_report_ns = now;
		nv.last_seen_ns = now;
		nv.netns = netns;
		nv.ethertype = t->ethertype;
		nv.vlan = t->vlan;
		if (bpf_map_update_elem(&ft_flows, &k, &nv, BPF_NOEXIST) == 0) {
			ft_emit_flow(t, &k, netns, len, now, FT_REASON_NEW, 1, len, t->tcp_flags);
			return;
		}
		/* Another CPU created it first: account into its entry. */
		v = bpf_map_lookup_elem(&ft_flows, &k);
		if (!v)
			return;
	}

	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	if (t->tcp_flags)
		__sync_fetch_and_or(&v->tcp_flags, (__u32)t->tcp_flags);
	v->last_seen_ns = now;

	if (t->tcp_flags & (FT_TCP_SYN | FT_TCP_FIN | FT_TCP_RST))
		reason = FT_REASON_TCP_FLAGS;
	else if (now - v->last_report_ns >= ft_flow_report_interval_ns)
		reason = FT_REASON_PERIODIC;
	if (!reason)
		return;

	v->last_report_ns = now;
	/*
	 * Exchange, not read-then-zero: packets counted by another CPU between
	 * the two steps would otherwise be lost. The sum over all reports of an
	 * entry therefore equals what was counted.
	 */
	pk = __sync_lock_test_and_set(&v->packets, 0);
	by = __sync_lock_test_and_set(&v->bytes, 0);
	fl = (__u8)__sync_lock_test_and_set(&v->tcp_flags, 0);
	if (!pk)
		return; /* a concurrent report already took them */
	ft_emit_flow(t, &k, v->netns, len, now, reason, pk, by, fl);
}

static __always_inline int ft_tc(struct __sk_buff *skb, __u8 dir)
{
	struct ft_src src = { .skb = skb };
	struct ft_tuple t = {};
	int status;

	ft_stat_inc(FT_STAT_TC_PACKETS);
	status = ft_parse_eth(&src, skb, &t);
	if (status != FT_PARSE_OK) {
		ft_count_status(status);
		return FT_TC_ACT_UNSPEC;
	}
	ft_flow_account(skb, &t, dir);
	return FT_TC_ACT_UNSPEC;
}

SEC("tc")
int ft_tc_ingress(struct __sk_buff *skb)
{
	return ft_tc(skb, FT_DIR_INGRESS);
}

SEC("tc")
int ft_tc_egress(struct __sk_buff *skb)
{
	return ft_tc(skb, FT_DIR_EGRESS);
}

#endif /* FT_FLOW_H */
