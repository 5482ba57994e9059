package observer

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/filters"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var base = time.Date(2025, 11, 23, 15, 31, 47, 0, time.UTC)

func mkFlow(i int) *flowtracev1.Flow {
	v := flowtracev1.Verdict_VERDICT_FORWARDED
	if i%2 == 1 {
		v = flowtracev1.Verdict_VERDICT_DROPPED
	}
	return &flowtracev1.Flow{
		Uuid:    strconv.Itoa(i),
		Time:    timestamppb.New(base.Add(time.Duration(i) * time.Second)),
		Verdict: v,
	}
}

// collect runs GetFlows to completion and returns the flow uuids, with lost
// events as "lost:<source>:<n>".
func collect(t *testing.T, o *Observer, req *flowtracev1.GetFlowsRequest, m filters.Matcher) []string {
	t.Helper()
	var out []string
	err := o.GetFlows(context.Background(), req, m, func(r *flowtracev1.GetFlowsResponse) error {
		out = append(out, describe(r))
		return nil
	})
	if err != nil {
		t.Fatalf("GetFlows: %v", err)
	}
	return out
}

func describe(r *flowtracev1.GetFlowsResponse) string {
	if le := r.GetLostEvents(); le != nil {
		return "lost:" + le.GetSource().String() + ":" + strconv.FormatUint(le.GetNumEventsLost(), 10)
	}
	if hs := r.GetHistoryStart(); hs != nil {
		return "start:" + strconv.FormatUint(hs.GetEvictedFlows(), 10)
	}
	return r.GetFlow().GetUuid()
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func publishN(o *Observer, from, to int) {
	for i := from; i < to; i++ {
		o.Publish(mkFlow(i))
	}
}

func TestHistorySelection(t *testing.T) {
	o := New(Config{MaxFlows: 100, NodeName: "n1"}, nil)
	publishN(o, 0, 10)
	dropped, err := filters.Build([]*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *flowtracev1.GetFlowsRequest
		m    filters.Matcher
		want []string
	}{
		{"last 3", &flowtracev1.GetFlowsRequest{Number: 3}, nil, []string{"7", "8", "9"}},
		{"first 3", &flowtracev1.GetFlowsRequest{Number: 3, First: true}, nil, []string{"0", "1", "2"}},
		{"all", &flowtracev1.GetFlowsRequest{}, nil, []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}},
		{"more than held", &flowtracev1.GetFlowsRequest{Number: 1000}, nil, []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}},
		{"last 2 filtered", &flowtracev1.GetFlowsRequest{Number: 2}, dropped, []string{"7", "9"}},
		{"first 2 filtered", &flowtracev1.GetFlowsRequest{Number: 2, First: true}, dropped, []string{"1", "3"}},
		{"since until", &flowtracev1.GetFlowsRequest{
			Since: timestamppb.New(base.Add(3 * time.Second)),
			Until: timestamppb.New(base.Add(5 * time.Second)),
		}, nil, []string{"3", "4", "5"}},
		{"since last 2", &flowtracev1.GetFlowsRequest{Number: 2, Since: timestamppb.New(base.Add(8 * time.Second))}, nil, []string{"8", "9"}},
		{"until first 2 filtered", &flowtracev1.GetFlowsRequest{Number: 2, First: true, Until: timestamppb.New(base.Add(2 * time.Second))}, dropped, []string{"1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := collect(t, o, tt.req, tt.m); !equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestResponseNodeName(t *testing.T) {
	o := New(Config{NodeName: "node-a"}, nil)
	o.Publish(mkFlow(1))
	var got string
	err := o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		got = r.GetNodeName()
		if !r.GetTime().AsTime().Equal(base.Add(time.Second)) {
			t.Errorf("response time %v, want the flow's", r.GetTime().AsTime())
		}
		return nil
	})
	if err != nil || got != "node-a" {
		t.Fatalf("node %q err %v", got, err)
	}
}

func TestEvictionByCount(t *testing.T) {
	o := New(Config{MaxFlows: 5}, nil)
	publishN(o, 0, 8)
	if got := collect(t, o, &flowtracev1.GetFlowsRequest{}, nil); !equal(got, []string{"start:3", "3", "4", "5", "6", "7"}) {
		t.Errorf("history %v", got)
	}
	st := o.Status()
	if st.NumFlows != 5 || st.MaxFlows != 5 || st.SeenFlows != 8 {
		t.Errorf("status %+v", st)
	}
	if st.EvictedFlows != 3 {
		t.Errorf("evicted = %d, want 3", st.EvictedFlows)
	}
	// No reader missed anything: eviction alone is not a loss.
	if n := st.Lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED]; n != 0 {
		t.Errorf("history-evicted losses %d, want 0", n)
	}
	if !st.OldestFlow.Equal(base.Add(3*time.Second)) || !st.NewestFlow.Equal(base.Add(7*time.Second)) {
		t.Errorf("oldest %v newest %v", st.OldestFlow, st.NewestFlow)
	}
}

func TestEvictionByAge(t *testing.T) {
	o := New(Config{MaxFlows: 100, MaxAge: time.Minute}, nil)
	now := base
	var mu sync.Mutex
	o.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	publishN(o, 0, 3)
	advance(30 * time.Second)
	publishN(o, 3, 4)
	advance(45 * time.Second) // flows 0-2 are 75s old, flow 3 is 45s old
	if got := collect(t, o, &flowtracev1.GetFlowsRequest{}, nil); !equal(got, []string{"start:3", "3"}) {
		t.Errorf("history %v, want [start:3 3]", got)
	}
	advance(time.Minute)
	st := o.Status()
	if st.NumFlows != 0 || st.EvictedFlows != 4 {
		t.Errorf("status after aging out: %+v", st)
	}
	if !st.OldestFlow.IsZero() {
		t.Errorf("oldest %v on empty history", st.OldestFlow)
	}
}

// TestFollowHandover publishes concurrently while clients join; each client
// must see every flow from its history part on, exactly once and in order.
func TestFollowHandover(t *testing.T) {
	const total = 5000
	o := New(Config{MaxFlows: total, ClientQueue: total}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	start := make(chan struct{})
	var pubDone sync.WaitGroup
	pubDone.Add(1)
	go func() {
		defer pubDone.Done()
		<-start
		publishN(o, 0, total)
	}()

	const clients = 8
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c == 0 {
				close(start)
			}
			next := -1
			cctx, ccancel := context.WithCancel(ctx)
			defer ccancel()
			err := o.GetFlows(cctx, &flowtracev1.GetFlowsRequest{Number: total, Follow: true}, nil, func(r *flowtracev1.GetFlowsResponse) error {
				if r.GetLostEvents() != nil {
					return errors.New("unexpected lost events: " + describe(r))
				}
				i, _ := strconv.Atoi(r.GetFlow().GetUuid())
				if next == -1 {
					// History starts at flow 0 since nothing was evicted.
					if i != 0 {
						return errors.New("first flow " + strconv.Itoa(i) + ", want 0")
					}
				} else if i != next {
					return errors.New("got flow " + strconv.Itoa(i) + ", want " + strconv.Itoa(next))
				}
				next = i + 1
				if next == total {
					ccancel()
				}
				return nil
			})
			if !errors.Is(err, context.Canceled) || next != total {
				errs <- errors.New("client ended with " + errString(err) + " at " + strconv.Itoa(next))
			}
		}()
	}
	wg.Wait()
	pubDone.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := o.Status(); st.Followers != 0 {
		t.Errorf("followers still registered: %d", st.Followers)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestPublishLostInline(t *testing.T) {
	o := New(Config{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []*flowtracev1.GetFlowsResponse
	done := make(chan error, 1)
	go func() {
		done <- o.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true}, nil, func(r *flowtracev1.GetFlowsResponse) error {
			got = append(got, r)
			if len(got) == 3 {
				cancel()
			}
			return nil
		})
	}()
	waitFollowers(t, o, 1)
	cpu := uint32(1)
	o.Publish(mkFlow(0))
	o.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, 42, &cpu)
	o.Publish(mkFlow(1))
	<-done
	if len(got) != 3 || got[1].GetLostEvents().GetNumEventsLost() != 42 || got[1].GetLostEvents().GetCpu() != 1 ||
		got[1].GetLostEvents().GetSource() != flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER ||
		got[2].GetFlow().GetUuid() != "1" {
		t.Fatalf("got %v", got)
	}
	if n := o.Status().Lost[flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER]; n != 42 {
		t.Errorf("kernel losses %d, want 42", n)
	}
}

// TestPublishLostEverySource: a loss of every stage the API names reaches
// a follower inline and the status totals.
func TestPublishLostEverySource(t *testing.T) {
	o := New(Config{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	want := map[flowtracev1.LostEventsSource]uint64{}
	for v := range flowtracev1.LostEventsSource_name {
		if src := flowtracev1.LostEventsSource(v); src != flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_UNSPECIFIED {
			want[src] = 10 * uint64(v)
		}
	}
	got := map[flowtracev1.LostEventsSource]uint64{}
	done := make(chan error, 1)
	go func() {
		done <- o.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true}, nil, func(r *flowtracev1.GetFlowsResponse) error {
			if le := r.GetLostEvents(); le != nil {
				got[le.GetSource()] += le.GetNumEventsLost()
			}
			if r.GetFlow().GetUuid() == "end" {
				cancel()
			}
			return nil
		})
	}()
	waitFollowers(t, o, 1)
	for src, n := range want {
		o.PublishLost(src, n, nil)
	}
	end := mkFlow(0)
	end.Uuid = "end"
	o.Publish(end)
	<-done
	st := o.Status()
	for src, n := range want {
		if got[src] != n || st.Lost[src] != n {
			t.Errorf("%v: %d inline, %d in status; want %d", src, got[src], st.Lost[src], n)
		}
	}
}

func TestFollowLiveFilterAndUntil(t *testing.T) {
	o := New(Config{}, nil)
	m, err := filters.Build([]*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishN(o, 0, 4)
	var got []string
	done := make(chan error, 1)
	// until is in the wall-clock past: history is served, then the stream ends.
	go func() {
		done <- o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Number: 10, Follow: true, Until: timestamppb.New(base.Add(2 * time.Second))}, m,
			func(r *flowtracev1.GetFlowsResponse) error { got = append(got, describe(r)); return nil })
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow with a past until did not end")
	}
	if !equal(got, []string{"1"}) {
		t.Errorf("got %v, want [1]", got)
	}
}

func TestSendErrorEndsStream(t *testing.T) {
	o := New(Config{}, nil)
	publishN(o, 0, 3)
	boom := errors.New("boom")
	err := o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Number: 3, Follow: true}, nil, func(*flowtracev1.GetFlowsResponse) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if o.Status().Followers != 0 {
		t.Error("follower not removed after send error")
	}
}

func waitFollowers(t *testing.T, o *Observer, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for o.Status().Followers < n {
		if time.Now().After(deadline) {
			t.Fatalf("followers never reached %d", n)
		}
		time.Sleep(time.Millisecond)
	}
}
