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
 * A fast-parsable drop's key in raw form: the header words the fast parse
 * reads, as they are in the packet, with the key's other fields. Equal
 * signatures make equal keys (ft_drop_tuple_raw builds the tuple from
 * nothing else), so a storm's drop is matched to the memo by comparing
 * eight words, without building its key.
 */
struct ft_drop_sig {
	__u64 location;
	__u64 id;   /* reason | ifindex << 32 */
	__u64 kind; /* netns | ethertype << 32 | proto << 48 | TCP flags << 56 */
	__u64 a[4]; /* IPv4: saddr and daddr in a[0]; IPv6: saddr a[0..1], daddr a[2..3] */
	__u64 ports; /* both ports, network order, as in the packet */
};

/*
 * The fold memo: a write-back cache, per CPU, of the fold slot this CPU
 * used last. A storm is one signature dropping again and again on a CPU,
 * and the slot's hash lookup (a 72-byte key) was about a third of the
 * hook's cost per drop: while the memo holds the signature, a drop is
 * counted here with a compare of its signature (ft_drop_storm) and a few
 * plain stores. Its counts go into the slot (write-back) when the
 * signature's window ends on this CPU (the next drop is emitted from the
 * slot as before) and when user space
 * runs ft_drop_flush on the CPU, which it does before every fold walk that
 * finds counts pending here (pkg/datapath FlushDrops). drops_folded counts
 * a memo's drops at write-back, so a walk never takes a drop still in a
 * memo for lost.
 */
struct ft_drop_memo {
	__u64 created; /* the slot instance it counts for (created_ns); 0 = none */
	__u64 emit;    /* that slot's emit_ns: the memo folds within its window */
	__u64 pending; /* drops counted here, not yet in the slot; must stay 8-aligned at dropHdrPendingOff */
	__u64 first;   /* the first of them */
	__u64 last;    /* the last of them, or the slot's last_ns when taken */
	__u32 skb_iif; /* of the last of them */
	__u32 pkt_len;
	struct ft_drop_key key; /* last: a storm's drop (ft_drop_storm) never reads it */
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
	__u64 parsed_fast; /* FT_STAT_DROPS_PARSED_FAST: ft_drop_raw read the headers */
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
	__u8 sig_ok; /* sig is the memo's signature (see ft_drop_storm) */
	__u8 _pad[5];
	/* The device memo (ft_skb_netns): its address, jiffy and answers. */
	__u64 dev;
	__u64 dev_jiffies;
	__u32 dev_ifindex;
	__u32 dev_netns;
	struct ft_clock_memo clk; /* the fold clock; lives across drops */
	/*
	 * What a storm's drop touches (ft_drop_storm) is the 200 bytes up to
	 * memo.key, contiguous: the hook's cost is mostly cache misses.
	 */
	struct ft_drop_sig sig;
	struct ft_drop_memo memo;
	/*
	 * The dropped packet's first FT_DROP_HDR bytes from its network
	 * header, read with one probe read so the parser's header loads are
	 * plain memory loads. 8-aligned, for ft_drop_raw's word loads.
	 */
	__u8 b[FT_DROP_HDR];
};

_Static_assert(__builtin_offsetof(struct ft_drop_hdr, b) % 8 == 0, "ft_drop_hdr.b must be 8-aligned");
_Static_assert(__builtin_offsetof(struct ft_drop_hdr, memo.key) == 200, "a storm's drop touches 200 bytes");

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

/*
 * The dropping device's ifindex and netns. A storm's drops share a device,
 * so they are memoised per CPU (hb->dev_*): reading them through skb->dev
 * (dev->ifindex, then dev->nd_net.net->ns.inum, dependent loads on lines
 * of the device and its netns) was ~10 ns of a drop's ~75 in TestDropCost.
 * The memo is keyed by the device's address and holds for the current
 * jiffy only: a device moved to another netns (which closes it and waits
 * for an RCU grace period; it must be brought up again before it drops
 * anything) or freed and its memory reused is read afresh from the next
 * jiffy on, at most one tick later.
 */
static __always_inline __u32 ft_skb_netns(struct sk_buff *skb, __u32 *ifindex, int btf,
					  struct ft_drop_hdr *hb)
{
	struct net_device *dev = FT_SKB(btf, skb, dev);
	struct sock *sk;
	__u32 inum = 0;
	__u64 j = 0;

	*ifindex = 0;
	if (dev) {
		if (ft_jiffies_enabled && hb) {
			j = bpf_jiffies64();
			if (hb->dev == (__u64)dev && hb->dev_jiffies == j) {
				*ifindex = hb->dev_ifindex;
				return hb->dev_netns;
			}
		}
		if (btf) {
			*ifindex = dev->ifindex;
			inum = dev->nd_net.net->ns.inum;
		} else {
			*ifindex = BPF_CORE_READ(dev, ifindex);
			inum = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		}
		if (j && inum) {
			hb->dev = (__u64)dev;
			hb->dev_jiffies = j;
			hb->dev_ifindex = *ifindex;
			hb->dev_netns = inum;
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
 * The commonest dropped packet read straight from its aligned words (in
 * place or in hb's copy): IPv4 without options and not a later fragment,
 * or IPv6 whose next header is the L4 one; TCP or UDP, with as much of its
 * header in b as the general parse reads (14 bytes for TCP's flags, 4 for
 * UDP's ports). The general parse (ft_parse_l3) copies through ft_load
 * byte by byte, which was ~13 ns of the hook's ~80 per drop in a storm.
 * Fills r's header words and returns 1; anything else returns 0, for the
 * general parse.
 */
static __always_inline int ft_drop_raw(const __u8 *b, __u32 buflen, __u16 ethertype,
				       struct ft_drop_sig *r)
{
	__u64 w0, w, flags = 0;
	__u32 l4;
	__u8 proto;

	/*
	 * Whole words, each load one (fault-safe, in place) instruction
	 * sequence: 3 loads for IPv4 UDP where byte and field loads took 5.
	 * Little-endian: a word's low byte is the first in the packet.
	 */
	if (ethertype == FT_ETH_P_IP) {
		if (buflen < 24)
			return 0;
		w0 = *(const __u64 *)b; /* version/IHL .. fragment offset */
		if ((__u8)w0 != 0x45 || ((w0 >> 48) & bpf_htons(0x1fff)))
			return 0;
		w = *(const __u64 *)(b + 8); /* TTL, protocol, checksum, saddr */
		proto = w >> 8;
		r->a[0] = w >> 32;
		w = *(const __u64 *)(b + 16); /* daddr, ports */
		r->a[0] |= w << 32;
		r->a[1] = 0;
		r->a[2] = 0;
		r->a[3] = 0;
		l4 = 20;
	} else if (ethertype == FT_ETH_P_IPV6) {
		if (buflen < 44)
			return 0;
		w0 = *(const __u64 *)b; /* version .. hop limit */
		if (((__u8)w0 >> 4) != 6)
			return 0;
		proto = w0 >> 48;
		r->a[0] = *(const __u64 *)(b + 8);
		r->a[1] = *(const __u64 *)(b + 16);
		r->a[2] = *(const __u64 *)(b + 24);
		r->a[3] = *(const __u64 *)(b + 32);
		w = (__u64)*(const __u32 *)(b + 40) << 32;
		l4 = 40;
	} else {
		return 0;
	}
	if (proto == FT_IPPROTO_TCP) {
		if (buflen < l4 + 14)
			return 0;
		flags = b[l4 + 13];
	} else if (proto != FT_IPPROTO_UDP) {
		return 0;
	}
	r->ports = w >> 32;
	r->kind = (__u64)ethertype << 32 | (__u64)proto << 48 | flags << 56;
	return 1;
}

/*
 * t from r, exactly as ft_parse_l3 would fill it, since fold memos and
 * slots compare tuples made by either (TestDropFastParse holds them to
 * that). t is zeroed.
 */
static __always_inline void ft_drop_tuple_raw(const struct ft_drop_sig *r, struct ft_tuple *t)
{
	__u16 ethertype = r->kind >> 32;

	if (ethertype == FT_ETH_P_IP) {
		*(__u32 *)t->saddr = (__u32)r->a[0];
		*(__u32 *)t->daddr = r->a[0] >> 32;
		t->ip_version = 4;
	} else {
		*(__u64 *)t->saddr = r->a[0];
		*(__u64 *)(t->saddr + 8) = r->a[1];
		*(__u64 *)t->daddr = r->a[2];
		*(__u64 *)(t->daddr + 8) = r->a[3];
		t->ip_version = 6;
	}
	t->sport = bpf_ntohs((__u16)r->ports);
	t->dport = bpf_ntohs((__u16)(r->ports >> 16));
	t->ethertype = ethertype;
	t->proto = r->kind >> 48;
	t->tcp_flags = r->kind >> 56;
	t->status = FT_PARSE_OK;
}

/*
 * The general parse of the dropped packet's headers (at head, end bytes of
 * linear data) into t, from a copy of its first FT_DROP_HDR bytes in hb;
 * first the fast read (ft_drop_raw) of the copy into r, unless it already
 * refused the packet in place (tried). Returns 1 when r was filled, t
 * untouched. Its own function, so the drops read in place never pay for
 * its stack set-up.
 */
static __always_inline int ft_drop_headers_copied(const unsigned char *head, __u32 end,
						  __u16 proto, struct ft_tuple *t,
						  struct ft_drop_hdr *hb, int tried,
						  struct ft_drop_sig *r)
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
		if (ft_drop_fast_parse && !tried && ft_drop_raw(hb->b, src.buflen, proto, r))
			return 1;
	}
	t->status = ft_parse_l3(&src, 0, proto, t, &m);
	return 0;
}

/* Where the dropped packet's network header is, and whether the hook may read it in place. */
struct ft_drop_nh {
	const unsigned char *head;
	__u32 end; /* linear bytes from the network header; valid when set */
	__u16 proto;
	__u8 set; /* the network header was set (early drops may come before) */
	__u8 in_place;
};

static __always_inline void ft_drop_nh_of(struct sk_buff *skb, int btf, struct ft_drop_nh *h)
{
	__u32 tail = FT_SKB(btf, skb, tail);
	__u16 nh = FT_SKB(btf, skb, network_header);

	h->head = FT_SKB(btf, skb, head) + nh;
	h->proto = bpf_ntohs(FT_SKB(btf, skb, protocol));
	h->set = nh != FT_HDR_UNSET && nh != 0 && nh < tail;
	h->in_place = h->set && btf && ft_drop_direct && ft_drop_fast_parse;
	h->end = tail - nh;
}

/*
 * A storm's drop: its header words read in place into r (1), where the
 * kernel allows it (ft_drop_direct): a load past the mapping reads 0
 * instead of faulting, and the length keeps the read inside the linear
 * data. 0: the rest of the hook reads them (ft_drop_headers).
 */
static __always_inline int ft_drop_sig_in_place(const struct ft_drop_nh *h, struct ft_drop_sig *r)
{
	return h->in_place &&
	       ft_drop_raw(bpf_rdonly_cast(h->head, 0), h->end < FT_DROP_HDR ? h->end : FT_DROP_HDR,
			   h->proto, r);
}

/*
 * Reads the dropped packet's headers when ft_drop_sig_in_place did not:
 * into r when the fast read takes them from a copy (FT_HDRS_FAST), else
 * the general way into k's tuple (FT_HDRS_GENERAL). k is zeroed.
 */
enum { FT_HDRS_GENERAL, FT_HDRS_FAST };

static __always_inline int ft_drop_headers(const struct ft_drop_nh *h, struct ft_drop_key *k,
					   struct ft_drop_hdr *hb, struct ft_drop_sig *r)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (!h->set) {
		k->tuple.ethertype = h->proto;
		k->tuple.status = FT_PARSE_TRUNCATED;
		return FT_HDRS_GENERAL;
	}
	return ft_drop_headers_copied(h->head, h->end, h->proto, &k->tuple, hb, h->in_place, r) ?
		       FT_HDRS_FAST :
		       FT_HDRS_GENERAL;
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
	_Static_assert(sizeof(*a) == 72, "ft_drop_key is compared as 9 words");
	return ft_words_eq(a, b, sizeof(*a) / 8);
}

/* Counts a drop of the memo's signature in it while its window lasts. */
static __always_inline int ft_memo_count(struct ft_drop_memo *mm, struct sk_buff *skb, __u64 now,
					 int btf)
{
	if (!mm->created || ft_since(now, mm->emit) >= (__s64)ft_drop_fold_window_ns)
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

static __always_inline int ft_drop_sig_eq(const struct ft_drop_sig *a, const struct ft_drop_sig *b)
{
	return !((a->location ^ b->location) | (a->id ^ b->id) | (a->kind ^ b->kind) |
		 (a->a[0] ^ b->a[0]) | (a->a[1] ^ b->a[1]) | (a->a[2] ^ b->a[2]) |
		 (a->a[3] ^ b->a[3]) | (a->ports ^ b->ports));
}

/*
 * A storm's drop, matched to the memo by its signature r (ft_drop_raw's
 * words) instead of its key: no tuple to build, no 72-byte key to fill
 * and compare. The memo's key and its signature change together
 * (ft_memo_take), and an empty or expired memo counts nothing, which
 * sends the drop the slow way. With what it touches packed together
 * (ft_drop_hdr) and the knobs in one cache line (ft_config.h),
 * TestDropCost went from 81-88 to 74-77 ns a drop.
 */
static __always_inline int ft_drop_storm(struct ft_drop_hdr *hb, const struct ft_drop_sig *r,
					 struct sk_buff *skb, int btf)
{
	int folded;

	if (!ft_drop_memo_enabled || hb->busy || !hb->sig_ok || !ft_drop_sig_eq(&hb->sig, r))
		return 0;
	hb->busy = 1;
	ft_barrier();
	folded = ft_memo_count(&hb->memo, skb, ft_boot_memo(&hb->clk), btf);
	if (folded)
		hb->memo_hits += 1;
	ft_barrier();
	hb->busy = 0;
	return folded;
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
static __always_inline void ft_memo_take(struct ft_drop_hdr *hb, const struct ft_drop_key *k,
					 const struct ft_drop_sig *r, const struct ft_drop_fold *f,
					 __u64 now)
{
	struct ft_drop_memo *mm = &hb->memo;

	if (mm->pending ||
	    (mm->created && ft_since(now, mm->emit) < (__s64)ft_drop_fold_window_ns))
		return;
	__builtin_memcpy(&mm->key, k, sizeof(mm->key));
	/* r: the signature of k, or none (a drop the general parse read). */
	hb->sig_ok = r != 0;
	if (r)
		__builtin_memcpy(&hb->sig, r, sizeof(hb->sig));
	mm->created = f->created_ns;
	mm->emit = f->emit_ns;
	mm->last = f->last_ns > f->emit_ns ? f->last_ns : f->emit_ns;
}

/*
 * Folds the drop (1) or says to emit it (0): through this CPU's memo, else
 * the fold slot, which the memo then takes when it may.
 */
static __always_inline int ft_drop_fold(struct ft_drop_hdr *hb, struct ft_drop_key *k,
					const struct ft_drop_sig *r, struct sk_buff *skb, __u64 now,
					int btf)
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
	if (ft_drop_key_eq(&mm->key, k) && ft_memo_count(mm, skb, now, btf)) {
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
			ft_memo_take(hb, k, r, f, now);
	}
	ft_barrier();
	hb->busy = 0;
	return folded;
}

/*
 * What the drop hook's first part learned, for the rest (ft_drop_rest):
 * on its stack, passed by pointer (a subprogram takes five arguments).
 */
struct ft_drop_in {
	struct ft_drop_sig r; /* the signature; complete when sig */
	struct ft_drop_nh h;
	__u64 location;
	__u32 reason;
	__u32 netns;
	__u32 ifindex;
	__u32 sig;
};

/*
 * A drop whose headers ft_drop_raw read (in place, or from a copy):
 * completes its signature with where, why, which device and netns, and
 * counts it in the memo when it is a storm's (1: done).
 */
static __always_inline int ft_drop_sig_storm(struct ft_drop_hdr *hb, struct ft_drop_in *in,
					     struct sk_buff *skb, int btf)
{
	in->r.location = in->location;
	in->r.id = in->reason | (__u64)in->ifindex << 32;
	in->r.kind |= in->netns;
	if (!hb)
		return 0; /* always there (a one-entry array); without it, no folding */
	hb->parsed_fast += 1; /* per-CPU value: no atomic needed */
	return ft_drop_fold_window_ns && ft_drop_storm(hb, &in->r, skb, btf);
}

/*
 * Everything but a storm's drop that the memo counted: the headers read
 * from a copy or the general way, the fold slots, the event. btf is a
 * compile-time constant per caller (ft_drop_rest_btf, ft_drop_rest_raw).
 */
static __always_inline int ft_drop_rest(struct sk_buff *skb, struct ft_drop_in *in, int btf)
{
	struct ft_drop_event *e;
	struct ft_drop_key k; /* zeroed below */
	struct ft_drop_sig *raw = 0;
	struct ft_drop_hdr *hb;
	__u32 zero = 0;
	__u64 now;

	hb = bpf_map_lookup_elem(&ft_drop_hdrs, &zero);
	if (in->sig) {
		__builtin_memset(&k, 0, sizeof(k));
		ft_drop_tuple_raw(&in->r, &k.tuple);
		raw = &in->r;
	} else if (ft_drop_headers(&in->h, &k, hb, &in->r) == FT_HDRS_FAST) {
		if (ft_drop_sig_storm(hb, in, skb, btf))
			return 0;
		ft_drop_tuple_raw(&in->r, &k.tuple);
		raw = &in->r;
	}
	k.netns = in->netns;
	k.ifindex = in->ifindex;
	k.location = in->location;
	k.reason = in->reason;
	if (ft_drop_fold_window_ns && hb &&
	    ft_drop_fold(hb, &k, raw, skb, ft_boot_memo(&hb->clk), btf))
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
	e->location = in->location;
	e->first_ns = now;
	e->last_ns = now;
	e->reason = in->reason;
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
 * Subprograms, one per way of reading the sk_buff: each program is then
 * only its storm path (scope, signature, memo), a few cache lines of code
 * that every drop of a storm runs start to end, with the rest out of its
 * way. The chain stays within the 512-byte stack on 5.10 and 6.1 (the
 * program's frame and this one's: 480 bytes); tc's hit path could not be
 * split the same way (ft_tc).
 */
static __noinline int ft_drop_rest_btf(struct sk_buff *skb, struct ft_drop_in *in)
{
	return ft_drop_rest(skb, in, 1);
}

static __noinline int ft_drop_rest_raw(struct sk_buff *skb, struct ft_drop_in *in)
{
	return ft_drop_rest(skb, in, 0);
}

/*
 * has_reason and btf are compile-time constants per program: kernels before
 * 5.17 pass no reason (and call consume_skb, not kfree_skb, for normal
 * frees); btf says the skb may be dereferenced directly (tp_btf).
 */
static __always_inline int ft_handle_drop(struct sk_buff *skb, __u64 location, __u32 reason,
					  int has_reason, int btf)
{
	struct ft_drop_in in;
	struct ft_drop_hdr *hb;
	__u32 zero = 0;

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

	in.netns = ft_skb_netns(skb, &in.ifindex, btf, hb);
	if (!ft_scope_all_netns && !ft_in_scope(hb, in.netns)) {
		ft_stat_inc(FT_STAT_DROPS_OUT_OF_SCOPE);
		return 0;
	}
	in.location = location;
	in.reason = reason;
	ft_drop_nh_of(skb, btf, &in.h);
	in.sig = ft_drop_sig_in_place(&in.h, &in.r);
	if (in.sig && ft_drop_sig_storm(hb, &in, skb, btf))
		return 0;
	return btf ? ft_drop_rest_btf(skb, &in) : ft_drop_rest_raw(skb, &in);
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
