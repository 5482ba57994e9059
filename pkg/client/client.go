// Package client connects to a flowtrace agent's (or relay's) flow API.
//
// A server is a unix socket path ("/var/run/flowtrace/flowtrace.sock",
// "unix:///path") or a TCP "host:port", which needs TLS (Options.TLS).
// Connections send keepalive pings and give unary calls a default deadline.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Target turns a server address into a gRPC target and, for unix sockets,
// the socket path. server is a socket path, "unix:///path" or "host:port".
func Target(server string) (target, socketPath string, err error) {
	switch {
	case server == "":
		return "", "", errors.New("empty server address")
	case strings.HasPrefix(server, "unix://"):
		p := strings.TrimPrefix(server, "unix://")
		if !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("server %q: unix:// needs an absolute path (unix:///path)", server)
		}
		return "unix://" + p, p, nil
	case strings.HasPrefix(server, "unix:"):
		p := strings.TrimPrefix(server, "unix:")
		return dialPath(p)
	case strings.ContainsRune(server, '/') || !strings.ContainsRune(server, ':'):
		return dialPath(server)
	default:
		return "passthrough:///" + server, "", nil
	}
}

func dialPath(p string) (string, string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", "", fmt.Errorf("socket path %q: %w", p, err)
	}
	return "unix://" + abs, abs, nil
}

// TLSOptions configure transport security for a TCP server. A unix socket
// never uses TLS: its file mode is the access control.
type TLSOptions struct {
	// Enabled turns TLS on (implied by any of the fields below).
	Enabled bool
	// CAFile verifies the server (default: the system roots).
	CAFile string
	// CertFile and KeyFile are the client certificate for mTLS.
	CertFile string
	KeyFile  string
	// ServerName overrides the name checked in the server certificate
	// (default: the host part of the address).
	ServerName string
}

func (o TLSOptions) on() bool {
	return o.Enabled || o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" || o.ServerName != ""
}

// Config builds the crypto/tls configuration.
func (o TLSOptions) Config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s: no PEM certificates found", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case o.CertFile != "" && o.KeyFile != "":
		c, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	case o.CertFile != "" || o.KeyFile != "":
		return nil, errors.New("a TLS client certificate needs both --tls-cert-file and --tls-key-file")
	}
	return cfg, nil
}

// Options configure a connection. The zero value is a plain connection,
// which is what a unix socket uses.
type Options struct {
	TLS TLSOptions
	// UnaryTimeout is the deadline given to unary calls made without one
	// (default 10s), so a hung server never hangs `flowtrace status`.
	UnaryTimeout time.Duration
}

// Keepalive: ping after 30s without activity and give up 10s later, so a
// stream from a node that vanished (no FIN, no RST) ends instead of hanging.
// The server permits pings every 10s (server.KeepaliveMinTime).
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	defaultUnary     = 10 * time.Second
)

// NewClient returns a connection to server without waiting for it: the
// relay uses it for peers that may come and go. Use Dial for a CLI that
// should fail fast on an unreachable agent.
func NewClient(server string, opts Options) (*grpc.ClientConn, error) {
	target, sock, err := Target(server)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if opts.TLS.on() {
		if sock != "" {
			return nil, fmt.Errorf("server %s is a unix socket: TLS applies to host:port servers only", server)
		}
		cfg, err := opts.TLS.Config()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	unary := opts.UnaryTimeout
	if unary <= 0 {
		unary = defaultUnary
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			if _, ok := ctx.Deadline(); !ok {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, unary)
				defer cancel()
			}
			return invoker(ctx, method, req, reply, cc, o...)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", server, err)
	}
	return conn, nil
}

// Dial connects to the agent and waits until the connection is ready or ctx
// ends, so that an unreachable agent is reported here and not on the first
// call. opts is optional (at most one is used).
func Dial(ctx context.Context, server string, opts ...Options) (*grpc.ClientConn, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	_, sock, err := Target(server)
	if err != nil {
		return nil, err
	}
	unreachable := func(err error) error {
		return fmt.Errorf("cannot reach the flowtrace agent at %s: %w; is the agent running?", server, err)
	}
	if sock != "" {
		fi, err := os.Stat(sock)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, unreachable(errors.New("no such socket"))
		case err != nil:
			return nil, unreachable(err)
		case fi.Mode()&fs.ModeSocket == 0:
			return nil, fmt.Errorf("cannot reach the flowtrace agent at %s: not a socket", server)
		}
	}
	conn, err := NewClient(server, o)
	if err != nil {
		return nil, err
	}
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return conn, nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			conn.Close()
			if sock != "" && os.Geteuid() != 0 {
				if f, err := os.OpenFile(sock, os.O_WRONLY, 0); errors.Is(err, fs.ErrPermission) {
					return nil, fmt.Errorf("cannot reach the flowtrace agent at %s: permission denied (the socket is root-only; run with sudo)", server)
				} else if f != nil {
					f.Close()
				}
			}
			if sock == "" {
				if err := probeTCP(ctx, server, o.TLS); err != nil {
					return nil, err
				}
			} else if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
				// Something accepts connections there: not an agent.
				c.Close()
				return nil, fmt.Errorf("cannot reach the flowtrace agent at %s: something listens there but does not speak the flowtrace API (gRPC over HTTP/2)", server)
			}
			return nil, unreachable(fmt.Errorf("connection %s", strings.ToLower(s.String())))
		}
		if !conn.WaitForStateChange(ctx, s) {
			conn.Close()
			return nil, unreachable(ctx.Err())
		}
	}
}

// probeTCP explains a failed TCP connection: gRPC's connectivity state says
// only "transient failure", while a person needs to know whether nothing
// listens, the certificate is wrong or the server wants TLS.
func probeTCP(ctx context.Context, server string, o TLSOptions) error {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(ctx, "tcp", server)
	if err != nil {
		return fmt.Errorf("cannot reach the flowtrace agent at %s: %w; is the agent listening there (--listen-address)?", server, err)
	}
	defer c.Close()
	if !o.on() {
		return fmt.Errorf("cannot reach the flowtrace agent at %s: the connection failed; a TCP listener requires TLS, try --tls (with --tls-ca-file)", server)
	}
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(server); err == nil {
			cfg.ServerName = host
		}
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(c, cfg)
	_ = tc.SetDeadline(time.Now().Add(3 * time.Second))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake with %s failed: %w", server, err)
	}
	return nil
}
