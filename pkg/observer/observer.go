// Package observer keeps the history of recent flows and serves it, and new
// flows as they happen, to clients.
//
// History is a ring of marshalled Flow protobufs (compact: several times
// more flows per MB than *Flow values), stored back to back in one arena
// outside the Go heap (store.go), bounded by count and by age. Age
// eviction runs on a timer, so old flows leave even when no new ones come.
//
// Every reader — a history read or a follower — is a position in the ring.
// One producer calls Publish; it never waits for a client: it appends and
// wakes the followers. A reader that falls so far behind that its position
// leaves the ring is told inline how many flows it lost
// (LOST_EVENTS_SOURCE_HISTORY_EVICTED), so delivered + lost = produced for
// every client. Handing a follower from history to live flows is a ring
// position taken under the lock Publish takes: no gap, no duplicate.
//
// When a request reaches past what is held (its since is before the oldest
// flow, or it asks for more flows than remain), a HistoryStart response is
// sent first, so --since is honest.
package observer

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowtrace/flowtrace/pkg/filters"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
	// ClientQueue bounds each reader's pending upstream loss reports
	// (kernel ring buffer, agent queue) kept one by one; beyond it they are
	// summed per stage. Flows themselves wait in the shared ring. 0 means
	// DefaultClientQueue.
	ClientQueue int
	// NodeName is stamped on every GetFlowsResponse.
	NodeName string
	// Materialize makes the Flow of a payload PublishLazy kept, when it is
	// read, but for the shared messages kept with it (Lazy). It must be
	// safe for concurrent use. Without it PublishLazy keeps nothing.
	Materialize func(payload []byte) (*flowtracev1.Flow, error)
}

// numSources sizes per-source loss arrays: one more than the largest
// LostEventsSource. (It was 5 while KERNEL_FOLD_TABLE was 5, and
// PublishLost dropped those reports.) TestPublishLostEverySource fails
// when the enum outgrows it.
const numSources = 7

// readBatch is how many ring entries a reader copies per lock.
const readBatch = 256

// liveWindow is how many of the newest flows are also held as the *Flow
// values Publish got, while anyone follows: a follower that keeps up sends
// those without reassembling and unmarshalling history's copy (the
// unmarshal was half of a follower's CPU). A fold walk of a 1,000-flow drop
// storm publishes ~1,000 flows at once, and with one core the publisher
// runs through all of them before a follower does: at 1,024 the follower
// fell out of the window and unmarshalled. About 3 MB while followed;
// older flows, and flows published while no one followed, are decoded from
// history.
const liveWindow = 4096

// entry is one flow as a reader copied it out of history: the marshalled
// Flow (in the reader's own buffer), with the times kept decoded so that
// since/until never unmarshal.
type entry struct {
	added    int64 // wall clock at Publish, unix ns: age bound
	flowTime int64 // flow time, unix ns (0 when unset): since/until
	data     []byte
	// spans: where the encoder wrote the fields history's dictionary looks
	// for (Publish only; hasSpans false: history finds them itself).
	spans    flowSpans
	hasSpans bool
	lazy     bool // data is a PublishLazy payload
}

// pendingLost is an upstream loss report waiting for a follower; at is the
// ring position when it happened, so it is sent between the right flows.
type pendingLost struct {
	at uint64
	le *flowtracev1.LostEvents
}

// follower is a live reader's wake-up and inbox for upstream losses.
type follower struct {
	wake chan struct{} // capacity 1: "the ring grew"

	// guarded by Observer.mu
	lost    []pendingLost
	summed  [numSources]uint64 // reports that did not fit in lost
	maxLost int
}

// Observer holds history and subscribers. A flow passed to Publish is
// marshalled at once, and also shared as is with live followers for a
// while: neither it nor the messages it points to may be modified after
// Publish (the enricher never does; it shares messages between flows).
// PublishLazy keeps flows that are not made yet (a payload and the shared
// messages that name it), for Config.Materialize to make when read.
type Observer struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	// pubMu serializes publishers; it guards what they reuse.
	pubMu      sync.Mutex
	scratch    []byte
	encCache   *encodeCache
	pubEntries []entry
	pubFlows   []*flowtracev1.Flow

	// following is len(followers), for Following without the lock.
	following atomic.Int32

	mu        sync.Mutex
	hist      store                         // flows held: seqs hist.next-hist.n .. hist.next-1
	live      [liveWindow]*flowtracev1.Flow // flow seq s at live[s%liveWindow], while held
	seen      uint64
	rate      rateWindow // flows taken per second, for FlowsRate
	evicted   uint64     // flows that left history (count or age bound)
	lost      [numSources]uint64
	followers map[*follower]struct{}
	ageTimer  *time.Timer
	closed    bool
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
	o := &Observer{
		cfg:       cfg,
		log:       log,
		now:       time.Now,
		hist:      newStore(cfg.MaxFlows),
		followers: make(map[*follower]struct{}),
	}
	o.hist.dict.materialize = o.materialize
	// The arena and index are not Go memory: give their address space back
	// when the Observer goes (Close must not: publishing after Close works).
	if o.hist.arena != nil {
		runtime.AddCleanup(o, unmapArena, o.hist.arena)
	}
	if o.hist.idxMem != nil {
		runtime.AddCleanup(o, unmapArena, o.hist.idxMem)
	}
	return o
}

// Config returns the effective configuration.
func (o *Observer) Config() Config { return o.cfg }

// Close stops the age eviction timer. Publishing after Close still works
// (eviction then happens on Publish, Status and GetFlows only).
func (o *Observer) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.ageTimer != nil {
		o.ageTimer.Stop()
		o.ageTimer = nil
	}
	return nil
}

func unixNano(ts *timestamppb.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.AsTime().UnixNano()
}

// Publish appends f to history and wakes the followers. It never waits for
// a client.
func (o *Observer) Publish(f *flowtracev1.Flow) {
	one := [1]*flowtracev1.Flow{f}
	o.PublishBatch(one[:])
}

// PublishBatch is Publish for several flows, in order: history's lock is
// taken, and the followers woken, once for all of them (a follower woken
// per flow ran, and parked again, for every flow). nil flows are skipped;
// fs is not retained. kept reports whether the observer still references
// the flows (followers read them from the live window); when false, only
// their encoding was kept, and the caller may reuse the flows' memory.
func (o *Observer) PublishBatch(fs []*flowtracev1.Flow) (kept bool) {
	o.pubMu.Lock()
	defer o.pubMu.Unlock()
	// Marshal outside the lock: readers only wait for the append.
	es, flows := o.pubEntries[:0], o.pubFlows[:0]
	added := o.now().UnixNano()
	for _, f := range fs {
		if f == nil {
			continue
		}
		es = append(es, entry{added: added, flowTime: unixNano(f.GetTime())})
		e := &es[len(es)-1]
		var err error
		if e.data, e.hasSpans, err = o.encode(f, &e.spans); err != nil {
			o.log.Warn("cannot keep flow in history", "error", err)
			es = es[:len(es)-1]
			continue
		}
		flows = append(flows, f)
	}
	if len(es) > 0 {
		kept = o.appendLocked(es, flows)
	}
	clear(es) // no references into scratch, no flows past their eviction
	clear(flows)
	o.pubEntries, o.pubFlows, o.scratch = es[:0], flows[:0], o.scratch[:0]
	return kept
}

// encode appends f's encoding to the batch's reused scratch buffer
// (appendFlow: no size pass, no reflection), recording in sp where it
// wrote what history interns (ok says sp holds them); history copies the
// bytes into its arena, after which PublishBatch empties scratch. pubMu is
// held.
func (o *Observer) encode(f *flowtracev1.Flow, sp *flowSpans) (data []byte, ok bool, err error) {
	if o.encCache == nil {
		o.encCache = newEncodeCache()
	}
	start := len(o.scratch)
	buf, ok := appendFlowCached(o.scratch, f, o.encCache, sp)
	if !ok {
		data, err = proto.Marshal(f) // says what is wrong (invalid UTF-8)
		return data, false, err
	}
	// A grown buffer leaves earlier encodings in the old one, which their
	// entries still reference until the append.
	o.scratch = buf
	return buf[start:len(buf):len(buf)], true, nil
}

// Lazy is a flow that history keeps as a payload, made into a Flow by
// Config.Materialize only when read, and the shared messages that name it,
// which history interns by reference as it does those of a published
// Flow. They must never be modified afterwards (see Observer).
type Lazy struct {
	Time                              int64  // the flow's time, unix ns: since/until
	Payload                           []byte // read during PublishLazy only
	Source, Destination               *flowtracev1.Endpoint
	Interface                         *flowtracev1.Interface
	SourceService, DestinationService *flowtracev1.Service
}

// Following reports whether anyone follows: a publisher may then prefer
// Publish, whose flows followers take as they are, to PublishLazy, whose
// they must materialize.
func (o *Observer) Following() bool { return o.following.Load() > 0 }

// PublishLazy is PublishBatch for flows kept as payloads: no Flow is made
// or encoded unless someone reads it. Without Config.Materialize it keeps
// nothing.
func (o *Observer) PublishLazy(ls []Lazy) {
	if len(ls) == 0 || o.cfg.Materialize == nil {
		return
	}
	o.pubMu.Lock()
	defer o.pubMu.Unlock()
	if o.encCache == nil {
		o.encCache = newEncodeCache()
	}
	es := o.pubEntries[:0]
	added := o.now().UnixNano()
	for i := range ls {
		l := &ls[i]
		start := len(o.scratch)
		es = append(es, entry{added: added, flowTime: l.Time, hasSpans: true, lazy: true})
		e := &es[len(es)-1]
		enc := encoder{b: append(o.scratch, l.Payload...), cache: o.encCache, spans: &e.spans, base: start, allShared: true}
		if l.Source != nil {
			cachedField(&enc, o.encCache.endpoints, l.Source, fieldSource, enc.endpointBody)
		}
		if l.Destination != nil {
			cachedField(&enc, o.encCache.endpoints, l.Destination, fieldDestination, enc.endpointBody)
		}
		if l.Interface != nil {
			cachedField(&enc, o.encCache.ifaces, l.Interface, fieldInterface, enc.ifaceBody)
		}
		if l.SourceService != nil {
			cachedField(&enc, o.encCache.services, l.SourceService, fieldSourceService, enc.serviceBody)
		}
		if l.DestinationService != nil {
			cachedField(&enc, o.encCache.services, l.DestinationService, fieldDestinationService, enc.serviceBody)
		}
		if !enc.ok() || len(enc.b) != start+len(l.Payload) {
			// A message proto would refuse (invalid UTF-8), written
			// inline: what PublishBatch does with such a flow.
			o.log.Warn("cannot keep flow in history", "error", "a shared message is not valid protobuf")
			es = es[:len(es)-1]
			o.scratch = enc.b[:start]
			continue
		}
		o.scratch = enc.b
		e.data = o.scratch[start:len(o.scratch):len(o.scratch)]
	}
	if len(es) > 0 {
		o.appendLocked(es, nil)
	}
	clear(es)
	o.pubEntries, o.scratch = es[:0], o.scratch[:0]
}

// materialize appends the encoding of the flow of a PublishLazy payload,
// without its shared messages (history appends them). A payload
// Materialize refuses leaves just those: the flow's names, and a warning.
func (o *Observer) materialize(dst, payload []byte) []byte {
	f, err := o.cfg.Materialize(payload)
	if err != nil {
		o.log.Warn("cannot read flow from history", "error", err)
		return dst
	}
	out, ok := appendFlow(dst, f)
	if !ok {
		return dst
	}
	return out
}

// appendLocked reports whether the flows went into the live window.
func (o *Observer) appendLocked(es []entry, flows []*flowtracev1.Flow) (live bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	live = len(o.followers) > 0
	o.evictLocked(es[0].added)
	seen := o.seen
	for i := range es {
		e := &es[i]
		var sp *flowSpans
		if e.hasSpans {
			sp = &e.spans
		}
		oldest := o.hist.next - uint64(o.hist.n)
		evicted, ok := o.hist.add(e.added, e.flowTime, e.data, sp, e.lazy)
		o.releaseLiveLocked(oldest, oldest+uint64(evicted))
		o.evicted += uint64(evicted)
		if !ok {
			o.log.Warn("flow too large for history", "bytes", len(e.data))
			continue
		}
		// Only followers read the window often enough to gain from it;
		// without one it would keep liveWindow flows (~3 MB, twice that
		// at the GC's goal) alive for nothing, and the publisher could
		// not reuse them. The slot is cleared either way: it held the
		// flow of seq-liveWindow.
		var f *flowtracev1.Flow
		if live && flows != nil {
			f = flows[i] // a lazy flow has none: followers read history's
		}
		o.live[(o.hist.next-1)%liveWindow] = f
		o.seen++
	}
	o.rate.add(es[0].added, o.seen-seen)
	o.armAgeTimerLocked(es[0].added)
	for fl := range o.followers {
		select {
		case fl.wake <- struct{}{}:
		default: // already woken
		}
	}
	return live
}

// PublishLost records n events lost upstream of the observer (kernel ring
// buffer, agent queue) and tells every follower inline.
func (o *Observer) PublishLost(src flowtracev1.LostEventsSource, n uint64, cpu *uint32) {
	if n == 0 || src <= 0 || int(src) >= numSources {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lost[src] += n
	for fl := range o.followers {
		if len(fl.lost) < fl.maxLost {
			le := &flowtracev1.LostEvents{Source: src, NumEventsLost: n}
			if cpu != nil {
				c := *cpu
				le.Cpu = &c
			}
			fl.lost = append(fl.lost, pendingLost{at: o.hist.next, le: le})
		} else {
			// Too many reports waiting: keep the count, lose the cpu.
			fl.summed[src] += n
		}
		select {
		case fl.wake <- struct{}{}:
		default:
		}
	}
}

// evictLocked drops entries older than MaxAge.
func (o *Observer) evictLocked(now int64) {
	if o.cfg.MaxAge <= 0 {
		return
	}
	limit := now - int64(o.cfg.MaxAge)
	for o.hist.n > 0 && o.hist.oldest().added < limit {
		seq := o.hist.next - uint64(o.hist.n)
		o.releaseLiveLocked(seq, seq+1)
		o.hist.dropOldest()
		o.evicted++
	}
}

// releaseLiveLocked forgets the live flows of seqs [from, to), which left
// history, so the window keeps no flow alive past its eviction.
func (o *Observer) releaseLiveLocked(from, to uint64) {
	for seq := max(from, o.hist.next-min(o.hist.next, liveWindow)); seq < to; seq++ {
		o.live[seq%liveWindow] = nil
	}
}

// armAgeTimerLocked makes sure a timer will evict the oldest entry when it
// expires, so that history honours MaxAge without new flows arriving.
func (o *Observer) armAgeTimerLocked(now int64) {
	if o.cfg.MaxAge <= 0 || o.closed || o.ageTimer != nil || o.hist.n == 0 {
		return
	}
	oldest := o.hist.oldest().added
	d := time.Duration(oldest+int64(o.cfg.MaxAge)-now) + time.Millisecond
	if d < time.Millisecond {
		d = time.Millisecond
	}
	o.ageTimer = time.AfterFunc(d, o.ageTick)
}

func (o *Observer) ageTick() {
	now := o.now().UnixNano()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ageTimer = nil
	o.evictLocked(now)
	// History emptied by age: nothing arrived for MaxAge, so hand the
	// arena's pages back rather than keep the memory of a past burst.
	o.hist.release()
	o.armAgeTimerLocked(now)
}

// Status is a snapshot of the observer's counters.
type Status struct {
	NumFlows  uint64
	MaxFlows  uint64
	SeenFlows uint64
	// FlowsRate is flows seen per second over the last minute (rateWindow).
	FlowsRate float64
	// EvictedFlows left history because of the count or age bound.
	EvictedFlows uint64
	MaxAge       time.Duration
	// OldestFlow and NewestFlow are the flow times held; zero when empty.
	OldestFlow time.Time
	NewestFlow time.Time
	Followers  int
	// Lost totals per stage. HISTORY_EVICTED counts flows that left history
	// before a reader that wanted them got to them (each reader counts its
	// own); the upstream stages count what PublishLost reported;
	// CLIENT_QUEUE stays 0 here (readers wait in the shared ring).
	Lost map[flowtracev1.LostEventsSource]uint64
}

// Status returns the current counters.
func (o *Observer) Status() Status {
	now := o.now().UnixNano()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.evictLocked(now)
	st := Status{
		NumFlows:     uint64(o.hist.n),
		MaxFlows:     uint64(len(o.hist.idx)),
		SeenFlows:    o.seen,
		FlowsRate:    o.rate.rate(now),
		EvictedFlows: o.evicted,
		MaxAge:       o.cfg.MaxAge,
		Followers:    len(o.followers),
		Lost:         make(map[flowtracev1.LostEventsSource]uint64, numSources-1),
	}
	for src := 1; src < numSources; src++ {
		st.Lost[flowtracev1.LostEventsSource(src)] = o.lost[src]
	}
	oldest, newest := o.timeRangeLocked()
	if oldest != 0 {
		st.OldestFlow = time.Unix(0, oldest).UTC()
		st.NewestFlow = time.Unix(0, newest).UTC()
	}
	return st
}

// timeRangeLocked scans the flow times held: they are only roughly ordered
// (per-CPU ring buffers), so the head is not necessarily the oldest.
func (o *Observer) timeRangeLocked() (oldest, newest int64) {
	for i := 0; i < o.hist.n; i++ {
		t := o.hist.at(o.hist.next - uint64(o.hist.n) + uint64(i)).flowTime
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
	return oldest, newest
}

// request is one GetFlows call's compiled state.
type request struct {
	o            *Observer
	m            filters.Matcher
	mask         *filters.FieldMask
	since, until int64
	send         func(*flowtracev1.GetFlowsResponse) error
	sendEnc      func(*EncodedFlow) error // Sender.Encoded without a field mask, else nil
	enc          EncodedFlow              // reused for each call of sendEnc
	buf          []entry
	flows        []*flowtracev1.Flow // buf's flows still in the live window, else nil
	data         []byte              // backs buf's data: the bytes of one batch
}

func (r *request) inRange(e *entry) bool {
	return (r.since == 0 || e.flowTime >= r.since) && (r.until == 0 || e.flowTime <= r.until)
}

// decode returns the entry's flow when it passes time range and filters:
// live, the published flow itself, else unmarshalled from history.
func (r *request) decode(e *entry, live *flowtracev1.Flow) (*flowtracev1.Flow, bool) {
	if !r.inRange(e) {
		return nil, false
	}
	if live != nil {
		return live, r.m.Match(live)
	}
	f := &flowtracev1.Flow{}
	if err := proto.Unmarshal(e.data, f); err != nil {
		// We marshalled it ourselves; this cannot happen short of memory
		// corruption, and one bad record must not end the stream.
		r.o.log.Warn("undecodable flow in history", "error", err)
		return nil, false
	}
	return f, r.m.Match(f)
}

// GetFlows sends the flows req selects: first from history, then, with
// follow, live flows until ctx is done, until passes or send fails.
// m must already encode req's allow/deny lists; since/until, number, first,
// follow and field_mask come from req. A bad field mask is
// codes.InvalidArgument.
func (o *Observer) GetFlows(ctx context.Context, req *flowtracev1.GetFlowsRequest, m filters.Matcher, send func(*flowtracev1.GetFlowsResponse) error) error {
	return o.GetFlowsTo(ctx, req, m, Sender{Send: send})
}

// Sender is where GetFlowsTo sends. Send takes every response; Encoded,
// when set, takes instead the flows history reads out already marshalled
// (without a field mask): sending those bytes saves the server encoding
// every flow a second time (a tenth of the agent's CPU with a follower).
type Sender struct {
	Send    func(*flowtracev1.GetFlowsResponse) error
	Encoded func(*EncodedFlow) error
}

// EncodedFlow is a flow response whose flow is held marshalled
// (EncodedFlow.AppendResponse writes the response's wire encoding).
type EncodedFlow struct {
	NodeName string
	Time     *timestamppb.Timestamp
	Flow     []byte // the Flow's wire encoding; valid only during the call
}

// GetFlowsTo is GetFlows through s.
func (o *Observer) GetFlowsTo(ctx context.Context, req *flowtracev1.GetFlowsRequest, m filters.Matcher, s Sender) error {
	send := s.Send
	if m == nil {
		m = filters.MatchAll()
	}
	mask, err := filters.NewFieldMask(req.GetFieldMask().GetPaths())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	r := &request{o: o, m: m, mask: mask, since: unixNano(req.GetSince()), until: unixNano(req.GetUntil()), send: send}
	if mask == nil {
		r.sendEnc = s.Encoded
	}
	number, follow := req.GetNumber(), req.GetFollow()

	// Take the history's bounds and, with follow, subscribe — under one lock,
	// so the live part starts exactly where history ends.
	now := o.now().UnixNano()
	o.mu.Lock()
	o.evictLocked(now)
	end := o.hist.next
	start := o.hist.next - uint64(o.hist.n)
	evicted := o.evicted
	oldestTime, _ := o.timeRangeLocked()
	var fl *follower
	if follow {
		fl = &follower{wake: make(chan struct{}, 1), maxLost: o.cfg.ClientQueue}
		o.followers[fl] = struct{}{}
		o.following.Store(int32(len(o.followers)))
	}
	o.mu.Unlock()
	if fl != nil {
		defer func() {
			o.mu.Lock()
			delete(o.followers, fl)
			o.following.Store(int32(len(o.followers)))
			if len(o.followers) == 0 {
				clear(o.live[:]) // see appendLocked
			}
			o.mu.Unlock()
		}()
	}

	// History reaches past what is held when flows were evicted and the
	// request wants flows older than the oldest left.
	reachesPast := evicted > 0 && (r.since == 0 || r.since < oldestTime)
	histStart := func() error {
		hs := &flowtracev1.HistoryStart{EvictedFlows: evicted, RequestedSince: req.GetSince()}
		if oldestTime != 0 {
			hs.OldestFlowTime = timestamppb.New(time.Unix(0, oldestTime))
		}
		return send(&flowtracev1.GetFlowsResponse{
			ResponseTypes: &flowtracev1.GetFlowsResponse_HistoryStart{HistoryStart: hs},
			NodeName:      o.cfg.NodeName,
			Time:          timestamppb.New(o.now()),
		})
	}

	switch {
	case follow && number == 0 && r.since == 0:
		// Live flows only.
	case number > 0 && !req.GetFirst():
		flows, err := r.lastN(ctx, start, end, number)
		if err != nil {
			return err
		}
		// Fewer matches than asked for: the missing ones may have been evicted.
		if reachesPast && uint64(len(flows)) < number {
			if err := histStart(); err != nil {
				return err
			}
		}
		for _, f := range flows {
			if err := send(r.flowResponse(f)); err != nil {
				return err
			}
		}
	default:
		// first N, or everything held (within since/until).
		if reachesPast {
			if err := histStart(); err != nil {
				return err
			}
		}
		if _, err := r.forward(ctx, start, end, number); err != nil {
			return err
		}
	}
	if fl == nil {
		return nil
	}
	return r.followLive(ctx, fl, end)
}

// read copies up to len(r.buf) entries from seq pos (but not past end) and
// says how many entries between pos and the first copied one left history
// before this reader got to them.
func (r *request) read(pos, end uint64) (n int, from uint64, lost uint64) {
	o := r.o
	o.mu.Lock()
	defer o.mu.Unlock()
	oldest := o.hist.next - uint64(o.hist.n)
	if pos < oldest {
		lost = min(oldest, end) - pos
		pos += lost
		o.lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED] += lost
	}
	return r.copyLocked(pos, end), pos, lost
}

// copyLocked copies entries from pos (held) up to end into r.buf, their
// bytes into r.data (the arena is rewritten once the lock is released), or
// their flows into r.flows while those are in the live window.
func (r *request) copyLocked(pos, end uint64) int {
	o := r.o
	h := &o.hist
	k := min(uint64(len(r.buf)), end-min(pos, end))
	var ends [readBatch]int
	data := r.data[:0]
	for i := uint64(0); i < k; i++ {
		seq := pos + i
		r.flows[i] = nil
		if h.next-seq <= liveWindow {
			r.flows[i] = o.live[seq%liveWindow]
		}
		// A live flow needs no bytes, unless they are what is sent:
		// reassembling them is cheaper than encoding the flow again.
		if r.flows[i] == nil || r.sendEnc != nil {
			data = h.appendFlow(data, h.at(seq))
		}
		ends[i] = len(data)
	}
	r.data = data
	// Slices are taken once data stopped growing (append may move it).
	start := 0
	for i := uint64(0); i < k; i++ {
		m := h.at(pos + i)
		r.buf[i] = entry{added: m.added, flowTime: m.flowTime, data: data[start:ends[i]:ends[i]]}
		start = ends[i]
	}
	return int(k)
}

func (r *request) buffer() ([]entry, []*flowtracev1.Flow) {
	if r.buf == nil {
		r.buf = make([]entry, readBatch)
		r.flows = make([]*flowtracev1.Flow, readBatch)
	}
	return r.buf, r.flows
}

// forward sends matching flows from seq pos up to end, at most limit (0: no
// limit), reporting inline any that left history before it read them. It
// returns the position reached.
func (r *request) forward(ctx context.Context, pos, end, limit uint64) (uint64, error) {
	buf, flows := r.buffer()
	var sent uint64
	for pos < end {
		if err := ctx.Err(); err != nil {
			return pos, err
		}
		n, from, lost := r.read(pos, end)
		if lost > 0 {
			if err := r.send(r.o.lostResponse(&flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED, NumEventsLost: lost,
			})); err != nil {
				return pos, err
			}
		}
		pos = from + uint64(n)
		for i := 0; i < n; i++ {
			f, ok := r.decode(&buf[i], flows[i])
			data := buf[i].data
			buf[i], flows[i] = entry{}, nil
			if !ok {
				continue
			}
			var err error
			if r.sendEnc != nil {
				r.enc = EncodedFlow{NodeName: r.nodeOf(f), Time: f.GetTime(), Flow: data}
				err = r.sendEnc(&r.enc)
				r.enc = EncodedFlow{}
			} else {
				err = r.send(r.flowResponse(f))
			}
			if err != nil {
				return pos, err
			}
			if sent++; limit != 0 && sent == limit {
				return pos, nil
			}
		}
	}
	return pos, nil
}

// lastN collects the newest n matching flows before end, scanning backward
// a batch at a time (the lock is held only to copy a batch), oldest first.
func (r *request) lastN(ctx context.Context, start, end, n uint64) ([]*flowtracev1.Flow, error) {
	buf, flows := r.buffer()
	var out []*flowtracev1.Flow
	hi := end
	for hi > start && uint64(len(out)) < n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lo := start
		if hi-lo > uint64(len(buf)) {
			lo = hi - uint64(len(buf))
		}
		got, from := r.readNoCount(lo, hi)
		if got == 0 {
			break // the rest was evicted while we scanned
		}
		for i := got - 1; i >= 0 && uint64(len(out)) < n; i-- {
			if f, ok := r.decode(&buf[i], flows[i]); ok {
				out = append(out, f)
			}
			buf[i], flows[i] = entry{}, nil
		}
		if from > lo {
			break // older entries are gone
		}
		hi = lo
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// readNoCount is read for the backward scan of --last: entries evicted
// meanwhile are older than every flow it returns, so they are not a gap in
// what the client sees (HistoryStart covers them).
func (r *request) readNoCount(pos, end uint64) (n int, from uint64) {
	o := r.o
	o.mu.Lock()
	defer o.mu.Unlock()
	oldest := o.hist.next - uint64(o.hist.n)
	if pos < oldest {
		pos = min(oldest, end)
	}
	return r.copyLocked(pos, end), pos
}

// followLive streams flows from seq pos on as they are published, with
// upstream loss reports between the flows they happened between, until ctx
// ends or the wall clock passes until.
func (r *request) followLive(ctx context.Context, fl *follower, pos uint64) error {
	var timer <-chan time.Time
	if r.until != 0 {
		d := time.Until(time.Unix(0, r.until))
		t := time.NewTimer(max(d, 0))
		defer t.Stop()
		timer = t.C
	}
	o := r.o
	for {
		o.mu.Lock()
		target := o.hist.next
		var due []pendingLost
		for len(fl.lost) > 0 && fl.lost[0].at <= pos {
			due = append(due, fl.lost[0])
			fl.lost = fl.lost[1:]
		}
		if len(fl.lost) > 0 && fl.lost[0].at < target {
			target = fl.lost[0].at
		}
		summed := fl.summed
		fl.summed = [numSources]uint64{}
		o.mu.Unlock()

		for _, p := range due {
			if err := r.send(o.lostResponse(p.le)); err != nil {
				return err
			}
		}
		for src, n := range summed {
			if n == 0 {
				continue
			}
			if err := r.send(o.lostResponse(&flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource(src), NumEventsLost: n,
			})); err != nil {
				return err
			}
		}
		if pos < target {
			var err error
			if pos, err = r.forward(ctx, pos, target, 0); err != nil {
				return err
			}
			continue
		}
		if len(due) > 0 {
			continue // more reports may be due at this position
		}
		select {
		case <-fl.wake:
		case <-timer:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *request) flowResponse(f *flowtracev1.Flow) *flowtracev1.GetFlowsResponse {
	return &flowtracev1.GetFlowsResponse{
		ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: r.mask.Apply(f)},
		NodeName:      r.nodeOf(f),
		Time:          f.GetTime(),
	}
}

// nodeOf is the node a response names: the flow's, else this observer's.
func (r *request) nodeOf(f *flowtracev1.Flow) string {
	if node := f.GetNodeName(); node != "" {
		return node
	}
	return r.o.cfg.NodeName
}

func (o *Observer) lostResponse(le *flowtracev1.LostEvents) *flowtracev1.GetFlowsResponse {
	return &flowtracev1.GetFlowsResponse{
		ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: le},
		NodeName:      o.cfg.NodeName,
		Time:          timestamppb.New(o.now()),
	}
}
