//go:build linux

package datapath

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
)

// Config holds load-time settings; zero values select the defaults.
type Config struct {
	FlowReportInterval time.Duration // default 5s
	RingBufferBytes    int           // default 4 MiB, power of two
	FlowTableEntries   int           // default DefaultFlowTableEntries
	ScopeAllNetns      bool
	// MTUCheckMinLen: packets with an L3 length at or below this skip the
	// ingress MTU check (default 576; no real link is smaller).
	MTUCheckMinLen int
	// DropFoldWindow: after a drop is reported, identical drops (same
	// tuple, reason, location, netns, ifindex) on the same CPU within this
	// window are only counted in the kernel; Run reports the counts every
	// foldReportEvery (default 1s; negative disables folding). The window
	// sets how often a storm still yields a kernel event per signature and
	// CPU, not how late its drops are seen.
	DropFoldWindow time.Duration
	// DropFoldEntries: drop signatures tracked (default 16384; LRU).
	DropFoldEntries int
	// NoFlowCache keeps tc's per-CPU flow cache off (Features.FlowCache),
	// as on a kernel that cannot run a program on a chosen CPU: every
	// packet then updates the flow table. For A/B measurements and tests.
	NoFlowCache bool
	// SocketTeardownDrops reports the buffers a socket's teardown frees
	// (drop reasons SOCKET_CLOSE and QUEUE_PURGE: a closed socket's unread
	// data, a purged queue) as drops. Otherwise they are only counted
	// (drops_socket_teardown): no packet died on the network.
	SocketTeardownDrops bool
	// FirstReportDelay holds a new flow entry's first report this long
	// in the kernel (bpf/ft_defer.h, 5.17+): a connection that ends
	// sooner is reported once per hook, by its close, with everything its
	// NEW would have said; any other flow gets its NEW after this long.
	// Default defaultFirstReportDelay; negative reports at the first
	// packet (Features.FirstReportDelay says which applies).
	FirstReportDelay time.Duration
	// NoDropMemo keeps the drop hook's per-CPU fold memo off
	// (Features.DropMemo): every folded drop then updates its fold slot.
	// For A/B measurements and tests.
	NoDropMemo bool

	forceRawTP bool // tests: exercise the raw_tp fallback on a kernel with tp_btf
	// tests: the drop hook parses every packet the general way, for
	// comparison with its fast parse (ft_drop_fast_parse).
	noFastDropParse bool
	// tests: the drop hook copies the headers before its fast parse, as
	// on kernels without in-place reads (Features.DropDirect).
	noDropDirect bool
	// tests: pretend the kernel refused these paths.
	denyCTCast, denyCTLookup, denyFIB bool
	// tests: pretend the kernel lacks bpf_cast_to_kern_ctx (6.2+) or also
	// bpf_probe_read_kernel at tc (5.10), as the matrix's older kernels do.
	denyKctx, denyKread bool
	// tests: load the two-argument kfree_skb programs of kernels before 5.17.
	forceNoReason bool
	// tests: how long a flow-cache slot holds counts (default fcHoldMax).
	// Tests that count a slot's hits set it long: a test run under
	// emulation can take longer than 10 ms, and a slot that ages out in
	// between is written back, which keeps counts exact but moves them.
	fcHold time.Duration
}

// DefaultFlowTableEntries sizes the flow table unless Config says
// otherwise. An entry is one direction of a connection at one hook (a pod's
// veth holds two per connection); a TCP connection's entries leave at its
// close, any other at the idle walk after two report intervals without a
// packet.
const DefaultFlowTableEntries = 65536

// Features reports which optional kernel paths are live.
type Features struct {
	DropHook string // "tp_btf" or "raw_tp"
	// DropReasons: the kfree_skb hook receives enum skb_drop_reason (5.17+).
	// Without it drops are still reported, with reason 0 ("unknown").
	DropReasons bool
	// SkbAccess is how tc reads the kernel's sk_buff (device netns, _nfct):
	// SkbKernCtx (bpf_cast_to_kern_ctx, 6.2+), SkbProbeRead
	// (bpf_probe_read_kernel at tc), or SkbNone, where flows carry the
	// loader's own netns and tc has no conntrack view of its own.
	SkbAccess string
	// ConntrackNfct: tc reads skb->_nfct (bpf_cast_to_kern_ctx +
	// bpf_rdonly_cast): NAT at egress, including a connection's first packet.
	ConntrackNfct bool
	// ConntrackLookup: tc calls the bpf_skb_ct_lookup kfunc where _nfct is
	// empty (ingress): replies and the client side from the 2nd packet.
	ConntrackLookup bool
	// MTUCheck: tc ingress runs bpf_fib_lookup + bpf_check_mtu (MTU_EXCEEDED).
	MTUCheck bool
	// FlowCache: tc counts a flow's packets in a per-CPU slot and writes
	// them into the flow table every few ms (bpf/ft_fcache.h). Needs
	// BPF_PROG_TEST_RUN on a chosen CPU (5.10+) to write back the slots of
	// a CPU that went quiet; without it every packet updates the table.
	FlowCache bool
	// DropMemo: the drop hook counts a storm's drops in a per-CPU memo of
	// the fold slot it used last, written back before each fold walk
	// (bpf/ft_drop.h), instead of a hash lookup per drop. Needs the same
	// BPF_PROG_TEST_RUN on a chosen CPU as FlowCache.
	DropMemo bool
	// FirstReportDelay: how long the kernel holds a new flow entry's
	// first report (Config.FirstReportDelay); 0 where it cannot (before
	// 5.17: no bpf_timer and bpf_loop) or was asked not to.
	FirstReportDelay time.Duration
	// DropDirect: the tp_btf drop hook reads a dropped packet's headers
	// in place (bpf_rdonly_cast to void, 6.17+) rather than copying them
	// with bpf_probe_read_kernel first.
	DropDirect bool
}

// Drop hook names reported in Features.
const (
	DropHookTPBTF = "tp_btf"
	DropHookRawTP = "raw_tp"
)

// Features.SkbAccess values.
const (
	SkbKernCtx   = "kern_ctx"
	SkbProbeRead = "probe_read"
	SkbNone      = "none"
)

const (
	defaultReportInterval = 5 * time.Second
	defaultRingBytes      = 4 << 20
	defaultMTUCheckMinLen = 576
	defaultFoldWindow     = time.Second
	// defaultFirstReportDelay: a connection shorter than this is one
	// report per hook. Long enough for a local request/response
	// connection (a few ms), short enough that nobody watching a
	// terminal waits for a NEW.
	defaultFirstReportDelay = 20 * time.Millisecond
	// foldReportEvery: how often Run walks the fold table, so a folded drop
	// reaches followers within about this much. A report is as old as its
	// first drop may be: up to a period, the kernel's clock slack and the
	// delivery. The bench's target is 100 ms at p99; at 50 ms the
	// 1,000-flow storm measured 75-97 ms, at 40 ms ~9 ms less. A walk reads
	// only recent signatures, and one with nothing new is skipped.
	foldReportEvery    = 40 * time.Millisecond
	defaultFoldEntries = 16384

	// readPoll bounds how long an event can sit in the ring unannounced.
	// Where jiffies are readable (5.5+) the BPF side wakes the reader for
	// the first event after a few quiet ms per CPU, then at most every few
	// ms, or at once for a backlog (ft_rb_flags); readPollLone is the poll
	// with that wake-up. Without jiffies it wakes every 256th event, and
	// readPoll is the poll.
	//
	// With the wake-up, only a record submitted within FT_RB_WAKE_GAP (4
	// jiffies, 40 ms at HZ=100) of its CPU's last wake-up goes unannounced,
	// and the reader reads that wake-up's record after it happened: so a
	// readPollLone after the last record it read, every record is
	// announced, and the reader sleeps until its next table walk (RunSink).
	readPoll     = 25 * time.Millisecond
	readPollLone = 100 * time.Millisecond
	// clockResync re-measures the boot-time to wall-time offset, which moves
	// with NTP steps and suspend.
	clockResync = 10 * time.Second
)

// scratchTCPacketsOff and scratchFCHitsOff are the offsets of tc_packets and
// fc_hits in struct ft_scratch, the per-CPU counts of FT_STAT_TC_PACKETS and
// FT_STAT_FC_HITS. Keep in sync with bpf/ft_flow.h.
const (
	scratchTCPacketsOff = 0
	scratchFCHitsOff    = 8
)

// dropHdrSeenOff, dropHdrFoldedOff, dropHdrMemoHitsOff and
// dropHdrParsedFastOff are the offsets of seen, folded, memo_hits and
// parsed_fast in struct ft_drop_hdr, the per-CPU counts of
// FT_STAT_DROPS_SEEN, FT_STAT_DROPS_FOLDED, FT_STAT_DROP_MEMO_HITS and
// FT_STAT_DROPS_PARSED_FAST; dropHdrPendingOff is that of memo.pending,
// the drops a CPU's fold memo holds. Keep in sync with bpf/ft_drop.h
// (TestCounterOffsets checks them).
const (
	dropHdrSeenOff       = 0
	dropHdrFoldedOff     = 8
	dropHdrMemoHitsOff   = 16
	dropHdrParsedFastOff = 24
	dropHdrPendingOff    = 168
)

// fcHoldMax is the longest a per-CPU flow-cache slot holds a flow's counts
// (ft_fc_hold_ns, bpf/ft_fcache.h): a few ms of delay on an entry's counts
// and idle time, for one flow-table lookup per flow, CPU and hold instead
// of one per packet.
const fcHoldMax = 10 * time.Millisecond

// statNames follows enum ft_stat. Keep in sync with bpf/ft_event.h.
var statNames = [...]string{
	"tc_packets",
	"non_ip",
	"truncated",
	"malformed",
	"drops_seen",
	"drops_out_of_scope",
	"flow_events",
	"drop_events",
	"translated_events",
	"mtu_events",
	"icmp_pmtu_events",
	"vxlan_packets",
	"ct_lookups",
	"fib_lookups",
	"drops_folded",
	"flow_cache_hits",
	"flow_cache_orphaned",
	"drop_memo_hits",
	"flows_closed",
	"drops_parsed_fast",
	"drops_socket_teardown",
	"first_reports_unqueued",
	"first_reports_evicted",
	"flow_table_full",
}

// coreObjects is what always loads: maps and tc programs. The kfree_skb
// programs are loaded one at a time by attachDrops.
type coreObjects struct {
	ftMaps
	FtTcIngress *ebpf.Program  `ebpf:"ft_tc_ingress"`
	FtTcEgress  *ebpf.Program  `ebpf:"ft_tc_egress"`
	FtFcFlush   *ebpf.Program  `ebpf:"ft_fc_flush"`
	FtDropFlush *ebpf.Program  `ebpf:"ft_drop_flush"`
	FtFcOn      *ebpf.Variable `ebpf:"ft_fc_on"`
}

func (o *coreObjects) Close() error {
	return errors.Join(o.ftMaps.Close(), o.FtTcIngress.Close(), o.FtTcEgress.Close(),
		o.FtFcFlush.Close(), o.FtDropFlush.Close())
}

// Datapath is a loaded flowtrace BPF object.
type Datapath struct {
	cfg      Config
	log      *slog.Logger
	objs     coreObjects
	dropProg *ebpf.Program
	dropColl *ebpf.Collection
	// deferColl holds ft_defer_init, whose callback the queues' timers run.
	deferColl *ebpf.Collection
	deferOn   bool // tc was loaded with the first-report queue (ft_defer_enabled)
	dropLink  link.Link
	features  Features
	rd        *ringbuf.Reader
	wait      *ringWaiter // nil: the reader's own blocking wait
	// readPoll: how long the reader waits for the BPF side's wake-up before
	// it looks anyway (readPoll or readPollLone, by the loaded object).
	readPoll time.Duration
	// loadRefusal is why the first load, with every path the kernel seemed
	// to offer, was refused (nil: it was not); see loadCore.
	loadRefusal error

	decodeErrors atomic.Uint64
	// The flow table's entries at FlushIdle's last complete walk, and when
	// it ran (unix ns; 0: no walk yet): FlowTable.
	flowsUsed   atomic.Int64
	flowsWalked atomic.Int64
	scopeMu     sync.Mutex
	scopeGen    uint32 // last ft_scope_gen set (under scopeMu); the object starts at 1
	folds       foldTracker
	bootOffset  atomic.Int64 // wall ns - boot ns
	closeOnce   sync.Once
	closeErr    error
	closed      atomic.Bool // Close began: Run's wait failing is the shutdown
	// ringMu keeps Run's look at the ring's positions (available) apart
	// from Close unmapping the ring.
	ringMu sync.RWMutex
	// runMu is held by Run for as long as it runs: Close closes the reader
	// (which makes Run return), then takes runMu before it closes the maps
	// that Run's table walks use. Closing them under a walk raced on their
	// file descriptors (the race detector caught a fold walk mid-batch).
	runMu sync.Mutex
}

func (c Config) withDefaults() (Config, error) {
	if c.FlowReportInterval == 0 {
		c.FlowReportInterval = defaultReportInterval
	}
	if c.FlowReportInterval < 0 {
		return c, fmt.Errorf("flow report interval %v is negative", c.FlowReportInterval)
	}
	if c.RingBufferBytes == 0 {
		c.RingBufferBytes = defaultRingBytes
	}
	if c.RingBufferBytes < os.Getpagesize() || bits.OnesCount(uint(c.RingBufferBytes)) != 1 {
		return c, fmt.Errorf("ring buffer size %d is not a power of two >= page size", c.RingBufferBytes)
	}
	if c.FlowTableEntries == 0 {
		c.FlowTableEntries = DefaultFlowTableEntries
	}
	if c.FlowTableEntries < 0 {
		return c, fmt.Errorf("flow table entries %d is negative", c.FlowTableEntries)
	}
	if c.DropFoldWindow == 0 {
		c.DropFoldWindow = defaultFoldWindow
	}
	if c.DropFoldEntries == 0 {
		c.DropFoldEntries = defaultFoldEntries
	}
	if c.DropFoldEntries < 0 {
		return c, fmt.Errorf("drop fold entries %d is negative", c.DropFoldEntries)
	}
	if c.MTUCheckMinLen == 0 {
		c.MTUCheckMinLen = defaultMTUCheckMinLen
	}
	if c.FirstReportDelay == 0 {
		c.FirstReportDelay = defaultFirstReportDelay
	}
	if c.FirstReportDelay > c.FlowReportInterval/4 {
		return c, fmt.Errorf("first report delay %v is more than a quarter of the flow report interval %v", c.FirstReportDelay, c.FlowReportInterval)
	}
	if c.MTUCheckMinLen < 0 || c.MTUCheckMinLen > 65535 {
		return c, fmt.Errorf("mtu check minimum length %d out of range", c.MTUCheckMinLen)
	}
	return c, nil
}

// Load loads the BPF object, configures it from cfg and the kernel's BTF and
// attaches the kfree_skb drop hook (tp_btf, falling back to raw_tp). The tc
// programs are returned unattached by Ingress and Egress.
func Load(cfg Config, log *slog.Logger) (*Datapath, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	spec, err := loadFt()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel btf: %w", err)
	}
	notDropped, consumed := normalFreeReasons(kspec, log)
	socketClose, queuePurge := uint32(reasonNever), uint32(reasonNever)
	if !cfg.SocketTeardownDrops {
		socketClose, queuePurge = reasonValue(kspec, "SKB_DROP_REASON_SOCKET_CLOSE"), reasonValue(kspec, "SKB_DROP_REASON_QUEUE_PURGE")
	}
	selfNetns, err := threadNetns()
	if err != nil {
		return nil, err
	}
	consts := map[string]any{
		"ft_self_netns":              selfNetns,
		"ft_flow_report_interval_ns": uint64(cfg.FlowReportInterval.Nanoseconds()),
		"ft_scope_all_netns":         boolByte(cfg.ScopeAllNetns),
		"ft_reason_not_dropped":      notDropped,
		"ft_reason_consumed":         consumed,
		"ft_reason_socket_close":     socketClose,
		"ft_reason_queue_purge":      queuePurge,
		"ft_mtu_min_len":             uint32(cfg.MTUCheckMinLen),
		"ft_drop_fold_window_ns":     uint64(max(cfg.DropFoldWindow.Nanoseconds(), 0)),
		"ft_rb_wake_backlog":         uint32(cfg.RingBufferBytes / 8),
		"ft_fc_hold_ns":              uint64(min(cmp.Or(cfg.fcHold, fcHoldMax), cfg.FlowReportInterval/4).Nanoseconds()),
	}
	for name, v := range consts {
		vs, ok := spec.Variables[name]
		if !ok {
			return nil, fmt.Errorf("bpf variable %s missing from object", name)
		}
		if err := vs.Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	spec.Maps["ft_events"].MaxEntries = uint32(cfg.RingBufferBytes)
	// A first-report queue per CPU (bpf/ft_defer.h); one unused otherwise.
	if n, err := ebpf.PossibleCPU(); err == nil && cfg.FirstReportDelay > 0 {
		spec.Maps["ft_defer"].MaxEntries = uint32(n)
	}
	spec.Maps["ft_flows"].MaxEntries = uint32(cfg.FlowTableEntries)
	spec.Maps["ft_drop_folds"].MaxEntries = uint32(cfg.DropFoldEntries)
	spec.Maps["ft_drop_recent"].MaxEntries = uint32(cfg.DropFoldEntries)
	if cfg.DropFoldWindow < 0 {
		// Unused: keep no (per-CPU) memory.
		spec.Maps["ft_drop_folds"].MaxEntries = 1
		spec.Maps["ft_drop_recent"].MaxEntries = 1
	}

	// The drop programs are optional per kernel: load them separately so a
	// refused tp_btf cannot break the tc programs and maps.
	coreSpec := spec.Copy()
	for _, name := range dropProgramNames {
		delete(coreSpec.Programs, name)
	}
	// Loaded on its own (startDefer): 5.10 refuses any program that
	// references a timer callback.
	delete(coreSpec.Programs, deferInitProgram)
	d := &Datapath{cfg: cfg, log: log, scopeGen: 1}
	if err := d.loadCore(coreSpec, spec, probeKernel(kspec, cfg)); err != nil {
		return nil, err
	}
	d.enableFlowCache()
	if err := d.startDefer(spec); err != nil {
		d.log.Warn("new flows are reported at their first packet", "error", err)
	}
	if err := d.enableDropMemo(spec); err != nil {
		_ = d.objs.Close()
		return nil, err
	}
	if cfg.noFastDropParse {
		if err := spec.Variables["ft_drop_fast_parse"].Set(uint8(0)); err != nil {
			_ = d.objs.Close()
			return nil, fmt.Errorf("set ft_drop_fast_parse: %w", err)
		}
	}
	d.features.DropReasons = kfreeSkbArgs(kspec) >= 3 && !cfg.forceNoReason
	if err := d.attachDrops(spec, hasRdonlyCastToVoid(kspec) && !cfg.noDropDirect); err != nil {
		_ = d.objs.Close()
		return nil, err
	}
	d.rd, err = ringbuf.NewReader(d.objs.FtEvents)
	if err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	if d.wait, err = newRingWaiter(d.objs.FtEvents, d.rd); err != nil {
		log.Debug("ring buffer not pollable by the Go runtime; the reader waits in epoll_wait", "error", err)
		d.wait = nil
	}
	d.resyncClock()
	log.Info("datapath loaded", "drop_hook", d.features.DropHook,
		"drop_reasons", d.features.DropReasons, "skb_access", d.features.SkbAccess,
		"ct_nfct", d.features.ConntrackNfct, "ct_lookup", d.features.ConntrackLookup,
		"mtu_check", d.features.MTUCheck, "flow_cache", d.features.FlowCache, "drop_memo", d.features.DropMemo,
		"ring_bytes", cfg.RingBufferBytes, "flow_entries", cfg.FlowTableEntries,
		"report_interval", cfg.FlowReportInterval, "scope_all_netns", cfg.ScopeAllNetns,
		"drop_fold_window", cfg.DropFoldWindow, "drop_direct", d.features.DropDirect,
		"first_report_delay", d.features.FirstReportDelay)
	return d, nil
}

// optionalPaths are the tc features a kernel may refuse, in the order they
// are given up when a load fails despite the probes: the conntrack kfunc
// first, then the _nfct view, the sk_buff access paths, the FIB/MTU helpers.
var optionalPaths = []struct {
	variable string
	denied   func(Config) bool
}{
	{"ft_defer_enabled", func(c Config) bool { return c.FirstReportDelay < 0 }},
	{"ft_ct_lookup_enabled", func(c Config) bool { return c.denyCTLookup }},
	{"ft_ct_cast_enabled", func(c Config) bool { return c.denyCTCast }},
	{"ft_kctx_enabled", func(c Config) bool { return c.denyKctx }},
	{"ft_kread_enabled", func(c Config) bool { return c.denyKread }},
	{"ft_fib_enabled", func(c Config) bool { return c.denyFIB }},
	{"ft_coarse_clock_enabled", func(Config) bool { return false }},
	{"ft_jiffies_enabled", func(Config) bool { return false }},
}

// kernelCaps says which optional paths the running kernel offers, from
// kernel BTF and helper probes, so the first load normally succeeds.
type kernelCaps map[string]bool

// probeKernel answers what can be known before loading: kfuncs from BTF,
// helpers from cilium/ebpf's feature probes.
func probeKernel(kspec *btf.Spec, cfg Config) kernelCaps {
	helper := func(fn asm.BuiltinFunc) bool {
		return features.HaveProgramHelper(ebpf.SchedCLS, fn) == nil
	}
	kctx := hasKernelFunc(kspec, "bpf_cast_to_kern_ctx") && hasKernelFunc(kspec, "bpf_rdonly_cast")
	// bpf_skb_ct_lookup (5.18+) lives in vmlinux or, where conntrack is a
	// module, in nf_conntrack's BTF; a module not loaded yet is left to the
	// load itself to decide.
	ctLookup := hasKernelFunc(kspec, "bpf_skb_ct_lookup")
	if !ctLookup {
		mod, err := btf.LoadKernelModuleSpec("nf_conntrack")
		ctLookup = err != nil || hasKernelFunc(mod, "bpf_skb_ct_lookup")
	}
	caps := kernelCaps{
		// bpf_timer (5.15) and bpf_loop (5.17) for the first-report queue.
		"ft_defer_enabled":     helper(asm.FnTimerStart) && helper(asm.FnLoop),
		"ft_ct_lookup_enabled": ctLookup,
		"ft_ct_cast_enabled":   true,
		"ft_kctx_enabled":      kctx && !cfg.denyKctx,
		// Only the fallback for kctx: with both, the kfunc path is used.
		"ft_kread_enabled": !kctx || cfg.denyKctx,
		"ft_fib_enabled":   helper(asm.FnFibLookup) && helper(asm.FnCheckMtu),
		// 5.11+; without it tc reads the clocksource per packet.
		"ft_coarse_clock_enabled": helper(asm.FnKtimeGetCoarseNs),
		// 5.5+; without it the clocks are read per packet and drop.
		"ft_jiffies_enabled": helper(asm.FnJiffies64),
	}
	if caps["ft_kread_enabled"] && (cfg.denyKread || !helper(asm.FnProbeReadKernel)) {
		caps["ft_kread_enabled"] = false
	}
	if !caps["ft_kctx_enabled"] && !caps["ft_kread_enabled"] {
		caps["ft_ct_cast_enabled"] = false // no way to reach skb->_nfct
	}
	return caps
}

func hasKernelFunc(spec *btf.Spec, name string) bool {
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}

// loadCore loads maps and tc programs with every path the kernel offers on,
// and on a verifier/kernel refusal retries with one more path switched off
// (the constant prunes its branch, and the loader poisons a missing weak
// kfunc), so an older kernel still gets flows and drops. dropSpec gets the
// same constants: its .rodata is recreated from it.
func (d *Datapath) loadCore(coreSpec, dropSpec *ebpf.CollectionSpec, caps kernelCaps) error {
	on := make(map[string]bool, len(optionalPaths))
	for _, p := range optionalPaths {
		on[p.variable] = caps[p.variable] && !p.denied(d.cfg)
	}
	var firstErr, lastErr error // as the kernel returned them
	for off := 0; off <= len(optionalPaths); off++ {
		if off > 0 {
			v := optionalPaths[off-1].variable
			if !on[v] {
				continue // already off: the same load would fail the same way
			}
			on[v] = false
			if v == "ft_kctx_enabled" && !d.cfg.denyKread {
				on["ft_kread_enabled"] = caps["ft_kread_enabled"] || features.HaveProgramHelper(ebpf.SchedCLS, asm.FnProbeReadKernel) == nil
			}
		}
		for _, p := range optionalPaths {
			for _, sp := range []*ebpf.CollectionSpec{coreSpec, dropSpec} {
				if err := sp.Variables[p.variable].Set(boolByte(on[p.variable])); err != nil {
					return fmt.Errorf("set %s: %w", p.variable, err)
				}
			}
		}
		err := coreSpec.LoadAndAssign(&d.objs, nil)
		if err == nil {
			d.features.ConntrackLookup = on["ft_ct_lookup_enabled"]
			d.features.MTUCheck = on["ft_fib_enabled"]
			switch {
			case on["ft_kctx_enabled"]:
				d.features.SkbAccess = SkbKernCtx
			case on["ft_kread_enabled"]:
				d.features.SkbAccess = SkbProbeRead
			default:
				d.features.SkbAccess = SkbNone
			}
			d.features.ConntrackNfct = on["ft_ct_cast_enabled"] && d.features.SkbAccess != SkbNone
			d.deferOn = on["ft_defer_enabled"]
			d.readPoll = readPoll
			if on["ft_jiffies_enabled"] {
				d.readPoll = readPollLone
			}
			if firstErr != nil {
				d.loadRefusal = verifierDetail(firstErr)
				// The verifier's whole log (~300 KB on 5.10) only at debug:
				// at warn it was one such line per agent start.
				d.log.Warn("optional datapath features refused by this kernel",
					"error", verifierTail(firstErr), "ct_lookup", d.features.ConntrackLookup,
					"ct_nfct", d.features.ConntrackNfct, "skb_access", d.features.SkbAccess,
					"mtu_check", d.features.MTUCheck)
				d.log.Debug("the refused load's verifier log", "error", d.loadRefusal)
			}
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if !isRefusal(err) {
			return fmt.Errorf("load bpf objects: %w", verifierDetail(err))
		}
		lastErr = err
	}
	// The first refusal names what the kernel lacks; the last one, with
	// every optional path off, is what actually stops flowtrace here.
	return fmt.Errorf("load bpf objects: %w\nwith every optional path off: %v", verifierDetail(firstErr), verifierDetail(lastErr))
}

// isRefusal: the kernel (verifier, missing kfunc or helper) said no, as
// opposed to e.g. a memory limit that no feature switch would fix.
func isRefusal(err error) bool {
	var ve *ebpf.VerifierError
	return errors.As(err, &ve) || errors.Is(err, ebpf.ErrNotSupported) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOENT)
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// verifierTail is err with only the end of a verifier log: the lines that
// say why the load was refused, without the program listing before them.
func verifierTail(err error) error { return verifierLog(err, "%-4v") }

// verifierDetail is err with the verifier's whole log.
func verifierDetail(err error) error { return verifierLog(err, "%+v") }

// verifierLog formats the verifier error in err with format (cilium/ebpf's
// VerifierError verbs), after what err says before it ("load prog: ");
// any other error is returned as it is.
func verifierLog(err error, format string) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return err
	}
	prefix, _, found := strings.Cut(err.Error(), ve.Error())
	if !found {
		prefix = ""
	}
	return fmt.Errorf("%s"+format, prefix, ve)
}

// reasonNever is a reason value no kernel uses: a normal free the running
// kernel does not name can never match it.
const reasonNever = 0xffffffff

// normalFreeReasons resolves SKB_NOT_DROPPED_YET and SKB_CONSUMED from the
// running kernel: enum skb_drop_reason numbering differs between kernels.
// A kernel without one of them (no enum before 5.17, no SKB_CONSUMED before
// 6.2, which calls consume_skb for those frees anyway) gets reasonNever.
func normalFreeReasons(kspec *btf.Spec, log *slog.Logger) (notDropped, consumed uint32) {
	var enum *btf.Enum
	if err := kspec.TypeByName("skb_drop_reason", &enum); err != nil {
		log.Info("kernel has no drop reasons; drops are reported without one", "error", err)
		return reasonNever, reasonNever
	}
	return reasonValue(kspec, "SKB_NOT_DROPPED_YET"), reasonValue(kspec, "SKB_CONSUMED")
}

// reasonValue is the running kernel's value of the drop reason named name,
// or reasonNever when it has none (older kernels, no reasons at all).
func reasonValue(kspec *btf.Spec, name string) uint32 {
	if v, ok := enumValue(kspec, "skb_drop_reason", name); ok {
		return uint32(v)
	}
	return reasonNever
}

// enumValue is the value of the enumerator name of the kernel's enum
// typeName, and whether the kernel has it.
func enumValue(kspec *btf.Spec, typeName, name string) (uint64, bool) {
	var enum *btf.Enum
	if err := kspec.TypeByName(typeName, &enum); err != nil {
		return 0, false
	}
	for _, v := range enum.Values {
		if v.Name == name {
			return v.Value, true
		}
	}
	return 0, false
}

// kfreeSkbArgs counts the kfree_skb tracepoint's arguments from the
// prototype of its BTF typedef (whose first parameter is the tracepoint's
// private data pointer): 2 before 5.17, 3 with the reason, 4 with rx_sk.
// 0 when the typedef is missing.
func kfreeSkbArgs(kspec *btf.Spec) int {
	var td *btf.Typedef
	if err := kspec.TypeByName("btf_trace_kfree_skb", &td); err != nil {
		return 0
	}
	ptr, ok := btf.UnderlyingType(td.Type).(*btf.Pointer)
	if !ok {
		return 0
	}
	proto, ok := btf.UnderlyingType(ptr.Target).(*btf.FuncProto)
	if !ok || len(proto.Params) == 0 {
		return 0
	}
	return len(proto.Params) - 1
}

// threadNetns is the inode of the calling thread's network namespace, where
// the agent attaches: flows on kernels without sk_buff access carry it.
func threadNetns() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("stat own network namespace: %w", err)
	}
	return uint32(st.Ino), nil
}

// dropProgramNames are the kfree_skb programs, loaded one at a time.
var dropProgramNames = []string{"ft_kfree_btf", "ft_kfree_raw", "ft_kfree_btf2", "ft_kfree_raw2"}

// hasRdonlyCastToVoid: the kernel's verifier takes bpf_rdonly_cast(p, 0)
// (enum bpf_features names it), so tp_btf can load from any kernel address.
func hasRdonlyCastToVoid(kspec *btf.Spec) bool {
	_, ok := enumValue(kspec, "bpf_features", "BPF_FEAT_RDONLY_CAST_TO_VOID")
	return ok
}

// attachDrops loads and attaches one kfree_skb program, tp_btf first, with
// in-place header reads (ft_drop_direct) when direct says the kernel has
// them; a refusal of those is retried without them.
func (d *Datapath) attachDrops(spec *ebpf.CollectionSpec, direct bool) error {
	btfProg, rawProg := "ft_kfree_btf", "ft_kfree_raw"
	if !d.features.DropReasons {
		btfProg, rawProg = "ft_kfree_btf2", "ft_kfree_raw2"
	}
	setDirect := func(on bool) error {
		if err := spec.Variables["ft_drop_direct"].Set(boolByte(on)); err != nil {
			return fmt.Errorf("set ft_drop_direct: %w", err)
		}
		return nil
	}
	attachBTF := func(p *ebpf.Program) (link.Link, error) {
		return link.AttachTracing(link.TracingOptions{Program: p, AttachType: ebpf.AttachTraceRawTp})
	}
	btfErr := fmt.Errorf("tp_btf skipped by config: %w", ebpf.ErrNotSupported)
	if !d.cfg.forceRawTP {
		if err := setDirect(direct); err != nil {
			return err
		}
		btfErr = d.tryDrop(spec, btfProg, attachBTF)
		if btfErr != nil && direct && isRefusal(btfErr) {
			d.log.Warn("in-place header reads refused in the drop hook; copying them instead", "error", verifierTail(btfErr))
			if err := setDirect(false); err != nil {
				return err
			}
			direct = false
			btfErr = d.tryDrop(spec, btfProg, attachBTF)
		}
	}
	if btfErr == nil {
		d.features.DropHook = DropHookTPBTF
		d.features.DropDirect = direct
		return nil
	}
	// tryDrop's errors keep the kernel's refusal (a verifier log's cause,
	// EPERM) for errors.Is; its log is formatted where it is used: the
	// whole of it in an error that stops the agent, its end in a warning
	// that does not (a program listing of ~300 KB per agent start).
	if !errors.Is(btfErr, ebpf.ErrNotSupported) && !errors.Is(btfErr, unix.EPERM) {
		return fmt.Errorf("drop hook tp_btf/kfree_skb: %w", verifierDetail(btfErr))
	}
	d.log.Warn("tp_btf/kfree_skb unavailable, falling back to raw_tp", "error", verifierTail(btfErr))
	rawErr := d.tryDrop(spec, rawProg, func(p *ebpf.Program) (link.Link, error) {
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: "kfree_skb", Program: p})
	})
	if rawErr != nil {
		return fmt.Errorf("drop hook: tp_btf: %w; raw_tp: %w", verifierDetail(btfErr), verifierDetail(rawErr))
	}
	d.features.DropHook = DropHookRawTP
	return nil
}

func (d *Datapath) tryDrop(spec *ebpf.CollectionSpec, prog string, attach func(*ebpf.Program) (link.Link, error)) error {
	coll, err := d.loadAlone(spec, prog)
	if err != nil {
		return err
	}
	l, err := attach(coll.Programs[prog])
	if err != nil {
		coll.Close()
		return fmt.Errorf("attach %s: %w", prog, err)
	}
	d.dropColl, d.dropProg, d.dropLink = coll, coll.Programs[prog], l
	return nil
}

// loadAlone loads program prog of spec on its own, with the maps the core
// objects already created.
func (d *Datapath) loadAlone(spec *ebpf.CollectionSpec, prog string) (*ebpf.Collection, error) {
	one := spec.Copy()
	for name := range one.Programs {
		if name != prog {
			delete(one.Programs, name)
		}
	}
	// Share the already-created maps; global-data sections (.rodata, .bss)
	// are recreated from the same configured contents.
	repl := map[string]*ebpf.Map{
		"ft_events":      d.objs.FtEvents,
		"ft_drop_folds":  d.objs.FtDropFolds,
		"ft_drop_hdrs":   d.objs.FtDropHdrs,
		"ft_drop_recent": d.objs.FtDropRecent,
		"ft_defer":       d.objs.FtDefer,
		"ft_flows":       d.objs.FtFlows,
		"ft_lost":        d.objs.FtLost,
		"ft_netns_scope": d.objs.FtNetnsScope,
		"ft_rb_seq":      d.objs.FtRbSeq,
		"ft_stats":       d.objs.FtStats,
		"ft_xlated":      d.objs.FtXlated,
	}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", prog, err)
	}
	return coll, nil
}

// Ingress returns the tc program for the ingress hook (TCX or clsact).
func (d *Datapath) Ingress() *ebpf.Program { return d.objs.FtTcIngress }

// Egress returns the tc program for the egress hook (TCX or clsact).
func (d *Datapath) Egress() *ebpf.Program { return d.objs.FtTcEgress }

// DropProgram returns the loaded kfree_skb program.
func (d *Datapath) DropProgram() *ebpf.Program { return d.dropProg }

// ProgramCost is one program's kernel run-time statistics: zero while the
// kernel keeps none (kernel.bpf_stats_enabled off, nobody holding
// BPF_ENABLE_STATS), and only the time they were on otherwise.
type ProgramCost struct {
	Name    string // where it runs: "tc_ingress", "tc_egress", "kfree_skb"
	Runs    uint64
	RunTime time.Duration
}

// ProgramCosts returns the statistics of the programs that run for every
// packet or drop: the two tc programs and, where attached, the drop hook.
// (The held first reports' timer callback is not among them: the kernel
// keeps no statistics for callbacks.) A program whose statistics cannot be
// read is left out, and its error returned with the others'.
func (d *Datapath) ProgramCosts() ([]ProgramCost, error) {
	progs := []struct {
		name string
		p    *ebpf.Program
	}{{"tc_ingress", d.objs.FtTcIngress}, {"tc_egress", d.objs.FtTcEgress}, {"kfree_skb", d.dropProg}}
	out := make([]ProgramCost, 0, len(progs))
	var errs []error
	for _, pr := range progs {
		if pr.p == nil {
			continue
		}
		st, err := pr.p.Stats()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s program's statistics: %w", pr.name, err))
			continue
		}
		out = append(out, ProgramCost{Name: pr.name, Runs: st.RunCount, RunTime: st.Runtime})
	}
	return out, errors.Join(errs...)
}

// Features reports the kernel paths in use.
func (d *Datapath) Features() Features { return d.features }

// AllowNetns reports drops of the network namespace with this inode.
func (d *Datapath) AllowNetns(inode uint32) error {
	return d.changeScope(func() error {
		if err := d.objs.FtNetnsScope.Put(inode, uint8(1)); err != nil {
			return fmt.Errorf("allow netns %d: %w", inode, err)
		}
		return nil
	})
}

// ForgetNetns stops reporting drops of the network namespace with this inode.
func (d *Datapath) ForgetNetns(inode uint32) error {
	return d.changeScope(func() error {
		if err := d.objs.FtNetnsScope.Delete(inode); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget netns %d: %w", inode, err)
		}
		return nil
	})
}

// changeScope applies a change of ft_netns_scope, then voids the drop
// hook's per-CPU memo of it (ft_scope_gen, bpf/ft_drop.h). Serialised, so
// the generation never goes back to one a memo may hold.
func (d *Datapath) changeScope(change func() error) error {
	d.scopeMu.Lock()
	defer d.scopeMu.Unlock()
	if err := change(); err != nil {
		return err
	}
	if d.dropColl == nil {
		return nil
	}
	gen := d.dropColl.Variables["ft_scope_gen"]
	if gen == nil {
		return errors.New("drop program without ft_scope_gen")
	}
	if d.scopeGen++; d.scopeGen == 0 {
		d.scopeGen = 1 // 0 is a zeroed memo's
	}
	if err := gen.Set(d.scopeGen); err != nil {
		return fmt.Errorf("void the drop hook's netns scope memo: %w", err)
	}
	return nil
}

// Run reads the ring buffer until ctx is done, calling fn for each decoded
// event; the *decode.Event is reused, so fn must copy what it keeps. It also
// flushes idle flow entries every FlowReportInterval and reports folded
// drops every half DropFoldWindow (FlushDrops). Decode errors are
// counted (Stats "decode_errors"), not fatal. Run must not be called
// concurrently with itself.
func (d *Datapath) Run(ctx context.Context, fn func(*decode.Event)) error {
	return d.RunFlush(ctx, fn, nil)
}

// housekeepEvery bounds how many records Run reads between looks at the
// clock (flushes, clock resync, ctx) while the ring buffer stays non-empty.
const housekeepEvery = 64

// RunFlush is Run, also calling flush (when not nil) each time it has
// drained the ring buffer, before it waits for more: a caller that batches
// fn's events hands a partial batch on then, so batching delays no event.
func (d *Datapath) RunFlush(ctx context.Context, fn func(*decode.Event), flush func()) error {
	var ev decode.Event
	return d.RunSink(ctx, Sink{
		Record: func(rec []byte) {
			if d.DecodeRecord(rec, &ev) {
				fn(&ev)
			}
		},
		Event: fn,
		Flush: flush,
	})
}

// Sink receives what RunSink reads, for a caller that queues ring buffer
// records as they are and decodes them elsewhere (DecodeRecord): a record
// is at most 176 bytes, a decoded event 448, and a queue of thousands of
// them is most of the agent's heap when it falls behind.
type Sink struct {
	// Record gets each ring buffer record, undecoded; the bytes are valid
	// only during the call.
	Record func(rec []byte)
	// Event gets the events table walks produce (idle flow reports,
	// folded drops), decoded and timed; the *decode.Event is reused.
	Event func(*decode.Event)
	// Flush, when not nil, is called each time the ring buffer is drained
	// and after each table walk.
	Flush func()
}

// DecodeRecord decodes a record RunSink handed to Sink.Record and sets its
// wall time. A record that does not decode is counted (Stats
// "decode_errors"), the first one logged, and false returned. It is safe
// to call from any goroutine, concurrently with RunSink.
func (d *Datapath) DecodeRecord(rec []byte, ev *decode.Event) bool {
	if err := decode.Decode(rec, ev); err != nil {
		if d.decodeErrors.Add(1) == 1 {
			d.log.Warn("undecodable ring buffer record", "error", err)
		}
		return false
	}
	ev.Time = d.wallTime(ev.TimeNs)
	return true
}

// RunSink is RunFlush for a Sink: Run's reading, table walks and clock
// keeping, with the records handed on undecoded. Record and Event must be
// set.
func (d *Datapath) RunSink(ctx context.Context, sink Sink) error {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	if d.closed.Load() {
		return nil
	}
	fn, flush := sink.Event, sink.Flush
	// Closing the reader is the only way to interrupt a blocked read early;
	// the poll deadline bounds the wait anyway.
	var rec ringbuf.Record
	lastFlush := time.Now()
	lastFold := time.Now()
	lastSync := time.Now()
	foldEvery := min(d.cfg.DropFoldWindow/2, foldReportEvery)
	pollEvery := cmp.Or(d.readPoll, readPoll)
	poll := pollEvery
	// Drops may be folding while a drop was read in the last two windows
	// (a signature folds only within a window of an emitted drop) or the
	// fold tracker still follows signatures: only then does the reader
	// wake for each fold walk. Otherwise the walks ride on its polls.
	sawDrop := false
	var foldActiveUntil time.Time
	drained, sinceLook := true, 0
	// lastRead: when the loop last looked at the clock after reading a
	// record. A poll that long after it finds every record announced.
	lastRead := time.Now()
	if d.wait != nil {
		// The quiet sleep can be long: ctx's end wakes it.
		defer context.AfterFunc(ctx, d.wait.interrupt)()
	}
	for {
		// The clock, ctx and the poll deadline are looked at when the ring
		// is drained (the next read may wait) and every housekeepEvery
		// records, not per record.
		if drained || sinceLook >= housekeepEvery {
			read := sinceLook > 0
			sinceLook = 0
			if err := ctx.Err(); err != nil {
				return nil
			}
			now := time.Now()
			if now.Sub(lastSync) >= clockResync {
				d.resyncClock()
				lastSync = now
			}
			if now.Sub(lastFlush) >= d.cfg.FlowReportInterval {
				if _, err := d.FlushIdle(fn); err != nil {
					d.log.Warn("idle flow flush failed", "error", err)
				}
				lastFlush = now
			}
			if read {
				lastRead = now
			}
			poll = pollEvery
			if d.wait != nil && d.readPoll == readPollLone && now.Sub(lastRead) >= readPollLone {
				// Every record now wakes the reader: it sleeps until its
				// next timed chore (the idle flow walk, the clock resync).
				// An idle agent then wakes a few times a minute, not ten
				// times a second, each wake-up several thread switches (the
				// netpoller, the runtime's sysmon) on CPUs the node's pods
				// use, whose request/response latency paid for them.
				poll = max(min(lastFlush.Add(d.cfg.FlowReportInterval).Sub(now), lastSync.Add(clockResync).Sub(now)), time.Millisecond)
			}
			if sawDrop {
				foldActiveUntil, sawDrop = now.Add(2*d.cfg.DropFoldWindow), false
			}
			if d.cfg.DropFoldWindow > 0 {
				if now.Sub(lastFold) >= foldEvery {
					if _, err := d.FlushDrops(fn); err != nil {
						d.log.Warn("folded drop flush failed", "error", err)
					}
					// On schedule, not from whenever this pass ran: a
					// report's oldest drop is then at most foldEvery old.
					lastFold = lastFold.Add(foldEvery)
					if now.Sub(lastFold) >= foldEvery {
						lastFold = now // fell a whole period behind
					}
				}
				// Wake for the next walk even while the ring stays quiet:
				// a wait of readPoll would delay it by up to that much.
				if now.Before(foldActiveUntil) || d.folds.tracking() {
					poll = min(poll, max(foldEvery-now.Sub(lastFold), time.Millisecond))
				}
			}
			if flush != nil {
				flush() // what the table walks emitted
			}
			if d.wait == nil {
				d.rd.SetDeadline(now.Add(poll))
			}
		}
		err := d.rd.ReadInto(&rec)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if d.wait != nil {
				// Drained: park until the BPF side's wake-up, readPoll or
				// the next fold walk.
				if err := d.wait.wait(poll, d.available); err != nil {
					if d.closed.Load() {
						return nil
					}
					return fmt.Errorf("wait for ring buffer: %w", err)
				}
			}
			drained = true
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
		sinceLook++
		drained = !d.available()
		if k, ok := decode.RecordKind(rec.RawSample); ok && k == decode.KindDrop {
			sawDrop = true
		}
		sink.Record(rec.RawSample)
		if drained && flush != nil {
			flush()
		}
	}
}

// ringWaiter parks the reader in the Go runtime's netpoller while the ring
// buffer is empty. The ring buffer reader's own wait is a blocking
// epoll_wait: a goroutine blocked in a syscall makes the runtime's sysmon
// poll every 20µs to take its P back, which was a fifth of the agent's CPU
// (nanosleep context switches) under load. With the reader's deadline in
// the past, ReadInto never blocks; this waits instead.
type ringWaiter struct {
	f  *os.File
	rc syscall.RawConn
	// stopped: interrupt was called; wait returns at once from then on.
	stopped atomic.Bool
}

func newRingWaiter(m *ebpf.Map, rd *ringbuf.Reader) (*ringWaiter, error) {
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup ring buffer fd: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ring buffer fd non-blocking: %w", err)
	}
	// A non-blocking fd is registered with the netpoller (edge-triggered
	// epoll): a BPF wake-up of the ring buffer makes it readable.
	f := os.NewFile(uintptr(fd), "ft_events")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ring buffer raw conn: %w", err)
	}
	w := &ringWaiter{f: f, rc: rc}
	// An fd the netpoller refused cannot take a deadline: fall back.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("ring buffer fd not pollable: %w", err)
	}
	rd.SetDeadline(time.Unix(1, 0)) // in the past: ReadInto returns when drained
	return w, nil
}

// wait returns once ready (the ring buffer has data), after timeout or
// once interrupt was called.
func (w *ringWaiter) wait(timeout time.Duration, ready func() bool) error {
	if err := w.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	// After the deadline is set: an interrupt from here on moves it.
	if w.stopped.Load() {
		return nil
	}
	err := w.rc.Read(func(uintptr) bool { return ready() })
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

// interrupt ends a wait in progress and every later one (Run's ctx ended).
func (w *ringWaiter) interrupt() {
	w.stopped.Store(true)
	_ = w.f.SetReadDeadline(time.Unix(1, 0))
}

func (w *ringWaiter) Close() error { return w.f.Close() }

// available reports whether the ring buffer holds unread records; false
// once Close began.
func (d *Datapath) available() bool {
	d.ringMu.RLock()
	defer d.ringMu.RUnlock()
	return !d.closed.Load() && d.rd.AvailableBytes() > 0
}

// bootNs is the clock of event timestamps (bpf_ktime_get_boot_ns).
func bootNs() int64 { return clockNs(unix.CLOCK_BOOTTIME) }

// monoNs is the clock of flow entries' times (ft_now in the BPF object:
// CLOCK_MONOTONIC, coarse or not).
func monoNs() int64 { return clockNs(unix.CLOCK_MONOTONIC) }

func clockNs(id int32) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(id, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// resyncClock measures wall - boottime, bracketing the boot clock read
// between two wall reads to halve the error of a preemption.
func (d *Datapath) resyncClock() {
	w1 := time.Now().UnixNano()
	b := bootNs()
	w2 := time.Now().UnixNano()
	d.bootOffset.Store(w1 + (w2-w1)/2 - b)
}

func (d *Datapath) wallTime(boot uint64) time.Time {
	return time.Unix(0, int64(boot)+d.bootOffset.Load())
}

// FlowTable is the kernel's flow table (tc's per-connection aggregation):
// its size and how full FlushIdle's last walk found it.
type FlowTable struct {
	// Capacity is the entries it holds at most (Config.FlowTableEntries),
	// preallocated: a connection's packet that finds it full is reported
	// at once, unaggregated, and counted (flow_table_full).
	Capacity int
	// Used is the entries the last walk saw, WalkedAt when it ran; zero
	// before the first walk.
	Used     int
	WalkedAt time.Time
}

// FlowTable reports the flow table's capacity and use as of the last idle
// walk (every flow report interval): counting entries takes a walk of the
// whole table, which that walk does anyway.
func (d *Datapath) FlowTable() FlowTable {
	ft := FlowTable{Capacity: d.cfg.FlowTableEntries}
	if at := d.flowsWalked.Load(); at != 0 {
		ft.Used, ft.WalkedAt = int(d.flowsUsed.Load()), time.Unix(0, at)
	}
	return ft
}

// FlushIdle walks the flow table: entries idle for longer than the report
// interval have their unreported counts emitted through fn (reason
// IdleFlush) and zeroed; entries idle for more than twice the interval are
// deleted. A TCP connection whose close its entries never saw (both FINs,
// then the final ACK counted in another CPU's flow-cache slot) is reported
// CLOSED with its other direction, as tc would have, and both entries are
// deleted. It returns the number of events emitted. A packet counted by the
// kernel between the read and the write-back of an entry can be lost, and
// a flow-cache slot taking or leaving it meanwhile leaves its slot count
// off by one (an entry deleted at its close while a slot holds it: the
// slot's counts are then counted as flow_cache_orphaned); the entry was
// idle, so this is rare.
func (d *Datapath) FlushIdle(fn func(*decode.Event)) (int, error) {
	var (
		ev      decode.Event
		emitted int
		stale   []ftFtFlowKey
		errs    []error
	)
	// Counts the CPUs' flow-cache slots hold go into the table first, so
	// the walk sees them (a CPU that went quiet would keep them). Only with
	// the cache on: where the write-back cannot run, it would fail every
	// walk.
	if d.features.FlowCache {
		if err := d.flushFlowCache(); err != nil {
			errs = append(errs, err)
		}
	}
	// Entry times are CLOCK_MONOTONIC; the events carry boot time.
	now, bootNow := uint64(monoNs()), uint64(bootNs())
	interval := uint64(d.cfg.FlowReportInterval.Nanoseconds())
	idle := func(key *ftFtFlowKey, val *ftFtFlowVal) {
		if val.Packets > 0 {
			fillFlushEvent(&ev, key, val, bootNow)
			ev.Time = d.wallTime(bootNow)
			fn(&ev)
			emitted++
		}
		// A closed connection's straggling counts (its close was
		// reported while a slot held the entry): nothing more to wait for.
		if now-val.LastSeenNs > 2*interval || (val.Fin == finReported && val.Slots == 0) {
			stale = append(stale, *key)
			return
		}
		if val.Packets > 0 {
			val.Packets, val.Bytes, val.TcpFlags = 0, 0, 0
			val.LastReportNs = now
			if err := d.objs.FtFlows.Update(key, val, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("reset flow entry: %w", err))
			}
		}
	}
	// Connections whose final ACK a slot took (finBoth) are reported after
	// the walk with their other direction, which may come later in it; a
	// FIN's entry (finOne) waits too, in case it is that other direction.
	var closed, halfClosed []flowEntry
	var used int64
	err := d.walkFlows(func(key *ftFtFlowKey, val *ftFtFlowVal) {
		used++
		if now < val.LastSeenNs || now-val.LastSeenNs <= interval {
			return
		}
		if val.Defer&deferQueued != 0 {
			return // its first-report queue reports and ends it
		}
		switch val.Fin {
		case finBoth:
			closed = append(closed, flowEntry{key: *key, val: *val})
		case finOne:
			halfClosed = append(halfClosed, flowEntry{key: *key, val: *val})
		default:
			idle(key, val)
		}
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("iterate flow table: %w", err))
	} else {
		d.flowsUsed.Store(used)
		d.flowsWalked.Store(time.Now().UnixNano())
	}
	var byKey map[ftFtFlowKey]int // halfClosed's index, when a close needs it
	if len(closed) > 0 && len(halfClosed) > 0 {
		byKey = make(map[ftFtFlowKey]int, len(halfClosed))
		for i := range halfClosed {
			byKey[halfClosed[i].key] = i
		}
	}
	for i := range closed {
		c := &closed[i]
		rk := c.key.reverse()
		var rv ftFtFlowVal
		j, found := byKey[rk]
		if found {
			rv = halfClosed[j].val
			halfClosed[j].done = true
		}
		if c.val.Slots != 0 {
			// A busy CPU kept its slot (flushFlowCache): the final ACK
			// may be there. Both wait for the next walk.
			continue
		}
		if !found {
			// Not among the idle ones (a retransmission kept it busy):
			// taken as it is.
			found = d.objs.FtFlows.Lookup(&rk, &rv) == nil
		}
		fillFlushEvent(&ev, &c.key, &c.val, bootNow)
		ev.FlowReason = decode.ReasonClosed
		if found {
			ev.RevPackets, ev.RevBytes, ev.RevTCPFlags = rv.Packets, rv.Bytes, uint8(rv.TcpFlags)
			stale = append(stale, rk)
		}
		ev.Time = d.wallTime(bootNow)
		fn(&ev)
		emitted++
		stale = append(stale, c.key)
	}
	for i := range halfClosed {
		if h := &halfClosed[i]; !h.done {
			idle(&h.key, &h.val)
		}
	}
	if err := deleteKeys(d.objs.FtFlows, stale); err != nil {
		errs = append(errs, fmt.Errorf("delete idle flow entry: %w", err))
	}
	return emitted, errors.Join(errs...)
}

// enableFlowCache switches tc's per-CPU flow cache on once ft_fc_flush has
// run on every CPU: only then can FlushIdle write back the slots of a CPU
// that saw no packet since. Before 5.10 (no BPF_F_TEST_RUN_ON_CPU for
// raw_tp) the cache stays off and every packet updates the flow table.
func (d *Datapath) enableFlowCache() {
	if d.cfg.NoFlowCache {
		return
	}
	if err := d.runOnCPUs(d.objs.FtFcFlush, nil); err != nil {
		d.log.Info("per-CPU flow cache off: its slots cannot be written back on every CPU", "error", err)
		return
	}
	if err := d.objs.FtFcOn.Set(uint8(1)); err != nil {
		d.log.Warn("per-CPU flow cache off", "error", err)
		return
	}
	d.features.FlowCache = true
}

// enableDropMemo switches the drop hook's per-CPU fold memo on (a
// load-time constant of the drop programs, loaded next) once ft_drop_flush
// has run on every CPU, as for the flow cache. Without folding there is
// nothing to memoise.
func (d *Datapath) enableDropMemo(spec *ebpf.CollectionSpec) error {
	if d.cfg.NoDropMemo || d.cfg.DropFoldWindow < 0 {
		return nil
	}
	if err := d.runOnCPUs(d.objs.FtDropFlush, nil); err != nil {
		d.log.Info("drop fold memo off: it cannot be written back on every CPU", "error", err)
		return nil
	}
	if err := spec.Variables["ft_drop_memo_enabled"].Set(uint8(1)); err != nil {
		return fmt.Errorf("set ft_drop_memo_enabled: %w", err)
	}
	d.features.DropMemo = true
	return nil
}

// flushTries bounds the retries of a write-back program (ft_fc_flush,
// ft_drop_flush) on a CPU whose hook it interrupted: the hook holds its
// per-CPU state for a fraction of a microsecond.
const flushTries = 100

// flushFlowCache runs ft_fc_flush on every CPU, so the counts the CPUs'
// flow-cache slots hold are in the flow table when it returns.
func (d *Datapath) flushFlowCache() error {
	if err := d.runOnCPUs(d.objs.FtFcFlush, nil); err != nil {
		return fmt.Errorf("flow cache write-back: %w", err)
	}
	return nil
}

// runOnCPUs runs a write-back program on each CPU (all possible CPUs when
// cpus is nil), retrying on a CPU where it returns 1 (busy).
func (d *Datapath) runOnCPUs(prog *ebpf.Program, cpus []int) error {
	if cpus == nil {
		ncpu, err := ebpf.PossibleCPU()
		if err != nil {
			return err
		}
		for cpu := range ncpu {
			cpus = append(cpus, cpu)
		}
	}
	for _, cpu := range cpus {
		for try := 0; ; try++ {
			ret, err := prog.Run(&ebpf.RunOptions{Flags: unix.BPF_F_TEST_RUN_ON_CPU, CPU: uint32(cpu)})
			if errors.Is(err, unix.ENXIO) {
				break // offline: it runs no hook either
			}
			if err != nil {
				return fmt.Errorf("on CPU %d: %w", cpu, err)
			}
			if ret == 0 {
				break
			}
			if try == flushTries {
				return fmt.Errorf("on CPU %d: still busy after %d tries", cpu, flushTries)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	return nil
}

// flowBatch is how many flow entries one BPF_MAP_LOOKUP_BATCH returns. The
// table holds up to 65536 entries and a connection churn keeps it full: a
// walk of one lookup and one next-key syscall per entry was a fifth of the
// agent's CPU.
const flowBatch = 1024

// walkFlows calls visit for every entry of the flow table, a batch of
// entries per syscall. Kernels without batch operations on hash maps
// (before 5.6) walk one entry at a time.
func (d *Datapath) walkFlows(visit func(*ftFtFlowKey, *ftFtFlowVal)) error {
	keys := make([]ftFtFlowKey, flowBatch)
	vals := make([]ftFtFlowVal, flowBatch)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := d.objs.FtFlows.BatchLookup(&cursor, keys, vals, nil)
		if first && err != nil && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL)) {
			return d.walkFlowsOneByOne(visit)
		}
		for i := range n {
			visit(&keys[i], &vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // the end of the table
		case err != nil:
			return err
		}
	}
}

func (d *Datapath) walkFlowsOneByOne(visit func(*ftFtFlowKey, *ftFtFlowVal)) error {
	var key ftFtFlowKey
	var val ftFtFlowVal
	it := d.objs.FtFlows.Iterate()
	for it.Next(&key, &val) {
		visit(&key, &val)
	}
	return it.Err()
}

// deleteKeys deletes keys from m, many per syscall; a key already gone
// (deleted by the kernel meanwhile: its connection closed) is skipped.
// Kernels without batch deletes (before 5.6) delete one key per syscall.
func deleteKeys[K any](m *ebpf.Map, keys []K) error {
	for len(keys) > 0 {
		n, err := m.BatchDelete(keys, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[min(n+1, len(keys)):]
		case errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL):
			var errs []error
			for i := range keys {
				if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		default:
			return err
		}
	}
	return nil
}

// IANA protocol numbers of ICMP, whose flow keys hold type and code.
const (
	protoICMP   = 1
	protoICMPv6 = 58
)

// An entry's fin (ft_flow.h, ft_flow_closing): where its TCP connection's
// close stands at its hook.
const (
	finOne      = 1 // this direction sent a FIN
	finBoth     = 2 // and the other direction's FIN came: its next packet ends both
	finReported = 3 // the close was reported; the entry stayed for a slot's counts
)

// flowEntry is one flow table entry FlushIdle holds on to during a walk.
type flowEntry struct {
	key  ftFtFlowKey
	val  ftFtFlowVal
	done bool // reported with its other direction
}

// reverse is the key of k's other direction at the same hook.
func (k *ftFtFlowKey) reverse() ftFtFlowKey {
	r := *k
	r.Saddr, r.Daddr = k.Daddr, k.Saddr
	r.Sport, r.Dport = k.Dport, k.Sport
	r.Dir = uint8(decode.DirIngress)
	if k.Dir == uint8(decode.DirIngress) {
		r.Dir = uint8(decode.DirEgress)
	}
	return r
}

func fillFlushEvent(ev *decode.Event, k *ftFtFlowKey, v *ftFtFlowVal, now uint64) {
	*ev = decode.Event{
		Kind: decode.KindFlow,
		// CPU stays 0: the flush runs in user space, no BPF CPU produced it.
		TimeNs:      now,
		Ifindex:     k.Ifindex,
		Netns:       v.Netns,
		Direction:   decode.Direction(k.Dir),
		EtherType:   v.Ethertype,
		IPVersion:   k.IpVersion,
		SrcPort:     k.Sport,
		DstPort:     k.Dport,
		Proto:       k.Proto,
		TCPFlags:    uint8(v.TcpFlags),
		VLAN:        v.Vlan,
		ParseStatus: decode.ParseOK,
		Packets:     v.Packets,
		Bytes:       v.Bytes,
		FlowReason:  decode.ReasonIdleFlush,
	}
	ev.Src, ev.Dst = decode.Addrs(k.IpVersion, k.Saddr[:], k.Daddr[:])
	if k.Proto == protoICMP || k.Proto == protoICMPv6 {
		// The key's ports are ICMP's type and code (ft_flow_key_of).
		ev.ICMPType, ev.ICMPCode = uint8(k.Sport), uint8(k.Dport)
		ev.SrcPort, ev.DstPort = 0, 0
	}
	if f := decode.CTFlags(v.Ct.Flags); f.Has(decode.CTKnown) {
		ev.CT = decode.Conntrack{Flags: f, IPVersion: v.Ct.IpVersion,
			OrigSrcPort: v.Ct.Orig.Sport, OrigDstPort: v.Ct.Orig.Dport}
		ev.CT.OrigSrc, ev.CT.OrigDst = decode.Addrs(v.Ct.IpVersion, v.Ct.Orig.Saddr[:], v.Ct.Orig.Daddr[:])
	}
	if v.Encap.IpVersion != 0 {
		ev.Encap = decode.Encap{IPVersion: v.Encap.IpVersion, DstPort: v.Encap.Dport, VNI: v.Encap.Vni}
		ev.Encap.Src, ev.Encap.Dst = decode.Addrs(v.Encap.IpVersion, v.Encap.Saddr[:], v.Encap.Daddr[:])
	}
}

// Lost returns ring buffer reserve failures, total and per CPU.
func (d *Datapath) Lost() (uint64, []uint64, error) {
	var per []uint64
	if err := d.objs.FtLost.Lookup(uint32(0), &per); err != nil {
		return 0, nil, fmt.Errorf("read ft_lost: %w", err)
	}
	var total uint64
	for _, v := range per {
		total += v
	}
	return total, per, nil
}

// Stats returns the BPF counters summed over CPUs plus "decode_errors".
func (d *Datapath) Stats() (map[string]uint64, error) {
	out := make(map[string]uint64, len(statNames)+1)
	var per []uint64
	for i, name := range statNames {
		if err := d.objs.FtStats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read ft_stats[%s]: %w", name, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[name] = sum
	}
	// tc counts its packets in its per-CPU scratch value (see struct
	// ft_scratch in bpf/ft_flow.h), which it looks up anyway; so does the
	// drop hook, in its per-CPU state (struct ft_drop_hdr).
	tc, err := perCPUCounters(d.objs.FtScratch, scratchTCPacketsOff, scratchFCHitsOff)
	if err != nil {
		return nil, fmt.Errorf("read ft_scratch: %w", err)
	}
	drop, err := perCPUCounters(d.objs.FtDropHdrs, dropHdrSeenOff, dropHdrFoldedOff, dropHdrMemoHitsOff, dropHdrParsedFastOff)
	if err != nil {
		return nil, fmt.Errorf("read ft_drop_hdrs: %w", err)
	}
	out["tc_packets"] += tc[0]
	out["flow_cache_hits"] += tc[1]
	out["drops_seen"] += drop[0]
	out["drops_folded"] += drop[1]
	out["drop_memo_hits"] += drop[2]
	out["drops_parsed_fast"] += drop[3]
	out["decode_errors"] = d.decodeErrors.Load()
	// kfree_skb calls the kernel ran no drop hook for: the hook was
	// already running on that CPU (a free in an interrupt that came in
	// during it), and tracing programs do not nest. Drops that may have
	// gone unseen, so they are counted rather than lost silently.
	if d.dropProg != nil {
		ps, err := d.dropProg.Stats()
		if err != nil {
			return nil, fmt.Errorf("read drop hook stats: %w", err)
		}
		out["drop_hook_missed"] = ps.RecursionMisses
	}
	reported, lost := d.folds.totals()
	out["drops_fold_reported"] = reported
	out["drops_fold_lost"] = lost
	return out, nil
}

// perCPUCounters sums, over CPUs, the uint64 counters at offs in key 0 of
// a per-CPU array: the counts the BPF side keeps in per-CPU state it looks
// up anyway, rather than in ft_stats.
func perCPUCounters(m *ebpf.Map, offs ...int) ([]uint64, error) {
	var per [][]byte
	if err := m.Lookup(uint32(0), &per); err != nil {
		return nil, err
	}
	sums := make([]uint64, len(offs))
	for _, v := range per {
		for i, off := range offs {
			sums[i] += u64At(v, off)
		}
	}
	return sums, nil
}

// u64At reads the uint64 at off in one CPU's value of a per-CPU map (0
// past its end).
func u64At(v []byte, off int) uint64 {
	if len(v) < off+8 {
		return 0
	}
	return binary.NativeEndian.Uint64(v[off:])
}

// Close detaches the drop hook and releases the reader, programs and maps.
// A running Run returns, and Close waits for it: Run's callbacks must not
// wait for Close.
func (d *Datapath) Close() error {
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		var errs []error
		if d.dropLink != nil {
			errs = append(errs, d.dropLink.Close())
		}
		if d.wait != nil {
			errs = append(errs, d.wait.Close()) // Run's wait returns
		}
		if d.rd != nil {
			d.ringMu.Lock()
			errs = append(errs, d.rd.Close())
			d.ringMu.Unlock()
		}
		// Run returns once its reader is closed; a table walk it is in
		// finishes first.
		d.runMu.Lock()
		if d.dropColl != nil {
			d.dropColl.Close()
		}
		if d.deferColl != nil {
			d.deferColl.Close()
		}
		errs = append(errs, d.objs.Close())
		d.runMu.Unlock()
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}
