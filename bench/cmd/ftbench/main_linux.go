// Command ftbench measures what flowtrace costs: workloads between pods of
// a namespace testbed, run with no tracer, a trivial counting tc program
// (the floor), the flowtrace agent, tcpdump and any other command, in
// interleaved rounds. See bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type options struct {
	rounds        int
	duration      time.Duration
	stormDuration time.Duration
	stormRate     int
	manyDuration  time.Duration
	heldFlows     int
	workloads     string
	agentProcs    int
	agentArgs     string
	tracers       string
	tracerCmd     string
	flowtraceBin  string
	out           string
	smoke         bool
	extended      bool
}

func main() {
	// Hidden: a drop storm's following client, started by measureStorm.
	if len(os.Args) > 1 && os.Args[1] == followDropsCmd {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := followDrops(ctx, os.Args[2:], os.Stdin, os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "ftbench "+followDropsCmd+":", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.rounds, "rounds", 5, "interleaved rounds (each runs every tracer, order rotated)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each throughput/latency workload")
	flag.DurationVar(&o.stormDuration, "storm-duration", 10*time.Second, "length of the single-flow drop storm")
	flag.IntVar(&o.stormRate, "storm-rate", 200000, "drops per second the storms aim for")
	flag.DurationVar(&o.manyDuration, "many-duration", 3*time.Second, "length of the many-flow drop storm")
	flag.IntVar(&o.heldFlows, "held-flows", 65536, "flows the agent holds for the peak RSS figure")
	flag.StringVar(&o.workloads, "workloads", allWorkloads, "workloads to run, comma-separated (a figure whose workload did not run is left out)")
	flag.IntVar(&o.agentProcs, "agent-gomaxprocs", 1, "GOMAXPROCS of the flowtrace agent, as deployed: the DaemonSet's 1-core CPU limit makes the Go runtime pick 1 (0: the runtime's default for the machine)")
	flag.StringVar(&o.tracers, "tracers", "none,floor,flowtrace,tcpdump", "tracers to compare (none is always included)")
	flag.StringVar(&o.tracerCmd, "tracer-cmd", "", `another tracer to compare, run as "sh -c CMD" in the node namespace (env: FTBENCH_IFACES, FTBENCH_CLIENT_VETH, FTBENCH_NODE_NETNS, FTBENCH_IDENTITY_FILE: the lab's pods and Services, for another flowtrace build)`)
	flag.StringVar(&o.agentArgs, "agent-args", "", `extra flowtrace agent flags, space-separated (e.g. "--cpu-profile /tmp/agent-{run}.prof"; {run} becomes r1, r2, ... for each round's agent and "held" for the held-flows one)`)
	flag.StringVar(&o.flowtraceBin, "flowtrace-bin", "bin/flowtrace", "flowtrace binary")
	flag.StringVar(&o.out, "out", "bench/results/latest.json", "results file (JSON)")
	flag.BoolVar(&o.smoke, "smoke", false, "seconds-long run that only checks every stage works (CI)")
	flag.BoolVar(&o.extended, "extended", false, "build the extended lab (second node over VXLAN) as the testbed")
	flag.Parse()
	// A stray word would otherwise start a whole run (minutes, a testbed).
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ftbench: unexpected argument %q (flags only; see -h)\n", flag.Arg(0))
		os.Exit(2)
	}
	for _, w := range strings.Split(o.workloads, ",") {
		if !strings.Contains(","+allWorkloads+",", ","+w+",") {
			fmt.Fprintf(os.Stderr, "ftbench: unknown workload %q (have %s)\n", w, allWorkloads)
			os.Exit(2)
		}
	}
	if o.smoke {
		o.rounds, o.duration, o.stormDuration, o.manyDuration = 1, time.Second, time.Second, time.Second
		o.stormRate, o.heldFlows = 20000, 2000
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		fmt.Fprintln(os.Stderr, "ftbench:", err)
		os.Exit(1)
	}
}

// allWorkloads: the names measure() logs, in the order they run.
const allWorkloads = "tcp_stream,udp64,rr,churn,storm_one,storm_many"

// runs says whether the workload was asked for (--workloads).
func (o options) runs(workload string) bool {
	return strings.Contains(","+o.workloads+",", ","+workload+",")
}

type results struct {
	Command  string              `json:"command"`
	Time     time.Time           `json:"time"`
	Kernel   string              `json:"kernel"`
	CPUs     int                 `json:"cpus"`
	Smoke    bool                `json:"smoke"`
	Rounds   int                 `json:"rounds"`
	Figures  map[string]*figure  `json:"figures"`
	Samples  []sample            `json:"samples"`
	Storms   []namedStorm        `json:"storms"`
	Runs     []tracerRun         `json:"tracer_runs"`
	Programs map[string][]string `json:"programs"`
	Errors   []string            `json:"errors,omitempty"`
}

type namedStorm struct {
	Round int    `json:"round"`
	Kind  string `json:"kind"` // "one" or "many"
	stormResult
}

type tracerRun struct {
	Round   int     `json:"round"`
	Tracer  string  `json:"tracer"`
	CPUSecs float64 `json:"cpu_seconds"`
	// StartCPUSecs is the part of CPUSecs spent before the tracer was
	// ready (flowtrace: BTF, program loads and the verifier, attaching).
	StartCPUSecs float64 `json:"start_cpu_seconds,omitempty"`
	PeakRSSMB    float64 `json:"peak_rss_mb"`
	Events       uint64  `json:"events,omitempty"` // flowtrace: flows seen + lost
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}
	// Fail now, not in the first round, where the kernel cannot keep stats.
	check, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return fmt.Errorf("enable BPF stats: %w", err)
	}
	check.Close()

	tracers := []string{tracerNone}
	for _, t := range strings.Split(o.tracers, ",") {
		if t = strings.TrimSpace(t); t != "" && t != tracerNone {
			tracers = append(tracers, t)
		}
	}
	if o.tracerCmd != "" && !slices.Contains(tracers, tracerCmd) {
		tracers = append(tracers, tracerCmd)
	}
	if slices.Contains(tracers, tracerFlowtrace) {
		if _, err := os.Stat(o.flowtraceBin); err != nil {
			return fmt.Errorf("flowtrace binary: %w (build it: make build)", err)
		}
		if o.flowtraceBin, err = filepath.Abs(o.flowtraceBin); err != nil {
			return err
		}
	}

	b, err := newBed(ctx, o.extended)
	if err != nil {
		return err
	}
	defer func() {
		if err := b.Close(); err != nil {
			log.Error("remove testbed", "err", err)
		}
	}()
	log.Info("testbed up", "prefix", b.cfg.Prefix, "node", b.lab.NodeNetns, "client", b.client.IPv4, "server", b.server.IPv4)

	var uts unix.Utsname
	_ = unix.Uname(&uts)
	res := &results{Command: strings.Join(os.Args, " "), Time: time.Now().UTC(), Kernel: unix.ByteSliceToString(uts.Release[:]),
		CPUs: runtime.NumCPU(), Smoke: o.smoke, Rounds: o.rounds, Programs: map[string][]string{}}
	tc := tracerConfig{flowtraceBin: o.flowtraceBin, tracerCmd: o.tracerCmd, maxFlows: 65536, gomaxprocs: o.agentProcs,
		agentArgs: strings.Fields(o.agentArgs), log: log}

	for round := range o.rounds {
		order := slices.Clone(tracers)
		k := round % len(order)
		order = append(order[k:], order[:k]...)
		for _, name := range order {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Info("round", "n", round+1, "of", o.rounds, "tracer", name)
			if err := runTracer(ctx, b, o, tc, round, name, res, log); err != nil {
				return fmt.Errorf("round %d, tracer %s: %w", round+1, name, err)
			}
		}
	}
	if slices.Contains(tracers, tracerFlowtrace) {
		log.Info("held flows", "flows", o.heldFlows)
		if err := heldFlows(ctx, b, o, tc, res); err != nil {
			return fmt.Errorf("held flows: %w", err)
		}
	}
	res.Figures = figures(res)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(o.out, append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	fmt.Printf("flowtrace bench (%s, kernel %s, %d CPUs, %d rounds; ratios are tracer/no tracer in the same round, median [min..max])\n",
		map[bool]string{true: "smoke", false: "full"}[o.smoke], res.Kernel, res.CPUs, o.rounds)
	if err := printTable(os.Stdout, res.Figures); err != nil {
		return err
	}
	fmt.Printf("results: %s\n", o.out)
	return nil
}

// churnRate is the connection churn: new connections per second
// at which the cost is measured.
const churnRate = 20000

// tcProbe is how long tc's ns per packet are measured, after the udp64
// workload: about a million tc runs at this machine's rate.
const tcProbe = 2 * time.Second

// runTracer starts one tracer, runs every workload under it, and stops it.
func runTracer(ctx context.Context, b *bed, o options, tc tracerConfig, round int, name string, res *results, log *slog.Logger) (err error) {
	tc.run = fmt.Sprintf("r%d", round+1)
	r, err := startTracer(ctx, name, b, tc)
	if err != nil {
		return err
	}
	defer func() {
		cpu, rss := r.usage()
		tr := tracerRun{Round: round, Tracer: name, CPUSecs: cpu, StartCPUSecs: r.readyCPU, PeakRSSMB: rss}
		if r.agent != nil {
			if st, serr := r.agent.status(ctx); serr == nil {
				tr.Events = st.GetSeenFlows() + lostTotal(st, flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER,
					flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE)
			}
		}
		if r.cmd != nil || r.fl != nil {
			res.Runs = append(res.Runs, tr)
		}
		if r.progs != nil && len(r.progs.names) > 0 {
			res.Programs[name] = r.progs.names
		}
		err = errors.Join(err, r.stop())
	}()

	// measure runs one workload; timed ones run with BPF run-time stats on,
	// so their samples carry the programs' ns per run. Only the ns figures'
	// workloads are timed: stats make every program run read the clock
	// twice, which on this VM cost the counting floor alone 5-7% of UDP
	// packets/s when they were on for the whole bench, a cost no deployed
	// tracer pays (kernel.bpf_stats_enabled is 0).
	measure := func(workload string, timed bool, fn func() ([]float64, error), names ...string) error {
		if !o.runs(workload) {
			return nil
		}
		if timed {
			stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
			if err != nil {
				return fmt.Errorf("enable BPF stats: %w", err)
			}
			defer stats.Close()
		}
		before := r.progs.snapshot()
		vals, err := fn()
		if err != nil {
			return err
		}
		if err := r.check(); err != nil {
			return fmt.Errorf("%s: %w", workload, err)
		}
		after := r.progs.snapshot()
		tcNs, tcRuns := nsPer(before, after, "tc")
		dropNs, dropRuns := nsPer(before, after, "drop")
		for i, v := range vals {
			res.Samples = append(res.Samples, sample{Round: round, Tracer: name, Workload: names[i], Value: v,
				TCNs: tcNs, TCRuns: tcRuns, DropNs: dropNs, DropRuns: dropRuns})
		}
		log.Info("workload", "tracer", name, "workload", workload, "samples", names, "values", vals, "tc_ns", int(tcNs), "drop_ns", int(dropNs))
		return nil
	}
	one := func(v float64, err error) ([]float64, error) { return []float64{v}, err }
	if err := measure("tcp_stream", false, func() ([]float64, error) { return one(tcpStream(ctx, b, o.duration)) }, "tcp_stream_bps"); err != nil {
		return err
	}
	if err := measure("udp64", false, func() ([]float64, error) { return one(udpPPS(b, o.duration)) }, "udp64_pps"); err != nil {
		return err
	}
	// tc's ns per packet: the same 64-byte UDP stream, shorter, timed.
	if err := measure("udp64", true, func() ([]float64, error) { return one(udpPPS(b, min(o.duration, tcProbe))) }, "udp64_probe_pps"); err != nil {
		return err
	}
	if err := measure("rr", false, func() ([]float64, error) {
		p50, p99, err := rrLatency(b, o.duration)
		return []float64{p50, p99}, err
	}, "rr_p50_us", "rr_p99_us"); err != nil {
		return err
	}
	// Paced first: as fast as it goes, churn fills conntrack to its limit
	// (100 k/s against 262,144 entries that stay 10 s in CLOSE), and the
	// kernel's garbage collection of them after would land in the paced
	// run's CPU figure.
	// The cost's parts: the tracer's own process CPU in the paced run, and
	// (below) its BPF programs' run time in a timed paced probe.
	if err := measure("churn", false, func() ([]float64, error) {
		cpu0, _ := r.usage()
		start := time.Now()
		cps, busy, err := churn(b, o.duration, churnRate)
		cpu1, _ := r.usage()
		return []float64{cps, busy * 100, machinePct(cpu1-cpu0, time.Since(start).Seconds(), runtime.NumCPU())}, err
	}, "churn20k_cps", "churn20k_busy_pct", "churn20k_tracer_pct"); err != nil {
		return err
	}
	if err := measure("churn", true, func() ([]float64, error) {
		start := time.Now()
		cps, _, err := churn(b, min(o.duration, tcProbe), churnRate)
		return []float64{cps, time.Since(start).Seconds()}, err
	}, "churn20k_probe_cps", "churn20k_probe_s"); err != nil {
		return err
	}
	if err := measure("churn", false, func() ([]float64, error) {
		cps, _, err := churn(b, o.duration, 0)
		return []float64{cps}, err
	}, "churn_cps"); err != nil {
		return err
	}
	// Storms: flowtrace is accounted for drop by drop; the floor and a
	// plugged-in command run them for their kfree_skb cost. No tracer and
	// tcpdump have nothing to report about drops.
	for _, many := range []bool{false, true} {
		kind, d, wl := "one", o.stormDuration, "storm_one"
		if many {
			kind, d, wl = "many", o.manyDuration, "storm_many"
		}
		switch {
		case r.agent != nil:
			if err := measure(wl, true, func() ([]float64, error) {
				s, err := measureStorm(ctx, b, r.agent, d, o.stormRate, many)
				if err != nil {
					return nil, err
				}
				res.Storms = append(res.Storms, namedStorm{Round: round, Kind: kind, stormResult: s})
				return []float64{s.Rate}, nil
			}, wl+"_rate"); err != nil {
				return err
			}
		case name == tracerFloor || name == tracerCmd:
			if err := measure(wl, true, func() ([]float64, error) { return one(storm(b, d, o.stormRate, many)) }, wl+"_rate"); err != nil {
				return err
			}
		}
	}
	return nil
}

// heldFlows starts a fresh agent, makes it hold o.heldFlows flows, and
// records its peak RSS.
func heldFlows(ctx context.Context, b *bed, o options, tc tracerConfig, res *results) error {
	tc.maxFlows = o.heldFlows
	tc.run = "held"
	r, err := startTracer(ctx, tracerFlowtrace, b, tc)
	if err != nil {
		return err
	}
	defer r.stop()
	// Each datagram is a new connection seen at two host veths (and a
	// NO_SOCKET drop in the server pod): half as many datagrams as flows
	// is enough.
	if err := manyFlows(b, o.heldFlows/2+o.heldFlows/10, 20000); err != nil {
		return err
	}
	var held uint64
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := r.agent.status(ctx)
		if err != nil {
			return err
		}
		if held = st.GetNumFlows(); held >= uint64(o.heldFlows) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, rss := r.usage()
	res.Runs = append(res.Runs, tracerRun{Round: -1, Tracer: "flowtrace-held", PeakRSSMB: rss, Events: held})
	return nil
}
