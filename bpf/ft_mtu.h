/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * MTU verdicts at tc.
 *
 * A forwarded packet that is too big for its egress device dies in
 * ip_forward/ip6_forward before that device's tc egress hook runs
 * (KERNEL.md), so the check happens at ingress: ask the FIB where the packet
 * is going and compare it with that device's MTU. For an overlay the FIB
 * answer is the VXLAN device, so a packet that only overflows after
 * encapsulation is attributed to the overlay device.
 *
 * ICMP frag-needed / ICMPv6 packet-too-big crossing tc are reported with the
 * header they quote, so the agent can tell which flow learned which MTU.
 */
#ifndef FT_MTU_H
#define FT_MTU_H

#include "ft_event.h"
#include "ft_maps.h"
#include "ft_config.h"
#include "ft_parse.h"
#include "ft_ct.h"

static __always_inline void ft_ct_tuple_from(struct ft_ct_tuple *d, const struct ft_tuple *t)
{
	__builtin_memcpy(d->saddr, t->saddr, 16);
	__builtin_memcpy(d->daddr, t->daddr, 16);
	d->sport = t->sport;
	d->dport = t->dport;
}

static __always_inline struct ft_mtu_event *ft_mtu_reserve(const struct ft_tuple *t, __u8 kind,
							   __u8 dir, __u32 ifindex, __u32 netns,
							   __u64 ts)
{
	struct ft_mtu_event *e = ft_rb_reserve(sizeof(*e));

	if (!e)
		return 0;
	ft_fill_hdr(&e->hdr, FT_EV_MTU, sizeof(*e), ts);
	e->tuple = *t;
	__builtin_memset(&e->emb, 0, sizeof(e->emb));
	e->emb_proto = 0;
	e->emb_ip_version = 0;
	e->kind = kind;
	e->dir = dir;
	e->pkt_len = 0;
	e->mtu = 0;
	e->ifindex = ifindex;
	e->egress_ifindex = 0;
	e->netns = netns;
	e->_pad = 0;
	return e;
}

/*
 * The L3 length of what the wire carries: a GSO packet's segment (headers +
 * gso_size), not the merged length no wire ever carries; else l3_len.
 */
static __always_inline __u32 ft_wire_len(struct __sk_buff *skb, const struct ft_pmeta *m)
{
	if (skb->gso_segs > 1 && skb->gso_size && m->l4_hlen && m->l4_off > m->l3_off)
		return m->l4_off - m->l3_off + m->l4_hlen + skb->gso_size;
	return m->l3_len;
}

/*
 * The wire length an ingress MTU check compares, or 0 when the packet needs
 * none: MTU checks off, a small packet, non-DF IPv4 (the router fragments
 * it). A GSO packet is compared by its segments: its merged length never
 * fits, which made every packet of a bulk TCP transfer pay the FIB lookup
 * and MTU check (~150 ns each).
 */
static __always_inline __u32 ft_mtu_wire(struct __sk_buff *skb, __u8 ip_version,
					 const struct ft_pmeta *m)
{
	if (!ft_fib_enabled || m->l3_len <= ft_mtu_min_len)
		return 0;
	if (ip_version == 4 && !m->df)
		return 0;
	return ft_wire_len(skb, m);
}

/*
 * Whether ft_mtu_check has anything to do for a packet of ft_mtu_wire
 * length wire; inline, so the packets that need no check (small ones,
 * non-DF IPv4, a fresh cached MTU: nearly all) do not pay a subprogram
 * call.
 */
static __always_inline int ft_mtu_due(__u32 wire, const struct ft_flow_val *v, __u64 now)
{
	if (!wire)
		return 0;
	if (v->egress_mtu && wire <= v->egress_mtu &&
	    ft_since(now, v->mtu_checked_ns) < (__s64)ft_flow_report_interval_ns)
		return 0;
	return 1;
}

/*
 * Ingress MTU check of one forwarded packet. v caches the egress device and
 * its MTU per flow entry for one report interval, so a bulk transfer pays the
 * FIB lookup once per interval, not per packet; a packet larger than the
 * cached MTU always re-checks. Reports are rate-limited to one per entry and
 * interval. Only called when ft_mtu_due.
 */
static __noinline void ft_mtu_check(struct __sk_buff *skb, const struct ft_tuple *t,
				     const struct ft_pmeta *m, struct ft_flow_val *v, __u64 now)
{
	struct bpf_fib_lookup fib = {};
	struct ft_mtu_event *e;
	__u32 mtu, egress;
	long rc;

	fib.ifindex = skb->ifindex;
	fib.l4_protocol = t->proto;
	fib.sport = bpf_htons(t->sport);
	fib.dport = bpf_htons(t->dport);
	if (t->ip_version == 4) {
		fib.family = FT_AF_INET;
		__builtin_memcpy(&fib.ipv4_src, t->saddr, 4);
		__builtin_memcpy(&fib.ipv4_dst, t->daddr, 4);
	} else {
		fib.family = FT_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, t->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, t->daddr, 16);
	}
	ft_stat_inc(FT_STAT_FIB_LOOKUPS);
	/* tot_len 0: the egress ifindex is filled in even when the packet does not fit. */
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH &&
	    rc != BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		/*
		 * Local delivery, no route, forwarding off: not ours to judge.
		 * Cached as "fits anything" so a bulk download to this host does
		 * not pay a FIB lookup per packet.
		 */
		v->egress_mtu = 0xffffffff;
		v->mtu_checked_ns = now;
		return;
	}
	egress = fib.ifindex;
	/*
	 * Pass the L3 length explicitly: exact, unlike the FIB's VLAN-slack
	 * check. A GSO packet is judged per segment instead (the kernel refuses
	 * an explicit length together with BPF_MTU_CHK_SEGS).
	 */
	if (skb->gso_segs > 1) {
		mtu = 0;
		rc = bpf_check_mtu(skb, egress, &mtu, 0, BPF_MTU_CHK_SEGS);
	} else {
		mtu = m->l3_len;
		rc = bpf_check_mtu(skb, egress, &mtu, 0, 0);
	}
	if (rc < 0)
		return;
	v->egress_mtu = mtu;
	v->mtu_checked_ns = now;
	if (rc == BPF_MTU_CHK_RET_SUCCESS)
		return;
	if (v->mtu_report_ns && ft_since(now, v->mtu_report_ns) < (__s64)ft_flow_report_interval_ns)
		return;
	v->mtu_report_ns = now;

	e = ft_mtu_reserve(t, FT_MTU_EXCEEDED, FT_DIR_INGRESS, skb->ifindex, v->netns,
			    bpf_ktime_get_boot_ns());
	if (!e)
		return;
	e->pkt_len = ft_wire_len(skb, m); /* a GSO packet's segment size */
	e->mtu = mtu;
	e->egress_ifindex = egress;
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_MTU_EVENTS);
}

/* ICMP type 3 code 4 and ICMPv6 type 2: report the announced MTU and the quoted flow. */
static __noinline void ft_icmp_pmtu(struct __sk_buff *skb, const struct ft_tuple *t,
				     const struct ft_pmeta *m, __u8 dir, __u32 netns)
{
	struct ft_src src = { .skb = skb };
	const struct ft_src *s = &src;
	struct ft_tuple et = {};
	struct ft_pmeta em = { .ports_only = 1 };
	struct ft_mtu_event *e;
	__u8 icmp[8];
	__u32 mtu;
	__u8 kind;
	int st;

	if (t->proto == FT_IPPROTO_ICMP && t->icmp_type == 3 && t->icmp_code == 4)
		kind = FT_MTU_ICMP_FRAG_NEEDED;
	else if (t->proto == FT_IPPROTO_ICMPV6 && t->icmp_type == 2)
		kind = FT_MTU_ICMP6_PKT_TOO_BIG;
	else
		return;
	if (!m->l4_off || ft_load(s, m->l4_off, icmp, sizeof(icmp)))
		return;
	if (kind == FT_MTU_ICMP_FRAG_NEEDED)
		mtu = ((__u32)icmp[6] << 8) | icmp[7];
	else
		mtu = ((__u32)icmp[4] << 24) | ((__u32)icmp[5] << 16) | ((__u32)icmp[6] << 8) | icmp[7];
	/* The quote is cut short by design: keep whatever addresses it gave. */
	st = ft_parse_l3(s, m->l4_off + 8, t->ethertype, &et, &em);
	if (st != FT_PARSE_OK && !et.ip_version)
		return;

	e = ft_mtu_reserve(t, kind, dir, skb->ifindex, netns, bpf_ktime_get_boot_ns());
	if (!e)
		return;
	ft_ct_tuple_from(&e->emb, &et);
	e->emb_proto = et.proto;
	e->emb_ip_version = et.ip_version;
	e->pkt_len = em.l3_len;
	e->mtu = mtu;
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_ICMP_EVENTS);
}

#endif /* FT_MTU_H */
