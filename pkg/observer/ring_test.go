package observer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestSlowFollowerAccounting: a follower that reads slower than flows are
// published falls out of a small ring. Every flow must be either delivered
// (in order, once) or reported lost inline, and the Status total must agree:
// delivered + lost = produced, for the slow client and for a fast one.
// Upstream losses (kernel ring buffer, agent queue) reported meanwhile reach
// both clients in full: the kernel and the agent "produced" them, so
// produced = delivered + lost at every stage.
func TestSlowFollowerAccounting(t *testing.T) {
	const produced = 2000
	o := New(Config{MaxFlows: 16}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const kernelEvery, kernelN, queueN = 100, 5, 2
	const upstream = (produced / kernelEvery) * (kernelN + queueN)
	type tally struct {
		delivered, lost uint64
		upstream        uint64
		next            int
		err             error
	}
	run := func(slow bool, res *tally, wg *sync.WaitGroup) {
		defer wg.Done()
		cctx, ccancel := context.WithCancel(ctx)
		defer ccancel()
		err := o.GetFlows(cctx, &flowtracev1.GetFlowsRequest{Follow: true}, nil, func(r *flowtracev1.GetFlowsResponse) error {
			if le := r.GetLostEvents(); le != nil {
				switch le.GetSource() {
				case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED:
					res.lost += le.GetNumEventsLost()
					res.next += int(le.GetNumEventsLost())
				case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER,
					flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE:
					res.upstream += le.GetNumEventsLost()
				default:
					return errors.New("unexpected loss source " + le.GetSource().String())
				}
			} else {
				i, _ := strconv.Atoi(r.GetFlow().GetUuid())
				if i != res.next {
					return fmt.Errorf("got flow %d, want %d (gap or duplicate)", i, res.next)
				}
				res.next++
				res.delivered++
				if slow {
					time.Sleep(20 * time.Microsecond)
				}
			}
			if res.delivered+res.lost == produced && res.upstream == upstream {
				ccancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			res.err = err
		}
	}
	var slowT, fastT tally
	var wg sync.WaitGroup
	wg.Add(2)
	go run(true, &slowT, &wg)
	go run(false, &fastT, &wg)
	waitFollowers(t, o, 2)
	cpu := uint32(1)
	for i := 0; i < produced; i++ {
		o.Publish(mkFlow(i))
		if i%kernelEvery == kernelEvery-1 {
			o.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, kernelN, &cpu)
			o.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE, queueN, nil)
		}
		if i%64 == 0 {
			runtime.Gosched() // let the fast client keep up
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cancel()
		<-done
		t.Fatalf("clients did not account for every flow: slow %+v fast %+v", slowT, fastT)
	}
	for name, r := range map[string]tally{"slow": slowT, "fast": fastT} {
		if r.err != nil {
			t.Errorf("%s client: %v", name, r.err)
		}
		if r.delivered+r.lost != produced {
			t.Errorf("%s client: delivered %d + lost %d != produced %d", name, r.delivered, r.lost, produced)
		}
		if r.upstream != upstream {
			t.Errorf("%s client: saw %d upstream losses, want %d", name, r.upstream, upstream)
		}
	}
	if slowT.lost == 0 {
		t.Errorf("the slow client lost nothing from a 16-flow ring; the test proves nothing")
	}
	st := o.Status()
	if got := st.Lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED]; got != slowT.lost+fastT.lost {
		t.Errorf("status history-evicted %d, want %d", got, slowT.lost+fastT.lost)
	}
	if st.Lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER] != produced/kernelEvery*kernelN ||
		st.Lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE] != produced/kernelEvery*queueN {
		t.Errorf("status upstream losses %v", st.Lost)
	}
	if st.SeenFlows != produced || st.EvictedFlows != produced-16 {
		t.Errorf("status seen %d evicted %d", st.SeenFlows, st.EvictedFlows)
	}
}

// TestPublishNeverBlocks: a client that never reads must not hold up Publish.
func TestPublishNeverBlocks(t *testing.T) {
	o := New(Config{MaxFlows: 8}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	block := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- o.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true}, nil, func(*flowtracev1.GetFlowsResponse) error {
			<-block
			return nil
		})
	}()
	waitFollowers(t, o, 1)
	finished := make(chan struct{})
	go func() { publishN(o, 0, 1000); close(finished) }()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on a client that does not read")
	}
	close(block)
	cancel()
	<-done
}

func TestHistoryStart(t *testing.T) {
	o := New(Config{MaxFlows: 5}, nil)
	publishN(o, 0, 8) // 0-2 evicted; 3-7 held
	at := func(s int) *timestamppb.Timestamp { return timestamppb.New(base.Add(time.Duration(s) * time.Second)) }
	tests := []struct {
		name string
		req  *flowtracev1.GetFlowsRequest
		want []string
	}{
		{"since before oldest", &flowtracev1.GetFlowsRequest{Since: at(1)}, []string{"start:3", "3", "4", "5", "6", "7"}},
		{"since inside history", &flowtracev1.GetFlowsRequest{Since: at(5)}, []string{"5", "6", "7"}},
		{"last more than held", &flowtracev1.GetFlowsRequest{Number: 7}, []string{"start:3", "3", "4", "5", "6", "7"}},
		{"last fewer than held", &flowtracev1.GetFlowsRequest{Number: 2}, []string{"6", "7"}},
		{"first", &flowtracev1.GetFlowsRequest{Number: 2, First: true}, []string{"start:3", "3", "4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := collect(t, o, tt.req, nil); !equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	var hs *flowtracev1.HistoryStart
	_ = o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Since: at(0)}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		if hs == nil {
			hs = r.GetHistoryStart()
		}
		return nil
	})
	if !hs.GetOldestFlowTime().AsTime().Equal(base.Add(3*time.Second)) || !hs.GetRequestedSince().AsTime().Equal(base) {
		t.Errorf("history start %v", hs)
	}
	// Nothing evicted: never a HistoryStart.
	o2 := New(Config{MaxFlows: 50}, nil)
	publishN(o2, 0, 8)
	if got := collect(t, o2, &flowtracev1.GetFlowsRequest{Since: at(-100)}, nil); len(got) != 8 || got[0] != "0" {
		t.Errorf("full history: %v", got)
	}
}

func TestFollowWithSinceReplaysHistory(t *testing.T) {
	o := New(Config{}, nil)
	publishN(o, 0, 5)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []string
	err := o.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true, Since: timestamppb.New(base.Add(3 * time.Second))}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		got = append(got, describe(r))
		if len(got) == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || !equal(got, []string{"3", "4"}) {
		t.Errorf("got %v err %v", got, err)
	}
}

func TestAgeEvictionWithoutNewFlows(t *testing.T) {
	o := New(Config{MaxFlows: 100, MaxAge: 50 * time.Millisecond}, nil)
	defer o.Close()
	publishN(o, 0, 3)
	deadline := time.Now().Add(5 * time.Second)
	for {
		o.mu.Lock()
		n := o.hist.n
		o.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flows still held long after MaxAge with no new flows", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := o.Status(); st.EvictedFlows != 3 {
		t.Errorf("evicted %d, want 3", st.EvictedFlows)
	}
}

func TestFieldMask(t *testing.T) {
	o := New(Config{NodeName: "n"}, nil)
	f := mkFlow(1)
	f.Source = &flowtracev1.Endpoint{Namespace: "shop", PodName: "web-1", Labels: []string{"app=web"}}
	f.L4 = &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{SourcePort: 1, DestinationPort: 2, Flags: &flowtracev1.TCPFlags{Syn: true}}}}
	o.Publish(f)
	var got *flowtracev1.GetFlowsResponse
	err := o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"verdict", "source.pod_name", "l4.tcp.flags"}}}, nil,
		func(r *flowtracev1.GetFlowsResponse) error { got = r; return nil })
	if err != nil {
		t.Fatal(err)
	}
	fl := got.GetFlow()
	if fl.GetVerdict() != flowtracev1.Verdict_VERDICT_DROPPED || fl.GetSource().GetPodName() != "web-1" ||
		fl.GetSource().GetNamespace() != "" || fl.GetUuid() != "" || fl.GetTime() != nil ||
		!fl.GetL4().GetTcp().GetFlags().GetSyn() || fl.GetL4().GetTcp().GetSourcePort() != 0 {
		t.Errorf("masked flow %v", fl)
	}
	// The response keeps its own time even when the flow's is masked away.
	if !got.GetTime().AsTime().Equal(base.Add(time.Second)) {
		t.Errorf("response time %v", got.GetTime())
	}
	err = o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"source.pod"}}}, nil,
		func(*flowtracev1.GetFlowsResponse) error { return nil })
	if status.Code(err) != codes.InvalidArgument || !contains(err.Error(), `source.pod`) {
		t.Errorf("bad mask: %v, want InvalidArgument naming the path", err)
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub)))
}
