/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Conntrack view of a packet: the connection's ORIGINAL tuple (client ->
 * Service VIP) and its REPLY tuple (backend -> client after SNAT), from which
 * DNAT/SNAT follow.
 *
 * Sources, cheapest first (KERNEL.md):
 *  - skb->_nfct via bpf_cast_to_kern_ctx + bpf_rdonly_cast (6.2+), or via
 *    probe reads through the context pointer (older kernels that allow
 *    bpf_probe_read_kernel at tc): set after the netns's conntrack ran (tc
 *    egress, including the first SYN toward the backend); scrubbed (0) at
 *    ingress from another netns.
 *  - bpf_skb_ct_lookup kfunc: ingress, once conntrack has the entry (the
 *    client's 2nd packet on, every reply). Must be released.
 *  - kfree_skb: skb->_nfct read with BPF_CORE_READ (probe reads).
 * The tc paths are gated by load-time constants so a kernel without the
 * kfuncs loads the object with the branches pruned (weak externs are
 * poisoned by the loader when missing).
 */
#ifndef FT_CT_H
#define FT_CT_H

#include "ft_event.h"
#include "ft_config.h"
#include "ft_maps.h"
#include "ft_parse.h"

/*
 * All weak: a kernel without them (bpf_cast_to_kern_ctx and bpf_rdonly_cast
 * are 6.2+, bpf_skb_ct_lookup 5.18+) gets the call poisoned by the loader,
 * and the load-time constants keep it unreachable.
 */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
					 __u32 tuple__sz, struct bpf_ct_opts *opts,
					 __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

#define FT_NFCT_PTRMASK (~7UL)
#define FT_CTINFO_MASK 7UL
#define FT_IP_CT_IS_REPLY 3  /* enum ip_conntrack_info: >= this is the reply direction */
#define FT_IP_CT_UNTRACKED 7
#define FT_AF_INET 2
#define FT_AF_INET6 10

/* Conntrack tuple of one direction, ports converted to host order. */
struct ft_ct_raw {
	struct ft_ct_tuple orig;
	struct ft_ct_tuple reply;
	__u16 l3num;
	__u8 protonum;
};

static __always_inline int ft_addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/*
 * Turns a raw conntrack read into the event form. xlat (may be NULL) gets the
 * REPLY tuple reversed: what the ORIGINAL packet looks like after NAT.
 */
static __always_inline void ft_ct_finish(const struct ft_ct_raw *r, __u8 flags, struct ft_ct *out,
					 struct ft_ct_tuple *xlat)
{
	int ports;

	out->orig = r->orig;
	out->ip_version = r->l3num == FT_AF_INET6 ? 6 : 4;
	flags |= FT_CT_KNOWN;
	/*
	 * ICMP tuples hold the echo id and type/code where other protocols
	 * hold ports, so they differ between directions without any NAT:
	 * compare only the addresses.
	 */
	ports = r->protonum != FT_IPPROTO_ICMP && r->protonum != FT_IPPROTO_ICMPV6;
	if (!ft_addr_eq(r->orig.daddr, r->reply.saddr) || (ports && r->orig.dport != r->reply.sport))
		flags |= FT_CT_DNAT;
	if (!ft_addr_eq(r->orig.saddr, r->reply.daddr) || (ports && r->orig.sport != r->reply.dport))
		flags |= FT_CT_SNAT;
	out->flags = flags;
	if (xlat) {
		__builtin_memcpy(xlat->saddr, r->reply.daddr, 16);
		__builtin_memcpy(xlat->daddr, r->reply.saddr, 16);
		xlat->sport = r->reply.dport;
		xlat->dport = r->reply.sport;
	}
}

/* Direct loads: ct is trusted (kfunc) or untrusted-rdonly (cast); CO-RE fixes offsets. */
static __always_inline void ft_ct_read_direct(struct nf_conn *ct, struct ft_ct_raw *r)
{
	__builtin_memcpy(r->orig.saddr, ct->tuplehash[0].tuple.src.u3.all, 16);
	__builtin_memcpy(r->orig.daddr, ct->tuplehash[0].tuple.dst.u3.all, 16);
	r->orig.sport = bpf_ntohs(ct->tuplehash[0].tuple.src.u.all);
	r->orig.dport = bpf_ntohs(ct->tuplehash[0].tuple.dst.u.all);
	__builtin_memcpy(r->reply.saddr, ct->tuplehash[1].tuple.src.u3.all, 16);
	__builtin_memcpy(r->reply.daddr, ct->tuplehash[1].tuple.dst.u3.all, 16);
	r->reply.sport = bpf_ntohs(ct->tuplehash[1].tuple.src.u.all);
	r->reply.dport = bpf_ntohs(ct->tuplehash[1].tuple.dst.u.all);
	r->l3num = ct->tuplehash[0].tuple.src.l3num;
	r->protonum = ct->tuplehash[0].tuple.dst.protonum;
}

/* Probe reads, for the tracepoint where ct is a plain kernel address. */
static __always_inline void ft_ct_read_core(struct nf_conn *ct, struct ft_ct_raw *r)
{
	__u16 p;

	BPF_CORE_READ_INTO(&r->orig.saddr, ct, tuplehash[0].tuple.src.u3.all);
	BPF_CORE_READ_INTO(&r->orig.daddr, ct, tuplehash[0].tuple.dst.u3.all);
	BPF_CORE_READ_INTO(&r->reply.saddr, ct, tuplehash[1].tuple.src.u3.all);
	BPF_CORE_READ_INTO(&r->reply.daddr, ct, tuplehash[1].tuple.dst.u3.all);
	p = BPF_CORE_READ(ct, tuplehash[0].tuple.src.u.all);
	r->orig.sport = bpf_ntohs(p);
	p = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.u.all);
	r->orig.dport = bpf_ntohs(p);
	p = BPF_CORE_READ(ct, tuplehash[1].tuple.src.u.all);
	r->reply.sport = bpf_ntohs(p);
	p = BPF_CORE_READ(ct, tuplehash[1].tuple.dst.u.all);
	r->reply.dport = bpf_ntohs(p);
	r->l3num = BPF_CORE_READ(ct, tuplehash[0].tuple.src.l3num);
	r->protonum = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.protonum);
}

static __always_inline __u8 ft_ctinfo_flags(unsigned long nfct)
{
	__u32 info = nfct & FT_CTINFO_MASK;

	return info >= FT_IP_CT_IS_REPLY && info != FT_IP_CT_UNTRACKED ? FT_CT_REPLY : 0;
}

/* kfree_skb: skb is a kernel pointer (tp_btf or raw_tp). */
static __always_inline void ft_ct_from_kskb(struct sk_buff *skb, const struct ft_tuple *t,
					    struct ft_ct *out, struct ft_ct_tuple *xlat)
{
	unsigned long nfct;
	struct nf_conn *ct;
	struct ft_ct_raw r = {};

	/* A kernel without conntrack: the relocations below resolve to nothing. */
	if (!bpf_core_type_exists(struct nf_conn) || !bpf_core_field_exists(skb->_nfct))
		return;
	nfct = BPF_CORE_READ(skb, _nfct);
	ct = (struct nf_conn *)(nfct & FT_NFCT_PTRMASK);
	if (!ct)
		return;
	ft_ct_read_core(ct, &r);
	if (r.l3num != FT_AF_INET && r.l3num != FT_AF_INET6)
		return;
	ft_ct_finish(&r, ft_ctinfo_flags(nfct) | FT_CT_VIA_NFCT, out, xlat);
}

/*
 * tc: fills out (and xlat) and returns the conntrack protocol number, 0 when
 * conntrack does not know the packet. t must be the packet's own (outer)
 * tuple; egress: the hook is tc egress.
 *
 * The kfunc lookup costs ~0.3-0.5 us even when it misses (every report of
 * a connection conntrack does not track: under churn one per event), so it
 * is skipped where it cannot find anything:
 *  - at egress with no _nfct mark (read where the kernel lets tc read it):
 *    this netns's conntrack has run by then and marks every packet it saw,
 *    untracked ones included, so it does not track this one (bridged
 *    traffic without br_netfilter, a netns with no conntrack rules);
 *  - for a pure SYN: a connection's first packet, which conntrack cannot
 *    know yet at ingress. (A retransmitted one keeps its entry's last view.)
 */
static __always_inline __u8 ft_ct_tc(struct __sk_buff *skb, const struct ft_tuple *t,
				     struct ft_ct_raw *rp, struct ft_ct *out,
				     struct ft_ct_tuple *xlat, int egress)
{
	__u8 flags;

	if (ft_ct_cast_enabled && ft_kctx_enabled) {
		struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
		unsigned long nfct = kskb->_nfct;

		if (nfct & FT_NFCT_PTRMASK) {
			struct nf_conn *ct = bpf_rdonly_cast((void *)(nfct & FT_NFCT_PTRMASK),
							     bpf_core_type_id_kernel(struct nf_conn));

			ft_ct_read_direct(ct, rp);
			flags = ft_ctinfo_flags(nfct) | FT_CT_VIA_NFCT;
			goto found;
		}
		if (egress && !nfct)
			return 0;
	} else if (ft_ct_cast_enabled && ft_kread_enabled) {
		/* Same view without the kfuncs: probe reads (see ft_config.h). */
		unsigned long nfct = BPF_CORE_READ((struct sk_buff *)skb, _nfct);
		struct nf_conn *ct = (struct nf_conn *)(nfct & FT_NFCT_PTRMASK);

		if (ct) {
			ft_ct_read_core(ct, rp);
			flags = ft_ctinfo_flags(nfct) | FT_CT_VIA_NFCT;
			goto found;
		}
		if (egress && !nfct)
			return 0;
	}
	if ((t->tcp_flags & (FT_TCP_SYN | FT_TCP_ACK)) == FT_TCP_SYN && t->proto == FT_IPPROTO_TCP)
		return 0;
	if (ft_ct_lookup_enabled &&
	    (t->proto == FT_IPPROTO_TCP || t->proto == FT_IPPROTO_UDP)) {
		struct bpf_sock_tuple bt = {};
		struct bpf_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = t->proto };
		struct nf_conn *ct;
		__u32 sz;

		if (t->ip_version == 4) {
			__builtin_memcpy(&bt.ipv4.saddr, t->saddr, 4);
			__builtin_memcpy(&bt.ipv4.daddr, t->daddr, 4);
			bt.ipv4.sport = bpf_htons(t->sport);
			bt.ipv4.dport = bpf_htons(t->dport);
			sz = sizeof(bt.ipv4);
		} else {
			__builtin_memcpy(bt.ipv6.saddr, t->saddr, 16);
			__builtin_memcpy(bt.ipv6.daddr, t->daddr, 16);
			bt.ipv6.sport = bpf_htons(t->sport);
			bt.ipv6.dport = bpf_htons(t->dport);
			sz = sizeof(bt.ipv6);
		}
		ft_stat_inc(FT_STAT_CT_LOOKUPS);
		ct = bpf_skb_ct_lookup(skb, &bt, sz, &opts, sizeof(opts));
		if (!ct)
			return 0;
		ft_ct_read_direct(ct, rp);
		bpf_ct_release(ct);
		/* The kfunc matches either direction; ours is whichever the packet equals. */
		flags = FT_CT_VIA_LOOKUP;
		if (!(ft_addr_eq(rp->orig.saddr, t->saddr) && rp->orig.sport == t->sport))
			flags |= FT_CT_REPLY;
		goto found;
	}
	return 0;
found:
	if (rp->l3num != FT_AF_INET && rp->l3num != FT_AF_INET6)
		return 0;
	ft_ct_finish(rp, flags, out, xlat);
	return rp->protonum;
}

#endif /* FT_CT_H */
