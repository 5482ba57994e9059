package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestStatOf(t *testing.T) {
	s := statOf([]float64{3, 1, 2, 10})
	if s.Median != 2.5 || s.Min != 1 || s.Max != 10 || s.N != 4 {
		t.Fatalf("statOf = %+v", s)
	}
	if statOf(nil) != nil {
		t.Fatal("statOf(nil) must be nil: no value is not zero")
	}
}

func TestRatiosPairRounds(t *testing.T) {
	s := []sample{
		{Round: 0, Tracer: tracerNone, Workload: "w", Value: 100},
		{Round: 0, Tracer: tracerFlowtrace, Workload: "w", Value: 90},
		{Round: 1, Tracer: tracerNone, Workload: "w", Value: 50},
		{Round: 1, Tracer: tracerFlowtrace, Workload: "w", Value: 50},
		{Round: 2, Tracer: tracerFlowtrace, Workload: "w", Value: 70}, // no baseline: ignored
	}
	got := ratios(s, tracerFlowtrace, "w")
	if len(got) != 2 || got[0] != 0.9 || got[1] != 1 {
		t.Fatalf("ratios = %v", got)
	}
}

func TestFiguresAndTable(t *testing.T) {
	res := &results{Samples: []sample{
		{Round: 0, Tracer: tracerNone, Workload: "tcp_stream_bps", Value: 10e9},
		{Round: 0, Tracer: tracerFlowtrace, Workload: "tcp_stream_bps", Value: 9.9e9},
		{Round: 0, Tracer: tracerTcpdump, Workload: "tcp_stream_bps", Value: 6e9},
		{Round: 0, Tracer: tracerFloor, Workload: "udp64_probe_pps", Value: 1, TCNs: 100},
		{Round: 0, Tracer: tracerFlowtrace, Workload: "udp64_probe_pps", Value: 1, TCNs: 200},
	}, Storms: []namedStorm{{Kind: "one", stormResult: stormResult{Kernel: 100, Reported: 99, Lost: 1, Accounted: true, Delivered: 99, Events: 5, LatencyP99: 20}}}}
	figs := figures(res)
	if f := figs["tcp_stream_ratio"]; f.Value.Median != 0.99 || !*f.Met || f.Tcpdump.Median != 0.6 {
		t.Errorf("tcp_stream_ratio = %+v", f)
	}
	if f := figs["tc_vs_floor"]; f.Value.Median != 2 || *f.Met {
		t.Errorf("tc_vs_floor = %+v", f)
	}
	if f := figs["storm_accounted"]; !*f.Met {
		t.Errorf("storm_accounted = %+v", f)
	}
	if f := figs["rss_mb_held_flows"]; f.Value != nil || f.Met != nil {
		t.Errorf("a figure without measurements must have no value and no verdict: %+v", f)
	}
	var b strings.Builder
	if err := printTable(&b, figs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tcp_stream_ratio", "0.99", "≥ 0.98", "0.60", "tc_vs_floor"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// The churn target is a cost at a rate: the machine's busy CPU with the
// tracer minus without it in the same round, not a ratio of the two.
func TestChurnCostIsADifference(t *testing.T) {
	res := &results{Samples: []sample{
		{Round: 0, Tracer: tracerNone, Workload: "churn20k_busy_pct", Value: 20},
		{Round: 0, Tracer: tracerFlowtrace, Workload: "churn20k_busy_pct", Value: 27},
		{Round: 0, Tracer: tracerFloor, Workload: "churn20k_busy_pct", Value: 21},
		{Round: 0, Tracer: tracerFlowtrace, Workload: "churn20k_cps", Value: 19000},
		{Round: 1, Tracer: tracerNone, Workload: "churn20k_busy_pct", Value: 30},
		{Round: 1, Tracer: tracerFlowtrace, Workload: "churn20k_busy_pct", Value: 33},
		{Round: 1, Tracer: tracerFlowtrace, Workload: "churn20k_cps", Value: 20010},
	}}
	figs := figures(res)
	if f := figs["churn_cost_pct"]; f.Value.Median != 5 || f.Value.Min != 3 || f.Value.Max != 7 || !*f.Met || f.Floor.Median != 1 {
		t.Errorf("churn_cost_pct = %+v, value %+v", f, f.Value)
	}
	if f := figs["churn20k_cps"]; f.Value.Median != 19505 || *f.Met {
		t.Errorf("churn20k_cps = %+v: a median below 99%% of 20,000/s did not keep up", f)
	}
}

// churn_cost_pct's parts are in its unit, % of the machine: the tracer's
// CPU seconds over the paced run's wall time, and its programs' BPF run
// time (ns a run times runs) over the probe's, both over all CPUs.
func TestChurnCostParts(t *testing.T) {
	res := &results{CPUs: 2, Samples: []sample{
		{Round: 0, Tracer: tracerFlowtrace, Workload: "churn20k_tracer_pct", Value: 4.5},
		{Round: 0, Tracer: tracerFlowtrace, Workload: "churn20k_probe_s", Value: 2,
			TCNs: 500, TCRuns: 400000, DropNs: 1000, DropRuns: 1000},
		{Round: 0, Tracer: tracerFloor, Workload: "churn20k_probe_s", Value: 2, TCNs: 50, TCRuns: 400000},
	}}
	figs := figures(res)
	if f := figs["churn_tracer_pct"]; f.Value == nil || f.Value.Median != 4.5 {
		t.Errorf("churn_tracer_pct = %+v", f)
	}
	// (500 ns × 400k + 1 µs × 1k) = 0.201 s of 2 s on 2 CPUs: 5.025%.
	if f := figs["churn_bpf_pct"]; f.Value == nil || math.Abs(f.Value.Median-5.025) > 1e-9 || math.Abs(f.Floor.Median-0.5) > 1e-9 {
		t.Errorf("churn_bpf_pct = %+v, floor %+v", f.Value, f.Floor)
	}
	if pct := machinePct(1, 10, 2); pct != 5 {
		t.Errorf("machinePct(1 s, 10 s, 2 CPUs) = %v, want 5", pct)
	}
}

// Busy CPU is the machine's wall-clock CPU time less idle, iowait and the
// hypervisor's steal: what user, nice, system, irq and softirq did.
func TestCPUTicks(t *testing.T) {
	const cpus = "cpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 1 2 3 4 5 6 7 8 0 0\nintr 1 2 3\n"
	at := time.Unix(1000, 0)
	then, err := parseCPUTicks("cpu  100 0 50 1000 10 0 20 5 0 0\n"+cpus, at)
	if err != nil {
		t.Fatal(err)
	}
	// 2 s on 2 CPUs is 400 ticks; 100 of them idle (70), iowait (10) or
	// steal (20). The busy fields (tick samples) are not read.
	now, err := parseCPUTicks("cpu  999 0 999 1070 20 0 999 25 0 0\n"+cpus, at.Add(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if now.cpus != 2 {
		t.Fatalf("cpus = %d, want 2", now.cpus)
	}
	if got := now.busySince(then); got != 0.75 {
		t.Fatalf("busySince = %v, want 0.75", got)
	}
	if got := then.busySince(now); got != 0 {
		t.Fatalf("busySince backwards = %v, want 0", got)
	}
	if _, err := parseCPUTicks("intr 1 2 3", at); err == nil {
		t.Fatal("a line that is not the cpu line must be refused")
	}
	if _, err := parseCPUTicks("cpu  100 0 50 1000 10 0 20 5 0 0\nintr 1\n", at); err == nil {
		t.Fatal("a /proc/stat without per-CPU lines must be refused")
	}
}
