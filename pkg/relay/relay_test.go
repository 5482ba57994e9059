package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var base = time.Date(2025, 11, 23, 15, 0, 0, 0, time.UTC)

type agent struct {
	name string
	sock string
	obs  *observer.Observer
	stop func()
}

// startAgent serves an observer named name on a unix socket, as an agent does.
func startAgent(t *testing.T, name string) *agent {
	t.Helper()
	return startAgentWithStatus(t, name, nil)
}

// fixedStatus is an agent's datapath part of ServerStatus.
type fixedStatus struct {
	*flowtracev1.ServerStatusResponse
}

func (f fixedStatus) Status(context.Context) *flowtracev1.ServerStatusResponse {
	return f.ServerStatusResponse
}

func startAgentWithStatus(t *testing.T, name string, st server.StatusSource) *agent {
	t.Helper()
	obs := observer.New(observer.Config{MaxFlows: 100, NodeName: name}, nil)
	sock := filepath.Join(t.TempDir(), name+".sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.New(obs, st, nil).Serve(ctx, lis) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", name, err)
		}
	}
	t.Cleanup(stop)
	return &agent{name: name, sock: sock, obs: obs, stop: stop}
}

func flowAt(node string, sec float64) *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Uuid:     fmt.Sprintf("%s-%g", node, sec),
		NodeName: node,
		Time:     timestamppb.New(base.Add(time.Duration(sec * float64(time.Second)))),
		Verdict:  flowtracev1.Verdict_VERDICT_DROPPED,
	}
}

// startRelay serves a relay over the peers and returns a client of it.
func startRelay(t *testing.T, cfg Config) (*Relay, flowtracev1.ObserverServiceClient) {
	t.Helper()
	if cfg.SortWindow == 0 {
		cfg.SortWindow = 100 * time.Millisecond
	}
	cfg.NodeName = "relay-t"
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "relay.sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	r.ResolveNow(ctx)
	go func() { done <- r.Run(ctx) }()
	go func() {
		done <- server.ServeGRPC(ctx, server.NewGRPCServer(ctx, r, server.Limits{}, nil), lis, discard())
	}()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("relay: %v", err)
			}
		}
	})
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	conn, err := client.Dial(dctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return r, flowtracev1.NewObserverServiceClient(conn)
}

func describe(r *flowtracev1.GetFlowsResponse) string {
	if IsNodeUnavailable(r) {
		return "UNAVAILABLE:" + r.GetNodeName()
	}
	if le := r.GetLostEvents(); le != nil {
		return fmt.Sprintf("LOST:%s:%d", le.GetSource(), le.GetNumEventsLost())
	}
	return r.GetFlow().GetUuid()
}

func collect(t *testing.T, c flowtracev1.ObserverServiceClient, req *flowtracev1.GetFlowsRequest) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.GetFlows(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		out = append(out, describe(r))
	}
}

func threeAgents(t *testing.T) []*agent {
	as := []*agent{startAgent(t, "node-a"), startAgent(t, "node-b"), startAgent(t, "node-c")}
	// Interleaved times: a at 0,3,6,9; b at 1,4,7; c at 2,5,8.
	for i := 0; i < 10; i++ {
		a := as[i%3]
		a.obs.Publish(flowAt(a.name, float64(i)))
	}
	return as
}

func peersOf(as []*agent) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.sock)
	}
	return out
}

func TestLastNAcrossNodes(t *testing.T) {
	as := threeAgents(t)
	_, c := startRelay(t, Config{Peers: peersOf(as)})
	got := strings.Join(collect(t, c, &flowtracev1.GetFlowsRequest{Number: 4}), ",")
	if want := "node-a-6,node-b-7,node-c-8,node-a-9"; got != want {
		t.Errorf("last 4: %s\nwant      %s", got, want)
	}
	got = strings.Join(collect(t, c, &flowtracev1.GetFlowsRequest{Number: 3, First: true}), ",")
	if want := "node-a-0,node-b-1,node-c-2"; got != want {
		t.Errorf("first 3: %s, want %s", got, want)
	}
	if got := len(collect(t, c, &flowtracev1.GetFlowsRequest{})); got != 10 {
		t.Errorf("all: %d flows, want 10", got)
	}
	// Filters reach the peers.
	got = strings.Join(collect(t, c, &flowtracev1.GetFlowsRequest{Number: 2, Allowlist: []*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_FORWARDED}}}}), ",")
	if got != "" {
		t.Errorf("filtered: %s, want nothing", got)
	}
	// Bad requests are refused by the relay itself, with the agent's message.
	s, err := c.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Allowlist: []*flowtracev1.FlowFilter{{SourceIp: []string{"300.1.1.1"}}}})
	if err == nil {
		_, err = s.Recv()
	}
	if err == nil || !strings.Contains(err.Error(), `"300.1.1.1" is not an IP address or CIDR`) {
		t.Errorf("bad filter: %v", err)
	}
}

func TestUnavailablePeerInHistory(t *testing.T) {
	as := threeAgents(t)
	as[2].stop()
	_, c := startRelay(t, Config{Peers: peersOf(as)})
	got := collect(t, c, &flowtracev1.GetFlowsRequest{Number: 3})
	// The stopped agent is named by its address until it answered once.
	if len(got) != 4 || got[0] != "UNAVAILABLE:"+as[2].sock || strings.Join(got[1:], ",") != "node-a-6,node-b-7,node-a-9" {
		t.Errorf("got %v", got)
	}
}

// Three agents, a follow stream with --last 2, live flows out of order
// across nodes, then one agent stops mid-stream.
func TestFollowMergeWithNodeStopping(t *testing.T) {
	as := threeAgents(t)
	_, c := startRelay(t, Config{Peers: peersOf(as), SortWindow: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Number: 2, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() string {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		return describe(r)
	}
	if got := recv() + "," + recv(); got != "node-c-8,node-a-9" {
		t.Fatalf("history part %s, want node-c-8,node-a-9", got)
	}
	// Let the live streams reach the agents before publishing.
	waitFollowers(t, as)
	// The relay counts its own follower, not the three agents' (its streams).
	if st, err := c.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{}); err != nil || st.GetNumFollowers() != 1 {
		t.Errorf("relay status while one client follows: followers %d, %v; want 1", st.GetNumFollowers(), err)
	}
	// Published out of time order across nodes, inside the sort window.
	as[0].obs.Publish(flowAt("node-a", 12))
	as[1].obs.Publish(flowAt("node-b", 10))
	as[2].obs.Publish(flowAt("node-c", 11))
	if got := recv() + "," + recv() + "," + recv(); got != "node-b-10,node-c-11,node-a-12" {
		t.Errorf("live part %s, want time order node-b-10,node-c-11,node-a-12", got)
	}
	as[2].stop()
	if got := recv(); got != "UNAVAILABLE:node-c" {
		t.Errorf("after stopping node-c: %s", got)
	}
	as[1].obs.Publish(flowAt("node-b", 13))
	if got := recv(); got != "node-b-13" {
		t.Errorf("after the stop: %s, want node-b-13", got)
	}
}

func waitFollowers(t *testing.T, as []*agent) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, a := range as {
		for a.obs.Status().Followers == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s has no follower", a.name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestServerStatusAcrossNodes(t *testing.T) {
	began := time.Now()
	as := threeAgents(t)
	cpu := uint32(0)
	as[0].obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, 4, &cpu)
	as[1].obs.PublishLost(flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, 5, &cpu)
	as[2].stop()
	_, c := startRelay(t, Config{Peers: peersOf(as)})
	st, err := c.ServerStatus(context.Background(), &flowtracev1.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNodeName() != "relay-t" || st.GetNumFlows() != 7 || st.GetMaxFlows() != 200 || st.GetSeenFlows() != 7 || st.GetNumFollowers() != 0 {
		t.Errorf("status %v", st)
	}
	// The two live nodes took their 4 and 3 flows since began, each rate
	// over at least a second: the sum is 7/s at most, and 7 over the time
	// since began at least (more than node-a's 4 alone when that is under
	// 1.75 s).
	if r, el := st.GetFlowsRate(), max(time.Since(began).Seconds(), 1); r < 7/el || r > 7 {
		t.Errorf("flows rate %v, want the two nodes' sum: 7/s over at most %.2f s", r, el)
	}
	if !st.GetOldestFlowTime().AsTime().Equal(base) || !st.GetNewestFlowTime().AsTime().Equal(base.Add(9*time.Second)) {
		t.Errorf("oldest %v newest %v", st.GetOldestFlowTime().AsTime(), st.GetNewestFlowTime().AsTime())
	}
	for _, lc := range st.GetLostEvents() {
		if lc.GetSource() == flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER && lc.GetCount() != 9 {
			t.Errorf("kernel ring buffer losses %d, want 9", lc.GetCount())
		}
	}
	if st.GetDatapathCounters()["relay_peers_connected"] != 2 || st.GetDatapathCounters()["relay_peers_unavailable"] != 1 {
		t.Errorf("counters %v", st.GetDatapathCounters())
	}
	var peers []string
	for _, s := range st.GetIdentitySources() {
		peers = append(peers, fmt.Sprintf("%s=%v", s.GetName(), s.GetSynced()))
	}
	if got := strings.Join(peers, ","); !strings.Contains(got, "peer node-a=true") || !strings.Contains(got, "peer node-b=true") || !strings.Contains(got, "="+"false") {
		t.Errorf("peers %s", got)
	}
}

// The relay's status sums its nodes' kernel flow tables, so one node's full
// table shows; the sum is dated by the oldest walk, and has no used count
// while a node has not walked its table yet.
func TestServerStatusSumsFlowTables(t *testing.T) {
	at := func(sec int) *timestamppb.Timestamp {
		return timestamppb.New(base.Add(time.Duration(sec) * time.Second))
	}
	withTable := func(name string, ft *flowtracev1.KernelFlowTable) *agent {
		return startAgentWithStatus(t, name, fixedStatus{&flowtracev1.ServerStatusResponse{FlowTable: ft}})
	}
	a := withTable("node-a", &flowtracev1.KernelFlowTable{Capacity: 100, Used: 100, WalkedAt: at(20), Full: 7})
	b := withTable("node-b", &flowtracev1.KernelFlowTable{Capacity: 50, Used: 10, WalkedAt: at(12)})
	old := startAgent(t, "node-old") // an agent without a flow table in its status
	_, c := startRelay(t, Config{Peers: peersOf([]*agent{a, b, old})})
	st, err := c.ServerStatus(context.Background(), &flowtracev1.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ft := st.GetFlowTable()
	if ft.GetCapacity() != 150 || ft.GetUsed() != 110 || ft.GetFull() != 7 || !ft.GetWalkedAt().AsTime().Equal(base.Add(12*time.Second)) {
		t.Errorf("summed flow table %v, want 110/150 entries at base+12s, full 7", ft)
	}

	fresh := withTable("node-fresh", &flowtracev1.KernelFlowTable{Capacity: 30})
	_, c = startRelay(t, Config{Peers: peersOf([]*agent{a, fresh, b})})
	st, err = c.ServerStatus(context.Background(), &flowtracev1.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ft = st.GetFlowTable()
	if ft.GetCapacity() != 180 || ft.GetUsed() != 0 || ft.GetWalkedAt() != nil || ft.GetFull() != 7 {
		t.Errorf("with a node not walked yet: %v, want 180 entries, no walk, full 7", ft)
	}
}

type fakeResolver struct {
	mu    sync.Mutex
	srv   []*net.SRV
	hosts []string
	err   error
}

func (f *fakeResolver) set(hosts []string, err error) {
	f.mu.Lock()
	f.hosts, f.err = hosts, err
	f.mu.Unlock()
}

func (f *fakeResolver) LookupSRV(context.Context, string, string, string) (string, []*net.SRV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.srv) == 0 {
		return "", nil, errors.New("no SRV records")
	}
	return "", f.srv, nil
}

func (f *fakeResolver) LookupHost(context.Context, string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hosts, f.err
}

func TestResolveService(t *testing.T) {
	ctx := context.Background()
	got, err := ResolveService(ctx, &fakeResolver{srv: []*net.SRV{{Target: "b.flowtrace.kube-system.svc.", Port: 4245}, {Target: "a.flowtrace.kube-system.svc.", Port: 4245}}}, "flowtrace.kube-system.svc", 1)
	if err != nil || strings.Join(got, ",") != "a.flowtrace.kube-system.svc:4245,b.flowtrace.kube-system.svc:4245" {
		t.Errorf("SRV: %v, %v", got, err)
	}
	got, err = ResolveService(ctx, &fakeResolver{hosts: []string{"10.0.0.2", "10.0.0.1", "fd00::1"}}, "flowtrace.kube-system.svc", 4245)
	if err != nil || strings.Join(got, ",") != "10.0.0.1:4245,10.0.0.2:4245,[fd00::1]:4245" {
		t.Errorf("A: %v, %v", got, err)
	}
	if _, err := ResolveService(ctx, &fakeResolver{err: errors.New("nxdomain")}, "x.svc", 1); err == nil || !strings.Contains(err.Error(), "resolve peer service x.svc") {
		t.Errorf("failure: %v", err)
	}
}

// A peer found by DNS after a follow stream started joins it; a failed
// lookup keeps the peers.
func TestPeerServiceJoinsRunningStream(t *testing.T) {
	a := startAgent(t, "node-a")
	// node-b listens on loopback TCP, as agents behind a Service do.
	obsB := observer.New(observer.Config{MaxFlows: 10, NodeName: "node-b"}, nil)
	lis, err := server.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	bdone := make(chan error, 1)
	go func() { bdone <- server.New(obsB, nil, nil).Serve(bctx, lis) }()
	t.Cleanup(func() { bcancel(); <-bdone })
	port := lis.Addr().(*net.TCPAddr).Port

	res := &fakeResolver{err: errors.New("not yet")}
	r, c := startRelay(t, Config{Peers: []string{a.sock}, PeerService: "flowtrace.test.svc", PeerPort: port, Resolver: res, ResolveInterval: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowers(t, []*agent{a})
	res.set([]string{"127.0.0.1"}, nil)
	r.ResolveNow(ctx)
	waitFollowers(t, []*agent{{name: "node-b", obs: obsB}})
	obsB.Publish(flowAt("node-b", 1))
	a.obs.Publish(flowAt("node-a", 2))
	for _, want := range []string{"node-b-1", "node-a-2"} {
		r, err := s.Recv()
		if err != nil || describe(r) != want {
			t.Fatalf("got %v, %v; want %s", r, err, want)
		}
	}
	// A failed lookup keeps both peers.
	res.set(nil, errors.New("dns down"))
	r.ResolveNow(ctx)
	if ps, _ := r.peers.snapshot(); len(ps) != 2 {
		t.Errorf("peers after a failed lookup: %d, want 2", len(ps))
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
