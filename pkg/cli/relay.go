package cli

import (
	"context"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/credentials"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/relay"
	"github.com/flowtrace/flowtrace/pkg/server"
)

// DefaultRelaySocket is where the relay listens when no --socket is given.
const DefaultRelaySocket = "/var/run/flowtrace/relay.sock"

type relayOpts struct {
	cfg            relay.Config
	socket         string
	listen         string
	tls            server.TLSFiles
	insecureListen bool
	logLevel       string
}

func newRelayCmd(_ *globalOpts) *cobra.Command {
	o := &relayOpts{}
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Serve the flows of many agents as one: merged in time order, --last N across nodes",
		Long: `Run a relay: it connects to many agents, merges their flow streams in time
order within a bounded sort window, and serves the same API, so
'flowtrace observe --server <relay>' and 'flowtrace status' work unchanged.

Peers are a static list (--peer, repeatable: a socket path, unix:///path or
host:port) and/or the endpoints of a Kubernetes headless Service
(--peer-service name.ns.svc: SRV records, else A records with --peer-port),
re-resolved every --peer-resolve-interval. Nodes that cannot be reached are
reported inline in the stream and in 'flowtrace status'.

The relay listens on a unix socket (--socket) and, with --listen-address, on
TCP with TLS, under the same rules as the agent.`,
		Example: `  flowtrace relay --peer /run/ft-a.sock --peer /run/ft-b.sock --socket /run/ft-relay.sock
  flowtrace relay --peer-service flowtrace.kube-system.svc --peer-tls-ca-file ca.pem \
      --listen-address :4245 --tls-cert-file relay.pem --tls-key-file relay-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
				return usageErrorf("--log-level %q: want debug, info, warn or error", o.logLevel)
			}
			if err := o.validate(); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			return o.run(cmdContext(cmd), log)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.cfg.Peers, "peer", nil, "agent to read from: socket path, unix:///path or host:port (repeatable)")
	f.StringVar(&o.cfg.PeerService, "peer-service", "", "DNS name of a headless Service whose endpoints are agents (e.g. flowtrace.kube-system.svc)")
	f.IntVar(&o.cfg.PeerPort, "peer-port", 4245, "agent port for --peer-service A records")
	f.DurationVar(&o.cfg.ResolveInterval, "peer-resolve-interval", 30*time.Second, "how often to re-resolve --peer-service")
	f.BoolVar(&o.cfg.Client.TLS.Enabled, "peer-tls", false, "connect to host:port peers with TLS (implied by the other --peer-tls-* flags)")
	f.StringVar(&o.cfg.Client.TLS.CAFile, "peer-tls-ca-file", "", "PEM CA that signs the agents' certificates")
	f.StringVar(&o.cfg.Client.TLS.CertFile, "peer-tls-cert-file", "", "PEM client certificate for agents that require mTLS")
	f.StringVar(&o.cfg.Client.TLS.KeyFile, "peer-tls-key-file", "", "PEM client key for agents that require mTLS")
	f.StringVar(&o.cfg.Client.TLS.ServerName, "peer-tls-server-name", "", "name to verify in the agents' certificates (needed when peers are IP addresses)")
	f.DurationVar(&o.cfg.SortWindow, "sort-window", time.Second, "how long live flows wait to be merged in time order")
	f.StringVar(&o.cfg.NodeName, "node-name", "relay", "name reported in the relay's status")
	f.StringVar(&o.socket, "socket", DefaultRelaySocket, "unix socket to serve the API on (mode 0600)")
	addListenFlags(f, &o.listen, &o.tls, &o.insecureListen)
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}

func (o *relayOpts) validate() error {
	if len(o.cfg.Peers) == 0 && o.cfg.PeerService == "" {
		return usageErrorf("no peers: give --peer (repeatable) or --peer-service")
	}
	for _, p := range o.cfg.Peers {
		if _, _, err := client.Target(p); err != nil {
			return usageErrorf("--peer %q: %v", p, err)
		}
	}
	if o.cfg.SortWindow < 10*time.Millisecond || o.cfg.SortWindow > time.Minute {
		return usageErrorf("--sort-window %s: want between 10ms and 1m", o.cfg.SortWindow)
	}
	if o.cfg.ResolveInterval < time.Second {
		return usageErrorf("--peer-resolve-interval %s: must be at least 1s", o.cfg.ResolveInterval)
	}
	if o.cfg.PeerPort < 1 || o.cfg.PeerPort > 65535 {
		return usageErrorf("--peer-port %d: want 1-65535", o.cfg.PeerPort)
	}
	if (o.cfg.Client.TLS.CertFile == "") != (o.cfg.Client.TLS.KeyFile == "") {
		return usageErrorf("--peer-tls-cert-file and --peer-tls-key-file go together")
	}
	return checkListenFlags(o.listen, o.tls, o.insecureListen)
}

func (o *relayOpts) run(ctx context.Context, log *slog.Logger) error {
	var creds credentials.TransportCredentials
	if o.listen != "" && !o.insecureListen {
		cfg, err := server.ServerTLSConfig(o.tls)
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(cfg)
	}
	r, err := relay.New(o.cfg, log)
	if err != nil {
		return err
	}
	r.ResolveNow(ctx)
	lis, err := server.ListenUnix(o.socket)
	if err != nil {
		return err
	}
	var tcpLis net.Listener
	if o.listen != "" {
		if tcpLis, err = server.ListenTCP(o.listen); err != nil {
			lis.Close()
			return err
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(ctx) })
	g.Go(func() error {
		return server.ServeGRPC(ctx, server.NewGRPCServer(ctx, r, server.Limits{}, nil), lis, log)
	})
	if tcpLis != nil {
		g.Go(func() error {
			return server.ServeGRPC(ctx, server.NewGRPCServer(ctx, r, server.Limits{}, creds), tcpLis, log)
		})
	}
	log.Info("flowtrace relay ready", "socket", o.socket, "listen", o.listen, "peers", o.cfg.Peers, "peer_service", o.cfg.PeerService)
	return g.Wait()
}
