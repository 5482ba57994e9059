package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// TestMain lets the test binary be the follow-drops process startFollow
// runs (os.Executable is the test binary here).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == followDropsCmd {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParsePorts(t *testing.T) {
	got, err := parsePorts("9999, 10000-10002")
	if err != nil || !slices.Equal(got, []uint32{9999, 10000, 10001, 10002}) {
		t.Fatalf("parsePorts = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "x", "10-9", "1-", "65536", "1-70000"} {
		if _, err := parsePorts(bad); err == nil {
			t.Errorf("parsePorts(%q) accepted", bad)
		}
	}
}

// fakeAgent streams a fixed storm to every follower, then either keeps
// the stream open or, with fail, ends it with an error.
// Like the agent, it counts a follower in ServerStatus only once it has
// subscribed it, subscribeDelay after the request.
type fakeAgent struct {
	flowtracev1.UnimplementedObserverServiceServer
	fail      bool
	reqs      chan *flowtracev1.GetFlowsRequest
	followers atomic.Uint32
}

// subscribeDelay is how long the fake takes to subscribe a follower.
const subscribeDelay = 300 * time.Millisecond

func (s *fakeAgent) ServerStatus(context.Context, *flowtracev1.ServerStatusRequest) (*flowtracev1.ServerStatusResponse, error) {
	return &flowtracev1.ServerStatusResponse{NumFollowers: s.followers.Load()}, nil
}

func (s *fakeAgent) GetFlows(req *flowtracev1.GetFlowsRequest, stream grpc.ServerStreamingServer[flowtracev1.GetFlowsResponse]) error {
	s.reqs <- req
	time.Sleep(subscribeDelay)
	s.followers.Add(1)
	defer s.followers.Add(^uint32(0))
	// Reports come a while after the stream is counted, as a storm's do:
	// the follower may be told to settle before any arrived.
	time.Sleep(100 * time.Millisecond)
	now := time.Now()
	send := []*flowtracev1.GetFlowsResponse{
		// A folded report of 5 drops, 40 ms old, and a lone one 10 ms old.
		{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: &flowtracev1.Flow{EventCount: 5, Time: timestamppb.New(now.Add(-40 * time.Millisecond))}}},
		{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: &flowtracev1.Flow{Time: timestamppb.New(now.Add(-10 * time.Millisecond))}}},
		{ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
			Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE, NumEventsLost: 3}}},
		{ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
			Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED, NumEventsLost: 4}}},
		{ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
			Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, NumEventsLost: 7}}},
	}
	for _, r := range send {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	if s.fail {
		return status.Error(codes.Unavailable, "agent stopping")
	}
	<-stream.Context().Done()
	return nil
}

func serveFake(t *testing.T, fail bool) (sock string, reqs chan *flowtracev1.GetFlowsRequest) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fa := &fakeAgent{fail: fail, reqs: make(chan *flowtracev1.GetFlowsRequest, 1)}
	flowtracev1.RegisterObserverServiceServer(srv, fa)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return sock, fa.reqs
}

func TestFollowProcess(t *testing.T) {
	sock, reqs := serveFake(t, false)
	ctx := context.Background()
	begin := time.Now()
	p, err := startFollow(ctx, sock, "9999,10000-10001")
	if err != nil {
		t.Fatal(err)
	}
	// Ready (a storm may start) only once the agent counts the stream.
	if el := time.Since(begin); el < subscribeDelay {
		t.Errorf("ready after %s, before the agent subscribed the stream (%s)", el, subscribeDelay)
	}
	req := <-reqs
	f := req.GetAllowlist()[0]
	if !req.GetFollow() || !slices.Equal(f.GetDestinationPort(), []uint32{9999, 10000, 10001}) ||
		!slices.Equal(f.GetVerdict(), []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}) {
		t.Fatalf("request = %v", req)
	}
	start := time.Now()
	res, err := p.settle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < settleQuiet/2 || el > settleQuiet+5*time.Second {
		t.Errorf("settled in %s: want about %s of quiet", el, settleQuiet)
	}
	if res.Reported != 6 || res.Events != 2 || res.LostClient != 7 || res.LostAnnounced != 7 || res.Samples != 2 {
		t.Errorf("results = %+v: want reported 6, events 2, lost_client 7, lost_announced 7, 2 samples", res)
	}
	// Nearest rank below: p50 of two samples is the smaller (the lone
	// drop, >= 10 ms), p99 too; both are far below the folded one's 40.
	if res.LatencyP50 < 10 || res.LatencyP50 >= 40 || res.LatencyP99 != res.LatencyP50 {
		t.Errorf("latency p50 %v p99 %v ms: want both the lone drop's, 10 <= x < 40", res.LatencyP50, res.LatencyP99)
	}
}

func TestFollowProcessStreamEnds(t *testing.T) {
	sock, _ := serveFake(t, true)
	p, err := startFollow(context.Background(), sock, "9999")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.settle(context.Background()); err == nil || !strings.Contains(err.Error(), "agent stopping") {
		t.Fatalf("settle after the stream broke: %v, want the stream's error", err)
	}
}

func TestFollowProcessNoAgent(t *testing.T) {
	_, err := startFollow(context.Background(), filepath.Join(t.TempDir(), "none.sock"), "9999")
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("startFollow without an agent: %v, want an error naming the socket", err)
	}
}

func TestFollowProcessStop(t *testing.T) {
	// Under -race a process sleeps 1 s at exit unless told otherwise; the
	// child inherits this.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	sock, _ := serveFake(t, false)
	p, err := startFollow(context.Background(), sock, "9999")
	if err != nil {
		t.Fatal(err)
	}
	// Stdin closing (the bench gave up on the storm) ends it at once.
	start := time.Now()
	if err := p.stop(5 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if el := time.Since(start); el > settleQuiet {
		t.Errorf("stopped in %s: it settled instead of stopping", el)
	}
}
