/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Load-time knobs. The Go loader rewrites these in .rodata before loading, so
 * the verifier sees constants and prunes dead branches. The branches that
 * stay still load them, on every packet and drop: defined widest first,
 * they fit one 64-byte cache line (63 bytes; TestRodataOneCacheLine). The
 * drop hook's cost is mostly its cache misses, and a second line of
 * knobs was one of them.
 */
#ifndef FT_CONFIG_H
#define FT_CONFIG_H

/* Minimum gap between two PERIODIC reports of one flow entry. */
volatile const __u64 ft_flow_report_interval_ns = 5000000000ULL;

/*
 * The longest a per-CPU flow-cache slot (ft_fcache.h) holds a flow's counts
 * before they go into its flow entry; set by the loader to at most a
 * quarter of the report interval.
 */
volatile const __u64 ft_fc_hold_ns = 10000000ULL;

/*
 * Drop folding: after a drop is emitted, identical drops (see struct
 * ft_drop_key) on the same CPU within this window are only counted; user
 * space reports the counts. 0 disables folding: every drop is an event.
 */
volatile const __u64 ft_drop_fold_window_ns = 100000000ULL;

/*
 * Unread ring buffer bytes that wake the reader even within a wake-up gap
 * (ft_rb_flags): the loader sets an eighth of ft_events' size, so the
 * reader is woken well before a burst fills it.
 */
volatile const __u32 ft_rb_wake_backlog = 512 << 10;

/*
 * enum skb_drop_reason values that are normal frees, not drops. The numbers
 * differ between kernels, so the loader resolves them from kernel BTF; the
 * defaults only matter for a loader that forgot to set them.
 */
volatile const __u32 ft_reason_not_dropped = 0;
volatile const __u32 ft_reason_consumed = 0xffffffff;

/*
 * enum skb_drop_reason values of a socket's teardown: buffers a closed
 * socket or a purged queue held (SOCKET_CLOSE, QUEUE_PURGE). No packet died
 * on the network, and every closed connection with unread data and every
 * netlink socket's close made "drops" that hid the real ones; they are
 * counted (FT_STAT_DROPS_TEARDOWN) unless the loader asks for them.
 * 0xffffffff: no such reason.
 */
volatile const __u32 ft_reason_socket_close = 0xffffffff;
volatile const __u32 ft_reason_queue_purge = 0xffffffff;

/* Emit drops of every netns instead of only those in ft_netns_scope. */
volatile const __u8 ft_scope_all_netns = 0;

/*
 * Optional kernel paths, switched off by the loader when the kernel refuses
 * them (see pkg/datapath Features). 0 prunes the branch at verification.
 */
volatile const __u8 ft_ct_cast_enabled = 1;   /* read skb->_nfct at tc (kctx or kread below) */
volatile const __u8 ft_ct_lookup_enabled = 1; /* bpf_skb_ct_lookup kfunc */
volatile const __u8 ft_fib_enabled = 1;       /* bpf_fib_lookup + bpf_check_mtu */
/*
 * Per-packet bookkeeping clock (ft_now): bpf_ktime_get_coarse_ns (5.11+)
 * reads the last tick's time, while reading the clocksource costs ~35 ns a
 * packet in a VM; 0 falls back to bpf_ktime_get_ns. Both are
 * CLOCK_MONOTONIC, which is what user space compares ft_flow_val times with.
 */
volatile const __u8 ft_coarse_clock_enabled = 1;
/*
 * Read the bookkeeping clocks (tc's ft_now, the drop hook's fold times) once
 * per jiffy and CPU, keyed by bpf_jiffies64 (5.5+), which the verifier
 * inlines into a plain load on 64-bit JITs: a clock read is a helper call of
 * ~15 ns (coarse) to ~35-60 ns (boot time) here, for a value that only needs
 * tick resolution. 0 reads the clock on every packet. The drop hook's
 * device memo (ft_skb_netns) holds for a jiffy too, and is off without it.
 */
volatile const __u8 ft_jiffies_enabled = 1;

/*
 * How tc reaches the kernel's struct sk_buff behind __sk_buff (for the
 * device's netns and skb->_nfct), best first:
 *  - ft_kctx_enabled: bpf_cast_to_kern_ctx (+ bpf_rdonly_cast), 6.2+.
 *  - ft_kread_enabled: bpf_probe_read_kernel from the context pointer, which
 *    at run time is the sk_buff itself; tc may call the helper from 5.19-ish
 *    kernels on (6.1 yes, 5.10 no), and only with CAP_PERFMON.
 *  - neither: flows carry ft_self_netns (the loader's netns, where the agent
 *    attaches) and tc has no _nfct view.
 */
volatile const __u8 ft_kctx_enabled = 1;
volatile const __u8 ft_kread_enabled = 1;
volatile const __u32 ft_self_netns = 0;

/*
 * MTU checks skip packets with an L3 length at or below this: no real link is
 * smaller than 576 (IPv4 minimum reassembly size; IPv6 needs >= 1280), and
 * it keeps small packets (ACKs) free of the FIB lookup.
 */
volatile const __u32 ft_mtu_min_len = 576;

/*
 * The drop hook's per-CPU fold memo (ft_drop.h). The loader sets it only
 * once ft_drop_flush is known to run on every CPU here
 * (BPF_F_TEST_RUN_ON_CPU): without that a memo could hold counts forever.
 */
volatile const __u8 ft_drop_memo_enabled = 0;

/*
 * The drop hook's parse of the commonest packets from aligned words
 * (ft_drop_raw). Always on; the loader turns it off only for the
 * test that compares it with the general parse.
 */
volatile const __u8 ft_drop_fast_parse = 1;

/*
 * tp_btf's fast parse reads the dropped packet in place, with fault-safe
 * loads through bpf_rdonly_cast(p, 0) (kernels whose enum bpf_features has
 * BPF_FEAT_RDONLY_CAST_TO_VOID, 6.17+), instead of copying its headers with
 * bpf_probe_read_kernel first: that helper call was ~20 ns of a drop's
 * ~100 here (TestDropCost logs both). The loader sets it where the kernel
 * has the feature.
 */
volatile const __u8 ft_drop_direct = 0;

/*
 * A new flow entry's first report is held (ft_defer.h): the loader sets it
 * where the kernel has bpf_timer and bpf_loop (5.17+) and the agent asked
 * for a delay. 0 prunes the queue from tc, so older kernels never see the
 * timer helpers.
 */
volatile const __u8 ft_defer_enabled = 0;

#endif /* FT_CONFIG_H */
