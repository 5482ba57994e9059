package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server"
	"github.com/flowtrace/flowtrace/pkg/server/servertest"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func serveObserver(t *testing.T, name string, flows ...*flowtracev1.Flow) string {
	t.Helper()
	obs := observer.New(observer.Config{MaxFlows: 100, NodeName: name}, nil)
	for _, f := range flows {
		obs.Publish(f)
	}
	sock := filepath.Join(t.TempDir(), name+".sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.New(obs, nil, nil).Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

func runCLI(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := NewRootCmd("test")
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestRelayCommand(t *testing.T) {
	mk := func(node, id string, sec int) *flowtracev1.Flow {
		return &flowtracev1.Flow{Uuid: id, NodeName: node, Time: timestamppb.New(now.Add(time.Duration(sec) * time.Second)),
			Verdict: flowtracev1.Verdict_VERDICT_DROPPED, Ip: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.0.2"}}
	}
	a := serveObserver(t, "node-a", mk("node-a", "a1", 1), mk("node-a", "a3", 3))
	b := serveObserver(t, "node-b", mk("node-b", "b2", 2), mk("node-b", "b4", 4))
	relaySock := filepath.Join(t.TempDir(), "relay.sock")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := runCLI(ctx, "relay", "--peer", a, "--peer", "unix://"+b, "--socket", relaySock, "--log-level", "error")
		done <- err
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(relaySock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("relay socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}

	out, err := runCLI(context.Background(), "--server", relaySock, "observe", "--last", "3", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], `"uuid":"b2"`) || !strings.Contains(lines[1], `"uuid":"a3"`) || !strings.Contains(lines[2], `"uuid":"b4"`) {
		t.Errorf("observe --last 3 through the relay:\n%s", out)
	}
	out, err = runCLI(context.Background(), "--server", relaySock, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"relay", "4/200 held", "peer node-a", "peer node-b", "relay_peers_connected    2", "relay_peers_unavailable  0"} {
		if !strings.Contains(out, want) {
			t.Errorf("relay status lacks %q:\n%s", want, out)
		}
	}
}

func TestRelayUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"relay"}, "no peers"},
		{[]string{"relay", "--peer", "unix://relative"}, "absolute path"},
		{[]string{"relay", "--peer", "/x.sock", "--sort-window", "1ns"}, "--sort-window"},
		{[]string{"relay", "--peer", "/x.sock", "--listen-address", "0.0.0.0:4245"}, "needs TLS"},
		{[]string{"relay", "--peer", "/x.sock", "--listen-address", "0.0.0.0:4245", "--insecure-listen"}, "loopback address only"},
		{[]string{"relay", "--peer", "/x.sock", "--tls-cert-file", "c.pem"}, "need --listen-address"},
		{[]string{"relay", "--peer", "/x.sock", "--peer-tls-cert-file", "c.pem"}, "go together"},
		{[]string{"agent", "--listen-address", "0.0.0.0:4245"}, "needs TLS"},
		{[]string{"agent", "--insecure-listen"}, "need --listen-address"},
		{[]string{"agent", "--metrics-top-namespaces", "0"}, "--metrics-top-namespaces"},
		{[]string{"status", "--tls-cert-file", "c.pem"}, "go together"},
	}
	for _, tt := range tests {
		_, err := runCLI(context.Background(), tt.args...)
		var u *UsageError
		if err == nil || !errors.As(err, &u) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want a usage error containing %q", tt.args, err, tt.want)
		}
	}
}

// status over TCP: TLS with the global flags, mTLS, and a clear error
// without them.
func TestStatusOverTLS(t *testing.T) {
	pki := servertest.NewPKI(t)
	cfg, err := server.ServerTLSConfig(server.TLSFiles{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := server.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	obs := observer.New(observer.Config{MaxFlows: 10, NodeName: "tls-node"}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.New(obs, nil, nil).ServeTLS(ctx, lis, cfg) }()
	defer func() { cancel(); <-done }()
	addr := lis.Addr().String()

	out, err := runCLI(context.Background(), "--server", addr, "--tls-ca-file", pki.CAFile,
		"--tls-cert-file", pki.ClientCert, "--tls-key-file", pki.ClientKey, "status")
	if err != nil || !strings.Contains(out, "tls-node") {
		t.Fatalf("status over mTLS: %v\n%s", err, out)
	}
	if _, err := runCLI(context.Background(), "--server", addr, "status"); err == nil || !strings.Contains(err.Error(), "requires TLS") {
		t.Errorf("status without --tls: %v", err)
	}
	if _, err := runCLI(context.Background(), "--server", addr, "--tls-ca-file", pki.OtherCAFile, "status"); err == nil || !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("status with the wrong CA: %v", err)
	}
}
