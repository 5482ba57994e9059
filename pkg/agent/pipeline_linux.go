package agent

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/enrich"
	"github.com/flowtrace/flowtrace/pkg/observer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// batchSize events travel through the agent queue together: one channel
// operation, and at most one wake-up of the enrich goroutine, per batch
// instead of per event (the wake-ups were a large part of the agent's
// system time under churn).
const batchSize = 32

// maxRecord is the largest ring buffer record (decode's ABI sizes): a raw
// batch has room for batchSize of them.
const maxRecord = max(decode.FlowSize, decode.DropSize, decode.XlateSize, decode.MTUSize)

// eventBatch is batchSize events, either as the ring buffer records they
// came in (raw, decoded by enrichLoop: ~6 KB a batch) or, for the few
// events table walks produce, decoded (evs: 14 KB a batch). A full queue
// of decoded events was 4 MB of live heap, 8 MB at the GC's goal, when
// the agent fell behind a burst of new connections.
type eventBatch struct {
	n    int
	raw  []byte            // records back to back; nil in a decoded batch
	ends [batchSize]uint32 // ends[i] is the end of record i in raw
	evs  []decode.Event    // nil in a raw batch
}

// record returns the batch's record i (raw batches).
func (b *eventBatch) record(i int) []byte {
	start := uint32(0)
	if i > 0 {
		start = b.ends[i-1]
	}
	return b.raw[start:b.ends[i]]
}

// eventQueue carries events from the ring buffer reader to enrichLoop in
// batches. The reader fills one batch (offerRecord, offer) and hands it on
// when it is full or when the ring buffer is drained (flush), so a lone
// event waits for no other. Batches are recycled (up to keepFree of each
// kind): no allocation per event, nor per batch unless a burst fills the
// queue beyond them.
type eventQueue struct {
	ch      chan *eventBatch
	freeRaw chan *eventBatch
	freeEvs chan *eventBatch
	cur     *eventBatch // being filled; the reader goroutine's only
	lost    *atomic.Uint64
}

// keepFree bounds the empty batches kept for reuse, per kind: enough for
// the steady state (a few batches in flight), while the batches a burst
// filled the queue with become garbage once drained, so an agent does not
// keep a full queue's memory (1.6 MB of raw batches) after a burst.
const keepFree = 16

// newEventQueue holds up to size events (rounded up to whole batches).
func newEventQueue(size int, lost *atomic.Uint64) *eventQueue {
	n := max((size+batchSize-1)/batchSize, 1)
	// n queued, one being filled, one being enriched.
	keep := min(n+2, keepFree)
	return &eventQueue{ch: make(chan *eventBatch, n), freeRaw: make(chan *eventBatch, keep),
		freeEvs: make(chan *eventBatch, keep), lost: lost}
}

// offerRecord is the datapath's callback for a ring buffer record (valid
// only during the call, so it is copied). Like offer, it never blocks.
func (q *eventQueue) offerRecord(rec []byte) {
	if q.cur != nil && (q.cur.raw == nil || len(q.cur.raw)+len(rec) > cap(q.cur.raw)) {
		q.flush() // a decoded batch, or no room: order is kept
	}
	if q.cur == nil {
		select {
		case q.cur = <-q.freeRaw:
		default:
			q.cur = &eventBatch{raw: make([]byte, 0, batchSize*maxRecord)}
		}
	}
	b := q.cur
	// A record larger than the ABI's largest grows the buffer (allocates)
	// rather than being refused; decoding then tells what it is.
	b.raw = append(b.raw, rec...)
	b.ends[b.n] = uint32(len(b.raw))
	b.n++
	if b.n == batchSize {
		q.flush()
	}
}

// offer is the datapath's callback for a decoded event: it must never
// block the ring buffer reader, so a full queue drops the batch and counts
// its events.
func (q *eventQueue) offer(ev *decode.Event) {
	if q.cur != nil && q.cur.evs == nil {
		q.flush()
	}
	if q.cur == nil {
		select {
		case q.cur = <-q.freeEvs:
		default:
			q.cur = &eventBatch{evs: make([]decode.Event, batchSize)}
		}
	}
	q.cur.evs[q.cur.n] = *ev
	q.cur.n++
	if q.cur.n == batchSize {
		q.flush()
	}
}

// flush hands on the batch being filled; a full queue drops it, counting
// its events. Either way the reader has no batch after it: offer and
// offerRecord flush a batch of the other kind and then take one of their
// own, and a dropped raw batch kept as current once made offer index its
// nil decoded slice (the agent died under connection churn while a drop
// table walk fed it).
func (q *eventQueue) flush() {
	b := q.cur
	if b == nil || b.n == 0 {
		return
	}
	q.cur = nil
	select {
	case q.ch <- b:
		if len(q.ch) >= keepFree/2 {
			// Let enrichLoop catch up and hand batches back. The BPF side
			// wakes the reader every few ms, with thousands of records to
			// read: with one P (the DaemonSet's 1-core limit) the reader
			// would queue them all first, and every batch beyond keepFree
			// was a new one, garbage a moment later (887 MB in 20 s of
			// churn; the GC was a sixth of the agent's CPU).
			runtime.Gosched()
		}
	default:
		q.lost.Add(uint64(b.n))
		q.recycle(b)
	}
}

func (b *eventBatch) reset() {
	b.n = 0
	if b.raw != nil {
		b.raw = b.raw[:0]
	}
}

// recycle returns an enriched batch for the reader to fill again.
func (q *eventQueue) recycle(b *eventBatch) {
	b.reset()
	free := q.freeEvs
	if b.raw != nil {
		free = q.freeRaw
	}
	select {
	case free <- b:
	default:
	}
}

// pmtuHold is the MTU correlator (enrich.PMTU) with the timer that
// releases the flows it holds unanswered. The timer is armed only while a
// flow is held, at the oldest's deadline: a ticker here woke an idle agent
// 20 times a second for nothing, each wake-up several thread switches on
// CPUs busy with the node's own work.
type pmtuHold struct {
	p     *enrich.PMTU
	wait  time.Duration
	t     *time.Timer
	armed bool
}

func newPMTUHold(wait time.Duration, max int) *pmtuHold {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &pmtuHold{p: enrich.NewPMTU(wait, max), wait: wait, t: t}
}

// add is PMTU.Add, arming the timer once a flow is held.
func (h *pmtuHold) add(f *flowtracev1.Flow, now time.Time) []*flowtracev1.Flow {
	out := h.p.Add(f, now)
	h.arm(now)
	return out
}

// expired is what the timer's fire releases: the flows whose wait is over.
func (h *pmtuHold) expired(now time.Time) []*flowtracev1.Flow {
	h.armed = false
	out := h.p.Expire(now)
	h.arm(now)
	return out
}

// stop ends the timer and returns every held flow, unanswered (shutdown).
func (h *pmtuHold) stop() []*flowtracev1.Flow {
	h.t.Stop()
	return h.p.Expire(time.Now().Add(h.wait))
}

func (h *pmtuHold) arm(now time.Time) {
	if d, ok := h.p.Next(); ok && !h.armed {
		h.t.Reset(d.Sub(now))
		h.armed = true
	}
}

// enrichLoop is the single producer of the observer. MTU_EXCEEDED flows
// wait up to pmtuWait for the ICMP error that answers them.
func (a *Agent) enrichLoop(ctx context.Context) {
	pmtu := newPMTUHold(pmtuWait, 1024)
	publish := func(fs []*flowtracev1.Flow) {
		for _, f := range fs {
			a.publish(f)
		}
	}
	// A batch's flows are published together: one wake-up of the
	// followers per batch.
	p := newPublisher(a)
	var ev decode.Event // raw records are decoded into it, one at a time
	for {
		select {
		case <-ctx.Done():
			publish(pmtu.stop())
			return
		case now := <-pmtu.t.C:
			publish(pmtu.expired(now))
		case b := <-a.queue.ch:
			// Followed, flows are made at once: followers take them as
			// they are. Otherwise forwarded-traffic reports stay
			// payloads until someone reads them (enrich.Lazy).
			lazy := !a.obs.Following()
			for i := range b.n {
				e := &ev
				if b.raw != nil {
					if !a.dp.DecodeRecord(b.record(i), e) {
						continue
					}
				} else {
					e = &b.evs[i]
				}
				if lazy && p.lazy(e) {
					continue
				}
				f := a.enricher.Flow(e)
				if f == nil {
					continue
				}
				if f.Mtu == nil {
					p.flow(f)
					continue
				}
				for _, f := range pmtu.add(f, time.Now()) {
					p.flow(f)
				}
			}
			a.queue.recycle(b)
			p.flush()
		}
	}
}

// publisher gathers a batch's flows and lazy flows, in order, for the
// observer: a run of either kind goes in one call.
type publisher struct {
	a        *Agent
	flows    []*flowtracev1.Flow
	lazies   []observer.Lazy
	payloads []byte // the lazies' payloads, back to back
}

func newPublisher(a *Agent) *publisher {
	return &publisher{a: a, flows: make([]*flowtracev1.Flow, 0, batchSize),
		lazies: make([]observer.Lazy, 0, batchSize), payloads: make([]byte, 0, batchSize*enrich.MaxPayload)}
}

// lazy takes ev as a lazy flow, if it is one (enrich.Lazy).
func (p *publisher) lazy(ev *decode.Event) bool {
	start := len(p.payloads)
	buf, refs, ok := p.a.enricher.Lazy(ev, p.payloads)
	if !ok {
		return false
	}
	p.flushFlows()
	p.payloads = buf
	p.lazies = append(p.lazies, observer.Lazy{Time: ev.Time.UnixNano(), Payload: buf[start:len(buf):len(buf)],
		Source: refs.Source, Destination: refs.Destination, Interface: refs.Interface,
		SourceService: refs.SourceService, DestinationService: refs.DestinationService})
	return true
}

func (p *publisher) flow(f *flowtracev1.Flow) {
	p.flushLazies()
	p.flows = append(p.flows, f)
}

func (p *publisher) flush() {
	p.flushLazies()
	p.flushFlows()
}

func (p *publisher) flushFlows() {
	if len(p.flows) == 0 {
		return
	}
	if !p.a.publishBatch(p.flows) {
		p.a.enricher.Recycle(p.flows)
	}
	clear(p.flows)
	p.flows = p.flows[:0]
}

func (p *publisher) flushLazies() {
	if len(p.lazies) == 0 {
		return
	}
	if p.a.metrics != nil {
		p.a.metrics.ObserveForwarded(len(p.lazies))
	}
	p.a.obs.PublishLazy(p.lazies)
	clear(p.lazies)
	p.lazies, p.payloads = p.lazies[:0], p.payloads[:0]
}

// publish hands f to the observer and counts it in the metrics.
func (a *Agent) publish(f *flowtracev1.Flow) {
	if a.metrics != nil {
		a.metrics.ObserveFlow(f)
	}
	a.obs.Publish(f)
}

// publishBatch is publish for flows in order, handed to the observer at
// once. It reports whether the observer kept references to the flows
// (Observer.PublishBatch); the metrics never do.
func (a *Agent) publishBatch(fs []*flowtracev1.Flow) (kept bool) {
	if len(fs) == 0 {
		return false
	}
	if a.metrics != nil {
		for _, f := range fs {
			a.metrics.ObserveFlow(f)
		}
	}
	return a.obs.PublishBatch(fs)
}

// pmtuWait is how long a too-big packet waits for its ICMP error: the
// router answers within microseconds, so this only absorbs scheduling.
const pmtuWait = 200 * time.Millisecond

// statLosses are the datapath counters (Datapath.Stats) that count lost
// events, and the stage each is reported as, inline and in the status.
var statLosses = [...]struct {
	counter string
	src     flowtracev1.LostEventsSource
}{
	{"drops_fold_lost", flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_FOLD_TABLE},
	{"drop_hook_missed", flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_DROP_HOOK_BUSY},
}

// lossDeltas turns cumulative loss counters into what is new since the
// last look, for followers.
type lossDeltas struct {
	cpu   []uint64
	queue uint64
	stats [len(statLosses)]uint64
}

type publishLost func(src flowtracev1.LostEventsSource, n uint64, cpu *uint32)

// ring takes the ring buffer's per-CPU reserve failures.
func (l *lossDeltas) ring(perCPU []uint64, publish publishLost) {
	for cpu, n := range perCPU {
		var prev uint64
		if cpu < len(l.cpu) {
			prev = l.cpu[cpu]
		}
		if n > prev {
			c := uint32(cpu)
			publish(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, n-prev, &c)
		}
	}
	l.cpu = append(l.cpu[:0], perCPU...)
}

// counters takes the datapath counters of statLosses.
func (l *lossDeltas) counters(st map[string]uint64, publish publishLost) {
	for i, s := range statLosses {
		if n := st[s.counter]; n > l.stats[i] {
			publish(s.src, n-l.stats[i], nil)
			l.stats[i] = n
		}
	}
}

// agentQueue takes the agent queue's drops.
func (l *lossDeltas) agentQueue(q uint64, publish publishLost) {
	if q > l.queue {
		publish(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE, q-l.queue, nil)
		l.queue = q
	}
}

// reportLosses tells followers about the kernel's per-CPU reserve
// failures, the datapath's loss counters and the agent queue's drops as
// LostEvents, once a second at most: a storm yields one message per stage
// per second, not one per event. The same tick samples the agent's CPU time
// for its status (costMeter).
func (a *Agent) reportLosses(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var l lossDeltas
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s, ok := sampleCPU(); ok {
			a.costs.add(s)
		}
		if _, perCPU, err := a.dp.Lost(); err == nil {
			l.ring(perCPU, a.obs.PublishLost)
		} else {
			a.log.Warn("reading ring buffer losses failed", "error", err)
		}
		if st, err := a.dp.Stats(); err == nil {
			l.counters(st, a.obs.PublishLost)
		}
		l.agentQueue(a.queueLost.Load(), a.obs.PublishLost)
	}
}
