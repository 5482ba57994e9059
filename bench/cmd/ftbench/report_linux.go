package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// sample is one measurement of one workload under one tracer in one round.
type sample struct {
	Round    int     `json:"round"`
	Tracer   string  `json:"tracer"`
	Workload string  `json:"workload"`
	Value    float64 `json:"value"`
	// Kernel ns per run of the tracer's tc and kfree_skb programs during
	// this workload (BPF stats), and how many runs that covers.
	TCNs     float64 `json:"tc_ns,omitempty"`
	TCRuns   uint64  `json:"tc_runs,omitempty"`
	DropNs   float64 `json:"drop_ns,omitempty"`
	DropRuns uint64  `json:"drop_runs,omitempty"`
}

// stat is a median with its range over rounds.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func statOf(v []float64) *stat {
	v = slices.DeleteFunc(slices.Clone(v), func(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) })
	if len(v) == 0 {
		return nil
	}
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return &stat{Median: m, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// figure is one named result next to its target and the baselines.
type figure struct {
	Unit string `json:"unit"`
	// Flowtrace's value (median [min..max] over rounds).
	Value *stat `json:"value"`
	// Target as text ("≥ 0.98"), and whether the median meets it (nil:
	// no target, or no value).
	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
	// The same figure for tcpdump on the host veth and for the trivial
	// counting program, when it applies.
	Tcpdump *stat  `json:"tcpdump,omitempty"`
	Floor   *stat  `json:"floor,omitempty"`
	Cmd     *stat  `json:"cmd,omitempty"`
	Note    string `json:"note,omitempty"`
}

func (f *figure) check(op string, limit float64) {
	f.Target = fmt.Sprintf("%s %g", op, limit)
	if f.Value == nil {
		return
	}
	ok := f.Value.Median >= limit
	if op == "≤" {
		ok = f.Value.Median <= limit
	}
	f.Met = &ok
}

// perRound returns, for each round with both, fn(the tracer's value, no
// tracer's value) for a workload.
func perRound(samples []sample, tracer, workload string, fn func(v, none float64) float64) []float64 {
	base := map[int]float64{}
	for _, s := range samples {
		if s.Tracer == tracerNone && s.Workload == workload {
			base[s.Round] = s.Value
		}
	}
	var out []float64
	for _, s := range samples {
		if s.Tracer == tracer && s.Workload == workload {
			if b, ok := base[s.Round]; ok {
				out = append(out, fn(s.Value, b))
			}
		}
	}
	return out
}

// ratios is, per round, the tracer's value over no tracer's (NaN, which
// statOf drops, where no tracer measured 0).
func ratios(samples []sample, tracer, workload string) []float64 {
	return perRound(samples, tracer, workload, func(v, none float64) float64 {
		if none <= 0 {
			return math.NaN()
		}
		return v / none
	})
}

// diffs is, per round, the tracer's value minus no tracer's.
func diffs(samples []sample, tracer, workload string) []float64 {
	return perRound(samples, tracer, workload, func(v, none float64) float64 { return v - none })
}

// machinePct is cpuSecs of CPU used over wallSecs on a machine of cpus
// CPUs, in % of the machine: the unit of churn_cost_pct.
func machinePct(cpuSecs, wallSecs float64, cpus int) float64 {
	if wallSecs <= 0 || cpus <= 0 {
		return 0
	}
	return 100 * cpuSecs / wallSecs / float64(cpus)
}

func values(samples []sample, tracer, workload string, get func(sample) float64) []float64 {
	var out []float64
	for _, s := range samples {
		if s.Tracer == tracer && s.Workload == workload {
			out = append(out, get(s))
		}
	}
	return out
}

// vsFloor is, per round, flowtrace's ns per run over the floor's.
func vsFloor(samples []sample, workload string, get func(sample) float64) []float64 {
	fl := map[int]float64{}
	for _, s := range samples {
		if s.Tracer == tracerFloor && s.Workload == workload && get(s) > 0 {
			fl[s.Round] = get(s)
		}
	}
	var out []float64
	for _, s := range samples {
		if s.Tracer == tracerFlowtrace && s.Workload == workload && get(s) > 0 {
			if f, ok := fl[s.Round]; ok {
				out = append(out, get(s)/f)
			}
		}
	}
	return out
}

// figureOrder is the table's row order.
var figureOrder = []string{
	"tcp_stream_ratio", "udp64_pps_ratio", "rr_p50_ratio", "rr_p99_ratio", "churn_cost_pct", "churn_tracer_pct", "churn_bpf_pct", "churn20k_cps", "churn_ratio",
	"baseline_tcp_stream_gbps", "baseline_udp64_kpps", "baseline_rr_p99_us", "baseline_churn_cps",
	"tc_ns_per_packet", "tc_vs_floor", "kfree_skb_ns_per_drop", "kfree_skb_vs_floor",
	"storm_rate_per_s", "storm_kernel_drops", "storm_unaccounted", "storm_accounted", "storm_delivered_pct", "storm_latency_p99_ms",
	"storm_many_rate_per_s", "storm_many_kernel_drops", "storm_many_unaccounted", "storm_many_accounted", "storm_many_delivered_pct", "storm_many_latency_p99_ms",
	"agent_cpu_s_per_100k_events", "agent_start_cpu_s", "tracer_cpu_s_per_run", "tracer_peak_rss_mb", "held_flows", "rss_mb_held_flows",
}

func fmtStat(s *stat, unit string) string {
	if s == nil {
		return "-"
	}
	f := func(v float64) string {
		switch {
		case unit == "ratio" || unit == "×":
			return fmt.Sprintf("%.2f", v)
		case math.Abs(v) >= 1000:
			return fmt.Sprintf("%.0f", v)
		default:
			return fmt.Sprintf("%.3g", v)
		}
	}
	if s.N <= 1 || s.Min == s.Max {
		return f(s.Median)
	}
	return fmt.Sprintf("%s [%s..%s]", f(s.Median), f(s.Min), f(s.Max))
}

// printTable writes every figure next to its target and the baselines.
func printTable(w io.Writer, figs map[string]*figure) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tFLOWTRACE\tTARGET\tMET\tTCPDUMP\tFLOOR\tCMD\tUNIT")
	for _, name := range figureOrder {
		f, ok := figs[name]
		if !ok {
			continue
		}
		met := "-"
		if f.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*f.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, fmtStat(f.Value, f.Unit), dash(f.Target), met,
			fmtStat(f.Tcpdump, f.Unit), fmtStat(f.Floor, f.Unit), fmtStat(f.Cmd, f.Unit), f.Unit)
	}
	return tw.Flush()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
