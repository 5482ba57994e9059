package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func drop(ns string, reason flowtracev1.DropReason, count uint32) *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict:    flowtracev1.Verdict_VERDICT_DROPPED,
		DropReason: reason,
		EventCount: count,
		Source:     &flowtracev1.Endpoint{Namespace: ns},
	}
}

func scrapeText(t *testing.T, m *Metrics) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, lis, m.Handler(), slogDiscard()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	}()
	resp, err := http.Get("http://" + lis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	return string(b)
}

func TestMetrics(t *testing.T) {
	status := &flowtracev1.ServerStatusResponse{
		NumFlows: 7, MaxFlows: 100, SeenFlows: 12,
		LostEvents: []*flowtracev1.LostEventsCount{
			{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, Count: 3},
			{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE, Count: 5},
		},
		Interfaces: []*flowtracev1.AttachedInterface{
			{Name: "a", Mode: "tcx", Kind: "veth"}, {Name: "b", Mode: "tcx", Kind: "veth"}, {Name: "eth0", Mode: "clsact", Kind: "device"},
		},
		DatapathCounters: map[string]uint64{"parse_errors": 4},
		FlowTable:        &flowtracev1.KernelFlowTable{Capacity: 65536, Used: 812, WalkedAt: timestamppb.Now()},
		Cost: &flowtracev1.AgentCost{Programs: []*flowtracev1.ProgramCost{
			{Name: "tc_ingress", RunCount: 2000, RunTime: durationpb.New(116 * time.Microsecond)},
			{Name: "kfree_skb"}, // never counted: no series
		}},
	}
	m := New(Config{TopNamespaces: 2}, Sources{
		Status:      func(context.Context) (*flowtracev1.ServerStatusResponse, error) { return status, nil },
		Subscribers: func() int { return 2 },
		RingBuffer:  func() (uint64, uint64, bool) { return 4096, 1 << 20, true },
	})
	m.ObserveFlow(drop("shop", flowtracev1.DropReason_DROP_REASON_NO_SOCKET, 1))
	m.ObserveFlow(drop("shop", flowtracev1.DropReason_DROP_REASON_NO_SOCKET, 3))
	m.ObserveFlow(drop("web", flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, 0))
	m.ObserveFlow(drop("third", flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, 1))  // beyond top 2
	m.ObserveFlow(drop("fourth", flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, 1)) // beyond top 2
	m.ObserveFlow(drop("", flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, 1))
	mld := drop("", flowtracev1.DropReason_DROP_REASON_NOT_SPECIFIED, 2) // an MLD report nothing joined, twice
	mld.DropCause = flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED
	m.ObserveFlow(mld)
	m.ObserveFlow(&flowtracev1.Flow{Verdict: flowtracev1.Verdict_VERDICT_FORWARDED})
	m.ObserveForwarded(2) // kept lazily: counted all the same
	m.ObserveFlow(nil)

	out := scrapeText(t, m)
	for _, want := range []string{
		`flowtrace_drops_total{cause="none",namespace="shop",reason="no_socket"} 4`,
		`flowtrace_drops_total{cause="none",namespace="web",reason="netfilter_drop"} 1`,
		`flowtrace_drops_total{cause="none",namespace="other",reason="netfilter_drop"} 2`,
		`flowtrace_drops_total{cause="none",namespace="none",reason="netfilter_drop"} 1`,
		`flowtrace_drops_total{cause="multicast_not_joined",namespace="none",reason="not_specified"} 2`,
		`flowtrace_flows_total{verdict="dropped"} 7`,
		`flowtrace_flows_total{verdict="forwarded"} 3`,
		`flowtrace_lost_events_total{stage="kernel_ring_buffer"} 3`,
		`flowtrace_lost_events_total{stage="client_queue"} 5`,
		`flowtrace_attached_interfaces{kind="veth",mode="tcx"} 2`,
		`flowtrace_attached_interfaces{kind="device",mode="clsact"} 1`,
		`flowtrace_subscribers 2`,
		`flowtrace_history_flows 7`,
		`flowtrace_history_max_flows 100`,
		`flowtrace_seen_flows_total 12`,
		`flowtrace_ring_buffer_used_bytes 4096`,
		`flowtrace_ring_buffer_size_bytes 1.048576e+06`,
		`flowtrace_datapath_counter_total{name="parse_errors"} 4`,
		`flowtrace_flow_table_entries 812`,
		`flowtrace_flow_table_capacity_entries 65536`,
		`flowtrace_bpf_program_runs_total{program="tc_ingress"} 2000`,
		`flowtrace_bpf_program_run_seconds_total{program="tc_ingress"} 0.000116`,
		`go_goroutines `,
	} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(out, `program="kfree_skb"`) {
		t.Error("a program the kernel never counted is exported")
	}
	if strings.Contains(out, `namespace="third"`) || strings.Contains(out, `namespace="fourth"`) {
		t.Error("namespace beyond TopNamespaces exported with its own label")
	}
	if t.Failed() {
		t.Log(out)
	}
}

// A datapath that cannot report its ring buffer exports no ring metrics,
// and a failing status source makes the scrape fail loudly, not silently.
func TestMetricsMissingSources(t *testing.T) {
	m := New(Config{}, Sources{RingBuffer: func() (uint64, uint64, bool) { return 0, 0, false }})
	if out := scrapeText(t, m); strings.Contains(out, "flowtrace_ring_buffer") {
		t.Error("ring buffer metrics without a ring buffer source")
	}
	bad := New(Config{}, Sources{Status: func(context.Context) (*flowtracev1.ServerStatusResponse, error) {
		return nil, errors.New("boom")
	}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go ServeListener(ctx, lis, bad.Handler(), slogDiscard())
	resp, err := http.Get("http://" + lis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("scrape with a failing source: status %d, want 500", resp.StatusCode)
	}
}

func TestEnumLabel(t *testing.T) {
	if got := EnumLabel("DROP_REASON_NO_SOCKET", "DROP_REASON_"); got != "no_socket" {
		t.Errorf("got %q", got)
	}
}

func TestObserveFlowAllocs(t *testing.T) {
	m := New(Config{TopNamespaces: 2}, Sources{})
	fwd := &flowtracev1.Flow{Verdict: flowtracev1.Verdict_VERDICT_FORWARDED}
	d := drop("shop", flowtracev1.DropReason_DROP_REASON_NO_SOCKET, 3)
	m.ObserveFlow(fwd)
	m.ObserveFlow(d)
	if n := testing.AllocsPerRun(100, func() { m.ObserveFlow(fwd); m.ObserveFlow(d) }); n != 0 {
		t.Errorf("%v allocations per two flows, want 0", n)
	}
	text := scrapeText(t, m)
	for _, want := range []string{
		`flowtrace_flows_total{verdict="forwarded"} 102`,
		`flowtrace_drops_total{cause="none",namespace="shop",reason="no_socket"} 306`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
