/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * The per-CPU front cache of the flow table.
 *
 * The flow-table hash lookup (a 48-byte key) and its two atomic adds were
 * about half of tc's own cost per packet. Most packets are the next one of
 * a flow this CPU has just seen, so each CPU keeps a few direct-mapped
 * slots in its scratch value (no extra map lookup): a packet whose flow is
 * in its slot is counted there with plain adds, and the slot's counts go
 * into the flow entry (write-back) when the slot is reused, when it is
 * older than ft_fc_hold_ns (so the entry's reports and idle time stay
 * within a few ms of the truth), with any packet of the flow that must see
 * the entry (SYN/FIN/RST, an MTU re-check), and when user space runs
 * ft_fc_flush on the CPU (before every idle-flow walk), so a CPU that saw
 * nothing since cannot sit on counts.
 *
 * Counts leave a slot exactly once: only its own CPU writes it, and
 * fc_busy (per CPU, in ft_scratch) keeps ft_fc_flush, which can interrupt
 * tc on that CPU (an IPI) or be interrupted by it (a softirq), off a slot
 * the other is in the middle of updating. Whoever finds it set leaves the
 * slots alone: tc accounts into the entry directly, the flush reports the
 * CPU busy and user space tries again.
 */
#ifndef FT_FCACHE_H
#define FT_FCACHE_H

#include "ft_event.h"
#include "ft_maps.h"
#include "ft_config.h"
#include "ft_parse.h"

/* Slots per CPU, a power of two. 16 x 80 bytes ride in ft_scratch. */
#define FT_FC_BITS 4
#define FT_FC_SLOTS (1 << FT_FC_BITS)

/*
 * Set by user space once ft_fc_flush is known to run on every CPU here
 * (BPF_F_TEST_RUN_ON_CPU): without it a slot could hold counts forever.
 * A variable, not a load-time constant, as that is only known after the
 * load; reading it is one load.
 */
volatile __u8 ft_fc_on = 0;

struct ft_fc_slot {
	struct ft_flow_key key;
	__u64 packets; /* counted here, not yet in the entry */
	__u64 bytes;
	__u64 since;     /* ft_now when the slot took the flow; 0 = empty */
	__u32 tcp_flags; /* OR of the packets counted here */
	/* The entry's egress_mtu when the slot took it, 0 = unknown: ingress
	 * packets above it go to the entry, which re-checks. */
	__u32 mtu;
};

/*
 * A flow's slot from the first and last words of each address (an IPv4
 * address is the first word, the last is zero), the ports word as the key
 * holds it, the device and the direction. Taking words, not a key, lets
 * tc's fast path hash a packet straight from its headers.
 */
static __always_inline __u32 ft_fc_hash(__u32 src, __u32 dst, __u32 ports, __u32 ifindex, __u8 dir)
{
	__u32 h = src ^ (dst * 0x85ebca6bu) ^ ports ^ ifindex ^ ((__u32)dir << 31);

	h *= 0x9e3779b1u; /* Fibonacci hashing: the top bits mix all of h */
	return h >> (32 - FT_FC_BITS);
}

static __always_inline __u32 ft_fc_index(const struct ft_flow_key *k)
{
	const __u32 *w = (const __u32 *)k;

	return ft_fc_hash(w[0] ^ w[3], w[4] ^ w[7], w[8], k->ifindex, k->dir);
}

static __always_inline int ft_fc_same(const struct ft_flow_key *a, const struct ft_flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) |
		 (x[4] ^ y[4]) | (x[5] ^ y[5]));
}

/* Adds counts to a flow entry the way tc does (plain atomic adds, see ft_flow_account). */
static __always_inline void ft_fc_add(struct ft_flow_val *v, __u64 packets, __u64 bytes,
				      __u32 flags)
{
	__sync_fetch_and_add(&v->packets, packets);
	__sync_fetch_and_add(&v->bytes, bytes);
	if (flags && (v->tcp_flags & flags) != flags)
		v->tcp_flags |= flags;
}

static __always_inline void ft_fc_clear(struct ft_fc_slot *s)
{
	s->packets = 0;
	s->bytes = 0;
	s->tcp_flags = 0;
	s->since = 0;
}

/*
 * Writes a slot's counts back into its flow entry, which no longer counts
 * the slot among its holders, and empties the slot. The entry may be gone
 * (the idle walk deleted it): the counts are then counted as
 * orphaned, not dropped silently.
 */
static __noinline int ft_fc_evict(struct ft_fc_slot *s)
{
	struct ft_flow_val *v;
	__u64 pk = s->packets;

	if (s->since) {
		v = bpf_map_lookup_elem(&ft_flows, &s->key);
		if (v) {
			if (pk)
				ft_fc_add(v, pk, s->bytes, s->tcp_flags);
			__sync_fetch_and_add(&v->slots, -1);
		} else if (pk) {
			ft_stat_add(FT_STAT_FC_ORPHANED, pk);
		}
	}
	ft_fc_clear(s);
	return pk != 0;
}

#endif /* FT_FCACHE_H */
