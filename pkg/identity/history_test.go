package identity

import (
	"net/netip"
	"testing"
	"time"
)

type testClock struct{ t time.Time }

func (c *testClock) now() time.Time { return c.t }

func TestHistoryEventTime(t *testing.T) {
	clk := &testClock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	h := NewHistory(2*time.Minute, clk.now)
	ip := netip.MustParseAddr("10.0.0.1")
	a, b := &Pod{Namespace: "x", Name: "a"}, &Pod{Namespace: "x", Name: "b"}
	t0 := clk.t

	h.Set("uid-a", a, []netip.Addr{ip}, t0.Add(-time.Hour))
	if p, ok := h.At(ip, time.Time{}); !ok || p != a {
		t.Fatal("current holder not found")
	}
	if _, ok := h.At(ip, t0.Add(-2*time.Hour)); ok {
		t.Error("event before the pod existed was named")
	}

	clk.t = t0.Add(10 * time.Second)
	h.Release("uid-a", time.Time{})
	deleted := clk.t
	clk.t = deleted.Add(time.Minute)
	if p, ok := h.At(ip, time.Time{}); !ok || p != a {
		t.Error("deleted pod forgotten within grace")
	}
	// b was created before a went away; its span still starts at a's end.
	clk.t = deleted.Add(70 * time.Second)
	h.Set("uid-b", b, []netip.Addr{ip}, deleted.Add(-5*time.Second))
	if p, _ := h.At(ip, time.Time{}); p != b {
		t.Error("newer pod does not take the IP")
	}
	if p, _ := h.At(ip, deleted.Add(-time.Second)); p != a {
		t.Error("event before a's deletion not named a")
	}
	if p, _ := h.At(ip, deleted.Add(time.Second)); p != b {
		t.Error("event after a's deletion not named b")
	}

	// An updated pod keeps its start; a dropped IP is released.
	ip2 := netip.MustParseAddr("fd00::2")
	h.Set("uid-b", b, []netip.Addr{ip, ip2}, time.Time{})
	clk.t = clk.t.Add(time.Second)
	h.Set("uid-b", b, []netip.Addr{ip2}, time.Time{})
	if p, _ := h.At(ip, time.Time{}); p != b {
		t.Error("released IP forgotten before grace")
	}
	clk.t = clk.t.Add(3 * time.Minute)
	if _, ok := h.At(ip, time.Time{}); ok {
		t.Error("released IP still named after grace")
	}
	if p, _ := h.At(ip2, time.Time{}); p != b {
		t.Error("kept IP lost")
	}
	h.Prune()
	if len(h.byIP) != 1 {
		t.Errorf("prune kept %d IPs, want 1", len(h.byIP))
	}
	if h.Current() != 1 {
		t.Errorf("Current() = %d", h.Current())
	}
}

func TestHistoryBounded(t *testing.T) {
	h := NewHistory(time.Hour, nil)
	ip := netip.MustParseAddr("10.0.0.9")
	for i := range 50 {
		id := string(rune('a' + i%26))
		h.Set(id+"x", &Pod{Namespace: "x", Name: id}, []netip.Addr{ip}, time.Time{})
		h.Release(id+"x", time.Time{})
	}
	if n := len(h.byIP[ip]); n > maxSpans {
		t.Errorf("%d spans kept for one IP, want <= %d", n, maxSpans)
	}
}
