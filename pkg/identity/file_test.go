package identity

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const good = `{"node": "n1",
 "pods": [{"namespace": "shop", "name": "frontend-1", "labels": {"app": "frontend", "tier": "web"},
           "workload": {"kind": "Deployment", "name": "frontend"},
           "ips": ["10.244.0.10", "fd00:10:244::10"]},
          {"namespace": "shop", "name": "db-0", "node": "n2", "ips": ["10.244.0.30"]}],
 "services": [{"namespace": "shop", "name": "web", "vips": ["10.96.0.10", "fd00:10:96::10"], "ports": [{"name": "http", "port": 80}]}]}`

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func write(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // replace atomically, like editors do
		t.Fatal(err)
	}
}

func TestFileResolves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.json")
	write(t, path, good)
	f, err := NewFile(path, time.Hour, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	p, ok := f.PodByIP(netip.MustParseAddr("10.244.0.10"))
	if !ok || p.Key() != "shop/frontend-1" || p.Node != "n1" || p.Workload.Name != "frontend" {
		t.Fatalf("v4 lookup: %+v %v", p, ok)
	}
	if got := strings.Join(p.LabelList(), ","); got != "app=frontend,tier=web" {
		t.Errorf("labels %q", got)
	}
	if p, ok := f.PodByIP(netip.MustParseAddr("fd00:10:244::10")); !ok || p.Name != "frontend-1" {
		t.Errorf("v6 lookup: %+v %v", p, ok)
	}
	if p, ok := f.PodByIP(netip.MustParseAddr("::ffff:10.244.0.30")); !ok || p.Node != "n2" {
		t.Errorf("v4-mapped lookup: %+v %v", p, ok)
	}
	if _, ok := f.PodByIP(netip.MustParseAddr("10.244.0.99")); ok {
		t.Error("unknown IP resolved")
	}
	if s, ok := f.ServiceByIP(netip.MustParseAddr("10.96.0.10")); !ok || s.Name != "web" || s.Ports[0].Protocol != "TCP" {
		t.Errorf("service: %+v %v", s, ok)
	}
	// Counted once each, however many addresses.
	if ok, detail := f.Synced(); !ok || detail != "2 pods, 1 services" {
		t.Errorf("synced %v %q", ok, detail)
	}
}

func TestFileReloadKeepsGoodContentsOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.json")
	write(t, path, good)
	f, err := NewFile(path, 10*time.Millisecond, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()

	write(t, path, `{"pods": [ broken`)
	waitFor(t, func() bool { _, d := f.Synced(); return strings.Contains(d, "malformed JSON") })
	if _, ok := f.PodByIP(netip.MustParseAddr("10.244.0.10")); !ok {
		t.Fatal("a broken file dropped the previous identities")
	}

	write(t, path, `{"pods": [{"namespace": "shop", "name": "frontend-2", "ips": ["10.244.0.10"]}]}`)
	waitFor(t, func() bool {
		p, ok := f.PodByIP(netip.MustParseAddr("10.244.0.10"))
		return ok && p.Name == "frontend-2"
	})
	if _, ok := f.PodByIP(netip.MustParseAddr("10.244.0.30")); ok {
		t.Error("removed pod still resolves")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFileValidation(t *testing.T) {
	cases := map[string]string{
		`{"pods": [{"name": "x", "ips": ["10.0.0.1"]}]}`:                                                                         "namespace and name are required",
		`{"pods": [{"namespace": "a", "name": "x", "ips": ["10.0.0.300"]}]}`:                                                     "malformed JSON",
		`{"pods": [{"namespace": "a", "name": "x"}]}`:                                                                            "no ips",
		`{"pods": [{"namespace": "a", "name": "x", "ips": ["10.0.0.1"]}, {"namespace": "a", "name": "y", "ips": ["10.0.0.1"]}]}`: "already belongs to a/x",
		`{"pods": [], "extra": 1}`:                                                                                               "unknown field",
	}
	for in, want := range cases {
		_, _, err := parseFile([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseFile(%s) = %v, want error containing %q", in, err, want)
		}
	}
	if _, err := NewFile(filepath.Join(t.TempDir(), "missing.json"), 0, quietLog()); err == nil {
		t.Error("missing file accepted at start")
	}
}

type fakeSource struct {
	Source
	pods map[netip.Addr]*Pod
}

func (f fakeSource) PodByIP(ip netip.Addr) (*Pod, bool) { p, ok := f.pods[ip]; return p, ok }

func TestChainPrecedence(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.1")
	first := fakeSource{pods: map[netip.Addr]*Pod{ip: {Namespace: "a", Name: "first"}}}
	second := fakeSource{pods: map[netip.Addr]*Pod{
		ip:                              {Namespace: "a", Name: "second"},
		netip.MustParseAddr("10.0.0.2"): {Namespace: "a", Name: "only-second"},
	}}
	c := Chain{first, second}
	if p, _ := c.PodByIP(ip); p.Name != "first" {
		t.Errorf("got %s, want the first source to win", p.Name)
	}
	if p, ok := c.PodByIP(netip.MustParseAddr("::ffff:10.0.0.2")); !ok || p.Name != "only-second" {
		t.Errorf("fallthrough failed: %+v", p)
	}
}
