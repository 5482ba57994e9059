// Command flowtrace-hubble serves Hubble's Observer API from a flowtrace
// agent, so that the `hubble` CLI and other Hubble clients work against
// flowtrace unchanged:
//
//	flowtrace-hubble --server /var/run/flowtrace/flowtrace.sock --listen-address :4245
//	hubble observe --server localhost:4245 --verdict DROPPED
//
// It lives in its own Go module so that cilium's requirements never join
// flowtrace's main go.mod.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/flowtrace/flowtrace/cmd/flowtrace-hubble/internal/hubbleserver"
	"github.com/flowtrace/flowtrace/pkg/client"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

var version = "dev"

type options struct {
	server     string
	listen     string
	tlsCert    string
	tlsKey     string
	tlsCA      string
	logLevel   string
	dialWait   time.Duration
	healthTick time.Duration
}

func main() {
	var o options
	fs := flag.NewFlagSet("flowtrace-hubble", flag.ContinueOnError)
	fs.StringVar(&o.server, "server", "/var/run/flowtrace/flowtrace.sock", "flowtrace agent to read from: a unix socket path, unix:///path or host:port")
	fs.StringVar(&o.listen, "listen-address", ":4245", "TCP address to serve Hubble's Observer API on (hubble-relay's default port)")
	fs.StringVar(&o.tlsCert, "tls-cert-file", "", "serve TLS with this certificate (PEM); needs --tls-key-file")
	fs.StringVar(&o.tlsKey, "tls-key-file", "", "private key (PEM) of --tls-cert-file")
	fs.StringVar(&o.tlsCA, "tls-client-ca-file", "", "require client certificates signed by these CAs (PEM): mutual TLS")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&o.dialWait, "dial-timeout", 30*time.Second, "how long to wait for the agent at start")
	fs.DurationVar(&o.healthTick, "health-interval", 5*time.Second, "how often the agent is probed for the health service")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "flowtrace-hubble: unexpected arguments %v\n", fs.Args())
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "flowtrace-hubble:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	creds, err := serverTLS(o)
	if err != nil {
		return err
	}
	conn, err := dialAgent(ctx, o.server, o.dialWait, log)
	if err != nil {
		return err
	}
	defer conn.Close()

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	var sopts []grpc.ServerOption
	if creds != nil {
		sopts = append(sopts, grpc.Creds(creds))
	}
	gs := grpc.NewServer(sopts...)
	srv := hubbleserver.New(hubbleserver.Config{
		Upstream: o.server, Version: version, TLS: creds != nil, HealthInterval: o.healthTick,
	}, flowtracev1.NewObserverServiceClient(conn), log)
	srv.Register(gs)

	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	go srv.RunHealth(hctx)

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	// Tests and scripts wait for this line.
	log.Info("serving Hubble Observer API", "addr", lis.Addr().String(), "agent", o.server, "tls", creds != nil)
	select {
	case err := <-errc:
		return fmt.Errorf("serve on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	hcancel()
	// Followed streams never end by themselves: give unary calls a moment,
	// then close everything.
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		gs.Stop()
		<-done
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve on %s: %w", lis.Addr(), err)
	}
	return nil
}

// dialAgent retries until the agent answers or wait passes, so the adapter
// may start before the agent (a unit ordering, a test, a restart).
func dialAgent(ctx context.Context, server string, wait time.Duration, log *slog.Logger) (*grpc.ClientConn, error) {
	deadline := time.Now().Add(wait)
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := client.Dial(dctx, server)
		cancel()
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, err
		}
		log.Debug("waiting for the flowtrace agent", "error", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func serverTLS(o options) (credentials.TransportCredentials, error) {
	if o.tlsCert == "" && o.tlsKey == "" {
		if o.tlsCA != "" {
			return nil, errors.New("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
		}
		return nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return nil, errors.New("--tls-cert-file and --tls-key-file go together")
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s, %s: %w", o.tlsCert, o.tlsKey, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("read client CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA file %s: no PEM certificates", o.tlsCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}
