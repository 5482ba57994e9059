//go:build linux

package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowtrace/flowtrace/pkg/netnsutil"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

func testConfig(t *testing.T) Config {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	// "t" + 4 hex: 5 characters, the longest prefix veth names allow.
	return Config{Prefix: "t" + hex.EncodeToString(b), IdentityFile: filepath.Join(t.TempDir(), "identity.json")}
}

// listen starts a TCP listener inside a pod that accepts and closes.
func listen(t *testing.T, l *Lab, pod string, ip netip.Addr, port int) {
	t.Helper()
	var ln net.Listener
	err := l.Do(pod, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", pod, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func dial(l *Lab, from string, to netip.Addr, port int, timeout time.Duration) error {
	return l.Do(from, func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(to.String(), strconv.Itoa(port)), timeout)
		if err == nil {
			c.Close()
		}
		return err
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx := context.Background()
	cfg := testConfig(t)
	t.Cleanup(func() {
		if err := Down(ctx, cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if _, err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// Up again over a running lab: rebuilt, not duplicated or failing.
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}

	var id identityFile
	b, err := os.ReadFile(cfg.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &id); err != nil || len(id.Pods) != 3 || id.Node != NodeName {
		t.Fatalf("identity file: %v %s", err, b)
	}

	be, _ := l.Pod("backend")
	db, _ := l.Pod("db")
	for _, ip := range []netip.Addr{be.IPv4, be.IPv6} {
		listen(t, l, "backend", ip, 8080)
	}
	for _, ip := range []netip.Addr{db.IPv4, db.IPv6} {
		listen(t, l, "db", ip, BlockedPort) // listening: a failure can only be the policy
	}

	for _, fam := range []struct {
		name   string
		be, db netip.Addr
	}{{"ipv4", be.IPv4, db.IPv4}, {"ipv6", be.IPv6, db.IPv6}} {
		t.Run(fam.name, func(t *testing.T) {
			if err := dial(l, "frontend", fam.be, 8080, 3*time.Second); err != nil {
				t.Errorf("frontend -> backend:8080: %v", err)
			}
			if err := dial(l, "frontend", fam.db, BlockedPort, 1500*time.Millisecond); !isTimeout(err) {
				t.Errorf("frontend -> db:%d: err = %v, want a timeout (dropped by policy)", BlockedPort, err)
			}
			if err := dial(l, "frontend", fam.db, 5433, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("frontend -> db:5433: err = %v, want connection refused", err)
			}
			// The policy is about frontend only.
			if err := dial(l, "backend", fam.db, BlockedPort, 3*time.Second); err != nil {
				t.Errorf("backend -> db:%d: %v", BlockedPort, err)
			}
			ping := "ping"
			if fam.be.Is6() {
				ping = "ping6"
			}
			if out, err := l.Exec(ctx, "frontend", ping, "-c", "1", "-W", "2", fam.be.String()); err != nil {
				t.Errorf("ping: %v %s", err, out)
			}
		})
	}

	// The node has no way out: route lookups for outside addresses fail
	// (a lookup only; no packet is sent).
	err = l.Do(l.NodeNetns, func() error {
		for _, dst := range []string{"192.0.2.1", "2001:db8::1"} {
			if rs, err := netlink.RouteGet(net.ParseIP(dst)); err == nil {
				t.Errorf("node netns has a route to %s: %+v", dst, rs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// And the host namespace saw nothing of the lab.
	if _, err := netlink.LinkByName(l.Pods[0].HostVeth); err == nil {
		t.Errorf("host veth %s leaked into the test's namespace", l.Pods[0].HostVeth)
	}

	if err := Down(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for _, ns := range l.namespaces() {
		if _, err := os.Lstat(filepath.Join(netnsutil.RunDir, ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns %s still present after Down (%v)", ns, err)
		}
	}
	if _, err := os.Stat(cfg.IdentityFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("identity file survived Down")
	}
	if err := Down(ctx, cfg); err != nil {
		t.Errorf("Down of an absent lab: %v", err)
	}
}
