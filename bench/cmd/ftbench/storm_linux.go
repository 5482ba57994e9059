package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// stormResult is the accounting of one drop storm seen through flowtrace.
type stormResult struct {
	Rate        float64 `json:"rate_per_s"`
	Kernel      uint64  `json:"kernel_drops"`     // the nft rule's counter
	DropsSeen   uint64  `json:"agent_drops_seen"` // the datapath's drops_seen counter
	Reported    uint64  `json:"reported"`         // sum of event_count delivered to the following client (its own process)
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

// measureStorm runs one storm through a running flowtrace agent and
// accounts for every drop.
func measureStorm(ctx context.Context, b *bed, a *agentConn, d time.Duration, rate int, many bool) (stormResult, error) {
	var res stormResult
	counter, ports := "storm1", strconv.Itoa(portStorm1)
	if many {
		counter, ports = "stormn", fmt.Sprintf("%d-%d", portStormN, portStormN+stormFlows-1)
	}
	k0, err := b.stormCounter(ctx, counter)
	if err != nil {
		return res, err
	}
	st0, err := a.status(ctx)
	if err != nil {
		return res, fmt.Errorf("storm: agent status: %w", err)
	}
	f, err := startFollow(ctx, a.sock, ports)
	if err != nil {
		return res, err
	}
	res.Rate, err = storm(b, d, rate, many)
	if err != nil {
		_ = f.stop(5 * time.Second)
		return res, err
	}
	fr, err := f.settle(ctx)
	if err != nil {
		return res, err
	}
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
	res.Reported, res.Events = fr.Reported, fr.Events
	// Losses are counted per stage, not per flow: during the storm nearly
	// every event is a storm drop, so the deltas are the storm's losses.
	ring := func(st *flowtracev1.ServerStatusResponse) uint64 {
		return lostTotal(st, flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER)
	}
	res.LostRing = ring(st1) - ring(st0)
	res.LostQueue = agentLost(st1) - agentLost(st0) - res.LostRing
	res.LostClient, res.LostAnnounced = fr.LostClient, fr.LostAnnounced
	res.Lost = agentLost(st1) - agentLost(st0) + fr.LostClient
	// Loss counters are per stage, not per flow: a flow event of another
	// connection lost during the storm counts too. So the storm is accounted
	// for when nothing is missing and the excess is within that noise.
	res.Unaccounted = int64(res.Kernel) - int64(res.Reported+res.Lost)
	res.Accounted = res.Kernel > 0 && res.Unaccounted <= 0 && -res.Unaccounted <= int64(res.Kernel/1000)+10
	if res.Kernel > 0 {
		res.Delivered = 100 * float64(res.Reported) / float64(res.Kernel)
	}
	res.LatencyP50, res.LatencyP99 = fr.LatencyP50, fr.LatencyP99
	return res, nil
}
