// Package observer keeps the history of recent flows and fans new flows out to
// following clients.
//
// One producer calls Publish; it never blocks on a client. History is a ring
// bounded by count and by age. A follower gets a bounded queue: when it is full
// the flow is dropped for that client only, counted, and reported to it inline
// as a LostEvents (CLIENT_QUEUE) response. Handing a follower from history to
// live flows happens under the same lock that Publish takes, so a client sees
// no gap and no duplicate between the two parts.
package observer

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowtrace/flowtrace/pkg/filters"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults for Config's zero values.
const (
	DefaultMaxFlows    = 65536
	DefaultMaxAge      = time.Hour
	DefaultClientQueue = 1024
)

// Config bounds the observer.
type Config struct {
	// MaxFlows bounds history by count; 0 means DefaultMaxFlows.
	MaxFlows int
	// MaxAge bounds history by age; 0 means no age bound. Use DefaultMaxAge
	// for the documented default (the agent's flag default).
	MaxAge time.Duration
	// ClientQueue is each follower's queue length; 0 means DefaultClientQueue.
	ClientQueue int
	// NodeName is stamped on every GetFlowsResponse.
	NodeName string
}

// numSources sizes per-source loss arrays; LostEventsSource values are small.
const numSources = 5

// entry is one flow in history; the times are kept decoded so that age
// eviction and since/until never touch the protobuf per comparison.
type entry struct {
	added    int64 // wall clock at Publish, unix ns: age bound
	flowTime int64 // flow time, unix ns (0 when unset): since/until
	flow     *flowtracev1.Flow
}

// item is what a follower's queue carries.
type item struct {
	flow *flowtracev1.Flow
	lost *flowtracev1.LostEvents
	// lostBefore counts flows dropped for this client just before this one,
	// so the LostEvents report lands where the gap is.
	lostBefore uint64
}

type follower struct {
	m        filters.Matcher
	since    int64
	until    int64
	ch       chan item
	pending  [numSources]atomic.Uint64 // losses not yet queued to the client
	dropping bool                      // guarded by Observer.mu
}

// Observer holds history and subscribers. Flows passed to Publish are shared
// read-only with all readers and must not be modified afterwards.
type Observer struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex
	ring      []entry
	head      int // index of the oldest entry
	n         int // entries held
	seen      uint64
	lost      [numSources]uint64
	followers map[*follower]struct{}
}

// New returns an Observer with cfg's zero values defaulted.
func New(cfg Config, log *slog.Logger) *Observer {
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxAge < 0 {
		cfg.MaxAge = 0
	}
	if cfg.ClientQueue <= 0 {
		cfg.ClientQueue = DefaultClientQueue
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Observer{
		cfg:       cfg,
		log:       log,
		now:       time.Now,
		ring:      make([]entry, cfg.MaxFlows),
		followers: make(map[*follower]struct{}),
	}
}

// Config returns the effective configuration.
func (o *Observer) Config() Config { return o.cfg }

func unixNano(ts *timestamppb.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.AsTime().UnixNano()
}

// Publish appends f to history and offers it to every follower. It never
// waits for a client.
func (o *Observer) Publish(f *flowtracev1.Flow) {
	if f == nil {
		return
	}
	now := o.now().UnixNano()
	ft := unixNano(f.GetTime())

	o.mu.Lock()
	defer o.mu.Unlock()
	o.evictLocked(now)
	if o.n == len(o.ring) {
		o.dropOldestLocked()
	}
	e := entry{added: now, flowTime: ft, flow: f}
	o.ring[(o.head+o.n)%len(o.ring)] = e
	o.n++
	o.seen++

	for fl := range o.followers {
		if !fl.wants(ft, f) {
			continue
		}
		o.offerLocked(fl, f)
	}
}

// offerLocked queues f for fl or counts it lost for fl. Every lost flow is
// reported exactly once: either attached to the next queued flow (lostBefore,
// so the report lands where the gap is) or flushed by the consumer once its
// queue is empty; both sides take the count with Swap.
func (o *Observer) offerLocked(fl *follower, f *flowtracev1.Flow) {
	const cq = flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE
	it := item{flow: f}
	if fl.dropping {
		it.lostBefore = fl.pending[cq].Swap(0)
	}
	select {
	case fl.ch <- it:
		fl.dropping = false
	default:
		fl.pending[cq].Add(it.lostBefore + 1)
		fl.dropping = true
		o.lost[cq]++
	}
}

func (fl *follower) wants(ft int64, f *flowtracev1.Flow) bool {
	if fl.since != 0 && ft < fl.since {
		return false
	}
	if fl.until != 0 && ft > fl.until {
		return false
	}
	return fl.m.Match(f)
}

// PublishLost records n events lost upstream of the observer (kernel ring
// buffer, agent queue) and tells every follower inline.
func (o *Observer) PublishLost(src flowtracev1.LostEventsSource, n uint64, cpu *uint32) {
	if n == 0 || src < 0 || int(src) >= numSources {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lost[src] += n
	for fl := range o.followers {
		le := &flowtracev1.LostEvents{Source: src, NumEventsLost: n}
		if cpu != nil {
			c := *cpu
			le.Cpu = &c
		}
		select {
		case fl.ch <- item{lost: le}:
		default:
			// The report itself did not fit: keep the count (the cpu is
			// lost in aggregation) and flush it when the client catches up.
			fl.pending[src].Add(n)
		}
	}
}

// evictLocked drops entries older than MaxAge.
func (o *Observer) evictLocked(now int64) {
	if o.cfg.MaxAge <= 0 {
		return
	}
	limit := now - int64(o.cfg.MaxAge)
	for o.n > 0 && o.ring[o.head].added < limit {
		o.dropOldestLocked()
	}
}

func (o *Observer) dropOldestLocked() {
	o.ring[o.head] = entry{} // release the flow for GC
	o.head = (o.head + 1) % len(o.ring)
	o.n--
	o.lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED]++
}

// Status is a snapshot of the observer's counters.
type Status struct {
	NumFlows  uint64
	MaxFlows  uint64
	SeenFlows uint64
	MaxAge    time.Duration
	// OldestFlow and NewestFlow are the flow times held; zero when empty.
	OldestFlow time.Time
	NewestFlow time.Time
	Followers  int
	// Lost totals per stage. HISTORY_EVICTED counts flows that left history
	// because of the count or age bound (no longer retrievable), CLIENT_QUEUE
	// flows dropped for slow followers, the others what PublishLost reported.
	Lost map[flowtracev1.LostEventsSource]uint64
}

// Status returns the current counters.
func (o *Observer) Status() Status {
	now := o.now().UnixNano()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.evictLocked(now)
	st := Status{
		NumFlows:  uint64(o.n),
		MaxFlows:  uint64(len(o.ring)),
		SeenFlows: o.seen,
		MaxAge:    o.cfg.MaxAge,
		Followers: len(o.followers),
		Lost:      make(map[flowtracev1.LostEventsSource]uint64, numSources-1),
	}
	for src := 1; src < numSources; src++ {
		st.Lost[flowtracev1.LostEventsSource(src)] = o.lost[src]
	}
	// Flow times are only roughly ordered (per-CPU ring buffers), so scan.
	var oldest, newest int64
	for i := 0; i < o.n; i++ {
		t := o.ring[(o.head+i)%len(o.ring)].flowTime
		if t == 0 {
			continue
		}
		if oldest == 0 || t < oldest {
			oldest = t
		}
		if t > newest {
			newest = t
		}
	}
	if oldest != 0 {
		st.OldestFlow = time.Unix(0, oldest).UTC()
		st.NewestFlow = time.Unix(0, newest).UTC()
	}
	return st
}

// GetFlows sends the flows req selects: first from history, then, with
// follow, live flows until ctx is done, until passes or send fails.
// m must already encode req's allow/deny lists; since/until come from req.
func (o *Observer) GetFlows(ctx context.Context, req *flowtracev1.GetFlowsRequest, m filters.Matcher, send func(*flowtracev1.GetFlowsResponse) error) error {
	if m == nil {
		m = filters.MatchAll()
	}
	since, until := unixNano(req.GetSince()), unixNano(req.GetUntil())
	follow := req.GetFollow()

	var fl *follower
	if follow {
		fl = &follower{m: m, since: since, until: until, ch: make(chan item, o.cfg.ClientQueue)}
	}

	// Snapshot under the lock, match outside it: Publish waits only for a
	// copy of the pointers, never for the filters over the whole history.
	now := o.now().UnixNano()
	o.mu.Lock()
	o.evictLocked(now)
	snap := make([]entry, o.n)
	for i := range snap {
		snap[i] = o.ring[(o.head+i)%len(o.ring)]
	}
	if fl != nil {
		o.followers[fl] = struct{}{}
	}
	o.mu.Unlock()
	if fl != nil {
		defer func() {
			o.mu.Lock()
			delete(o.followers, fl)
			o.mu.Unlock()
		}()
	}

	for _, e := range selectHistory(snap, req, m, since, until) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := send(o.flowResponse(e.flow)); err != nil {
			return err
		}
	}
	snap = nil
	if fl == nil {
		return nil
	}
	return o.followLive(ctx, fl, until, send)
}

// selectHistory applies number/first/follow to the matching entries, oldest first.
func selectHistory(snap []entry, req *flowtracev1.GetFlowsRequest, m filters.Matcher, since, until int64) []entry {
	want := req.GetNumber()
	if want == 0 && req.GetFollow() {
		return nil
	}
	ok := func(e entry) bool {
		if since != 0 && e.flowTime < since {
			return false
		}
		if until != 0 && e.flowTime > until {
			return false
		}
		return m.Match(e.flow)
	}
	var out []entry
	if req.GetFirst() || want == 0 {
		for _, e := range snap {
			if ok(e) {
				out = append(out, e)
				if want != 0 && uint64(len(out)) == want {
					break
				}
			}
		}
		return out
	}
	for i := len(snap) - 1; i >= 0; i-- {
		if ok(snap[i]) {
			out = append(out, snap[i])
			if uint64(len(out)) == want {
				break
			}
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func (o *Observer) followLive(ctx context.Context, fl *follower, until int64, send func(*flowtracev1.GetFlowsResponse) error) error {
	handle := func(it item) error {
		if it.lostBefore > 0 {
			if err := send(o.lostResponse(&flowtracev1.LostEvents{
				Source:        flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE,
				NumEventsLost: it.lostBefore,
			})); err != nil {
				return err
			}
		}
		if it.lost != nil {
			return send(o.lostResponse(it.lost))
		}
		return send(o.flowResponse(it.flow))
	}
	// With until, the stream ends when the wall clock passes it: no later
	// flow can match any more.
	var timer <-chan time.Time
	if until != 0 {
		d := time.Until(time.Unix(0, until))
		if d <= 0 {
			d = 0
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	for {
		select {
		case it := <-fl.ch:
			if err := handle(it); err != nil {
				return err
			}
			continue
		default:
		}
		// The queue is empty: report losses that no queued item carries.
		if err := o.flushPending(fl, send); err != nil {
			return err
		}
		select {
		case it := <-fl.ch:
			if err := handle(it); err != nil {
				return err
			}
		case <-timer:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (o *Observer) flushPending(fl *follower, send func(*flowtracev1.GetFlowsResponse) error) error {
	for src := 1; src < numSources; src++ {
		if n := fl.pending[src].Swap(0); n > 0 {
			err := send(o.lostResponse(&flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource(src), NumEventsLost: n,
			}))
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (o *Observer) flowResponse(f *flowtracev1.Flow) *flowtracev1.GetFlowsResponse {
	node := f.GetNodeName()
	if node == "" {
		node = o.cfg.NodeName
	}
	return &flowtracev1.GetFlowsResponse{
		ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f},
		NodeName:      node,
		Time:          f.GetTime(),
	}
}

func (o *Observer) lostResponse(le *flowtracev1.LostEvents) *flowtracev1.GetFlowsResponse {
	return &flowtracev1.GetFlowsResponse{
		ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: le},
		NodeName:      o.cfg.NodeName,
		Time:          timestamppb.New(o.now()),
	}
}
