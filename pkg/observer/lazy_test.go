package observer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// textPayload is a test's Config.Materialize: the payload "uuid,unix-seconds".
func textPayload(p []byte) (*flowtracev1.Flow, error) {
	uuid, sec, ok := strings.Cut(string(p), ",")
	if !ok {
		return nil, errors.New("no comma in payload")
	}
	d, err := time.ParseDuration(sec + "s")
	if err != nil {
		return nil, err
	}
	return &flowtracev1.Flow{Uuid: uuid, Time: timestamppb.New(base.Add(d)), Verdict: flowtracev1.Verdict_VERDICT_FORWARDED,
		Ip: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.0.2"}}, nil
}

// TestPublishLazy: flows kept as payloads read back, in order with
// published ones, as the materialized flow with its shared messages, from
// history and live; their dictionary references leave with them.
func TestPublishLazy(t *testing.T) {
	o := New(Config{MaxFlows: 8, Materialize: textPayload}, nil)
	pod := &flowtracev1.Endpoint{Namespace: "shop", PodName: "web-1", Labels: []string{"app=web"}, NodeName: "n1"}
	node := &flowtracev1.Endpoint{NodeName: "n2"} // shorter than history inlines: a reference all the same
	eth := &flowtracev1.Interface{Index: 3}
	svc := &flowtracev1.Service{Namespace: "shop", Name: "web", Port: 80}
	o.Publish(mkFlow(0))
	o.PublishLazy([]Lazy{
		{Time: base.Add(time.Second).UnixNano(), Payload: []byte("1,1"), Source: pod, Destination: node, Interface: eth, DestinationService: svc},
		{Time: base.Add(2 * time.Second).UnixNano(), Payload: []byte("2,2"), Source: node, Destination: pod, SourceService: svc},
		{Time: base.Add(3 * time.Second).UnixNano(), Payload: []byte("3,3")},
	})
	o.Publish(mkFlow(4))
	want := []*flowtracev1.Flow{mkFlow(0), nil, nil, nil, mkFlow(4)}
	for i, refs := range []Lazy{{Source: pod, Destination: node, Interface: eth, DestinationService: svc},
		{Source: node, Destination: pod, SourceService: svc}, {}} {
		f, _ := textPayload([]byte(string(rune('1'+i)) + "," + string(rune('1'+i))))
		f.Source, f.Destination, f.Interface, f.SourceService, f.DestinationService =
			refs.Source, refs.Destination, refs.Interface, refs.SourceService, refs.DestinationService
		want[i+1] = f
	}
	var got []*flowtracev1.Flow
	err := o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Number: 10}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		if f := r.GetFlow(); f != nil {
			got = append(got, f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d flows, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("flow %d:\n%v\nwant\n%v", i, got[i], want[i])
		}
	}
	// since/until see a lazy flow's time without materializing it.
	if ids := collect(t, o, &flowtracev1.GetFlowsRequest{Since: timestamppb.New(base.Add(2 * time.Second)),
		Until: timestamppb.New(base.Add(3 * time.Second))}, nil); !equal(ids, []string{"2", "3"}) {
		t.Errorf("since/until: %v", ids)
	}

	// Live: a follower gets lazy flows too, and publishers can tell it is there.
	if o.Following() {
		t.Fatal("Following with nobody following")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := make(chan *flowtracev1.Flow, 1)
	go func() {
		_ = o.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true}, nil, func(r *flowtracev1.GetFlowsResponse) error {
			if f := r.GetFlow(); f != nil {
				live <- f
			}
			return nil
		})
	}()
	waitFollowers(t, o, 1)
	if !o.Following() {
		t.Fatal("not Following with a follower")
	}
	o.PublishLazy([]Lazy{{Time: base.Add(5 * time.Second).UnixNano(), Payload: []byte("5,5"), Source: pod}})
	select {
	case f := <-live:
		if f.GetUuid() != "5" || f.GetSource().GetPodName() != "web-1" {
			t.Errorf("followed lazy flow %v", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follower got no lazy flow")
	}
	cancel()

	// A payload Materialize refuses reads back as its names alone.
	o.PublishLazy([]Lazy{{Time: base.Add(6 * time.Second).UnixNano(), Payload: []byte("garbage"), Source: pod}})
	got = got[:0]
	_ = o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Number: 1}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		got = append(got, r.GetFlow())
		return nil
	})
	if len(got) != 1 || got[0].GetUuid() != "" || got[0].GetSource().GetPodName() != "web-1" {
		t.Errorf("refused payload read back as %v", got)
	}

	// Every reference leaves with the flows that held it.
	for i := range 8 {
		o.Publish(&flowtracev1.Flow{Uuid: "plain" + string(rune('a'+i))})
	}
	if n := len(o.hist.dict.ids); n != 0 {
		t.Errorf("%d dictionary entries left after every lazy flow left", n)
	}
}

// TestPublishLazyNeedsMaterialize: without a way to read them back,
// payloads are not kept.
func TestPublishLazyNeedsMaterialize(t *testing.T) {
	o := New(Config{MaxFlows: 8}, nil)
	o.PublishLazy([]Lazy{{Payload: []byte("1,1")}})
	if st := o.Status(); st.NumFlows != 0 {
		t.Errorf("%d flows kept without Materialize", st.NumFlows)
	}
}
