package cli

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flowtrace/flowtrace/pkg/agent"
	"github.com/flowtrace/flowtrace/pkg/server"
)

func newAgentCmd(version string) *cobra.Command {
	cfg := agent.Config{Version: version}
	var logLevel, cpuProfile string
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
			return a.Run(cmd.Context())
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
	f.IntVar(&cfg.MaxFlows, "max-flows", 65536, "flows held in history (count bound)")
	f.DurationVar(&cfg.MaxFlowAge, "max-flow-age", time.Hour, "flows held in history (age bound)")
	f.BoolVar(&cfg.ScopeAllNetns, "all-netns", false, "report drops from every network namespace on the machine, not only the node's and its pods'")
	addListenFlags(f, &cfg.ListenAddress, &cfg.TLS, &cfg.InsecureListen)
	f.StringVar(&cfg.MetricsAddress, "metrics-address", "", "serve Prometheus metrics on http://ADDRESS/metrics (e.g. :9965)")
	f.IntVar(&cfg.MetricsTopNamespaces, "metrics-top-namespaces", 50, "namespaces that get their own label on flowtrace_drops_total; the rest count as \"other\"")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	// Hidden: a developer's tool for the benchmark, not a user feature.
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a Go CPU profile of the agent's run to this file (for go tool pprof)")
	_ = f.MarkHidden("cpu-profile")
	return cmd
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
