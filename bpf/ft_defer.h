/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef FT_DEFER_H
#define FT_DEFER_H

#include "ft_event.h"
#include "ft_maps.h"
#include "ft_config.h"

/*
 * A new flow entry's first report, held for a moment (the queue's
 * delay_ns, the agent's --flow-first-report-delay).
 *
 * Under connection churn the NEW reports were most of what a connection
 * cost: a short connection made six events (a NEW for each direction and
 * a close at each of two veths), and a build without the NEWs measured
 * 7.45% of the machine at 20,000 connections/s where main measured 12.5%
 * (README). A connection that ends within the delay needs no NEW: its
 * close report carries everything (both directions' counts and flags, the
 * SYN among them). Any other entry gets its NEW when the delay is up, from
 * a per-CPU queue that a bpf_timer drains, not at its next packet, which
 * may never come (a UDP exchange, an idle pooled connection).
 *
 * The queue holds each new entry's key and first packet. Its callback, at
 * the delay, finds the entry and
 *  - sends the NEW from it (all its counts so far, dated by the first
 *    packet) unless a report went out meanwhile (FT_DEFER_FIRST clear);
 *  - deletes it when its close was reported (FT_DEFER_ENDED): an entry
 *    the queue refers to (FT_DEFER_QUEUED) is only deleted here (the
 *    agent's idle walk leaves it too), so a missing entry means a delete
 *    raced with its making (the walk read the key's previous entry), and
 *    the first packet is reported from the queue (FT_STAT_DEFER_EVICTED),
 *    never lost. An entry made again under the same key since has another
 *    defer_id. Where tc could end the entry at its close itself, the slot
 *    is void and skipped (ft_defer_end).
 *
 * Only tc on the queue's CPU fills it and only the callback empties it,
 * which runs on that CPU (pinned where the kernel can, 6.7+; observed so
 * on 6.1 where it cannot), in softirq context: the two never interleave
 * and plain loads and stores suffice. A full queue reports at once
 * (FT_STAT_DEFER_FULL).
 */

#define FT_DEFER_SLOTS 1024 /* per CPU: 51,200 new entries/s a CPU at 20 ms */
#define FT_DEFER_BATCH 256  /* slots one callback run looks at */

enum {
	FT_DEFER_QUEUED = 1, /* a queue slot refers to the entry */
	FT_DEFER_FIRST = 2,  /* its first report has not gone out */
	FT_DEFER_ENDED = 4,  /* its close was reported: the callback deletes it */
};

/* 88 bytes. */
struct ft_defer_slot {
	struct ft_flow_key key;
	__u64 boot_ns; /* the first packet's time: the NEW's */
	__u64 at;      /* ft_now when queued */
	__u32 id;      /* the entry's defer_id */
	__u32 pkt_len; /* the first packet's */
	__u32 netns;
	__u16 ethertype;
	__u16 vlan;
	__u8 flags; /* the first packet's TCP flags */
	__u8 voided; /* its entry's close was reported and the entry ended by tc */
	__u8 _pad[6];
};

struct ft_defer_q {
	struct bpf_timer timer;
	__u64 head;     /* next slot the callback looks at */
	__u64 tail;     /* next slot tc fills */
	__u64 armed;    /* ft_now when tc started the timer; 0: the queue was empty */
	__u64 delay_ns; /* set by ft_defer_init; 0: nothing is held */
	__u64 pin;      /* bpf_timer_start's flags: BPF_F_TIMER_CPU_PIN where known */
	struct ft_defer_slot slots[FT_DEFER_SLOTS];
};

/* One queue per CPU, by CPU id; max_entries is rewritten by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_defer_q);
} ft_defer SEC(".maps");

/*
 * This CPU's queue if it can take a slot, else NULL (report at once). It
 * marks the new entry nv held, with the first packet in its counts
 * (first: its length, its TCP flags from bit 32) and what a flow-cache
 * slot held for it (pk packets, by bytes), as it will be inserted.
 */
static __noinline struct ft_defer_q *ft_defer_room(struct ft_flow_val *nv, __u64 first, __u64 pk,
						   __u64 by)
{
	__u32 cpu;
	struct ft_defer_q *q;

	cpu = bpf_get_smp_processor_id();
	q = bpf_map_lookup_elem(&ft_defer, &cpu);
	if (!q || !q->delay_ns)
		return 0;
	if (q->tail - q->head >= FT_DEFER_SLOTS) {
		ft_stat_inc(FT_STAT_DEFER_FULL);
		return 0;
	}
	/* The entry, not a NEW, carries the first packet (and a slot's). */
	nv->packets = 1 + pk;
	nv->bytes = (__u32)first + by;
	nv->tcp_flags = (__u8)(first >> 32);
	nv->defer = FT_DEFER_QUEUED | FT_DEFER_FIRST;
	nv->defer_id = (__u32)q->tail << 8 | (cpu & 0xff);
	return q;
}

/*
 * Queues entry k's first report (nv: the entry as inserted; first: as
 * for ft_defer_room).
 */
static __noinline int ft_defer_push(struct ft_defer_q *q, const struct ft_flow_key *k,
				    const struct ft_flow_val *nv, __u64 first, __u64 now)
{
	struct ft_defer_slot *s;
	__u32 pkt_len = (__u32)first;
	__u8 flags = (__u8)(first >> 32);

	s = &q->slots[q->tail & (FT_DEFER_SLOTS - 1)];

	__builtin_memcpy(&s->key, k, sizeof(s->key));
	s->boot_ns = bpf_ktime_get_boot_ns();
	s->at = now;
	s->id = nv->defer_id;
	s->pkt_len = pkt_len;
	s->netns = nv->netns;
	s->ethertype = nv->ethertype;
	s->vlan = nv->vlan;
	s->flags = flags;
	s->voided = 0;
	q->tail += 1;
	/*
	 * The callback clears armed when it leaves the queue empty. A start
	 * long overdue means a timer that ran elsewhere and missed this
	 * push's predecessor: start it again.
	 */
	if (!q->armed || ft_since(now, q->armed) > (__s64)(4 * q->delay_ns)) {
		q->armed = now;
		bpf_timer_start(&q->timer, q->delay_ns, q->pin);
	}
	return 0;
}

/*
 * After its close was reported, an entry the queue refers to (QUEUED)
 * either leaves its slot now or is left for the callback to delete
 * (ENDED). Returns whether it was left.
 *
 * Left, it was looked up and deleted again at the delay, when the entry
 * and its bucket had long left the cache: under the bench's churn four
 * entries a connection, 80,000 cold lookups and deletes a second in
 * timer softirq, which no program's run time shows. Where the slot is in
 * this CPU's queue and the queue's timer is pinned to this CPU (6.7+),
 * tc (bottom halves off) and the callback (a softirq) never interleave,
 * as ft_defer_q's plain loads and stores already rely on, so tc marks the
 * slot void, which the callback skips without a lookup, and the entry
 * ends like any other (ft_flow_end), while it is still in the cache.
 * Elsewhere (the close on another CPU, a kernel
 * that cannot pin) the callback deletes it, as it always could.
 */
static __always_inline int ft_defer_end(struct ft_flow_val *v, const struct ft_flow_key *k)
{
	struct ft_defer_slot *s;
	struct ft_defer_q *q;
	__u32 cpu;

	_Static_assert(sizeof(*k) % 8 == 0, "ft_flow_key is compared in 8-byte words");

	/* ft_defer_enabled: nothing is queued, and 5.10 is not shown the queue. */
	if (!ft_defer_enabled || !(v->defer & FT_DEFER_QUEUED))
		return 0;
	cpu = bpf_get_smp_processor_id();
	if ((v->defer_id & 0xff) == (cpu & 0xff)) {
		q = bpf_map_lookup_elem(&ft_defer, &cpu);
		if (q && q->pin) {
			/*
			 * QUEUED: the callback has not settled it, so the slot is
			 * its, if this CPU made it: defer_id keeps 8 bits of the
			 * CPU, and the key tells CPU 1's entry from CPU 257's.
			 */
			s = &q->slots[(v->defer_id >> 8) & (FT_DEFER_SLOTS - 1)];
			if (s->id == v->defer_id && ft_words_eq(&s->key, k, sizeof(*k) / 8)) {
				s->voided = 1;
				v->defer = 0;
				return 0;
			}
		}
	}
	v->defer = FT_DEFER_QUEUED | FT_DEFER_ENDED;
	v->fin = 3;
	return 1;
}

/* A flow event from an entry's key alone (no packet at hand). */
static __always_inline void ft_defer_emit(const struct ft_flow_key *k, __u64 ts, __u32 netns,
					  __u16 ethertype, __u16 vlan, const struct ft_ct *ct,
					  const struct ft_encap *enc, __u32 pkt_len, __u8 reason,
					  __u64 packets, __u64 bytes, __u8 flags)
{
	struct ft_flow_event *e = ft_rb_reserve(sizeof(*e));
	struct ft_tuple *t;

	if (!e)
		return;
	ft_fill_hdr(&e->hdr, FT_EV_FLOW, sizeof(*e), ts);
	t = &e->tuple;
	__builtin_memcpy(t->saddr, k->saddr, 16);
	__builtin_memcpy(t->daddr, k->daddr, 16);
	t->sport = k->sport;
	t->dport = k->dport;
	t->icmp_type = 0;
	t->icmp_code = 0;
	/* The key holds ICMP's type and code as its ports (ft_flow_key_of). */
	if (k->proto == FT_IPPROTO_ICMP || k->proto == FT_IPPROTO_ICMPV6) {
		t->icmp_type = (__u8)k->sport;
		t->icmp_code = (__u8)k->dport;
		t->sport = 0;
		t->dport = 0;
	}
	t->ethertype = ethertype;
	t->vlan = vlan;
	t->ip_version = k->ip_version;
	t->proto = k->proto;
	t->tcp_flags = flags;
	t->status = 0;
	t->_pad[0] = 0;
	t->_pad[1] = 0;
	ft_fill_flow(e, k, netns, pkt_len, reason, packets, bytes);
	e->rev_tcp_flags = 0;
	if (ct)
		e->ct = *ct;
	else
		__builtin_memset(&e->ct, 0, sizeof(e->ct));
	if (enc)
		e->encap = *enc;
	else
		__builtin_memset(&e->encap, 0, sizeof(e->encap));
	e->rev_packets = 0;
	e->rev_bytes = 0;
	bpf_ringbuf_submit(e, ft_rb_flags());
	ft_stat_inc(FT_STAT_FLOW_EVENTS);
}

/*
 * Takes v's unreported counts the way every report does (read, then
 * subtract what was read: another CPU's packets in between stay for the
 * next report). Returns the packets taken.
 */
static __always_inline __u64 ft_defer_take(struct ft_flow_val *v, __u64 *bytes, __u8 *flags)
{
	__u64 pk = v->packets, by = v->bytes;
	__u8 fl = (__u8)v->tcp_flags;

	if (!pk)
		return 0;
	__sync_fetch_and_add(&v->packets, -pk);
	__sync_fetch_and_add(&v->bytes, -by);
	if (fl)
		__sync_fetch_and_add(&v->tcp_flags, -(__u32)fl);
	*bytes = by;
	*flags = fl;
	return pk;
}

/* A slot whose delay is up, with its entry v (or NULL: deleted). */
static __always_inline void ft_defer_settle(const struct ft_defer_slot *s, struct ft_flow_val *v,
					    __u64 now)
{
	__u64 pk, by = 0;
	__u8 fl = 0;
	__u32 d;

	if (!v || !(v->defer & FT_DEFER_QUEUED) || v->defer_id != s->id) {
		ft_defer_emit(&s->key, s->boot_ns, s->netns, s->ethertype, s->vlan, 0, 0, s->pkt_len,
			      FT_REASON_NEW, 1, s->pkt_len, s->flags);
		ft_stat_inc(FT_STAT_DEFER_EVICTED);
		return;
	}
	d = v->defer;
	v->defer = 0;
	if (d & FT_DEFER_ENDED) {
		/* A straggler since the close: reported as the close was. */
		pk = ft_defer_take(v, &by, &fl);
		if (pk)
			ft_defer_emit(&s->key, bpf_ktime_get_boot_ns(), v->netns, v->ethertype, v->vlan,
				      &v->ct, &v->encap, 0, FT_REASON_CLOSED, pk, by, fl);
		if (v->slots)
			return; /* a flow-cache slot holds it: the idle walk ends it (fin 3) */
		if (!bpf_map_delete_elem(&ft_flows, &s->key))
			ft_stat_inc(FT_STAT_FLOWS_CLOSED);
		return;
	}
	if (!(d & FT_DEFER_FIRST))
		return;
	v->last_report_ns = now;
	pk = ft_defer_take(v, &by, &fl);
	if (pk)
		ft_defer_emit(&s->key, s->boot_ns, v->netns, v->ethertype, v->vlan, &v->ct, &v->encap,
			      s->pkt_len, FT_REASON_NEW, pk, by, fl);
}

struct ft_defer_run {
	struct ft_defer_q *q;
	__u64 now;
};

static long ft_defer_one(__u64 i, void *ctx)
{
	struct ft_defer_run *r = ctx;
	struct ft_defer_q *q = r->q;
	struct ft_defer_slot *s;

	if (q->head == q->tail)
		return 1;
	s = &q->slots[q->head & (FT_DEFER_SLOTS - 1)];
	/* Its entry ended at its close (ft_defer_end): nothing to settle. */
	if (s->voided) {
		q->head += 1;
		return 0;
	}
	if (ft_since(r->now, s->at) < (__s64)q->delay_ns)
		return 1;
	ft_defer_settle(s, bpf_map_lookup_elem(&ft_flows, &s->key), r->now);
	q->head += 1;
	return 0;
}

/* The timer's callback: settles the slots whose delay is up. */
static int ft_defer_fire(void *map, __u32 *key, struct ft_defer_q *q)
{
	struct ft_defer_run r = { .q = q };
	__s64 next;

	r.now = ft_coarse_clock_enabled ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns();
	bpf_loop(FT_DEFER_BATCH, ft_defer_one, &r, 0);
	if (q->head == q->tail) {
		q->armed = 0;
		return 0;
	}
	/*
	 * The oldest slot's delay, but not sooner than a millisecond: slots
	 * due together are settled in one run.
	 */
	next = (__s64)q->delay_ns - ft_since(r.now, q->slots[q->head & (FT_DEFER_SLOTS - 1)].at);
	if (next < 1000000)
		next = 1000000;
	q->armed = r.now;
	bpf_timer_start(&q->timer, next, q->pin);
	return 0;
}

/* ft_defer_init's argument, the test-run packet's first bytes. */
struct ft_defer_init_arg {
	__u32 cpu;
	__u32 _pad;
	__u64 delay_ns;
};

/*
 * Sets CPU arg.cpu's queue up: its timer and callback, and how long it
 * holds. The loader runs it once per CPU (BPF_PROG_TEST_RUN) and only on
 * kernels with bpf_timer: the callback's reference is an instruction 5.10
 * refuses in any program, so tc's programs only start the timer.
 * Returns 0, or the step that failed.
 */
SEC("tc")
int ft_defer_init(struct __sk_buff *skb)
{
	struct ft_defer_init_arg a;
	struct ft_defer_q *q;
	long err;

	if (bpf_skb_load_bytes(skb, 0, &a, sizeof(a)))
		return 1;
	q = bpf_map_lookup_elem(&ft_defer, &a.cpu);
	if (!q)
		return 2;
	err = bpf_timer_init(&q->timer, &ft_defer, 1 /* CLOCK_MONOTONIC */);
	if (err && err != -16 /* EBUSY: set up before */)
		return 3;
	if (bpf_timer_set_callback(&q->timer, ft_defer_fire))
		return 4;
	/*
	 * BPF_F_TIMER_CPU_PIN (6.7+) keeps the callback on the queue's CPU;
	 * an older kernel refuses the flag (EINVAL) and runs it where the
	 * timer was started, in practice. Asked here, on a far-off start.
	 */
	q->pin = 2; /* BPF_F_TIMER_CPU_PIN */
	if (bpf_timer_start(&q->timer, 3600000000000ULL, q->pin))
		q->pin = 0;
	/* Cancelling also forgets the callback: set it again. */
	bpf_timer_cancel(&q->timer);
	if (bpf_timer_set_callback(&q->timer, ft_defer_fire))
		return 5;
	q->armed = 0;
	q->delay_ns = a.delay_ns;
	return 0;
}

#endif /* FT_DEFER_H */
