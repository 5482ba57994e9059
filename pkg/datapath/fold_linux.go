//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
)

// foldSeen is what user space has reported of one signature's slot on one
// CPU. The kernel's counter is cumulative and only the kernel writes it, so
// the next report is simply folded - reported: nothing is handed over by a
// user-space write that could race with the kernel's increment.
type foldSeen struct {
	created  uint64 // slot instance (kernel created_ns); 0 = never seen
	reported uint64 // of the slot's folded counter
	lastNs   uint64 // last drop covered by the previous report
}

// foldState is what user space has reported of one signature, per CPU.
type foldState struct {
	walk uint64 // the FlushDrops pass that last visited the signature
	// readNs is when that pass began (boot ns). It read the slots after
	// that, so a drop its counts did not include came later: a closer
	// bound on the next report's first drop than the previous report's
	// last one, which can be long before a pause (see visit).
	readNs uint64
	cpus   []foldSeen
}

// foldClockSlack is how far behind real time the kernel may date a folded
// drop: its clock is read once per jiffy (ft_boot_memo), and a jiffy is at
// most 10 ms (HZ=100).
const foldClockSlack = 10_000_000

// foldTracker holds the user-space side of drop folding.
type foldTracker struct {
	mu sync.Mutex
	// seen holds only the signatures with folded drops reported on some
	// CPU. A signature with none reported has nothing to remember: its
	// whole counter is new. (The kernel makes no slot for a signature that
	// drops once, but a CPU that only emitted leaves an empty one, and an
	// entry for each of the up to DropFoldEntries slots cost ~4 MB of
	// heap, twice that at the GC's goal.)
	seen map[ftFtDropKey]*foldState
	// walks counts FlushDrops passes; foldState.walk tells whether the
	// current pass has visited a signature without a map per pass.
	walks uint64
	// Buffers of the batch lookups and the idle list, kept between
	// passes (FlushDrops runs every foldReportEvery).
	keys  []ftFtDropKey
	vals  []ftFtDropFold
	slots []ftFtDropFold
	idle  []ftFtDropKey
	// reportedTotal: folded drops reported by FlushDrops, all signatures.
	reportedTotal uint64
	// foldedAtWalk is the kernel's drops_folded when the last walk began,
	// at walkNs (boot ns); moreIdle: that walk found more idle signatures
	// than one pass deletes.
	foldedAtWalk, walkNs uint64
	moreIdle             bool
	// lost: folded drops no report can carry any more, because the LRU
	// evicted (or replaced) their slot before FlushDrops read it. It is a
	// lower bound that becomes exact once drops stop:
	// drops_folded = drops_fold_reported + drops_fold_lost + still pending.
	lost uint64
}

// tracking reports whether FlushDrops still follows signatures (it walks
// the table every pass while it does).
func (f *foldTracker) tracking() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen) > 0 || f.moreIdle
}

func (f *foldTracker) totals() (reported, lost uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reportedTotal, f.lost
}

// foldBatch is how many signatures one batch lookup syscall reads.
const foldBatch = 512

// FlushDrops reports the drops the kernel folded since the previous call:
// one drop event per signature with new folded drops on any CPU, carrying
// their count (summed over CPUs), the signature's tuple, reason, location,
// netns and ifindex, and the last folded drop's length and skb_iif. LastNs
// is the last folded drop; FirstNs is exact for the first report of a slot
// and otherwise a lower bound (the slot keeps one first time per window,
// not per report): the later of the previous report's LastNs + 1 and the
// start of the previous pass that read the slot, less foldClockSlack.
// FirstNs is the event's time, so a report's age is that of the oldest
// drop it may carry. Signatures idle for two windows are deleted (after a
// last report), so the walk stays as small as the set of recent
// signatures. Run calls it every foldReportEvery (or half a shorter
// window), which bounds how late a folded drop is reported; a call with
// nothing new to report skips the walk. It returns the number of events
// emitted.
func (d *Datapath) FlushDrops(fn func(*decode.Event)) (int, error) {
	f := &d.folds
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = make(map[ftFtDropKey]*foldState)
	}
	// The pass begins before the memos are written back: a drop they did
	// not hand over came later (see foldState.readNs).
	now := uint64(bootNs())
	var errs []error
	if d.features.DropMemo {
		if err := d.flushDropMemos(); err != nil {
			errs = append(errs, err) // their counts wait for the next pass
		}
	}
	// Read the kernel's total before the walk: every fold it includes is
	// then either reported below or lost, so total - reported never
	// overstates the loss. (A memo's drops are counted when written back.)
	foldedBefore, err := d.foldedTotal()
	if err != nil {
		return 0, errors.Join(append(errs, err)...)
	}
	// Nothing folded since the last walk began, and no signature left whose
	// reports are tracked: the table holds nothing to report, so the walk
	// (a batch lookup that scans every bucket: most of an idle agent's CPU
	// at 20 walks a second) waits, up to a window, which still deletes
	// slots with nothing folded (a CPU that only emitted) once idle.
	window := uint64(max(d.cfg.DropFoldWindow.Nanoseconds(), 0))
	if f.walks > 0 && foldedBefore == f.foldedAtWalk && len(f.seen) == 0 && !f.moreIdle && now-f.walkNs < window {
		return 0, errors.Join(errs...)
	}
	f.foldedAtWalk, f.walkNs = foldedBefore, now
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return 0, errors.Join(append(errs, fmt.Errorf("possible cpus: %w", err))...)
	}
	if len(f.slots) != ncpu {
		f.keys = make([]ftFtDropKey, foldBatch)
		f.vals = make([]ftFtDropFold, foldBatch*ncpu)
		f.slots = make([]ftFtDropFold, ncpu)
		f.idle = make([]ftFtDropKey, 0, maxReclaim)
	}
	f.walks++
	w := foldWalk{d: d, f: f, fn: fn, now: now, walk: f.walks, window: window}
	if err := w.batchWalk(ncpu); err != nil {
		errs = append(errs, err)
	}
	// A walk can miss a key that moved while it ran. Forget a signature
	// only when a direct lookup confirms it is gone, or a later walk would
	// report its whole counter again. (A missed signature that is not in
	// seen has reported nothing: the next walk reports all of it.)
	slots := f.slots
	for k, st := range f.seen {
		if st.walk == w.walk {
			continue
		}
		err := d.objs.FtDropFolds.Lookup(&k, &slots)
		switch {
		case err == nil:
			w.visit(k, slots)
		case errors.Is(err, ebpf.ErrKeyNotExist):
			delete(f.seen, k)
		default:
			errs = append(errs, fmt.Errorf("look up drop fold: %w", err))
		}
	}
	if err := w.reclaim(slots); err != nil {
		errs = append(errs, err)
	}
	if foldedBefore > f.reportedTotal && foldedBefore-f.reportedTotal > f.lost {
		f.lost = foldedBefore - f.reportedTotal
	}
	return w.emitted, errors.Join(errs...)
}

// foldWalk is one FlushDrops pass.
type foldWalk struct {
	d       *Datapath
	f       *foldTracker
	fn      func(*decode.Event)
	now     uint64
	window  uint64
	walk    uint64 // this pass's number (foldTracker.walks)
	ev      decode.Event
	emitted int
}

// batchWalk reads the whole fold map, foldBatch signatures per syscall
// (one NextKey + Lookup pair per signature costs ~8 us: 130 ms for a full
// 16k map), falling back to the iterator where batch lookups are missing.
func (w *foldWalk) batchWalk(ncpu int) error {
	keys, vals := w.f.keys, w.f.vals
	var cursor ebpf.MapBatchCursor
	for {
		n, err := w.d.objs.FtDropFolds.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			w.visit(keys[i], vals[i*ncpu:(i+1)*ncpu])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // done
		case errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL):
			if n > 0 {
				return fmt.Errorf("batch lookup drop folds: %w", err)
			}
			return w.iterWalk()
		case err != nil:
			return fmt.Errorf("batch lookup drop folds: %w", err)
		}
	}
}

func (w *foldWalk) iterWalk() error {
	var key ftFtDropKey
	slots := w.f.slots
	it := w.d.objs.FtDropFolds.Iterate()
	for it.Next(&key, &slots) {
		w.visit(key, slots)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate drop folds: %w", err)
	}
	return nil
}

// visit reports what the slots of one signature folded since the last
// report and notes the signature as idle when no CPU has emitted or folded
// one of its drops for two windows: the kernel folds only within a window
// of an emitted drop, so such an entry holds nothing the kernel would still
// add to without first emitting an event.
func (w *foldWalk) visit(key ftFtDropKey, slots []ftFtDropFold) {
	f := w.f
	st := f.seen[key] // nil: nothing reported on any CPU
	var readNs uint64 // the previous read of these slots
	if st != nil {
		readNs = st.readNs
		st.walk, st.readNs = w.walk, w.now
	}
	// One report per signature for all CPUs (a storm spread over CPUs is
	// still one flow to the user): the sum of the slots' new drops, dated by
	// the earliest first drop, with the newest slot's length and skb_iif.
	var (
		active, delta, first uint64
		newest               = -1
	)
	for cpu := range slots {
		s := &slots[cpu]
		if s.CreatedNs == 0 {
			continue
		}
		active = max(active, s.EmitNs, s.LastNs)
		var prev foldSeen
		if st != nil && cpu < len(st.cpus) && st.cpus[cpu].created == s.CreatedNs {
			// Otherwise a new slot instance (the entry was evicted and
			// came back), whose counter starts at zero.
			prev = st.cpus[cpu]
		}
		if s.Folded <= prev.reported {
			continue
		}
		fst := s.FoldFirstNs
		if prev.lastNs != 0 {
			// A drop folded after a pause (a retry every few hundred ms
			// within the window) is not dated back to the drop before
			// it: the slot was read, without it, since then.
			fst = max(prev.lastNs+1, readNs-min(readNs, foldClockSlack))
			fst = min(fst, s.LastNs) // a slot's own newest drop bounds it
		}
		if first == 0 || fst < first {
			first = fst
		}
		if newest < 0 || s.LastNs > slots[newest].LastNs {
			newest = cpu
		}
		delta += s.Folded - prev.reported
		if st == nil {
			st = &foldState{walk: w.walk, readNs: w.now}
			f.seen[key] = st
		}
		if len(st.cpus) < len(slots) {
			st.cpus = append(st.cpus, make([]foldSeen, len(slots)-len(st.cpus))...)
		}
		st.cpus[cpu] = foldSeen{created: s.CreatedNs, reported: s.Folded, lastNs: s.LastNs}
	}
	if newest >= 0 {
		f.reportedTotal += delta
		last := slots[newest].LastNs
		for delta > 0 {
			n := min(delta, math.MaxUint32)
			// Dated by the first drop it may carry: the strictest
			// answer to "when did these drops happen".
			fillFoldEvent(&w.ev, &key, &slots[newest], uint32(newest), uint32(n), first, last)
			w.ev.Time = w.d.wallTime(w.ev.TimeNs)
			if n > 1 {
				w.ev.LastTime = w.d.wallTime(last)
			}
			w.fn(&w.ev)
			w.emitted++
			delta -= n
		}
	}
	if w.now > active && w.now-active > 2*w.window && len(f.idle) < maxReclaim {
		f.idle = append(f.idle, key)
	}
}

// maxReclaim bounds the idle signatures one pass deletes. A scan's
// thousands of signatures go idle together; deleting all of them at once
// cost a syscall each in one pass and a key list of up to DropFoldEntries
// (1.2 MB at 16k). The rest wait for the next passes, foldReportEvery apart: an idle
// entry can stay in the kernel's LRU a little longer, it holds nothing
// that is still to be reported.
const maxReclaim = 1024

// reclaim deletes idle signatures, reading each one's final state in the
// same syscall where the kernel offers it (5.14+) so a drop folded after
// the walk is still reported. What remains is a drop folded through a
// pointer the kernel looked up just before the delete: that is counted in
// drops_fold_lost, not silently lost.
func (w *foldWalk) reclaim(slots []ftFtDropFold) error {
	var errs []error
	m := w.d.objs.FtDropFolds
	// visit appends to f.idle: walk a snapshot of this pass's list.
	idle := w.f.idle
	w.f.moreIdle = len(idle) == maxReclaim
	for _, k := range idle {
		err := m.LookupAndDelete(&k, &slots)
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, errENOTSUPP) {
			if err = m.Lookup(&k, &slots); err == nil {
				err = m.Delete(&k)
			}
		}
		switch {
		case err == nil:
			w.visit(k, slots)
			delete(w.f.seen, k)
		case errors.Is(err, ebpf.ErrKeyNotExist):
			delete(w.f.seen, k)
		default:
			errs = append(errs, fmt.Errorf("delete idle drop fold: %w", err))
		}
	}
	w.f.idle = idle[:0]
	return errors.Join(errs...)
}

// foldedStat is FT_STAT_DROPS_FOLDED, the index of "drops_folded" in
// statNames (checked by a test).
const foldedStat = 14

// foldedTotal is the kernel's drops_folded: counted in the drop hook's
// per-CPU state, and in ft_stats where that state was missing.
// flushDropMemos writes back the fold memos of the CPUs whose memo holds
// drops (ft_drop_flush): one lookup when none does, and no interrupt for a
// CPU with nothing to hand over.
func (d *Datapath) flushDropMemos() error {
	var per [][]byte
	if err := d.objs.FtDropHdrs.Lookup(uint32(0), &per); err != nil {
		return fmt.Errorf("read ft_drop_hdrs: %w", err)
	}
	var cpus []int
	for cpu, v := range per {
		if u64At(v, dropHdrPendingOff) != 0 {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) == 0 {
		return nil
	}
	if err := d.runOnCPUs(d.objs.FtDropFlush, cpus); err != nil {
		return fmt.Errorf("drop fold memo write-back: %w", err)
	}
	return nil
}

func (d *Datapath) foldedTotal() (uint64, error) {
	n, err := d.statSum(foldedStat)
	if err != nil {
		return 0, err
	}
	hdr, err := perCPUCounters(d.objs.FtDropHdrs, dropHdrFoldedOff)
	if err != nil {
		return 0, fmt.Errorf("read ft_drop_hdrs: %w", err)
	}
	return n + hdr[0], nil
}

func (d *Datapath) statSum(idx uint32) (uint64, error) {
	var per []uint64
	if err := d.objs.FtStats.Lookup(idx, &per); err != nil {
		return 0, fmt.Errorf("read ft_stats[%d]: %w", idx, err)
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum, nil
}

// fillFoldEvent: s is the slot that folded the newest drop (its length and
// skb_iif are reported, cpu is its CPU); first and last span every slot.
func fillFoldEvent(ev *decode.Event, k *ftFtDropKey, s *ftFtDropFold, cpu, count uint32, first, last uint64) {
	t := &k.Tuple
	*ev = decode.Event{
		Kind:        decode.KindDrop,
		CPU:         cpu, // the CPU whose slot folded these drops
		TimeNs:      first,
		Ifindex:     k.Ifindex,
		Netns:       k.Netns,
		EtherType:   t.Ethertype,
		IPVersion:   t.IpVersion,
		SrcPort:     t.Sport,
		DstPort:     t.Dport,
		Proto:       t.Proto,
		TCPFlags:    t.TcpFlags,
		ICMPType:    t.IcmpType,
		ICMPCode:    t.IcmpCode,
		VLAN:        t.Vlan,
		PktLen:      s.PktLen,
		ParseStatus: t.Status,
		DropReason:  k.Reason,
		Location:    k.Location,
		SkbIif:      s.SkbIif,
		Count:       count,
		FirstNs:     first,
		LastNs:      last,
	}
	ev.Src, ev.Dst = decode.Addrs(t.IpVersion, t.Saddr[:], t.Daddr[:])
}

// errENOTSUPP is the kernel-internal ENOTSUPP (524) that hash maps return
// for lookup-and-delete before 5.14; golang.org/x/sys has no name for it.
const errENOTSUPP = syscall.Errno(524)
