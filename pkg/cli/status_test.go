package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestPrintStatus(t *testing.T) {
	var out bytes.Buffer
	err := printStatus(&out, &flowtracev1.ServerStatusResponse{
		NumFlows: 12, MaxFlows: 65536, SeenFlows: 99, MaxFlowAge: durationpb.New(time.Hour), NumFollowers: 2, FlowsRate: 12.345,
		Version: "v0.1.0", Uptime: durationpb.New(90*time.Minute + 400*time.Millisecond), NodeName: "node-1",
		Features: &flowtracev1.DatapathFeatures{TcAttach: "tcx", DropHook: "tp_btf", DropReasons: 132,
			ConntrackNfct: true, MtuCheck: true, FlowCache: true, DropDirect: true,
			FirstReportDelay: durationpb.New(20 * time.Millisecond)},
		LostEvents: []*flowtracev1.LostEventsCount{
			{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, Count: 3},
		},
		Interfaces: []*flowtracev1.AttachedInterface{
			{Name: "ftv-frontend", Index: 7, Mode: "tcx", Kind: "veth", PeerNetns: "shop/frontend-6c9f7d"},
		},
		IdentitySources:  []*flowtracev1.IdentitySourceStatus{{Name: "kubernetes", Synced: true, Detail: "3 pods"}},
		DatapathCounters: map[string]uint64{"parse_errors": 2, "drops_out_of_scope": 5},
		FlowTable: &flowtracev1.KernelFlowTable{Capacity: 65536, Used: 16384,
			WalkedAt: timestamppb.New(time.Date(2026, 12, 7, 9, 30, 15, 0, time.Local))},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"Node:", "node-1", "v0.1.0 (uptime 1h30m0s)", "12/65536 held, 99 seen (12.3/s over the last minute), max age 1h0m0s", "2 streams following now",
		"tc tcx, drops tp_btf, 132 kernel drop reasons", "Features:", "conntrack_nfct on, conntrack_lookup off, mtu_check on, flow_cache on, drop_memo off, drop_direct on", "kernel ring buffer  3",
		"ftv-frontend  7      tcx   veth  shop/frontend-6c9f7d", "kubernetes  synced  3 pods",
		"drops_out_of_scope  5\n  parse_errors        2",
		"New flows:", "first reported 20ms after their first packet, or by their close if sooner",
		"Flow table:", "16384/65536 entries (25%) at 09:30:15; never full",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("status lacks %q:\n%s", want, s)
		}
	}
}

func TestPrintStatusFeaturesOff(t *testing.T) {
	// An agent that reports no features (an older one) shows everything off.
	var out bytes.Buffer
	if err := printStatus(&out, &flowtracev1.ServerStatusResponse{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"conntrack_nfct off, conntrack_lookup off, mtu_check off, flow_cache off", "reported at their first packet"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

func TestPrintStatusFlowTable(t *testing.T) {
	// What a user reads off the kernel flow table's line: before the
	// agent's first walk, and once it ran out of room (with the flag that
	// gives it more).
	for _, tc := range []struct {
		name string
		ft   *flowtracev1.KernelFlowTable
		want string
	}{
		{"before the first walk", &flowtracev1.KernelFlowTable{Capacity: 4096}, "4096 entries, not walked yet; never full"},
		{"full", &flowtracev1.KernelFlowTable{Capacity: 1024, Used: 1024, Full: 37,
			WalkedAt: timestamppb.New(time.Date(2026, 12, 7, 23, 59, 1, 0, time.Local))},
			"1024/1024 entries (100%) at 23:59:01; full for 37 packets, reported unaggregated: raise the agent's --flow-table-entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := printStatus(&out, &flowtracev1.ServerStatusResponse{FlowTable: tc.ft}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("status lacks %q:\n%s", tc.want, out.String())
			}
		})
	}
	var out bytes.Buffer
	if err := printStatus(&out, &flowtracev1.ServerStatusResponse{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "Flow table") {
		t.Errorf("a status without a flow table (a relay's) shows one:\n%s", out.String())
	}
}

func TestPrintStatusCost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		uptime time.Duration
		cost   *flowtracev1.AgentCost
		want   []string
		not    []string
	}{{
		name: "measured", uptime: 90 * time.Minute,
		cost: &flowtracev1.AgentCost{CpuTime: durationpb.New(12345 * time.Millisecond), CpuRate: 0.0042,
			CpuWindow: durationpb.New(time.Minute), RssBytes: 43 << 20, PeakRssBytes: 47<<20 + 1<<19,
			Programs: []*flowtracev1.ProgramCost{
				{Name: "tc_ingress", RunCount: 2000, RunTime: durationpb.New(116 * time.Microsecond)},
				{Name: "tc_egress", RunCount: 0},
				{Name: "kfree_skb", RunCount: 10, RunTime: durationpb.New(750 * time.Nanosecond)},
			}},
		want: []string{"Agent cost:", "0.42% of a CPU over the last 60s, 12.345s of CPU since start; RSS 43.0 MiB (peak 47.5 MiB)",
			"BPF programs:", "tc_ingress 58 ns a run over 2000 runs, kfree_skb 75 ns a run over 10 runs (while the kernel's BPF statistics were on)"},
		not: []string{"tc_egress"},
	}, {
		name: "first minute, stats off, memory unknown", uptime: 2*time.Second + 300*time.Millisecond,
		cost: &flowtracev1.AgentCost{CpuTime: durationpb.New(time.Second), CpuRate: 0.5, CpuWindow: durationpb.New(2 * time.Second),
			Programs: []*flowtracev1.ProgramCost{{Name: "tc_ingress"}}},
		want: []string{"50.00% of a CPU since its start 2s ago (start-up included), 1s of CPU since start; memory unknown",
			"no runs measured: the kernel counts them only while sysctl kernel.bpf_stats_enabled=1"},
	}, {
		name: "no statistics",
		cost: &flowtracev1.AgentCost{},
		want: []string{"CPU unknown; memory unknown", "BPF programs:", "unknown (the agent could not read its programs' statistics: see its log)"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := printStatus(&out, &flowtracev1.ServerStatusResponse{Cost: tc.cost, Uptime: durationpb.New(tc.uptime)}); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("status lacks %q:\n%s", w, out.String())
				}
			}
			for _, n := range tc.not {
				if strings.Contains(out.String(), n) {
					t.Errorf("status has %q:\n%s", n, out.String())
				}
			}
		})
	}
	// A relay's merged status has no cost: no line for it.
	var out bytes.Buffer
	if err := printStatus(&out, &flowtracev1.ServerStatusResponse{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "Agent cost") {
		t.Errorf("a status without cost prints one:\n%s", out.String())
	}
}
