package ifwatch

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowtrace/flowtrace/pkg/netnsutil"
	"github.com/flowtrace/flowtrace/pkg/netnsutil/nstest"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

func TestClassify(t *testing.T) {
	attrs := func(name string, flags net.Flags) netlink.LinkAttrs {
		a := netlink.NewLinkAttrs()
		a.Name, a.Flags = name, flags
		return a
	}
	nic := func(name string) bool { return name == "ens5" }
	for _, tc := range []struct {
		link netlink.Link
		want Kind
		ok   bool
	}{
		{&netlink.Veth{LinkAttrs: attrs("lxc1", 0)}, KindVeth, true},
		{&netlink.Device{LinkAttrs: attrs("eth0", 0)}, KindDevice, true},
		{&netlink.Device{LinkAttrs: attrs("lo", net.FlagLoopback)}, "", false},
		{&netlink.Bridge{LinkAttrs: attrs("cni0", 0)}, "", false},
		{&netlink.Vxlan{LinkAttrs: attrs("flannel.1", 0)}, "", false},
		{&netlink.Dummy{LinkAttrs: attrs("dummy0", 0)}, "", false},
		// A NIC whose driver reports a kind is still a NIC: it has a bus device.
		{&netlink.GenericLink{LinkAttrs: attrs("ens5", 0), LinkType: "virtio"}, KindDevice, true},
	} {
		got, ok := classify(tc.link, nic)
		if got != tc.want || ok != tc.ok {
			t.Errorf("classify(%s %s) = %q, %v; want %q, %v", tc.link.Type(), tc.link.Attrs().Name, got, ok, tc.want, tc.ok)
		}
	}
}

// next waits for one link event, failing after d; the one-off Synced
// marker is skipped (TestWatch checks it where it must appear).
func next(t *testing.T, ch <-chan Event, d time.Duration) Event {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev := <-ch:
			if ev.Synced {
				continue
			}
			return ev
		case <-timeout:
			t.Fatalf("no event within %v", d)
			return Event{}
		}
	}
}

func quiet(t *testing.T, ch <-chan Event, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev := <-ch:
			if !ev.Synced {
				t.Fatalf("unexpected event %+v", ev)
			}
		case <-timeout:
			return
		}
	}
}

func TestWatch(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns, peerNs := nstest.NewNetns(t), nstest.NewNetns(t)
	nstest.Veth(t, ns, "pre0", "10.96.0.1/30", peerNs, "eth0", "10.96.0.2/30")

	w, err := New(Config{
		Include:   []string{"pre*", "new*", "ex*"},
		Exclude:   []string{"ex*"},
		NetnsPath: netnsutil.RunDir + "/" + ns,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 16)
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx, events) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	ev := next(t, events, 2*time.Second)
	if !ev.Added || ev.Link.Name != "pre0" || ev.Link.Kind != KindVeth {
		t.Fatalf("first event = %+v, want existing veth pre0 added", ev)
	}
	if ev.Link.PeerNetnsID < 0 || ev.Link.PeerIndex <= 0 {
		t.Errorf("pre0 peer not reported: %+v", ev.Link)
	}
	pre := ev.Link
	select {
	case ev := <-events:
		if !ev.Synced {
			t.Fatalf("after the initial listing got %+v, want the Synced marker", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no Synced marker after the initial listing")
	}
	quiet(t, events, 200*time.Millisecond) // lo, and nothing twice

	// Neither a bridge nor an excluded name may show up; the new veth must,
	// within a second.
	nstest.Run(t, "ip", "-n", ns, "link", "add", "newbr", "type", "bridge")
	start := time.Now()
	nstest.Run(t, "ip", "-n", ns, "link", "add", "new0", "type", "veth", "peer", "name", "ex0")
	ev = next(t, events, time.Second)
	if !ev.Added || ev.Link.Name != "new0" || ev.Link.Kind != KindVeth {
		t.Fatalf("event = %+v, want new0 added", ev)
	}
	if ev.Link.PeerNetnsID != -1 {
		t.Errorf("same-namespace peer reported nsid %d, want -1", ev.Link.PeerNetnsID)
	}
	t.Logf("new veth delivered after %v", time.Since(start))
	// Bringing it up changes flags only: no event.
	nstest.Run(t, "ip", "-n", ns, "link", "set", "new0", "up")
	quiet(t, events, 200*time.Millisecond)

	// Renamed out of the patterns: removed.
	nstest.Run(t, "ip", "-n", ns, "link", "set", "new0", "down")
	nstest.Run(t, "ip", "-n", ns, "link", "set", "new0", "name", "other0")
	ev = next(t, events, time.Second)
	if ev.Added || ev.Link.Name != "new0" {
		t.Fatalf("event = %+v, want new0 removed after rename", ev)
	}

	nstest.Run(t, "ip", "-n", ns, "link", "del", "pre0")
	ev = next(t, events, time.Second)
	if ev.Added || ev.Link != pre {
		t.Fatalf("event = %+v, want pre0 removed", ev)
	}
	quiet(t, events, 200*time.Millisecond)
}

func TestWatchAllKinds(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := nstest.NewNetns(t)
	nstest.Run(t, "ip", "-n", ns, "link", "add", "br9", "type", "bridge")
	nstest.Run(t, "ip", "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
	w, err := New(Config{NetnsPath: netnsutil.RunDir + "/" + ns}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan Event, 16)
	go func() { _ = w.Run(ctx, events) }()
	got := map[string]bool{}
	for range 2 {
		ev := next(t, events, 2*time.Second)
		got[ev.Link.Name] = ev.Added
	}
	if !got["va"] || !got["vb"] {
		t.Errorf("got %v, want va and vb added", got)
	}
	quiet(t, events, 200*time.Millisecond) // no lo, no bridge
}

func TestNewRejectsBadGlob(t *testing.T) {
	if _, err := New(Config{Include: []string{"eth["}}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("New accepted a bad glob")
	}
}
