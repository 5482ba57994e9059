package agent

import (
	"encoding/binary"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/flowtrace/flowtrace/pkg/decode"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// TestEventQueue: events go on in order, in full batches or at a flush; a
// full queue drops whole batches and counts every event in them.
func TestEventQueue(t *testing.T) {
	var lost atomic.Uint64
	q := newEventQueue(2*batchSize, &lost) // two batches
	ev := func(i int) *decode.Event { return &decode.Event{Ifindex: uint32(i)} }
	for i := range batchSize + 3 {
		q.offer(ev(i))
	}
	if len(q.ch) != 1 {
		t.Fatalf("%d batches queued after %d events, want 1 full batch", len(q.ch), batchSize+3)
	}
	q.flush() // the ring buffer is drained: the partial batch goes too
	q.flush() // nothing left: no empty batch
	if len(q.ch) != 2 {
		t.Fatalf("%d batches queued after flush, want 2", len(q.ch))
	}
	// The queue is full: the next batch is dropped and counted.
	for i := range 5 {
		q.offer(ev(1000 + i))
	}
	q.flush()
	if lost.Load() != 5 {
		t.Fatalf("lost %d, want 5", lost.Load())
	}
	next := 0
	for range 2 {
		b := <-q.ch
		for i := range b.n {
			if got := int(b.evs[i].Ifindex); got != next {
				t.Fatalf("event %d arrived as %d", next, got)
			}
			next++
		}
		q.recycle(b)
	}
	if next != batchSize+3 {
		t.Fatalf("%d events arrived, want %d", next, batchSize+3)
	}
	// Recycled batches are reused, empty.
	q.offer(ev(7))
	q.flush()
	if b := <-q.ch; b.n != 1 || b.evs[0].Ifindex != 7 {
		t.Fatalf("recycled batch: n=%d first=%d", b.n, b.evs[0].Ifindex)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		for i := range batchSize {
			q.offer(ev(i))
		}
		q.recycle(<-q.ch)
	}); allocs != 0 {
		t.Errorf("%v allocations per batch, want 0", allocs)
	}
}

// TestEventQueueBurstReusesBatches: a burst of thousands of records (what
// one wake-up of the reader brings under connection churn) travels in the
// same few batches, which the consumer hands back, with one P as the agent
// is deployed: no batch is allocated per burst.
func TestEventQueueBurstReusesBatches(t *testing.T) {
	var lost atomic.Uint64
	q := newEventQueue(1024*batchSize, &lost)
	var got atomic.Uint64
	done := make(chan struct{})
	go func() { // enrichLoop's part
		for {
			select {
			case b := <-q.ch:
				got.Add(uint64(b.n))
				q.recycle(b)
			case <-done:
				return
			}
		}
	}()
	defer close(done)
	rec := make([]byte, decode.FlowSize)
	const burst = 100 * batchSize
	// AllocsPerRun runs with GOMAXPROCS 1, once more than asked.
	allocs := testing.AllocsPerRun(10, func() {
		for range burst {
			q.offerRecord(rec)
		}
		q.flush()
	})
	for deadline := time.Now().Add(5 * time.Second); got.Load() < 11*burst && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := got.Load(); n != 11*burst || lost.Load() != 0 {
		t.Fatalf("%d records arrived and %d were lost, want %d and 0", n, lost.Load(), 11*burst)
	}
	if allocs > 1 {
		t.Errorf("%v allocations per burst of %d records, want at most 1", allocs, burst)
	}
}

// TestEventQueueRecords: ring buffer records travel as copies of their
// bytes, in order with the decoded events table walks offer between them
// (a batch holds one kind), and a full queue of them costs a fraction of
// what as many decoded events did.
func TestEventQueueRecords(t *testing.T) {
	var lost atomic.Uint64
	q := newEventQueue(8*batchSize, &lost)
	rec := make([]byte, maxRecord)
	record := func(i int) []byte {
		binary.LittleEndian.PutUint32(rec, uint32(i))
		return rec[:8+i%(maxRecord-8)] // lengths vary
	}
	// 40 records, 3 decoded events, 5 records: batches of 32, 8, 3, 5.
	for i := range 40 {
		q.offerRecord(record(i))
	}
	for i := range 3 {
		q.offer(&decode.Event{Ifindex: uint32(40 + i)})
	}
	for i := range 5 {
		q.offerRecord(record(43 + i))
	}
	q.flush()
	rec[0] = 0xff // the queue holds copies
	wantN := []int{batchSize, 8, 3, 5}
	if len(q.ch) != len(wantN) {
		t.Fatalf("%d batches queued, want %d", len(q.ch), len(wantN))
	}
	next := 0
	for _, n := range wantN {
		b := <-q.ch
		if b.n != n {
			t.Fatalf("batch of %d, want %d", b.n, n)
		}
		for i := range b.n {
			var got int
			if b.raw != nil {
				r := b.record(i)
				if len(r) != 8+next%(maxRecord-8) {
					t.Fatalf("record %d: %d bytes", next, len(r))
				}
				got = int(binary.LittleEndian.Uint32(r))
			} else {
				got = int(b.evs[i].Ifindex)
			}
			if got != next {
				t.Fatalf("event %d arrived as %d", next, got)
			}
			next++
		}
		q.recycle(b)
	}
	if len(q.freeRaw) != 3 || len(q.freeEvs) != 1 {
		t.Fatalf("recycled %d raw and %d decoded batches, want 3 and 1", len(q.freeRaw), len(q.freeEvs))
	}
	if allocs := testing.AllocsPerRun(100, func() {
		for i := range batchSize {
			q.offerRecord(record(i))
		}
		q.recycle(<-q.ch)
	}); allocs != 0 {
		t.Errorf("%v allocations per raw batch, want 0", allocs)
	}

	// A full queue of the largest records, as when the agent falls
	// behind a burst: the heap it holds per event.
	const size = 8192
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	big := newEventQueue(size, &lost)
	for range size {
		big.offerRecord(rec)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if len(big.ch) != size/batchSize {
		t.Fatalf("%d batches queued, want %d", len(big.ch), size/batchSize)
	}
	per := float64(m1.HeapAlloc-m0.HeapAlloc) / size
	t.Logf("%.0f bytes of heap per queued %d-byte record (a decoded event is %d)", per, maxRecord, int(unsafe.Sizeof(decode.Event{})))
	// Decoded events cost 512 bytes each (448 in a 16 KB batch of 32).
	if per > 1.25*maxRecord {
		t.Fatalf("%.0f bytes per queued record", per)
	}
	// Drained, the queue keeps only keepFree empty batches for reuse.
	for len(big.ch) > 0 {
		big.recycle(<-big.ch)
	}
	if len(big.freeRaw) != keepFree {
		t.Fatalf("%d empty batches kept after a burst, want %d", len(big.freeRaw), keepFree)
	}
	runtime.KeepAlive(big)
}

// TestEventQueueFullMixed: with the queue full, a batch of one kind is
// dropped (and counted) when an event of the other kind arrives, and the
// event goes into a batch of its own kind: the reader alternates ring
// buffer records with the decoded events of table walks, and a queue that
// kept the dropped batch as current crashed the agent.
func TestEventQueueFullMixed(t *testing.T) {
	var lost atomic.Uint64
	q := newEventQueue(batchSize, &lost) // one batch
	rec := make([]byte, decode.FlowSize)
	for range batchSize {
		q.offerRecord(rec) // fills the queue
	}
	q.offerRecord(rec)
	q.offer(&decode.Event{Ifindex: 1}) // drops the raw batch of 1
	q.offerRecord(rec)                 // drops the decoded batch of 1
	q.offer(&decode.Event{Ifindex: 2})
	q.flush()
	if got := lost.Load(); got != 4 {
		t.Fatalf("lost %d, want 4", got)
	}
	b := <-q.ch
	q.recycle(b)
	q.offer(&decode.Event{Ifindex: 3})
	q.flush()
	if b := <-q.ch; b.raw != nil || b.n != 1 || b.evs[0].Ifindex != 3 {
		t.Fatalf("after the drops: raw=%v n=%d", b.raw != nil, b.n)
	}
}

// TestLossDeltas: each loss counter reaches followers once, as what grew
// since the last look, with its stage (and CPU for the ring buffer); a
// counter that did not grow says nothing.
func TestLossDeltas(t *testing.T) {
	type msg struct {
		src flowtracev1.LostEventsSource
		n   uint64
		cpu int
	}
	var got []msg
	publish := func(src flowtracev1.LostEventsSource, n uint64, cpu *uint32) {
		m := msg{src, n, -1}
		if cpu != nil {
			m.cpu = int(*cpu)
		}
		got = append(got, m)
	}
	var l lossDeltas
	look := func(perCPU []uint64, st map[string]uint64, q uint64) []msg {
		got = nil
		l.ring(perCPU, publish)
		l.counters(st, publish)
		l.agentQueue(q, publish)
		return got
	}
	const (
		ring  = flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER
		fold  = flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_FOLD_TABLE
		hook  = flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_DROP_HOOK_BUSY
		queue = flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE
	)
	for i, step := range []struct {
		perCPU []uint64
		st     map[string]uint64
		q      uint64
		want   []msg
	}{
		{[]uint64{0, 0}, map[string]uint64{"drops_fold_lost": 0, "flow_events": 9}, 0, nil},
		{[]uint64{3, 0}, map[string]uint64{"drop_hook_missed": 2, "flow_events": 12}, 5,
			[]msg{{ring, 3, 0}, {hook, 2, -1}, {queue, 5, -1}}},
		{[]uint64{3, 4}, map[string]uint64{"drop_hook_missed": 2, "drops_fold_lost": 7}, 5,
			[]msg{{ring, 4, 1}, {fold, 7, -1}}},
		{[]uint64{3, 4}, map[string]uint64{"drop_hook_missed": 3, "drops_fold_lost": 7}, 6,
			[]msg{{hook, 1, -1}, {queue, 1, -1}}},
	} {
		if got := look(step.perCPU, step.st, step.q); !slices.Equal(got, step.want) {
			t.Errorf("look %d: published %v, want %v", i, got, step.want)
		}
	}
}

// TestPMTUHold: a flow held for its ICMP answer is released by the timer
// once its wait is over, and the timer never fires while nothing is held
// (an idle agent has no tick to wake for).
func TestPMTUHold(t *testing.T) {
	h := newPMTUHold(50*time.Millisecond, 8)
	defer h.t.Stop()
	quiet := func(when string) {
		t.Helper()
		select {
		case <-h.t.C:
			t.Fatalf("the timer fired %s", when)
		case <-time.After(300 * time.Millisecond):
		}
	}
	quiet("with nothing held")
	f := &flowtracev1.Flow{Uuid: "big", Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
		Ip:  &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
		L4:  &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: 1, DestinationPort: 2}}},
		Mtu: &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED}}
	if out := h.add(f, time.Now()); len(out) != 0 {
		t.Fatalf("released before its wait: %v", out)
	}
	select {
	case now := <-h.t.C:
		if out := h.expired(now); len(out) != 1 || out[0] != f {
			t.Fatalf("the timer released %v", out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held flow was never released")
	}
	quiet("after the last held flow was released")
}
