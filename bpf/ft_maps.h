/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef FT_MAPS_H
#define FT_MAPS_H

#include "ft_event.h"
#include "ft_config.h"

/* The only ring buffer. max_entries is rewritten by the loader (power of two). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} ft_events SEC(".maps");

/* Failed ring buffer reserves, per CPU (key 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ft_lost SEC(".maps");

/* Per CPU: what decides the ring buffer's wake-ups (ft_rb_flags). */
struct ft_rb_state {
	__u64 seq; /* events submitted: the every-256th wake-up without jiffies */
	__u64 woke; /* jiffy of the last wake-up */
	__u64 wakes; /* wake-ups asked for (tests check the rule by it) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_rb_state);
} ft_rb_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ft_stats SEC(".maps");

#define FT_EEXIST 17 /* a BPF_NOEXIST update's error when the key is there (-EEXIST) */

/*
 * Per-connection aggregation; max_entries is rewritten by the loader.
 *
 * A plain hash, not an LRU: entries leave when their connection closes
 * (ft_flow_end) or the agent's idle walk reports them, never by eviction.
 * The LRU's evictions took a live flow's unreported counts with them, with
 * no trace, and under connection churn its free-list handling
 * (bpf_lru_pop_free, bpf_lru_push_free, their shared lock) was ~30% of tc's
 * samples in a perf profile of the bench's paced churn. When this table is
 * full, a packet without an entry is reported on its own and counted
 * (FT_STAT_FLOW_TABLE_FULL): more events, none lost in silence.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ft_flow_key);
	__type(value, struct ft_flow_val);
} ft_flows SEC(".maps");

/* Network namespaces (inode) whose drops are reported; filled by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} ft_netns_scope SEC(".maps");

/* A drop signature: drops equal in all of these fold together. 72 bytes. */
struct ft_drop_key {
	struct ft_tuple tuple;
	__u64 location;
	__u32 reason;
	__u32 ifindex;
	__u32 netns;
	__u32 _pad;
};

/*
 * Per-CPU fold state of one signature. Only the BPF side writes it; user
 * space reads `folded` (cumulative, never reset while the slot lives) and
 * remembers how much it has reported, so no count is handed over by a
 * write that could race with the kernel's increment.
 */
struct ft_drop_fold {
	__u64 created_ns;    /* slot instance on this CPU; 0 = never used */
	__u64 emit_ns;       /* last drop of this slot emitted as an event */
	__u64 fold_first_ns; /* first drop folded since emit_ns, 0 = none */
	__u64 last_ns;       /* last folded drop */
	__u64 folded;        /* drops folded since created_ns */
	__u32 skb_iif;       /* of the last folded drop */
	__u32 pkt_len;
};

/*
 * Drop signatures, per-CPU values so the hot path needs no atomics.
 * max_entries is rewritten by the loader.
 */
struct {
	__uint(type, 10); /* BPF_MAP_TYPE_LRU_PERCPU_HASH (uapi, 4.10+) */
	__uint(max_entries, 16384);
	__type(key, struct ft_drop_key);
	__type(value, struct ft_drop_fold);
} ft_drop_folds SEC(".maps");

/*
 * The last emitted drop of each signature (boot ns), whatever the CPU. A
 * fold slot is only made for a signature that drops again within the fold
 * window: most signatures are one drop each (a closed port hit once per
 * connection, a TCP reset), and user space walks every fold slot every 40
 * ms at ~0.5 us a slot, so under connection churn a slot per drop made the
 * walks most of the agent's CPU. User space never reads this map; the LRU
 * forgets old signatures. max_entries is rewritten by the loader.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ft_drop_key);
	__type(value, __u64);
} ft_drop_recent SEC(".maps");

/*
 * Orders a busy flag's stores around the use of the per-CPU state it
 * guards, for the compiler: the flag only keeps apart programs that
 * interrupt each other on one CPU (fc_busy in ft_fcache.h, the drop memo's
 * busy in ft_drop.h), so no CPU barrier is needed.
 */
#define ft_barrier() asm volatile("" ::: "memory")

static __always_inline void ft_stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&ft_stats, &idx);

	if (v)
		*v += n; /* per-CPU slot: no atomic needed */
}

static __always_inline void ft_stat_inc(__u32 idx)
{
	ft_stat_add(idx, 1);
}

/*
 * Wake-ups, per CPU, are at least this many jiffies apart (4-40 ms, by
 * HZ), unless the reader falls ft_rb_wake_backlog bytes behind.
 */
#define FT_RB_WAKE_GAP 4

/*
 * Waking the reader on every submit costs ~4-7 us per event on the target
 * machines: the wake-up is an irq_work, a self-interrupt that a VM traps.
 * Under connection churn (~150,000 events/s) even a wake-up every 256th
 * event was ~1% of the machine in tc's own time (perf: native_write_msr
 * under bpf_ringbuf_submit), plus a sleep/wake cycle of the agent's
 * threads each. So where jiffies are readable (5.5+), a CPU wakes the
 * reader when it has unread data and has not woken it for
 * FT_RB_WAKE_GAP: the first event after a quiet spell (the first drop of
 * an incident) is seen at once, and a busy ring is read in batches at
 * most a few ms old. A backlog of ft_rb_wake_backlog wakes it at once (at
 * most once per jiffy), so a burst cannot fill the ring between two
 * gaps. The Go reader also polls (readPollLone), for a record submitted
 * just after a wake-up on a CPU that then goes quiet.
 *
 * Without jiffies (5.4 and older) every 256th event wakes it, and the
 * reader polls more often (readPoll).
 */
static __always_inline __u64 ft_rb_flags(void)
{
	__u32 zero = 0;
	struct ft_rb_state *s = bpf_map_lookup_elem(&ft_rb_seq, &zero);
	__u64 j;

	if (!s)
		return BPF_RB_FORCE_WAKEUP;
	s->seq += 1;
	if (!ft_jiffies_enabled) {
		if (s->seq & 255)
			return BPF_RB_NO_WAKEUP;
	} else {
		j = bpf_jiffies64();
		if (j - s->woke < FT_RB_WAKE_GAP &&
		    (j == s->woke ||
		     bpf_ringbuf_query(&ft_events, BPF_RB_AVAIL_DATA) < ft_rb_wake_backlog))
			return BPF_RB_NO_WAKEUP;
		s->woke = j;
	}
	s->wakes += 1;
	return BPF_RB_FORCE_WAKEUP;
}

static __always_inline void *ft_rb_reserve(__u32 size)
{
	void *e = bpf_ringbuf_reserve(&ft_events, size, 0);

	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&ft_lost, &zero);

		if (lost)
			*lost += 1;
	}
	return e;
}

/*
 * A clock value read in the jiffy `jiffies` on this CPU (per-CPU map
 * storage). Readers of the same jiffy reuse it: the memo is at most about a
 * tick behind the clock (two when the reader sees the new jiffy before the
 * tick updated timekeeping), never ahead, and never goes backwards on a CPU.
 */
struct ft_clock_memo {
	__u64 jiffies;
	__u64 ns;
};

/*
 * A clock read at most once per jiffy and CPU: c holds this jiffy's
 * reading (bpf_jiffies64 is a plain load on 64-bit JITs). boot is a
 * constant at each call, so each program keeps only its own clock's call:
 * tracing programs may not call the coarse read.
 */
static __always_inline __u64 ft_clock_memo(struct ft_clock_memo *c, int boot)
{
	__u64 j = 0;

	if (ft_jiffies_enabled) {
		j = bpf_jiffies64();
		if (c->jiffies == j && c->ns)
			return c->ns;
	}
	if (boot)
		c->ns = bpf_ktime_get_boot_ns();
	else
		c->ns = ft_coarse_clock_enabled ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns();
	if (ft_jiffies_enabled)
		c->jiffies = j;
	return c->ns;
}

/*
 * The clock of tc's per-packet bookkeeping (ft_flow_val's *_ns):
 * CLOCK_MONOTONIC at tick resolution where the kernel has the cheap coarse
 * read. Good enough for intervals of seconds; event timestamps use exact
 * boot time instead. tc only: the drop path keeps boot time (ft_boot_memo).
 */
static __always_inline __u64 ft_now(struct ft_clock_memo *c)
{
	return ft_clock_memo(c, 0);
}

/* Boot time, memoised per jiffy like ft_now (for tracing programs). */
static __always_inline __u64 ft_boot_memo(struct ft_clock_memo *c)
{
	return ft_clock_memo(c, 1);
}

/*
 * Whether two keys of n 8-byte words are equal (n a constant: unrolled),
 * without a branch per word.
 */
static __always_inline int ft_words_eq(const void *a, const void *b, const int n)
{
	const __u64 *x = a, *y = b;
	__u64 diff = 0;

	for (int i = 0; i < n; i++)
		diff |= x[i] ^ y[i];
	return !diff;
}

/*
 * Time from then to now of ft_now (or ft_boot_memo) values, signed: a flow
 * entry is shared by all CPUs, and another CPU's memo may be a tick ahead of this one's (and
 * without the memo, its read may simply land later), so a time stored in the
 * entry can be "after" now. Unsigned, that difference wraps to a huge
 * interval and fires a spurious periodic report or MTU re-check.
 */
static __always_inline __s64 ft_since(__u64 now, __u64 then)
{
	return (__s64)(now - then);
}

/* ts: the exact bpf_ktime_get_boot_ns(), read only when an event is written. */
static __always_inline void ft_fill_hdr(struct ft_event_hdr *h, __u8 type, __u16 len, __u64 ts)
{
	h->type = type;
	h->version = FT_EVENT_VERSION;
	h->len = len;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = ts;
}

/* A flow event's fields after its tuple, but for ct, encap and rev_*. */
static __always_inline void ft_fill_flow(struct ft_flow_event *e, const struct ft_flow_key *k,
					 __u32 netns, __u32 pkt_len, __u8 reason, __u64 packets,
					 __u64 bytes)
{
	e->packets = packets;
	e->bytes = bytes;
	e->ifindex = k->ifindex;
	e->netns = netns;
	e->pkt_len = pkt_len;
	e->dir = k->dir;
	e->reason = reason;
	e->_pad = 0;
}

#endif /* FT_MAPS_H */
