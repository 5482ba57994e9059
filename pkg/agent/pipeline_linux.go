package agent

import (
	"context"
	"time"

	"github.com/flowtrace/flowtrace/pkg/decode"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// offer is the datapath's callback: it must never block the ring buffer
// reader, so a full queue drops the event and counts it.
func (a *Agent) offer(ev *decode.Event) {
	select {
	case a.queue <- *ev:
	default:
		a.queueLost.Add(1)
	}
}

// enrichLoop is the single producer of the observer.
func (a *Agent) enrichLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-a.queue:
			a.obs.Publish(a.enricher.Flow(&ev))
		}
	}
}

// reportLosses turns the kernel's per-CPU reserve failures and the agent
// queue's drops into LostEvents for followers, once a second at most: a
// storm yields one message per stage per second, not one per event.
func (a *Agent) reportLosses(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastCPU []uint64
	var lastQueue uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, perCPU, err := a.dp.Lost(); err == nil {
			for cpu, n := range perCPU {
				var prev uint64
				if cpu < len(lastCPU) {
					prev = lastCPU[cpu]
				}
				if n > prev {
					c := uint32(cpu)
					a.obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, n-prev, &c)
				}
			}
			lastCPU = perCPU
		} else {
			a.log.Warn("reading ring buffer losses failed", "error", err)
		}
		if q := a.queueLost.Load(); q > lastQueue {
			a.obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE, q-lastQueue, nil)
			lastQueue = q
		}
	}
}
