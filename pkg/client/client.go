// Package client connects the flowtrace CLI to an agent's flow API.
package client

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
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

// Dial connects to the agent and waits until the connection is ready or ctx
// ends, so that an unreachable agent is reported here and not on the first
// call. TLS is not supported yet: TCP connections are insecure.
func Dial(ctx context.Context, server string) (*grpc.ClientConn, error) {
	target, sock, err := Target(server)
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
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", server, err)
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
			return nil, unreachable(fmt.Errorf("connection %s", strings.ToLower(s.String())))
		}
		if !conn.WaitForStateChange(ctx, s) {
			conn.Close()
			return nil, unreachable(ctx.Err())
		}
	}
}
