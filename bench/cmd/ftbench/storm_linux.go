package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// stormResult is the accounting of one drop storm seen through flowtrace.
type stormResult struct {
	Rate        float64 `json:"rate_per_s"`
	Kernel      uint64  `json:"kernel_drops"`     // the nft rule's counter
	DropsSeen   uint64  `json:"agent_drops_seen"` // the datapath's drops_seen counter
	Reported    uint64  `json:"reported"`         // sum of event_count delivered to the following client
	Lost        uint64  `json:"counted_lost"`     // ring buffer + agent queue + client queue losses
	Unaccounted int64   `json:"unaccounted"`      // kernel - (reported + lost): > 0 means drops vanished
	Accounted   bool    `json:"accounted"`        // reported + lost == kernel
	Delivered   float64 `json:"delivered_pct"`    // reported / kernel
	LatencyP99  float64 `json:"latency_p99_ms"`   // drop time -> received by the client
	LatencyP50  float64 `json:"latency_p50_ms"`
	Events      uint64  `json:"events"` // records received (folded records count once)
	// Losses by stage: the status counters' deltas, and the follower's own.
	LostRing      uint64 `json:"lost_ring_buffer"`
	LostQueue     uint64 `json:"lost_agent_queue"`
	LostClient    uint64 `json:"lost_client"`              // this client: its queue, or history evicted before it read
	LostAnnounced uint64 `json:"lost_announced_in_stream"` // ring/queue losses the stream reported
}

// follower is a following client of drops to a set of ports.
type follower struct {
	mu        sync.Mutex
	reported  uint64
	events    uint64
	lost      uint64 // this client's queue
	otherLost uint64 // ring buffer / agent queue losses the stream announced
	lat       []time.Duration
	last      time.Time
	cancel    context.CancelFunc
	done      chan error
}

func follow(ctx context.Context, a *agentConn, ports []uint32) (*follower, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := a.api.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true, Allowlist: []*flowtracev1.FlowFilter{{
		Verdict:         []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED},
		DestinationPort: ports,
	}}})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("follow drops: %w", err)
	}
	f := &follower{cancel: cancel, done: make(chan error, 1), lat: make([]time.Duration, 0, 1<<16)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				f.done <- err
				return
			}
			now := time.Now()
			f.mu.Lock()
			f.last = now
			if fl := r.GetFlow(); fl != nil {
				n := uint64(fl.GetEventCount())
				if n == 0 {
					n = 1
				}
				f.reported += n
				f.events++
				if t := fl.GetTime(); t != nil {
					f.lat = append(f.lat, now.Sub(t.AsTime()))
				}
			} else if le := r.GetLostEvents(); le != nil {
				// Ring buffer and agent queue losses also reach every
				// follower; the status counters account for those, so only
				// this client's own losses are added here.
				switch le.GetSource() {
				case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE,
					// A follower that falls behind the agent's history ring
					// loses what was evicted; each reader counts its own.
					flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED:
					f.lost += le.GetNumEventsLost()
				default:
					f.otherLost += le.GetNumEventsLost()
				}
			}
			f.mu.Unlock()
		}
	}()
	return f, nil
}

// settle waits until nothing arrived for quiet, or max passed.
func (f *follower) settle(quiet, max time.Duration) {
	end := time.Now().Add(max)
	for time.Now().Before(end) {
		f.mu.Lock()
		idle := time.Since(f.last) > quiet
		f.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *follower) close() {
	f.cancel()
	<-f.done
}

// measureStorm runs one storm through a running flowtrace agent and
// accounts for every drop.
func measureStorm(ctx context.Context, b *bed, a *agentConn, d time.Duration, rate int, many bool) (stormResult, error) {
	var res stormResult
	counter := "storm1"
	ports := []uint32{portStorm1}
	if many {
		counter, ports = "stormn", nil
		for i := range stormFlows {
			ports = append(ports, uint32(portStormN+i))
		}
	}
	k0, err := b.stormCounter(ctx, counter)
	if err != nil {
		return res, err
	}
	st0, err := a.status(ctx)
	if err != nil {
		return res, fmt.Errorf("storm: agent status: %w", err)
	}
	f, err := follow(ctx, a, ports)
	if err != nil {
		return res, err
	}
	// The server registers the subscriber asynchronously: give it a moment.
	time.Sleep(300 * time.Millisecond)
	res.Rate, err = storm(b, d, rate, many)
	if err != nil {
		f.close()
		return res, err
	}
	f.settle(time.Second, 15*time.Second)
	f.close()
	k1, err := b.stormCounter(ctx, counter)
	if err != nil {
		return res, err
	}
	st1, err := a.status(ctx)
	if err != nil {
		return res, fmt.Errorf("storm: agent status: %w", err)
	}
	agentLost := func(st *flowtracev1.ServerStatusResponse) uint64 {
		return lostTotal(st, flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE)
	}
	res.Kernel = k1 - k0
	res.DropsSeen = st1.GetDatapathCounters()["drops_seen"] - st0.GetDatapathCounters()["drops_seen"]
	res.Reported, res.Events = f.reported, f.events
	// Losses are counted per stage, not per flow: during the storm nearly
	// every event is a storm drop, so the deltas are the storm's losses.
	ring := func(st *flowtracev1.ServerStatusResponse) uint64 {
		return lostTotal(st, flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER)
	}
	res.LostRing = ring(st1) - ring(st0)
	res.LostQueue = agentLost(st1) - agentLost(st0) - res.LostRing
	res.LostClient, res.LostAnnounced = f.lost, f.otherLost
	res.Lost = agentLost(st1) - agentLost(st0) + f.lost
	// Loss counters are per stage, not per flow: a flow event of another
	// connection lost during the storm counts too. So the storm is accounted
	// for when nothing is missing and the excess is within that noise.
	res.Unaccounted = int64(res.Kernel) - int64(res.Reported+res.Lost)
	res.Accounted = res.Kernel > 0 && res.Unaccounted <= 0 && -res.Unaccounted <= int64(res.Kernel/1000)+10
	if res.Kernel > 0 {
		res.Delivered = 100 * float64(res.Reported) / float64(res.Kernel)
	}
	if len(f.lat) > 0 {
		slices.Sort(f.lat)
		ms := func(q float64) float64 { return float64(f.lat[int(q*float64(len(f.lat)-1))].Microseconds()) / 1e3 }
		res.LatencyP50, res.LatencyP99 = ms(0.5), ms(0.99)
	}
	return res, nil
}
