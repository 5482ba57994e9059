/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * tc programs: observe forwarded traffic and aggregate it per connection.
 * They never decide: TC_ACT_UNSPEC (== TCX_NEXT) keeps flowtrace transparent
 * next to any other tc user.
 *
 * Per-packet work is parse + one flow-table update. Conntrack reads, the
 * TRANSLATED check and the ring buffer only happen when an entry reports
 * (new, SYN/FIN/RST, periodic), so they cost per connection, not per packet.
 */
#ifndef FT_FLOW_H
#define FT_FLOW_H

#include "ft_event.h"
#include "ft_maps.h"
#include "ft_config.h"
#include "ft_parse.h"
#include "ft_ct.h"
#include "ft_mtu.h"
#include "ft_fcache.h"
#include "ft_defer.h"

#define FT_TC_ACT_UNSPEC (-1)
#define FT_VXLAN_PORT 4789
#define FT_VXLAN_PORT_FLANNEL 8472

/* One TRANSLATED per connection and netns, whatever the number of hooks it crosses. */
struct ft_xlate_key {
	struct ft_ct_tuple orig;
	__u8 proto;
	__u8 ip_version;
	__u16 _pad;
	__u32 netns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ft_xlate_key);
	__type(value, __u64); /* unused */
} ft_xlated SEC(".maps");

/*
 * Per-CPU scratch space: the packet's tuple, a new flow entry and the
 * conntrack reads do not fit the 512-byte BPF stack of the deepest call chain
 * (tc -> account -> conntrack). tc runs to completion on its CPU, so one slot
 * per CPU is enough.
 */
struct ft_scratch {
	/*
	 * FT_STAT_TC_PACKETS lives here, not in ft_stats: this value is looked
	 * up for every packet anyway, and a second lookup just to count cost
	 * ~10-25 ns a packet. Must stay the first member: user space adds it to
	 * ft_stats' count by offset (pkg/datapath scratchTCPacketsOff).
	 */
	__u64 tc_packets;
	__u64 fc_hits; /* FT_STAT_FC_HITS, likewise (scratchFCHitsOff) */
	__u32 fc_busy; /* a program is using fc on this CPU (ft_fcache.h) */
	__u32 created; /* ft_flow_account made the entry for this packet */
	struct ft_clock_memo clk; /* ft_now's; lives across packets */
	struct ft_flow_key k; /* the packet's flow entry key */
	/* Counts a slot held for k, which go into the entry with this packet. */
	__u64 take_packets;
	__u64 take_bytes;
	__u32 take_flags;
	/* They come from a slot that held k's entry: one holder less (set per packet by ft_tc). */
	__u32 take_slot;
	/* A closing report's counts of the other direction (ft_flow_event rev_*). */
	__u64 rev_packets;
	__u64 rev_bytes;
	__u32 rev_flags;
	__u32 closing; /* ft_flow_closing's answer for the packet (FT_CLOSE_*) */
	__u32 ctrev;   /* ft_ct_from_rev's answer for a closing report (FT_CTREV_*) */
	__u32 _pad0;
	struct ft_tuple t; /* the packet being handled */
	struct ft_pmeta m;
	struct ft_encap enc;
	struct ft_flow_val nv;
	struct ft_ct_raw raw;
	struct ft_xlate_key xk;
	struct ft_ct_tuple xlat;
	struct ft_fc_slot fc[FT_FC_SLOTS];
	/* Last, so the hot members above keep their cache lines. */
	struct ft_flow_key rk; /* k's other direction (ft_flow_rev) */
};

/* ft_flow_key_of and ft_tuple_copy read t in 8-byte words; ft_tc zeroes enc so. */
_Static_assert(__builtin_offsetof(struct ft_scratch, t) % 8 == 0, "ft_scratch.t alignment");
_Static_assert(__builtin_offsetof(struct ft_scratch, enc) % 8 == 0, "ft_scratch.enc alignment");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_scratch);
} ft_scratch SEC(".maps");

static __always_inline __u32 ft_tc_netns(struct __sk_buff *skb)
{
	if (ft_kctx_enabled) {
		struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
		struct net_device *dev = kskb->dev;

		/*
		 * Plain loads, which the verifier makes fault-safe, through
		 * the kernel's typed pointers: BPF_CORE_READ's probe read per
		 * step was 3 helper calls for every new flow entry, ~4% of tc's
		 * time under churn (TestChurnCost).
		 */
		return dev ? dev->nd_net.net->ns.inum : 0;
	}
	if (ft_kread_enabled)
		/* Probe reads through the context pointer (see ft_config.h). */
		return BPF_CORE_READ((struct sk_buff *)skb, dev, nd_net.net, ns.inum);
	return ft_self_netns;
}

/*
 * Copies tc's tuple (&ft_scratch.t, 8-aligned in the map value) into an
 * event record at an 8-aligned offset, in 8-byte words. A plain struct
 * assignment follows ft_tuple's 2-byte alignment: clang loaded it as 24
 * halfwords spilled to the stack first, which alone put tc's deepest call
 * chain (tc -> account -> conntrack) over the 512-byte BPF stack on 6.1's
 * verifier, and the loader then had to switch conntrack off there.
 */
_Static_assert(sizeof(struct ft_tuple) % 8 == 0, "ft_tuple is copied in words");
_Static_assert(__builtin_offsetof(struct ft_flow_event, tuple) % 8 == 0, "flow event tuple alignment");
_Static_assert(__builtin_offsetof(struct ft_xlate_event, tuple) % 8 == 0, "xlate event tuple alignment");

static __always_inline void ft_tuple_copy(struct ft_tuple *dst, const struct ft_tuple *t)
{
	__builtin_memcpy(__builtin_assume_aligned(dst, 8), __builtin_assume_aligned(t, 8),
			 sizeof(*t));
}

/* sc: its rev_* (zero unless a closing report took the other direction's). */
static __always_inline void ft_emit_flow(const struct ft_scratch *sc, const struct ft_tuple *t,
					 const struct ft_flow_key *k,
					 const struct ft_ct *ct, const struct ft_encap *enc,
					 __u32 netns, __u32 pkt_len, __u8 reason,
					 __u64 packets, __u64 bytes, __u8 flags)
{
	struct ft_flow_event *e = ft_rb_reserve(sizeof(*e));

	if (!e)
		return;
	ft_fill_hdr(&e->hdr, FT_EV_FLOW, sizeof(*e), bpf_ktime_get_boot_ns());
	ft_tuple_copy(&e->tuple, t);
	e->tuple.tcp_flags = flags;
	ft_fill_flow(e, k, netns, pkt_len, reason, packets, bytes);
	e->rev_tcp_flags = (__u8)sc->rev_flags;
	e->ct = *ct;
	e->encap = *enc;
	e->rev_packets = sc->rev_packets;
	e->rev_bytes = sc->rev_bytes;
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_FLOW_EVENTS);
}

/* Emits TRANSLATED the first time this netns shows the connection NATed. */
static __always_inline void ft_xlate_once(const struct ft_tuple *t, const struct ft_ct *ct,
					  struct ft_scratch *sc, __u8 ctproto,
					  __u32 ifindex, __u32 netns, __u8 dir, __u64 now)
{
	struct ft_xlate_key *xk = &sc->xk;
	struct ft_xlate_event *e;
	__u64 one = 1;

	if (!(ct->flags & (FT_CT_DNAT | FT_CT_SNAT)))
		return;
	xk->orig = ct->orig;
	xk->proto = ctproto;
	xk->ip_version = ct->ip_version;
	xk->_pad = 0;
	xk->netns = netns;
	if (bpf_map_update_elem(&ft_xlated, xk, &one, BPF_NOEXIST))
		return; /* already reported (or another CPU is reporting it) */
	e = ft_rb_reserve(sizeof(*e));
	if (!e)
		return;
	ft_fill_hdr(&e->hdr, FT_EV_TRANSLATED, sizeof(*e), now);
	ft_tuple_copy(&e->tuple, t);
	e->ct = *ct;
	e->xlat = sc->xlat;
	e->ifindex = ifindex;
	e->netns = netns;
	e->dir = dir;
	e->_pad[0] = 0;
	e->_pad[1] = 0;
	e->_pad[2] = 0;
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_XLATE_EVENTS);
}

/*
 * Conntrack for a report, and TRANSLATED when it shows NAT for the first
 * time. Not for encapsulated packets: their skb's conntrack is the tunnel's
 * UDP flow, not the inner connection's. A subprogram: inlined, the conntrack
 * scratch space would not fit the 512-byte stack next to the flow entry.
 */
/*
 * Returns ct->flags, and a caller uses it: from a void subprogram (or one
 * whose result every caller ignores) clang may leave a stack pointer in r0,
 * which the verifier refuses ("cannot return stack pointer to the caller").
 */
static __noinline int ft_report_ct(struct __sk_buff *skb, const struct ft_tuple *t,
				   const struct ft_flow_key *k, struct ft_ct *ct, __u32 netns)
{
	__u32 zero = 0;
	struct ft_scratch *sc = bpf_map_lookup_elem(&ft_scratch, &zero);
	__u8 proto;

	if (!sc)
		return ct->flags;
	__builtin_memset(&sc->raw, 0, sizeof(sc->raw));
	__builtin_memset(&sc->xlat, 0, sizeof(sc->xlat));
	proto = ft_ct_tc(skb, t, &sc->raw, ct, &sc->xlat, k->dir == FT_DIR_EGRESS);
	if (proto)
		ft_xlate_once(t, ct, sc, proto, k->ifindex, netns, k->dir,
			      bpf_ktime_get_boot_ns());
	return ct->flags;
}

static __always_inline void ft_flow_key_of(struct ft_flow_key *k, const struct ft_tuple *t,
					   const struct ft_encap *enc, __u8 dir, __u32 ifindex)
{
	/*
	 * t is &ft_scratch.t, 8-aligned in the map value; saying so lets clang
	 * copy the addresses 8 bytes at a time instead of assembling them from
	 * 2-byte loads (ft_tuple's own alignment): ~40 instructions a packet.
	 */
	const struct ft_tuple *ta = __builtin_assume_aligned(t, 8);

	__builtin_memcpy(k->saddr, ta->saddr, 16);
	__builtin_memcpy(k->daddr, ta->daddr, 16);
	k->sport = t->sport;
	k->dport = t->dport;
	/*
	 * ICMP has no ports: its type and code stand in for them, so an echo
	 * request's entry is not a neighbour advertisement's, and a report
	 * made from the entry alone (the agent's idle walk) names its type.
	 */
	if (t->proto == FT_IPPROTO_ICMP || t->proto == FT_IPPROTO_ICMPV6) {
		k->sport = t->icmp_type;
		k->dport = t->icmp_code;
	}
	k->proto = t->proto;
	k->ip_version = t->ip_version;
	k->dir = dir;
	k->_pad = 0;
	k->ifindex = ifindex;
	k->vni = enc->vni;
}

/*
 * A TCP connection's flow entries end with it. Under connection churn the
 * table filled with the entries of closed connections, and every new entry
 * made the kernel's LRU evict one: ~30% of tc's cost per run, and a live
 * flow idle for a moment lost its unreported counts with no trace.
 *
 * Each hook has an entry per direction (a pod's veth sees both), and a
 * connection's close is reported once per hook, by the packet that ends
 * it, with what the other direction's entry held unreported (rev_* in
 * ft_flow_event); both entries then go:
 *  - RST ends it at once;
 *  - a FIN is remembered, not reported (fin 1): the second direction's
 *    FIN marks the first's entry (fin 2), whose next packet, the final
 *    ACK, ends it (CLOSED), carrying the second FIN.
 * Reported on their own, the FINs were a quarter of the events of a short
 * connection (SYN, SYN-ACK, FIN, RST at each of two veths under churn),
 * and every event costs the ring buffer and the agent: the close report
 * says what they said. A half-closed connection's FIN comes with its
 * periodic or idle report.
 *
 * An entry a flow-cache slot holds (v->slots: another CPU counted its
 * packets lately) stays: its counts come back with the slot and the idle
 * walk reports them (fin 3: its close was reported). A straggler after
 * the delete (a retransmitted FIN, a late segment) makes a new entry and
 * a NEW report: visible, never lost.
 */

/* What a TCP packet's flags do to its connection at this hook. */
enum ft_close {
	FT_CLOSE_NONE = 0,
	FT_CLOSE_END = 1, /* report now with the other direction, end both */
};

/* k's other direction at the same hook (into sc->rk), or NULL. */
static __always_inline struct ft_flow_val *ft_flow_rev(struct ft_scratch *sc,
						       const struct ft_flow_key *k)
{
	struct ft_flow_key *rk = &sc->rk;

	__builtin_memcpy(rk->saddr, k->daddr, 16);
	__builtin_memcpy(rk->daddr, k->saddr, 16);
	rk->sport = k->dport;
	rk->dport = k->sport;
	rk->proto = k->proto;
	rk->ip_version = k->ip_version;
	rk->dir = k->dir == FT_DIR_INGRESS ? FT_DIR_EGRESS : FT_DIR_INGRESS;
	rk->_pad = 0;
	rk->ifindex = k->ifindex;
	rk->vni = k->vni;
	return bpf_map_lookup_elem(&ft_flows, rk);
}

/*
 * Whether the kfunc is all tc has for this packet's conntrack view: at
 * ingress, where _nfct is empty (scrubbed on the way in from the pod's
 * netns), for a TCP packet conntrack can know (not a pure SYN). Only TCP:
 * a UDP entry outlives its conntrack entry, whose NAT may differ when it
 * comes back, so a UDP report asks conntrack itself.
 */
static __always_inline int ft_ct_lookup_due(const struct ft_tuple *t, const struct ft_flow_key *k)
{
	return k->dir == FT_DIR_INGRESS && t->proto == FT_IPPROTO_TCP &&
	       (t->tcp_flags & (FT_TCP_SYN | FT_TCP_ACK)) != FT_TCP_SYN;
}

enum {
	FT_CTREV_ASK = 0,   /* ask conntrack (ft_report_ct) */
	FT_CTREV_VIEW,      /* the view was taken from the other direction's entry */
	FT_CTREV_UNTRACKED, /* conntrack does not track the connection here */
};

/*
 * What k's other direction's entry rv at this hook knows of conntrack,
 * for a report at ingress that would otherwise need the kfunc (under the
 * bench's churn, two lookups a connection, every one a miss: ~12% of tc's
 * time in a profile). Egress learned rv's view from its
 * packets' own _nfct, the same connection's conntrack entry seen from the
 * other end: k's view is that one, in the other direction. When egress
 * found _nfct empty, this netns's conntrack had already run on that packet
 * and not tracked it (bridged traffic without br_netfilter, a notrack
 * rule): a lookup would miss. Without an entry, or where tc cannot read
 * _nfct, ask conntrack.
 */
static __always_inline int ft_ct_from_rev(struct ft_ct *ct, const struct ft_flow_val *rv)
{
	if (!rv)
		return FT_CTREV_ASK;
	if (!(rv->ct.flags & FT_CT_KNOWN))
		return ft_ct_cast_enabled && (ft_kctx_enabled || ft_kread_enabled) ? FT_CTREV_UNTRACKED
										      : FT_CTREV_ASK;
	*ct = rv->ct;
	ct->flags = (rv->ct.flags & (FT_CT_KNOWN | FT_CT_DNAT | FT_CT_SNAT)) |
		    (~rv->ct.flags & FT_CT_REPLY) | FT_CT_VIA_REV;
	return FT_CTREV_VIEW;
}

/*
 * Whether this packet ends the connection at this hook; a FIN updates the
 * FIN states (v: k's entry, with the packet counted).
 */
static __always_inline int ft_flow_closing(struct ft_scratch *sc, const struct ft_flow_key *k,
					   struct ft_flow_val *v, __u8 tcp_flags)
{
	struct ft_flow_val *rv;

	if (k->proto != FT_IPPROTO_TCP)
		return FT_CLOSE_NONE;
	if (tcp_flags & FT_TCP_RST)
		return FT_CLOSE_END;
	if (tcp_flags & FT_TCP_SYN)
		return FT_CLOSE_NONE;
	if (tcp_flags & FT_TCP_FIN) {
		if (v->fin)
			return FT_CLOSE_NONE; /* retransmitted, or after the close */
		v->fin = 1;
		rv = ft_flow_rev(sc, k);
		if (rv && rv->fin == 1)
			rv->fin = 2; /* the second FIN: the first closer's final ACK ends it */
		return FT_CLOSE_NONE;
	}
	return v->fin == 2 ? FT_CLOSE_END : FT_CLOSE_NONE;
}

/*
 * Takes what the other direction's entry (sc->rk) holds unreported into
 * sc->rev_*, the way ft_flow_account takes an entry's own counts (read,
 * then subtract what was read). Returns the entry, or NULL.
 */
static __always_inline struct ft_flow_val *ft_flow_take_rev(struct ft_scratch *sc,
							    const struct ft_flow_key *k)
{
	struct ft_flow_val *rv = ft_flow_rev(sc, k);
	__u64 pk, by;
	__u8 fl;

	if (!rv)
		return 0;
	pk = rv->packets;
	by = rv->bytes;
	fl = (__u8)rv->tcp_flags;
	if (!pk)
		return rv;
	__sync_fetch_and_add(&rv->packets, -pk);
	__sync_fetch_and_add(&rv->bytes, -by);
	if (fl)
		__sync_fetch_and_add(&rv->tcp_flags, -(__u32)fl);
	sc->rev_packets = pk;
	sc->rev_bytes = by;
	sc->rev_flags = fl;
	return rv;
}

/*
 * After a closing report: ends k's entry v and the other direction's rv
 * (sc->rk; may be NULL), each unless a slot holds it or, for rv, counts
 * came in since they were taken. Returns 1 when v was deleted.
 */
static __always_inline int ft_flow_end(struct ft_scratch *sc, const struct ft_flow_key *k,
				       struct ft_flow_val *v, struct ft_flow_val *rv)
{
	/* An entry left to the queue's callback (ft_defer_end) is its to delete. */
	if (rv) {
		if (!ft_defer_end(rv, &sc->rk)) {
			if (!rv->slots && !rv->packets && !bpf_map_delete_elem(&ft_flows, &sc->rk))
				ft_stat_inc(FT_STAT_FLOWS_CLOSED);
			else
				rv->fin = 3;
		}
	}
	if (ft_defer_end(v, k))
		return 0;
	if (v->slots) {
		v->fin = 3;
		return 0;
	}
	if (!bpf_map_delete_elem(&ft_flows, k))
		ft_stat_inc(FT_STAT_FLOWS_CLOSED);
	return 1;
}

/* A TCP SYN (or SYN-ACK) without RST: it opens, never ends, a connection. */
static __always_inline int ft_syn_opens(const struct ft_tuple *t)
{
	return t->proto == FT_IPPROTO_TCP &&
	       (t->tcp_flags & (FT_TCP_SYN | FT_TCP_RST)) == FT_TCP_SYN;
}

/*
 * Accounts the packet in sc (tuple t, key k) into its flow entry, with the
 * counts sc->take_* a flow-cache slot held for it, and reports the entry
 * when due.
 */
static __noinline struct ft_flow_val *ft_flow_account(struct __sk_buff *skb, struct ft_scratch *sc,
						      __u8 dir, __u64 now)
{
	const struct ft_tuple *t = &sc->t;
	const struct ft_encap *enc = &sc->enc;
	/* ft_report_ct reuses other parts of the scratch space, never k. */
	const struct ft_flow_key *k = &sc->k;
	struct ft_flow_val *v;
	struct ft_defer_q *q;
	__u64 first;
	struct ft_ct ct = {};
	__u32 len = skb->len;
	__u64 tpk = sc->take_packets, tby = sc->take_bytes;
	__u32 tfl = sc->take_flags;
	__u32 netns;
	__u64 pk, by;
	/*
	 * An int: before 6.4 a map's update returned int into the 64-bit r0
	 * (its upper half zero, not the sign), so only the low 32 bits hold
	 * the error (5.10: -EEXIST read as 0xffffffef).
	 */
	int err;
	__u8 reason = 0;
	__u8 fl;

	sc->take_packets = 0;
	sc->take_bytes = 0;
	sc->take_flags = 0;
	sc->created = 0;
	sc->rev_packets = 0;
	sc->rev_bytes = 0;
	sc->rev_flags = 0;

	/*
	 * A connection's first packet each way (the SYN, the SYN-ACK) finds
	 * no entry: it inserts first and looks up only when the insert finds
	 * one (a retransmission), one hash walk less for each of a new
	 * connection's two entries at every hook. A slot holds counts only
	 * for an entry that exists: look it up as usual.
	 */
	if ((t->tcp_flags & FT_TCP_SYN) && t->proto == FT_IPPROTO_TCP && !sc->take_slot)
		v = 0;
	else
		v = bpf_map_lookup_elem(&ft_flows, k);
	if (!v) {
		struct ft_flow_val *nv = &sc->nv;

		__builtin_memset(nv, 0, sizeof(*nv));
		netns = ft_tc_netns(skb);
		nv->last_report_ns = now;
		nv->last_seen_ns = now;
		nv->netns = netns;
		nv->ethertype = t->ethertype;
		nv->vlan = t->vlan;
		nv->encap = *enc;
		/*
		 * A reply's first packet (the SYN-ACK at ingress) takes the
		 * view its connection's entry at this hook's egress has.
		 */
		if (!enc->ip_version &&
		    (!ft_ct_lookup_due(t, k) || ft_ct_from_rev(&nv->ct, ft_flow_rev(sc, k)) == FT_CTREV_ASK))
			ft_report_ct(skb, t, k, &nv->ct, netns);
		/*
		 * Its first report is held (ft_defer.h), unless this packet
		 * may end it (a refused connection's RST) or the queue is full.
		 * In subprograms: inlined here, that code made every forwarded
		 * packet's tc run ~4 ns slower in the bench's UDP probe (60.5
		 * against 56.1 ns, the queue switched off), though no packet
		 * there runs it.
		 */
		first = len | (__u64)(t->tcp_flags | (__u8)tfl) << 32;
		q = !ft_defer_enabled || t->tcp_flags & (FT_TCP_FIN | FT_TCP_RST) ? 0 : ft_defer_room(nv, first, tpk, tby);
		err = bpf_map_update_elem(&ft_flows, k, nv, BPF_NOEXIST);
		if (err != -FT_EEXIST) {
			struct ft_flow_val *rv = 0;

			/*
			 * No room (the table is full: E2BIG) or another failure:
			 * the packet, with what a slot held for it, is reported
			 * at once (the NEW below, which no entry follows), and
			 * counted. It takes a new entry's own report: a second
			 * copy of the report's code for it, never run by a
			 * forwarded packet, made the bench's UDP probe's tc runs
			 * ~7 ns slower (63-64 against 56-57 ns; ~4 ns as a
			 * subprogram).
			 */
			if (err) {
				ft_stat_inc(FT_STAT_FLOW_TABLE_FULL);
				q = 0;
			}
			sc->created = !err;
			if (q)
				ft_defer_push(q, k, nv, first, now);
			/*
			 * A SYN's new entry (the SYN, the SYN-ACK) is not looked
			 * up again: it does not close, a created entry fills no
			 * flow-cache slot, and tc checks its MTU only at ingress,
			 * for a packet above the MTU check's minimum. One hash
			 * walk less for each of a connection's new entries; none
			 * where the insert failed (there is no entry).
			 */
			if (err || (ft_syn_opens(t) && (dir == FT_DIR_EGRESS || enc->ip_version ||
							!ft_mtu_wire(skb, t->ip_version, &sc->m))))
				v = 0;
			else
				v = bpf_map_lookup_elem(&ft_flows, k);
			/* A first packet here may end it too: a refused connection's RST. */
			sc->closing = v ? ft_flow_closing(sc, k, v, t->tcp_flags) : FT_CLOSE_NONE;
			if (sc->closing)
				rv = ft_flow_take_rev(sc, k);
			/* Counts a slot held for an entry that was deleted meanwhile go with it. */
			if (!q)
				ft_emit_flow(sc, t, k, &nv->ct, enc, netns, len, FT_REASON_NEW, 1 + tpk,
					     len + tby, t->tcp_flags | (__u8)tfl);
			if (v && sc->closing && ft_flow_end(sc, k, v, rv))
				return 0;
			return v;
		}
		/*
		 * Another CPU created it first, or a SYN's entry existed:
		 * account into it (our slot never held it).
		 */
		sc->take_slot = 0;
		v = bpf_map_lookup_elem(&ft_flows, k);
		if (!v) {
			if (tpk)
				ft_stat_add(FT_STAT_FC_ORPHANED, tpk);
			return 0;
		}
	}

	/*
	 * Only plain atomic adds (BPF_XADD): 5.10's verifier rejects the whole
	 * object if it holds any fetch/or/xchg atomic (5.12+), even in code a
	 * load-time constant makes dead. The flag OR is therefore a plain
	 * read-modify-write: two CPUs adding different flags to one entry at
	 * the same instant can lose one bit for one report.
	 */
	ft_fc_add(v, 1 + tpk, len + tby, t->tcp_flags | tfl);
	/* From scratch, not a local: locals share the deepest call chain's stack. */
	if (sc->take_slot)
		__sync_fetch_and_add(&v->slots, -1);
	v->last_seen_ns = now;

	/* In scratch: it must outlive ft_report_ct's frame, not widen this one. */
	sc->closing = ft_flow_closing(sc, k, v, t->tcp_flags);
	if (sc->closing)
		reason = t->tcp_flags & FT_TCP_RST ? FT_REASON_TCP_FLAGS : FT_REASON_CLOSED;
	else if (t->tcp_flags & FT_TCP_SYN)
		reason = FT_REASON_TCP_FLAGS;
	else if (ft_since(now, v->last_report_ns) >= (__s64)ft_flow_report_interval_ns)
		reason = FT_REASON_PERIODIC;
	if (!reason)
		return v;
	/*
	 * The entry's first report, while the queue holds it: a NEW, or the
	 * close, which says all a NEW would have.
	 */
	if (v->defer & FT_DEFER_FIRST) {
		v->defer &= ~FT_DEFER_FIRST;
		if (!sc->closing)
			reason = FT_REASON_NEW;
	}

	v->last_report_ns = now;
	/*
	 * Read, then atomically subtract what was read (not zero): packets
	 * counted by another CPU between the two steps stay in the entry for the
	 * next report, so the sum over all reports equals what was counted.
	 * (An exchange would also close the window in which two CPUs report the
	 * same counts, but xchg needs 5.12; see above.) Flag bits read are a
	 * subset of the mask, so subtracting clears exactly those.
	 */
	pk = v->packets;
	by = v->bytes;
	fl = (__u8)v->tcp_flags;
	if (!pk)
		return v; /* a concurrent report already took them */
	__sync_fetch_and_add(&v->packets, -pk);
	__sync_fetch_and_add(&v->bytes, -by);
	if (fl)
		__sync_fetch_and_add(&v->tcp_flags, -(__u32)fl);
	if (sc->closing) {
		struct ft_flow_val *rv = ft_flow_take_rev(sc, k);

		/*
		 * The entry that a SYN made at ingress (before conntrack had
		 * the connection) learns its view at the close from the other
		 * direction's entry, which it looked up anyway, or else asks
		 * conntrack as any report does (below).
		 */
		sc->ctrev = FT_CTREV_ASK;
		if (!enc->ip_version && ft_ct_lookup_due(t, k))
			sc->ctrev = ft_ct_from_rev(&ct, rv);
		if (sc->ctrev == FT_CTREV_VIEW ||
		    (sc->ctrev == FT_CTREV_ASK && !enc->ip_version && ft_report_ct(skb, t, k, &ct, v->netns)))
			v->ct = ct;
		else
			ct = v->ct;
		ft_emit_flow(sc, t, k, &ct, &v->encap, v->netns, len, reason, pk, by, fl);
		if (ft_flow_end(sc, k, v, rv))
			return 0;
		return v;
	}
	/*
	 * Keep the last known view: e.g. a client-side ingress entry whose first
	 * packet came before conntrack had the connection learns it later.
	 */
	if (!enc->ip_version && ft_report_ct(skb, t, k, &ct, v->netns))
		v->ct = ct;
	else
		ct = v->ct;
	ft_emit_flow(sc, t, k, &ct, &v->encap, v->netns, len, reason, pk, by, fl);
	return v;
}

/*
 * VXLAN (IANA 4789, and flannel's 8472): replace the outer tuple with the
 * inner one and keep the outer addresses and VNI in enc, so flows on the
 * underlay NIC name the pods. A frame whose inner part does not parse stays
 * an outer UDP flow.
 */
static __always_inline void ft_vxlan(const struct ft_src *s, struct ft_tuple *t,
				     const struct ft_pmeta *m, struct ft_encap *enc)
{
	struct ft_tuple in = {};
	struct ft_pmeta im = {};
	__u8 vx[8];

	if (t->proto != FT_IPPROTO_UDP || !m->l4_off ||
	    (t->dport != FT_VXLAN_PORT && t->dport != FT_VXLAN_PORT_FLANNEL))
		return;
	if (ft_load(s, m->l4_off + 8, vx, sizeof(vx)) || !(vx[0] & 0x08))
		return; /* no valid-VNI flag: not VXLAN after all */
	if (ft_parse_eth_at(s, 0, m->l4_off + 16, &in, &im) != FT_PARSE_OK)
		return;
	__builtin_memcpy(enc->saddr, t->saddr, 16);
	__builtin_memcpy(enc->daddr, t->daddr, 16);
	enc->vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	enc->dport = t->dport;
	enc->ip_version = t->ip_version;
	*t = in;
	ft_stat_inc(FT_STAT_VXLAN);
}

/* Outer parse, then VXLAN's inner one. */
static __noinline int ft_tc_parse(struct __sk_buff *skb, struct ft_tuple *t, struct ft_pmeta *m,
				  struct ft_encap *enc)
{
	struct ft_src src = { .skb = skb };
	int status;

	status = ft_parse_eth(&src, skb, t, m);
	if (status != FT_PARSE_OK) {
		ft_count_status(status);
		return status;
	}
	ft_vxlan(&src, t, m, enc);
	return FT_PARSE_OK;
}

/*
 * The part of a flow-cache hit both paths share: slot s, which holds the
 * packet's flow, is young, and an ingress packet (mtu_check: not
 * encapsulated) is not above the MTU the entry had when the slot took it,
 * which only the entry can re-check.
 */
static __always_inline int ft_fc_fresh(const struct ft_fc_slot *s, struct __sk_buff *skb,
				       __u8 ip_version, const struct ft_pmeta *m, int mtu_check,
				       __u64 now)
{
	__u32 wire;

	if (ft_since(now, s->since) >= (__s64)ft_fc_hold_ns)
		return 0;
	if (mtu_check) {
		wire = ft_mtu_wire(skb, ip_version, m);
		if (wire && wire > s->mtu)
			return 0;
	}
	return 1;
}

/*
 * Whether the fully parsed packet can be counted in its flow-cache slot s:
 * the slot is fresh, and nothing about the packet needs the entry
 * (SYN/FIN/RST reports, ICMP's PMTU view).
 */
static __always_inline int ft_fc_hit(const struct ft_fc_slot *s, const struct ft_scratch *sc,
				     struct __sk_buff *skb, __u8 dir, __u64 now)
{
	if (sc->t.tcp_flags & (FT_TCP_SYN | FT_TCP_FIN | FT_TCP_RST))
		return 0;
	if (sc->t.proto == FT_IPPROTO_ICMP || sc->t.proto == FT_IPPROTO_ICMPV6)
		return 0;
	return ft_fc_fresh(s, skb, sc->t.ip_version, &sc->m,
			   dir == FT_DIR_INGRESS && !sc->enc.ip_version, now);
}

/* Counts a hit packet in its slot (fc_busy held). */
static __always_inline void ft_fc_count(struct ft_scratch *sc, struct ft_fc_slot *s,
					struct __sk_buff *skb, __u8 tcp_flags)
{
	s->packets += 1;
	s->bytes += skb->len;
	s->tcp_flags |= tcp_flags;
	sc->fc_hits += 1;
}

/* ft_fc_fast writes the tuple as six words: where its fields must be. */
_Static_assert(__builtin_offsetof(struct ft_tuple, sport) == 32 &&
		       __builtin_offsetof(struct ft_tuple, dport) == 34 &&
		       __builtin_offsetof(struct ft_tuple, ethertype) == 36 &&
		       __builtin_offsetof(struct ft_tuple, vlan) == 38 &&
		       __builtin_offsetof(struct ft_tuple, ip_version) == 40 &&
		       __builtin_offsetof(struct ft_tuple, proto) == 41 &&
		       __builtin_offsetof(struct ft_tuple, tcp_flags) == 42 &&
		       sizeof(struct ft_tuple) == 48,
	       "ft_tuple's word layout");

/* What ft_fc_fast did with the packet. */
enum {
	FT_FAST_NONE = 0,   /* not its kind: the general parse */
	FT_FAST_HIT = 1,    /* counted in its slot: done */
	FT_FAST_PARSED = 2, /* not counted, but sc->t and sc->m hold its parse */
};

/*
 * The flow cache's fast path, before the full parse: a packet of the
 * commonest kind (untagged Ethernet; IPv4 without options and not a later
 * fragment, or IPv6 without extension headers; TCP, or UDP that is not
 * VXLAN) is matched against its slot straight from its headers and
 * counted there when the slot is fresh (ft_fc_fresh, as for the full
 * path's ft_fc_hit) and it is no SYN, FIN or RST. Everything else takes
 * the general parse, which builds the same key. tc's cost per packet was
 * twice the counting floor's with the cache; most of the rest was the
 * general parse (VLAN, IPv6 extension headers, VXLAN) filling the tuple,
 * metadata and key. A packet of its kind that the slot cannot count (a
 * connection's SYN, FIN or RST, a miss) leaves its tuple and metadata in
 * sc, as the general parse would have made them, which that parse then
 * skips: under connection churn nearly every packet is one (~25 ns of
 * each, TestChurnCost). Inline: as a subprogram, its call and return
 * (through the retbleed return thunk on this machine's kernel) were ~3 ns
 * of a hit's ~18 above the floor, and its frame is small.
 */
static __always_inline int ft_fc_fast(struct __sk_buff *skb, struct ft_scratch *sc, __u8 dir)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *end = (const __u8 *)(long)skb->data_end;
	const __u8 *l4;
	struct ft_pmeta m = {};
	struct ft_fc_slot *s;
	const __u64 *kx;
	__u64 s0, s1, d0, d1;
	__u32 x, ports, h0, h1;
	__u8 proto, ipv, flags = 0;
	__u16 ethertype;
	__u64 now, *tw;
	int hit;

	if (data + 14 > end)
		return FT_FAST_NONE;
	ethertype = *(const __u16 *)(data + 12);
	if (ethertype == bpf_htons(FT_ETH_P_IP)) {
		const struct ft_ip4 *ip = (const void *)(data + 14);

		if ((const void *)(ip + 1) > (const void *)end || ip->vihl != 0x45 ||
		    (ip->frag_off & bpf_htons(0x1fff)))
			return FT_FAST_NONE;
		proto = ip->proto;
		/* The key holds an IPv4 address in its first word, zeros after. */
		s0 = ip->saddr;
		d0 = ip->daddr;
		s1 = d1 = 0;
		h0 = ip->saddr;
		h1 = ip->daddr;
		m.l3_len = bpf_ntohs(ip->tot_len);
		m.df = !!(ip->frag_off & bpf_htons(0x4000));
		ipv = 4;
		l4 = data + 14 + sizeof(*ip);
	} else if (ethertype == bpf_htons(FT_ETH_P_IPV6)) {
		const struct ft_ip6 *ip = (const void *)(data + 14);

		if ((const void *)(ip + 1) > (const void *)end ||
		    (ip->vtcfl & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
			return FT_FAST_NONE;
		proto = ip->nexthdr;
		s0 = *(const __u64 *)ip->saddr;
		s1 = *(const __u64 *)(ip->saddr + 8);
		d0 = *(const __u64 *)ip->daddr;
		d1 = *(const __u64 *)(ip->daddr + 8);
		h0 = (__u32)s0 ^ (__u32)(s1 >> 32);
		h1 = (__u32)d0 ^ (__u32)(d1 >> 32);
		m.l3_len = 40 + (__u32)bpf_ntohs(ip->payload_len);
		ipv = 6;
		l4 = data + 14 + sizeof(*ip);
	} else {
		return FT_FAST_NONE;
	}
	if (proto == FT_IPPROTO_TCP) {
		if (l4 + 14 > end)
			return FT_FAST_NONE;
		flags = l4[13];
		m.l4_hlen = (l4[12] >> 4) * 4;
	} else if (proto == FT_IPPROTO_UDP) {
		if (l4 + 8 > end)
			return FT_FAST_NONE;
		m.l4_hlen = 8;
	} else {
		return FT_FAST_NONE;
	}
	/*
	 * Ports as the key holds them: each in host order, source first.
	 * The packet has them in network order: swap the bytes of each half.
	 */
	x = *(const __u32 *)l4;
	ports = ((x & 0x00ff00ffu) << 8) | ((x >> 8) & 0x00ff00ffu);
	if (proto == FT_IPPROTO_UDP &&
	    ((ports >> 16) == FT_VXLAN_PORT || (ports >> 16) == FT_VXLAN_PORT_FLANNEL))
		return FT_FAST_NONE; /* the inner flow's key: the full path */
	m.l3_off = 14;
	m.l4_off = l4 - data;
	/* A connection's SYN, FIN and RST are reported from its entry. */
	if (flags & (FT_TCP_SYN | FT_TCP_FIN | FT_TCP_RST))
		goto parsed;

	now = ft_now(&sc->clk);
	s = &sc->fc[ft_fc_hash(h0, h1, ports, skb->ifindex, dir)];
	sc->fc_busy = 1;
	ft_barrier();
	kx = (const __u64 *)&s->key;
	/* Words 4 and 5: ports, proto, version, dir, pad; ifindex, vni (0). */
	hit = s->since && kx[0] == s0 && kx[1] == s1 && kx[2] == d0 && kx[3] == d1 &&
	      kx[4] == ((__u64)ports | (__u64)proto << 32 | (__u64)ipv << 40 | (__u64)dir << 48) &&
	      kx[5] == skb->ifindex &&
	      ft_fc_fresh(s, skb, ipv, &m, dir == FT_DIR_INGRESS, now);
	if (hit)
		ft_fc_count(sc, s, skb, flags);
	ft_barrier();
	sc->fc_busy = 0;
	if (hit)
		return FT_FAST_HIT;
parsed:
	/*
	 * The tuple as ft_parse_eth makes it, in its six words: addresses
	 * (an IPv4 one in the first word, zeros after); ports in host order,
	 * ethertype, the offloaded VLAN tag; version, protocol, TCP flags
	 * (ICMP type and code, status: zero).
	 */
	tw = (__u64 *)&sc->t;
	tw[0] = s0;
	tw[1] = s1;
	tw[2] = d0;
	tw[3] = d1;
	tw[4] = (__u64)ports | (__u64)bpf_ntohs(ethertype) << 32 |
		(__u64)(skb->vlan_present ? skb->vlan_tci & 0x0fff : 0) << 48;
	tw[5] = (__u64)ipv | (__u64)proto << 8 | (__u64)flags << 16;
	sc->m = m;
	return FT_FAST_PARSED;
}

/* The slot takes the flow of the packet just accounted into v (its entry). */
static __always_inline void ft_fc_fill(struct ft_fc_slot *s, const struct ft_scratch *sc,
				       struct ft_flow_val *v, __u64 now)
{
	__builtin_memcpy(&s->key, &sc->k, sizeof(s->key));
	ft_fc_clear(s);
	s->since = now;
	__sync_fetch_and_add(&v->slots, 1);
	/* Only an MTU that stays fresh for the slot's whole life. */
	s->mtu = ft_since(now, v->mtu_checked_ns) + (__s64)ft_fc_hold_ns <
			 (__s64)ft_flow_report_interval_ns ? v->egress_mtu : 0;
}

/*
 * The stages are subprograms so that no call chain needs more than the
 * 512-byte BPF stack: each stage's parse buffers live only in its own frame.
 * The rest of tc's work stays inline after the flow cache's hit: as a
 * subprogram of its own, its frame put the deepest chains (tc -> account
 * -> conntrack, tc -> ICMP's PMTU parse) at 544 bytes on 5.10 and 6.1.
 */
static __always_inline int ft_tc(struct __sk_buff *skb, __u8 dir)
{
	__u32 zero = 0;
	struct ft_scratch *sc;
	struct ft_fc_slot *s = 0;
	int same, fast;
	struct ft_flow_val *v;
	__u64 now;

	sc = bpf_map_lookup_elem(&ft_scratch, &zero);
	if (!sc)
		return FT_TC_ACT_UNSPEC;
	sc->tc_packets += 1; /* per-CPU slot: no atomic needed */
	fast = ft_fc_on && !sc->fc_busy ? ft_fc_fast(skb, sc, dir) : FT_FAST_NONE;
	if (fast == FT_FAST_HIT)
		return FT_TC_ACT_UNSPEC;
	/*
	 * Word stores, behind a barrier: clang merged this memset with the
	 * fast path's store of sc->m just before it into one unaligned range
	 * and zeroed it a byte at a time (41 stores a packet under churn).
	 */
	ft_barrier();
	__builtin_memset(__builtin_assume_aligned(&sc->enc, 8), 0, sizeof(sc->enc));
	sc->take_slot = 0;
	if (fast != FT_FAST_PARSED) {
		__builtin_memset(&sc->t, 0, sizeof(sc->t));
		__builtin_memset(&sc->m, 0, sizeof(sc->m));
		if (ft_tc_parse(skb, &sc->t, &sc->m, &sc->enc) != FT_PARSE_OK)
			return FT_TC_ACT_UNSPEC;
	}
	now = ft_now(&sc->clk);
	ft_flow_key_of(&sc->k, &sc->t, &sc->enc, dir, skb->ifindex);
	if (ft_fc_on && !sc->fc_busy) {
		s = &sc->fc[ft_fc_index(&sc->k)];
		sc->fc_busy = 1;
		ft_barrier();
		same = s->since && ft_fc_same(&s->key, &sc->k);
		if (same && ft_fc_hit(s, sc, skb, dir, now)) {
			ft_fc_count(sc, s, skb, sc->t.tcp_flags);
			ft_barrier();
			sc->fc_busy = 0;
			return FT_TC_ACT_UNSPEC;
		}
		if (same) {
			/* The entry takes them with this packet: no second lookup. */
			sc->take_packets = s->packets;
			sc->take_bytes = s->bytes;
			sc->take_flags = s->tcp_flags;
			sc->take_slot = 1;
			ft_fc_clear(s);
		} else {
			ft_fc_evict(s);
		}
	}
	v = ft_flow_account(skb, sc, dir, now);
	if (v && !sc->enc.ip_version) {
		if (sc->t.proto == FT_IPPROTO_ICMP || sc->t.proto == FT_IPPROTO_ICMPV6)
			ft_icmp_pmtu(skb, &sc->t, &sc->m, dir, v->netns);
		/* ICMP too: a DF ping is how people probe a path's MTU. */
		if (dir == FT_DIR_INGRESS &&
		    ft_mtu_due(ft_mtu_wire(skb, sc->t.ip_version, &sc->m), v, now))
			ft_mtu_check(skb, &sc->t, &sc->m, v, now);
	}
	if (s) {
		/*
		 * Not with the packet that made the entry: a flow's second
		 * packet fills the slot. A short connection (connect, then
		 * RST: connection churn) then never counts a packet in a slot,
		 * where its closing report, run on another CPU, could not take
		 * it: the count came later as an idle report of its own, one
		 * event more per connection. Nor with a FIN or RST, nor once
		 * a FIN was seen: the connection is ending, a slot holding
		 * the entry would keep ft_flow_end from deleting it, and the
		 * final ACK that ends it must reach the entry, not the slot.
		 */
		if (v && !sc->created && !(sc->t.tcp_flags & (FT_TCP_FIN | FT_TCP_RST)) && !v->fin)
			ft_fc_fill(s, sc, v, now);
		ft_barrier();
		sc->fc_busy = 0;
	}
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

/*
 * Writes this CPU's flow-cache slots back into the flow table. User space
 * runs it on every CPU (BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU)
 * before it walks the table for idle flows. Returns 1 when tc is using the
 * slots on this CPU right now (this run interrupted it): try again.
 */
SEC("raw_tp")
int ft_fc_flush(void *ctx)
{
	__u32 zero = 0;
	struct ft_scratch *sc = bpf_map_lookup_elem(&ft_scratch, &zero);
	int i;

	if (!sc)
		return 0;
	if (sc->fc_busy)
		return 1;
	sc->fc_busy = 1;
	ft_barrier();
	for (i = 0; i < FT_FC_SLOTS; i++)
		ft_fc_evict(&sc->fc[i]);
	ft_barrier();
	sc->fc_busy = 0;
	return 0;
}

#endif /* FT_FLOW_H */
