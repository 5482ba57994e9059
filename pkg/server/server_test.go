package server

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/observer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type fakeStatus struct{}

func (fakeStatus) Status(context.Context) *flowtracev1.ServerStatusResponse {
	return &flowtracev1.ServerStatusResponse{
		Version:  "v-test",
		Features: &flowtracev1.DatapathFeatures{TcAttach: "tcx", DropHook: "tp_btf", DropReasons: 132},
		LostEvents: []*flowtracev1.LostEventsCount{
			{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, Count: 99},
			// The observer owns this stage; the source's value must be ignored.
			{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE, Count: 1234},
		},
	}
}

var base = time.Date(2025, 11, 23, 15, 0, 0, 0, time.UTC)

func mkFlow(i int) *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Uuid:    strconv.Itoa(i),
		Time:    timestamppb.New(base.Add(time.Duration(i) * time.Second)),
		Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
		L4:      &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{SourcePort: 1000, DestinationPort: uint32(80 + i%2)}}},
	}
}

// start serves a fresh observer on a unix socket and returns a client.
func start(t *testing.T) (*observer.Observer, flowtracev1.ObserverServiceClient, string, chan error, context.CancelFunc) {
	t.Helper()
	obs := observer.New(observer.Config{MaxFlows: 100, NodeName: "node-t"}, nil)
	sock := filepath.Join(t.TempDir(), "run", "ft.sock")
	lis, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(obs, fakeStatus{}, nil).Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	conn, err := client.Dial(dctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return obs, flowtracev1.NewObserverServiceClient(conn), sock, done, cancel
}

func recvAll(t *testing.T, s interface {
	Recv() (*flowtracev1.GetFlowsResponse, error)
}) []string {
	t.Helper()
	var out []string
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		out = append(out, r.GetFlow().GetUuid())
	}
}

func TestGetFlowsOverSocket(t *testing.T) {
	obs, c, sock, _, _ := start(t)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	for i := 0; i < 10; i++ {
		obs.Publish(mkFlow(i))
	}
	ctx := context.Background()
	s, err := c.GetFlows(ctx, &flowtracev1.GetFlowsRequest{
		Number:    2,
		Allowlist: []*flowtracev1.FlowFilter{{DestinationPort: []uint32{81}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(recvAll(t, s), ","); got != "7,9" {
		t.Errorf("got %s, want 7,9", got)
	}

	// A request that does not follow is never counted as a follower.
	if n := followers(t, c); n != 0 {
		t.Errorf("followers before any follow request: %d, want 0", n)
	}

	// Follow: history then live.
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	fs, err := c.GetFlows(fctx, &flowtracev1.GetFlowsRequest{Number: 1, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := fs.Recv()
	if err != nil || r.GetFlow().GetUuid() != "9" || r.GetNodeName() != "node-t" {
		t.Fatalf("first followed response %v, %v", r, err)
	}
	obs.Publish(mkFlow(10))
	r, err = fs.Recv()
	if err != nil || r.GetFlow().GetUuid() != "10" {
		t.Fatalf("live response %v, %v", r, err)
	}
	// It got a live flow, so it is subscribed: status must count it, and
	// stop counting it once the client goes.
	if n := followers(t, c); n != 1 {
		t.Errorf("followers while one stream follows: %d, want 1", n)
	}
	fcancel()
	deadline := time.Now().Add(5 * time.Second)
	for followers(t, c) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a cancelled follower is still counted after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// followers is ServerStatus's num_followers.
func followers(t *testing.T, c flowtracev1.ObserverServiceClient) uint32 {
	t.Helper()
	st, err := c.ServerStatus(context.Background(), &flowtracev1.ServerStatusRequest{})
	if err != nil {
		t.Fatalf("ServerStatus: %v", err)
	}
	return st.GetNumFollowers()
}

func TestValidation(t *testing.T) {
	_, c, _, _, _ := start(t)
	tests := []struct {
		name string
		req  *flowtracev1.GetFlowsRequest
		want string
	}{
		{"since after until", &flowtracev1.GetFlowsRequest{Since: timestamppb.New(base.Add(time.Hour)), Until: timestamppb.New(base)}, "since (2025-11-23T16:00:00Z) is after until"},
		{"bad ip", &flowtracev1.GetFlowsRequest{Allowlist: []*flowtracev1.FlowFilter{{SourceIp: []string{"10.0.0.300"}}}}, `bad filter: allowlist[0].source_ip: "10.0.0.300" is not an IP address or CIDR`},
		{"unknown verdict", &flowtracev1.GetFlowsRequest{Denylist: []*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{77}}}}, "denylist[0].verdict: 77 is not a known verdict"},
		{"first and follow", &flowtracev1.GetFlowsRequest{First: true, Follow: true}, "first and follow cannot be combined"},
		{"bad timestamp", &flowtracev1.GetFlowsRequest{Since: &timestamppb.Timestamp{Seconds: 1, Nanos: -1}}, "since:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := c.GetFlows(context.Background(), tt.req)
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Fatalf("err = %v, want InvalidArgument containing %q", err, tt.want)
			}
		})
	}
}

func TestServerStatusMerge(t *testing.T) {
	obs, c, _, _, _ := start(t)
	obs.Publish(mkFlow(3))
	obs.Publish(mkFlow(1))
	cpu := uint32(0)
	obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE, 5, &cpu)
	obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, 7, nil)
	r, err := c.ServerStatus(context.Background(), &flowtracev1.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetNumFlows() != 2 || r.GetMaxFlows() != 100 || r.GetSeenFlows() != 2 || r.GetVersion() != "v-test" ||
		r.GetNodeName() != "node-t" || r.GetFeatures().GetTcAttach() != "tcx" {
		t.Errorf("status %v", r)
	}
	if !r.GetOldestFlowTime().AsTime().Equal(base.Add(time.Second)) || !r.GetNewestFlowTime().AsTime().Equal(base.Add(3*time.Second)) {
		t.Errorf("oldest %v newest %v", r.GetOldestFlowTime().AsTime(), r.GetNewestFlowTime().AsTime())
	}
	want := map[flowtracev1.LostEventsSource]uint64{
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER: 99, // the source wins
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE:        5,
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED:    0,
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE:       0,
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_FOLD_TABLE:  0,
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_DROP_HOOK_BUSY:     0,
	}
	if len(r.GetLostEvents()) != len(want) {
		t.Fatalf("lost events %v", r.GetLostEvents())
	}
	for i, lc := range r.GetLostEvents() {
		if i > 0 && lc.GetSource() <= r.GetLostEvents()[i-1].GetSource() {
			t.Errorf("lost events not sorted: %v", r.GetLostEvents())
		}
		if want[lc.GetSource()] != lc.GetCount() {
			t.Errorf("%v = %d, want %d", lc.GetSource(), lc.GetCount(), want[lc.GetSource()])
		}
	}
}

func TestGracefulStopEndsFollowers(t *testing.T) {
	_, c, sock, done, cancel := start(t)
	s, err := c.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	recvErr := make(chan error, 1)
	go func() { _, err := s.Recv(); recvErr <- err }()
	time.Sleep(50 * time.Millisecond) // let the stream reach the server
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(stopGrace - time.Second):
		t.Fatal("Serve waited for the follower instead of ending it")
	}
	select {
	case err := <-recvErr:
		if err == nil {
			t.Fatal("follower got a response instead of the end of the stream")
		}
		// Said to be the server's doing: "context canceled" read as the
		// client's own.
		if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "shutting down") {
			t.Errorf("follower's stream ended with %v, want Unavailable: shutting down", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follower stream not ended")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after stop: %v", err)
	}
	done <- nil // for the cleanup in start
}

func TestListenUnixStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "ft.sock")

	// A stale socket: bound once, its listener gone without unlinking.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	lis, err := ListenUnix(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if lis.Addr().String() != sock {
		t.Errorf("Addr %s, want %s", lis.Addr(), sock)
	}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A live agent answers: refuse.
	if _, err := ListenUnix(sock); !errors.Is(err, ErrAgentRunning) {
		t.Fatalf("second listener: %v, want ErrAgentRunning", err)
	}
	lis.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket not removed on Close: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("leftovers in socket dir: %v", entries)
	}

	// Not a socket: refuse and keep the file.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
}

func TestListenUnixPathTooLong(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 90), "flowtrace.sock")
	_, err := ListenUnix(long)
	if err == nil || !strings.Contains(err.Error(), "limited to 107 bytes") {
		t.Fatalf("ListenUnix(%d-byte path) = %v, want a clear length error", len(long), err)
	}
}
