package agent

import (
	"context"
	"time"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/enrich"
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

// enrichLoop is the single producer of the observer. MTU_EXCEEDED flows
// wait up to pmtuWait for the ICMP error that answers them.
func (a *Agent) enrichLoop(ctx context.Context) {
	pmtu := enrich.NewPMTU(pmtuWait, 1024)
	tick := time.NewTicker(pmtuWait / 4)
	defer tick.Stop()
	publish := func(fs []*flowtracev1.Flow) {
		for _, f := range fs {
			a.publish(f)
		}
	}
	for {
		select {
		case <-ctx.Done():
			publish(pmtu.Expire(time.Now().Add(pmtuWait)))
			return
		case now := <-tick.C:
			publish(pmtu.Expire(now))
		case ev := <-a.queue:
			f := a.enricher.Flow(&ev)
			if f == nil {
				continue
			}
			if f.Mtu == nil {
				a.publish(f)
				continue
			}
			publish(pmtu.Add(f, time.Now()))
		}
	}
}

// publish hands f to the observer and counts it in the metrics.
func (a *Agent) publish(f *flowtracev1.Flow) {
	if a.metrics != nil {
		a.metrics.ObserveFlow(f)
	}
	a.obs.Publish(f)
}

// pmtuWait is how long a too-big packet waits for its ICMP error: the
// router answers within microseconds, so this only absorbs scheduling.
const pmtuWait = 200 * time.Millisecond

// reportLosses turns the kernel's per-CPU reserve failures and the agent
// queue's drops into LostEvents for followers, once a second at most: a
// storm yields one message per stage per second, not one per event.
func (a *Agent) reportLosses(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastCPU []uint64
	var lastQueue, lastFold uint64
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
		if st, err := a.dp.Stats(); err == nil {
			if n := st["drops_fold_lost"]; n > lastFold {
				a.obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_FOLD_TABLE, n-lastFold, nil)
				lastFold = n
			}
		}
		if q := a.queueLost.Load(); q > lastQueue {
			a.obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE, q-lastQueue, nil)
			lastQueue = q
		}
	}
}
