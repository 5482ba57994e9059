package client

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTarget(t *testing.T) {
	tests := []struct{ in, target, sock string }{
		{"/var/run/flowtrace/flowtrace.sock", "unix:///var/run/flowtrace/flowtrace.sock", "/var/run/flowtrace/flowtrace.sock"},
		{"unix:///run/ft.sock", "unix:///run/ft.sock", "/run/ft.sock"},
		{"localhost:4245", "passthrough:///localhost:4245", ""},
		{"[::1]:4245", "passthrough:///[::1]:4245", ""},
	}
	for _, tt := range tests {
		target, sock, err := Target(tt.in)
		if err != nil || target != tt.target || sock != tt.sock {
			t.Errorf("Target(%q) = %q, %q, %v; want %q, %q", tt.in, target, sock, err, tt.target, tt.sock)
		}
	}
	if _, _, err := Target("unix://relative.sock"); err == nil {
		t.Error("unix://relative accepted")
	}
}

func TestDialMissingSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nope.sock")
	_, err := Dial(context.Background(), sock)
	if err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
	want := "cannot reach the flowtrace agent at " + sock + ": no such socket; is the agent running?"
	if err.Error() != want {
		t.Errorf("err = %q\nwant  %q", err, want)
	}
}

// TestDialNotAnAgent: a socket something listens on without speaking
// gRPC is named as such, not as an agent that is not running.
func TestDialNotAnAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "other.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("220 not grpc\r\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = Dial(ctx, sock)
	if err == nil || !strings.Contains(err.Error(), "something listens there but does not speak the flowtrace API") {
		t.Fatalf("err = %v", err)
	}
}

func TestDialDeadSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dead.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = Dial(ctx, sock)
	if err == nil || !strings.Contains(err.Error(), "is the agent running?") {
		t.Fatalf("err = %v", err)
	}
}
