package agent

import (
	"sync/atomic"
	"testing"

	"github.com/flowtrace/flowtrace/pkg/decode"
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
