package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flowtrace/flowtrace/pkg/agent"
	"github.com/flowtrace/flowtrace/pkg/datapath"
	"github.com/flowtrace/flowtrace/pkg/server"
)

// maxFlowTableEntries bounds --flow-table-entries: 16 M entries is ~4.3 GiB
// of preallocated kernel memory, more than any node should give a tracer.
const maxFlowTableEntries = 1 << 24

func newAgentCmd(version string) *cobra.Command {
	cfg := agent.Config{Version: version}
	var logLevel, memProfile, cpuProfile string
	var firstDelay time.Duration
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: attach the datapath and serve flows",
		Long: `Run the flowtrace node agent in the current network namespace.

It attaches tc programs (TCX, or clsact on kernels before 6.6) to every veth
and physical NIC, follows interfaces as pods come and go, reports packets the
kernel drops with the kernel's own drop reason, aggregates forwarded traffic
per connection, and serves the flows on a unix socket for 'flowtrace observe'.

The unix socket (mode 0600) is the default and only listener. --listen-address
adds a TCP listener, which requires TLS (--tls-cert-file, --tls-key-file;
--tls-client-ca-file makes client certificates mandatory). Plain TCP is
possible only on a loopback address with --insecure-listen. --metrics-address
serves Prometheus metrics.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageErrorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			if cfg.FlowReportInterval < 100*time.Millisecond {
				return usageErrorf("--flow-report-interval %s: must be at least 100ms", cfg.FlowReportInterval)
			}
			switch {
			case firstDelay < 0 || firstDelay > cfg.FlowReportInterval/4:
				return usageErrorf("--flow-first-report-delay %s: must be between 0 and a quarter of --flow-report-interval (%s)",
					firstDelay, cfg.FlowReportInterval/4)
			case firstDelay == 0:
				cfg.FirstReportDelay = -1 // at the first packet
			default:
				cfg.FirstReportDelay = firstDelay
			}
			if cfg.MaxFlows < 1 {
				return usageErrorf("--max-flows %d: must be at least 1", cfg.MaxFlows)
			}
			if cfg.MaxFlowAge < 0 {
				return usageErrorf("--max-flow-age %s: must not be negative", cfg.MaxFlowAge)
			}
			if cfg.AttachMode != "" && cfg.AttachMode != "tcx" && cfg.AttachMode != "clsact" {
				return usageErrorf("--attach-mode %q: want tcx or clsact (default: tcx when the kernel has it)", cfg.AttachMode)
			}
			if err := checkListenFlags(cfg.ListenAddress, cfg.TLS, cfg.InsecureListen); err != nil {
				return err
			}
			if n := cfg.RingBufferBytes; n < os.Getpagesize() || n&(n-1) != 0 {
				return usageErrorf("--ring-buffer-bytes %d: want a power of two of at least %d", n, os.Getpagesize())
			}
			if n := cfg.FlowTableEntries; n < 1 || n > maxFlowTableEntries {
				return usageErrorf("--flow-table-entries %d: want 1 to %d", n, maxFlowTableEntries)
			}
			if cfg.IdentityGrace < 0 {
				return usageErrorf("--identity-grace %s: must not be negative", cfg.IdentityGrace)
			}
			// Checked before anything loads: a bad pattern failed only
			// after the BPF programs were loaded, naming no flag.
			for _, pf := range []struct {
				flag     string
				patterns []string
			}{{"--include", cfg.Include}, {"--exclude", cfg.Exclude}} {
				for _, p := range pf.patterns {
					if _, err := path.Match(p, ""); err != nil {
						return usageErrorf("%s %q: not a shell pattern: %v", pf.flag, p, err)
					}
				}
			}
			if cfg.MetricsTopNamespaces < 1 {
				return usageErrorf("--metrics-top-namespaces %d: must be at least 1", cfg.MetricsTopNamespaces)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop(log)
			}
			runErr := a.Run(cmd.Context())
			if memProfile != "" {
				if err := writeMemProfile(memProfile, log); err != nil {
					log.Warn("memory profile not written", "error", err)
				}
			}
			return runErr
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Socket, "socket", DefaultSocket, "unix socket to serve the API on (mode 0600)")
	f.StringVar(&cfg.IdentityFile, "identity-file", "", "static identity file (JSON) naming pods and Services; reloaded when it changes")
	f.BoolVar(&cfg.Kubernetes, "kubernetes", false, "name pods, workloads, Services and nodes from the Kubernetes API (in-cluster config, or --kubeconfig)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file for --kubernetes (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config)")
	f.BoolVar(&cfg.KubernetesAllPods, "kubernetes-all-pods", false, "watch every pod in the cluster, not only this node's (names remote peers; costs memory)")
	f.StringVar(&cfg.CNICacheDir, "cni-cache-dir", "", "read pods from the container runtime's CNI result cache, e.g. /var/lib/cni/results (works without API access)")
	f.DurationVar(&cfg.IdentityGrace, "identity-grace", 2*time.Minute, "how long a deleted pod keeps naming its IPs, unless a newer pod takes them")
	f.StringVar(&cfg.NodeName, "node-name", "", "node name reported with every flow (default: the hostname)")
	f.StringSliceVar(&cfg.Include, "include", nil, "attach only to interfaces matching these globs (default: every veth and NIC)")
	f.StringSliceVar(&cfg.Exclude, "exclude", nil, "never attach to interfaces matching these globs")
	f.StringVar(&cfg.AttachMode, "attach-mode", "", "tc attach mode: tcx or clsact (default: tcx when supported)")
	f.DurationVar(&cfg.FlowReportInterval, "flow-report-interval", 5*time.Second, "report each connection's counts at most this often")
	f.DurationVar(&firstDelay, "flow-first-report-delay", 20*time.Millisecond, "hold a new flow's first report this long in the kernel (5.17+): a connection that ends sooner is one report per interface and direction, its close, which carries both directions' packets and flags; 0 reports every flow at its first packet")
	f.IntVar(&cfg.MaxFlows, "max-flows", 65536, "flows held in history (count bound)")
	f.DurationVar(&cfg.MaxFlowAge, "max-flow-age", time.Hour, "flows held in history (age bound)")
	f.IntVar(&cfg.RingBufferBytes, "ring-buffer-bytes", agent.DefaultRingBufferBytes, "BPF ring buffer size (power of two): events the kernel can queue while the agent catches up; costs twice this in memory")
	f.IntVar(&cfg.FlowTableEntries, "flow-table-entries", datapath.DefaultFlowTableEntries, "kernel flow table size: entries for one direction of a connection at one interface each (a pod's veth needs two per connection); preallocated kernel memory, ~272 bytes an entry (17 MiB at the default). When it is full, packets are reported unaggregated and counted (flowtrace status: Flow table)")
	f.BoolVar(&cfg.ScopeAllNetns, "all-netns", false, "report drops from every network namespace on the machine, not only the node's and its pods'")
	f.BoolVar(&cfg.SocketTeardownDrops, "socket-teardown-drops", false, "also report what a socket's teardown frees (drop reasons SOCKET_CLOSE, QUEUE_PURGE: a closed socket's unread data, a netlink socket's queue); by default they are only counted (drops_socket_teardown in status): no packet died on the network")
	addListenFlags(f, &cfg.ListenAddress, &cfg.TLS, &cfg.InsecureListen)
	f.StringVar(&cfg.MetricsAddress, "metrics-address", "", "serve Prometheus metrics on http://ADDRESS/metrics (e.g. :9965)")
	f.IntVar(&cfg.MetricsTopNamespaces, "metrics-top-namespaces", 50, "namespaces that get their own label on flowtrace_drops_total; the rest count as \"other\"")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	// For developers chasing memory (bench rss figures): hidden, since the
	// profile says nothing an operator can act on.
	f.StringVar(&memProfile, "mem-profile", "", "write a heap profile to FILE when the agent exits")
	_ = f.MarkHidden("mem-profile")
	// Hidden: a developer's tool for the benchmark, not a user feature.
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a Go CPU profile of the agent's run to this file (for go tool pprof)")
	_ = f.MarkHidden("cpu-profile")
	// Hidden: the benchmark's A/B of tc's per-CPU flow cache (ftbench
	// --tracer-cmd), not something an operator needs.
	f.BoolVar(&cfg.NoFlowCache, "no-flow-cache", false, "count every packet in the kernel's flow table, without the per-CPU flow cache")
	_ = f.MarkHidden("no-flow-cache")
	// Hidden: likewise for the drop hook's per-CPU fold memo.
	f.BoolVar(&cfg.NoDropMemo, "no-drop-memo", false, "fold every drop in its kernel fold slot, without the per-CPU fold memo")
	_ = f.MarkHidden("no-drop-memo")
	return cmd
}

// writeMemProfile writes a heap profile and logs the runtime's memory
// classes, so heap (live and free), stacks and runtime overhead can be told
// apart from the non-heap part of RSS (binary pages, BPF mmaps).
func writeMemProfile(path string, log *slog.Logger) error {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	log.Info("memory at exit", "heap_alloc", ms.HeapAlloc, "heap_inuse", ms.HeapInuse, "heap_idle", ms.HeapIdle,
		"heap_released", ms.HeapReleased, "stack_inuse", ms.StackInuse, "sys", ms.Sys, "num_gc", ms.NumGC,
		"next_gc", ms.NextGC, "gc_sys", ms.GCSys, "other_sys", ms.OtherSys)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	// Not GC'd first on purpose: "inuse" then counts what was live at the
	// last cycle, the figure that sets the GC target.
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// startCPUProfile profiles the process from now until stop is called (the
// agent's Run returned, e.g. on SIGINT), so a profile covers the whole run.
func startCPUProfile(path string) (stop func(*slog.Logger), err error) {
	out, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		_ = out.Close()
		return nil, fmt.Errorf("--cpu-profile: start: %w", err)
	}
	return func(log *slog.Logger) {
		pprof.StopCPUProfile()
		if err := out.Close(); err != nil {
			log.Warn("writing the CPU profile failed", "file", path, "error", err)
		}
	}, nil
}

// addListenFlags declares the TCP listener flags the agent and the relay
// share; checkListenFlags validates them.
func addListenFlags(f *pflag.FlagSet, listen *string, tls *server.TLSFiles, insecure *bool) {
	f.StringVar(listen, "listen-address", "", "also serve the API on TCP host:port (requires --tls-cert-file and --tls-key-file; e.g. :4245)")
	f.StringVar(&tls.CertFile, "tls-cert-file", "", "PEM certificate for the TCP listener")
	f.StringVar(&tls.KeyFile, "tls-key-file", "", "PEM private key for the TCP listener")
	f.StringVar(&tls.ClientCAFile, "tls-client-ca-file", "", "require client certificates signed by this PEM CA (mTLS)")
	f.BoolVar(insecure, "insecure-listen", false, "serve plain TCP without TLS: allowed on a loopback --listen-address only")
}

// checkListenFlags validates the TCP listener flags the agent and the relay
// share: TLS is required on TCP, and the TLS flags need a listener.
func checkListenFlags(listen string, tls server.TLSFiles, insecure bool) error {
	if listen == "" {
		if tls != (server.TLSFiles{}) || insecure {
			return usageErrorf("--tls-cert-file, --tls-key-file, --tls-client-ca-file and --insecure-listen need --listen-address")
		}
		return nil
	}
	if err := server.CheckTCPSecurity(listen, tls.CertFile != "" || tls.KeyFile != "", insecure); err != nil {
		return usageErrorf("--listen-address: %v", err)
	}
	if (tls.CertFile == "") != (tls.KeyFile == "") {
		return usageErrorf("--tls-cert-file and --tls-key-file go together")
	}
	return nil
}
