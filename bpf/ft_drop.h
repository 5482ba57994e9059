/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Kernel drops from the kfree_skb tracepoint. Two entry programs share one
 * handler: tp_btf (cheap, typed) and raw_tp for kernels or setups where the
 * BTF-typed attach is refused. btf, a constant per program, picks how the
 * sk_buff is read: tp_btf dereferences it directly (the verifier turns each
 * load into a fault-safe one, ~1 ns), raw_tp must use a probe read per
 * field (BPF_CORE_READ, ~30 ns each here: with a dozen fields that was
 * most of the hook's cost). Drops are never sampled.
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

/* One sk_buff field: a direct load in tp_btf, a probe read in raw_tp. */
#define FT_SKB(btf, skb, field) ((btf) ? (skb)->field : BPF_CORE_READ(skb, field))

/*
 * The fold memo: a write-back cache, per CPU, of the fold slot this CPU
 * used last. A storm is one signature dropping again and again on a CPU,
 * and the slot's hash lookup (a 72-byte key) was about a third of the
 * hook's cost per drop: while the memo holds the signature, a drop is
 * counted here with a key compare and a few plain stores. Its counts go
 * into the slot (write-back) when the signature's window ends on this CPU
 * (the next drop is emitted from the slot as before) and when user space
 * runs ft_drop_flush on the CPU, which it does before every fold walk that
 * finds counts pending here (pkg/datapath FlushDrops). drops_folded counts
 * a memo's drops at write-back, so a walk never takes a drop still in a
 * memo for lost.
 */
struct ft_drop_memo {
	struct ft_drop_key key;
	__u64 created; /* the slot instance it counts for (created_ns); 0 = none */
	__u64 emit;    /* that slot's emit_ns: the memo folds within its window */
	__u64 pending; /* drops counted here, not yet in the slot; must stay 8-aligned at dropHdrPendingOff */
	__u64 first;   /* the first of them */
	__u64 last;    /* the last of them, or the slot's last_ns when taken */
	__u32 skb_iif; /* of the last of them */
	__u32 pkt_len;
};

/*
 * Per-CPU state of the drop hook, looked up once per drop. The tracepoint
 * program never nests on a CPU (the kernel skips a recursive run), so one
 * value per CPU is enough.
 */
struct ft_drop_hdr {
	/*
	 * FT_STAT_DROPS_SEEN, FT_STAT_DROPS_FOLDED and FT_STAT_DROP_MEMO_HITS
	 * are counted here, not in ft_stats: a second map lookup per drop
	 * just to count cost ~10 ns each. User space adds them by offset
	 * (pkg/datapath dropHdr*Off).
	 */
	__u64 seen;
	__u64 folded;
	__u64 memo_hits;
	__u64 parsed_fast; /* FT_STAT_DROPS_PARSED_FAST: ft_drop_tuple_fast did the parse */
	/*
	 * The last ft_netns_scope answer on this CPU: a storm's drops share a
	 * netns, and the hash lookup was ~30 ns of each. Valid while
	 * scope_gen equals ft_scope_gen, which user space bumps after every
	 * change of the scope map.
	 */
	__u32 scope_netns;
	__u32 scope_gen;
	__u8 scope_in;
	/*
	 * The memo (and the fold slots through it) is in use on this CPU:
	 * ft_drop_flush, which can interrupt the hook (an IPI), leaves it
	 * alone and asks to be run again; the hook, which can interrupt the
	 * flush (a softirq while it runs on its caller's CPU), emits the drop
	 * without folding it.
	 */
	__u8 busy;
	__u8 _pad[6];
	struct ft_clock_memo clk; /* the fold clock; lives across drops */
	struct ft_drop_memo memo;
	/*
	 * The dropped packet's first FT_DROP_HDR bytes from its network
	 * header, read with one probe read so the parser's header loads are
	 * plain memory loads. 8-aligned, for ft_drop_tuple_fast's word loads.
	 */
	__u8 b[FT_DROP_HDR];
};

_Static_assert(__builtin_offsetof(struct ft_drop_hdr, b) % 8 == 0, "ft_drop_hdr.b must be 8-aligned");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_drop_hdr);
} ft_drop_hdrs SEC(".maps");

/* See ft_drop_hdr.scope_gen; starts at 1 so a zeroed memo never matches. */
volatile __u32 ft_scope_gen = 1;

static __always_inline int ft_in_scope(struct ft_drop_hdr *hb, __u32 netns)
{
	/* Read before the lookup: a change after it then voids the memo. */
	__u32 gen = ft_scope_gen;
	int in;

	if (hb && hb->scope_gen == gen && hb->scope_netns == netns)
		return hb->scope_in;
	in = bpf_map_lookup_elem(&ft_netns_scope, &netns) != 0;
	if (hb) {
		hb->scope_netns = netns;
		hb->scope_gen = gen;
		hb->scope_in = in;
	}
	return in;
}

static __always_inline __u32 ft_skb_netns(struct sk_buff *skb, __u32 *ifindex, int btf)
{
	struct net_device *dev = FT_SKB(btf, skb, dev);
	struct sock *sk;
	__u32 inum = 0;

	*ifindex = 0;
	if (dev) {
		if (btf) {
			*ifindex = dev->ifindex;
			inum = dev->nd_net.net->ns.inum;
		} else {
			*ifindex = BPF_CORE_READ(dev, ifindex);
			inum = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		}
	}
	if (!inum) {
		sk = FT_SKB(btf, skb, sk);
		if (sk)
			inum = btf ? sk->__sk_common.skc_net.net->ns.inum
				   : BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	return inum;
}

/*
 * The commonest dropped packet parsed straight from the copy's aligned
 * words: IPv4 without options and not a later fragment, or IPv6 whose next
 * header is the L4 one; TCP or UDP, with as much of its header in the copy
 * as the general parse reads (14 bytes for TCP's flags, 4 for UDP's
 * ports). The general parse (ft_parse_l3) copies through ft_load byte by
 * byte, which was ~13 ns of the hook's ~80 per drop in a storm. It fills t
 * exactly as ft_parse_l3 would, since fold memos and slots compare tuples
 * made by either (TestDropFastParse holds them to that), and returns 1;
 * anything else returns 0 with t untouched, for the general parse.
 */
static __always_inline int ft_drop_tuple_fast(const __u8 *b, __u32 buflen, __u16 ethertype,
					      struct ft_tuple *t)
{
	__u32 l4, x;
	__u8 proto;

	if (ethertype == FT_ETH_P_IP) {
		if (b[0] != 0x45 || (*(const __u16 *)(b + 6) & bpf_htons(0x1fff)))
			return 0;
		proto = b[9];
		l4 = 20;
	} else if (ethertype == FT_ETH_P_IPV6) {
		if ((b[0] >> 4) != 6)
			return 0;
		proto = b[6];
		l4 = 40;
	} else {
		return 0;
	}
	if (proto == FT_IPPROTO_TCP) {
		if (buflen < l4 + 14)
			return 0;
		t->tcp_flags = b[l4 + 13];
	} else if (proto != FT_IPPROTO_UDP || buflen < l4 + 4) {
		return 0;
	}
	if (l4 == 20) {
		*(__u32 *)t->saddr = *(const __u32 *)(b + 12);
		*(__u32 *)t->daddr = *(const __u32 *)(b + 16);
		t->ip_version = 4;
	} else {
		*(__u64 *)t->saddr = *(const __u64 *)(b + 8);
		*(__u64 *)(t->saddr + 8) = *(const __u64 *)(b + 16);
		*(__u64 *)t->daddr = *(const __u64 *)(b + 24);
		*(__u64 *)(t->daddr + 8) = *(const __u64 *)(b + 32);
		t->ip_version = 6;
	}
	x = *(const __u32 *)(b + l4); /* both ports, network order */
	t->sport = bpf_ntohs((__u16)x);
	t->dport = bpf_ntohs((__u16)(x >> 16));
	t->ethertype = ethertype;
	t->proto = proto;
	t->status = FT_PARSE_OK;
	return 1;
}

/*
 * The general parse of the dropped packet's headers (at head, end bytes of
 * linear data), from a copy of its first FT_DROP_HDR bytes in hb: the fast
 * parse first, unless it already refused the packet in place (tried),
 * then ft_parse_l3. Its own function, so the drops the in-place parse
 * takes never pay for this one's stack set-up.
 */
static __always_inline void ft_drop_tuple_copied(const unsigned char *head, __u32 end,
						 __u16 proto, struct ft_tuple *t,
						 struct ft_drop_hdr *hb, int tried)
{
	struct ft_src src = { .head = head, .end = end };
	struct ft_pmeta m = {};

	/*
	 * Always FT_DROP_HDR bytes: a constant size every verifier accepts
	 * (5.10's loses the bound of a computed one). Bytes past the linear
	 * data are never parsed (buflen), and the probe read is fault-safe.
	 */
	if (hb && !bpf_probe_read_kernel(hb->b, FT_DROP_HDR, head)) {
		src.buf = hb->b;
		src.buflen = end < FT_DROP_HDR ? end : FT_DROP_HDR;
		if (ft_drop_fast_parse && !tried && ft_drop_tuple_fast(hb->b, src.buflen, proto, t)) {
			hb->parsed_fast += 1; /* per-CPU value: no atomic needed */
			return;
		}
	}
	t->status = ft_parse_l3(&src, 0, proto, t, &m);
}

/* Parse the dropped packet's headers into t (on the stack, before folding). */
static __always_inline void ft_drop_tuple(struct sk_buff *skb, struct ft_tuple *t,
					  struct ft_drop_hdr *hb, int btf)
{
	const unsigned char *head = FT_SKB(btf, skb, head);
	__u32 tail = FT_SKB(btf, skb, tail);
	__u16 nh = FT_SKB(btf, skb, network_header);
	__u16 proto = bpf_ntohs(FT_SKB(btf, skb, protocol));
	__u32 end;

	/* Early drops may happen before the network header was set. */
	if (nh == FT_HDR_UNSET || nh == 0 || nh >= tail) {
		t->ethertype = proto;
		t->status = FT_PARSE_TRUNCATED;
		return;
	}
	end = tail - nh;
	/*
	 * In place where the kernel allows it (ft_drop_direct): a load past
	 * the mapping reads 0 instead of faulting, and the length keeps the
	 * parse inside the linear data.
	 */
	if (btf && ft_drop_direct && ft_drop_fast_parse) {
		if (ft_drop_tuple_fast(bpf_rdonly_cast(head + nh, 0), end < FT_DROP_HDR ? end : FT_DROP_HDR,
				       proto, t)) {
			if (hb)
				hb->parsed_fast += 1;
			return;
		}
		ft_drop_tuple_copied(head + nh, end, proto, t, hb, 1);
		return;
	}
	ft_drop_tuple_copied(head + nh, end, proto, t, hb, 0);
}

/*
 * ft_drop_fold_in returns 1 when this drop was folded (counted, no event).
 * A drop is emitted when its signature has no slot on this CPU or the last
 * emitted drop of the slot is older than the window; the drops folded in
 * between are reported by user space from the slot's cumulative counter, so
 * a storm costs one event per window per CPU plus one per user-space walk.
 * A slot is made by the second drop of a signature within a window (see
 * ft_drop_recent), which it counts as its first fold.
 * Times are boot time: tracing programs may not use the coarse clock
 * (bpf_ktime_get_coarse_ns is refused there). now is memoised per jiffy
 * (ft_boot_memo): a window of 100 ms needs no better, and an emitted drop
 * reads the exact time itself.
 */
static __always_inline int ft_drop_fold_in(struct ft_drop_key *k, struct sk_buff *skb, __u64 now,
					   int btf, struct ft_drop_fold **used)
{
	struct ft_drop_fold *f = bpf_map_lookup_elem(&ft_drop_folds, k);
	__u64 *emitted;

	if (!f) {
		struct ft_drop_fold nf = {};

		emitted = bpf_map_lookup_elem(&ft_drop_recent, k);
		/* Signed: another CPU's memo can be a tick ahead of ours. */
		if (!emitted || ft_since(now, *emitted) >= (__s64)ft_drop_fold_window_ns) {
			bpf_map_update_elem(&ft_drop_recent, k, &now, BPF_ANY);
			return 0;
		}
		/*
		 * Values of a per-CPU map created here start on this CPU only;
		 * the other CPUs' slots stay zero (unused) until they fold.
		 * The fold is dated after the emitted drop, as a slot's times
		 * must increase.
		 */
		if (now <= *emitted)
			now = *emitted + 1;
		nf.created_ns = now;
		nf.emit_ns = *emitted;
		nf.fold_first_ns = now;
		nf.last_ns = now;
		nf.folded = 1;
		nf.skb_iif = FT_SKB(btf, skb, skb_iif);
		nf.pkt_len = FT_SKB(btf, skb, len);
		/* Full map (LRU evicts) or a race with another CPU: just emit. */
		if (bpf_map_update_elem(&ft_drop_folds, k, &nf, BPF_NOEXIST))
			return 0;
		return 1;
	}
	if (f->created_ns && ft_since(now, f->emit_ns) < (__s64)ft_drop_fold_window_ns) {
		/*
		 * The memo repeats one time for a whole jiffy, but user space
		 * dates a report's first drop as the previous report's last
		 * + 1 ns: keep a slot's times strictly increasing (it runs
		 * ahead of the memo by 1 ns per drop at most until the next
		 * jiffy's reading catches up).
		 */
		if (now <= f->last_ns)
			now = f->last_ns + 1;
		f->folded += 1; /* per-CPU slot: no atomic needed */
		if (!f->fold_first_ns)
			f->fold_first_ns = now;
		f->last_ns = now;
		f->skb_iif = FT_SKB(btf, skb, skb_iif);
		f->pkt_len = FT_SKB(btf, skb, len);
		*used = f;
		return 1;
	}
	if (!f->created_ns)
		f->created_ns = now; /* first use of this entry on this CPU */
	f->emit_ns = now;
	f->fold_first_ns = 0;
	*used = f;
	return 0;
}

static __always_inline int ft_drop_key_eq(const struct ft_drop_key *a, const struct ft_drop_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]) |
		 (x[5] ^ y[5]) | (x[6] ^ y[6]) | (x[7] ^ y[7]) | (x[8] ^ y[8]));
}

/* Counts the drop in the memo if it holds k's slot within its window. */
static __always_inline int ft_memo_fold(struct ft_drop_memo *mm, const struct ft_drop_key *k,
					struct sk_buff *skb, __u64 now, int btf)
{
	if (!mm->created || ft_since(now, mm->emit) >= (__s64)ft_drop_fold_window_ns ||
	    !ft_drop_key_eq(&mm->key, k))
		return 0;
	/* Strictly increasing, like the slot's own times (ft_drop_fold_in). */
	if (now <= mm->last)
		now = mm->last + 1;
	if (!mm->pending)
		mm->first = now;
	mm->pending += 1;
	mm->last = now;
	mm->skb_iif = FT_SKB(btf, skb, skb_iif);
	mm->pkt_len = FT_SKB(btf, skb, len);
	return 1;
}

/*
 * Moves the memo's counts into its slot and empties it. A slot that is
 * gone or was made anew since (LRU eviction, user space deleted it idle)
 * cannot take them: they still count as folded, and user space, which
 * never reports them, counts them as lost (drops_fold_lost).
 */
static __always_inline void ft_memo_writeback(struct ft_drop_hdr *hb)
{
	struct ft_drop_memo *mm = &hb->memo;
	struct ft_drop_fold *f;
	__u64 n = mm->pending;

	if (n) {
		f = bpf_map_lookup_elem(&ft_drop_folds, &mm->key);
		if (f && f->created_ns == mm->created) {
			f->folded += n; /* per-CPU slot, and busy keeps others off */
			if (!f->fold_first_ns)
				f->fold_first_ns = mm->first;
			f->last_ns = mm->last;
			f->skb_iif = mm->skb_iif;
			f->pkt_len = mm->pkt_len;
		}
		hb->folded += n;
	}
	mm->pending = 0;
	mm->created = 0;
}

/*
 * The memo takes k's slot f (just used by a drop): only from an empty
 * memo, or one whose signature's window is over, so a storm of another
 * signature neither steals it from one in progress nor forces a
 * write-back per drop when signatures interleave.
 */
static __always_inline void ft_memo_take(struct ft_drop_memo *mm, const struct ft_drop_key *k,
					 const struct ft_drop_fold *f, __u64 now)
{
	if (mm->pending ||
	    (mm->created && ft_since(now, mm->emit) < (__s64)ft_drop_fold_window_ns))
		return;
	__builtin_memcpy(&mm->key, k, sizeof(mm->key));
	mm->created = f->created_ns;
	mm->emit = f->emit_ns;
	mm->last = f->last_ns > f->emit_ns ? f->last_ns : f->emit_ns;
}

/*
 * Folds the drop (1) or says to emit it (0): through this CPU's memo, else
 * the fold slot, which the memo then takes when it may.
 */
static __always_inline int ft_drop_fold(struct ft_drop_hdr *hb, struct ft_drop_key *k,
					struct sk_buff *skb, __u64 now, int btf)
{
	struct ft_drop_memo *mm = &hb->memo;
	struct ft_drop_fold *f = 0;
	int folded;

	if (!ft_drop_memo_enabled) {
		folded = ft_drop_fold_in(k, skb, now, btf, &f);
		if (folded)
			hb->folded += 1;
		return folded;
	}
	if (hb->busy)
		return 0; /* interrupted ft_drop_flush: emit, leave the slots alone */
	hb->busy = 1;
	ft_barrier();
	if (ft_memo_fold(mm, k, skb, now, btf)) {
		hb->memo_hits += 1;
		folded = 1;
	} else {
		/* Its window is over: the slot takes its counts before it emits. */
		if (mm->pending && ft_drop_key_eq(&mm->key, k))
			ft_memo_writeback(hb);
		folded = ft_drop_fold_in(k, skb, now, btf, &f);
		if (folded)
			hb->folded += 1;
		if (f)
			ft_memo_take(mm, k, f, now);
	}
	ft_barrier();
	hb->busy = 0;
	return folded;
}

/*
 * has_reason and btf are compile-time constants per program: kernels before
 * 5.17 pass no reason (and call consume_skb, not kfree_skb, for normal
 * frees); btf says the skb may be dereferenced directly (tp_btf).
 */
static __always_inline int ft_handle_drop(struct sk_buff *skb, __u64 location, __u32 reason,
					  int has_reason, int btf)
{
	struct ft_drop_event *e;
	struct ft_drop_key k = {};
	struct ft_drop_hdr *hb;
	__u32 zero = 0;
	__u64 now;

	if (has_reason && (reason == ft_reason_not_dropped || reason == ft_reason_consumed))
		return 0;
	if (has_reason && (reason == ft_reason_socket_close || reason == ft_reason_queue_purge)) {
		ft_stat_inc(FT_STAT_DROPS_TEARDOWN);
		return 0;
	}
	hb = bpf_map_lookup_elem(&ft_drop_hdrs, &zero);
	if (hb)
		hb->seen += 1; /* per-CPU value: no atomic needed */
	else
		ft_stat_inc(FT_STAT_DROPS_SEEN);

	k.netns = ft_skb_netns(skb, &k.ifindex, btf);
	if (!ft_scope_all_netns && !ft_in_scope(hb, k.netns)) {
		ft_stat_inc(FT_STAT_DROPS_OUT_OF_SCOPE);
		return 0;
	}
	k.location = location;
	k.reason = reason;
	ft_drop_tuple(skb, &k.tuple, hb, btf);
	/* hb is always there (a one-entry array); without it, no folding. */
	if (ft_drop_fold_window_ns && hb && ft_drop_fold(hb, &k, skb, ft_boot_memo(&hb->clk), btf))
		return 0;
	/*
	 * An event carries the exact time. It also becomes the memo, so the
	 * drops folded after it are never dated before it.
	 */
	now = bpf_ktime_get_boot_ns();
	if (hb && ft_jiffies_enabled)
		hb->clk.ns = now;

	e = ft_rb_reserve(sizeof(*e));
	if (!e)
		return 0;
	ft_fill_hdr(&e->hdr, FT_EV_DROP, sizeof(*e), now);
	__builtin_memcpy(&e->tuple, &k.tuple, sizeof(e->tuple));
	e->location = location;
	e->first_ns = now;
	e->last_ns = now;
	e->reason = reason;
	e->ifindex = k.ifindex;
	e->skb_iif = FT_SKB(btf, skb, skb_iif);
	e->netns = k.netns;
	e->pkt_len = FT_SKB(btf, skb, len);
	e->count = 1;
	ft_ct_from_kskb(skb, &e->tuple, &e->ct, 0);
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_DROP_EVENTS);
	return 0;
}

/*
 * Writes this CPU's fold memo back into its slot. User space runs it
 * (BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU) on each CPU whose memo
 * holds counts, before it reads the fold slots. Returns 1 when the drop
 * hook is using the memo on this CPU right now (this run interrupted it):
 * try again.
 */
SEC("raw_tp")
int ft_drop_flush(void *ctx)
{
	__u32 zero = 0;
	struct ft_drop_hdr *hb = bpf_map_lookup_elem(&ft_drop_hdrs, &zero);

	if (!hb)
		return 0;
	if (hb->busy)
		return 1;
	hb->busy = 1;
	ft_barrier();
	ft_memo_writeback(hb);
	ft_barrier();
	hb->busy = 0;
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
	return ft_handle_drop(skb, (__u64)location, reason, 1, 1);
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(ft_kfree_raw, struct sk_buff *skb, void *location, __u32 reason)
{
	return ft_handle_drop(skb, (__u64)location, reason, 1, 0);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(ft_kfree_btf2, struct sk_buff *skb, void *location)
{
	return ft_handle_drop(skb, (__u64)location, 0, 0, 1);
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(ft_kfree_raw2, struct sk_buff *skb, void *location)
{
	return ft_handle_drop(skb, (__u64)location, 0, 0, 0);
}

#endif /* FT_DROP_H */
