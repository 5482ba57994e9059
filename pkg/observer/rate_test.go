package observer

import (
	"math"
	"sync"
	"testing"
	"time"
)

func TestRateWindow(t *testing.T) {
	sec := int64(1_800_000_000) * 1e9 // a whole unix second, in ns
	var w rateWindow
	if r := w.rate(sec); r != 0 {
		t.Fatalf("rate before any flow = %v, want 0", r)
	}
	// 100 flows at once, then asked 10 ms later: divided by a second, not
	// by 10 ms (10,000/s would be a burst that never was).
	w.add(sec, 100)
	if r := w.rate(sec + 10e6); r != 100 {
		t.Errorf("rate right after the first flows = %v, want 100", r)
	}
	// 10/s for two minutes: the rate is the last minute's.
	for i := int64(1); i <= 120; i++ {
		w.add(sec+i*1e9, 10)
	}
	now := sec + 120*1e9 + 5e8
	if r := w.rate(now); math.Abs(r-600/59.5) > 1e-9 {
		t.Errorf("rate at 10/s = %v, want %v (60 seconds' flows over the 59.5 s since the window's oldest second)", r, 600/59.5)
	}
	// Quiet for 30 s: half the minute had flows.
	if r := w.rate(now + 30e9); math.Abs(r-300/59.5) > 1e-9 {
		t.Errorf("rate after 30 quiet seconds = %v, want %v", r, 300/59.5)
	}
	// Quiet for longer than the window: nothing is left of the old seconds,
	// even where a slot still holds them.
	if r := w.rate(now + 61e9); r != 0 {
		t.Errorf("rate after a quiet minute = %v, want 0", r)
	}
	// A storm replaces the slot of the second 60 s before it.
	w.add(now+62e9, 5000)
	if r := w.rate(now + 62e9); math.Abs(r-5000/59.5) > 1e-9 {
		t.Errorf("rate after a storm = %v, want %v", r, 5000/59.5)
	}
}

// The observer's status reports the rate of what it took: a lifetime
// average would read the same before and after a quiet minute.
func TestStatusFlowsRate(t *testing.T) {
	o := New(Config{MaxFlows: 1000}, nil)
	now := base
	var mu sync.Mutex
	o.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	for i := range 20 {
		publishN(o, i*5, i*5+5)
		advance(time.Second)
	}
	if st := o.Status(); st.SeenFlows != 100 || math.Abs(st.FlowsRate-5) > 1e-9 {
		t.Errorf("after 20 s at 5/s: seen %d, rate %v; want 100, 5", st.SeenFlows, st.FlowsRate)
	}
	advance(2 * time.Minute)
	if st := o.Status(); st.FlowsRate != 0 {
		t.Errorf("after two quiet minutes: rate %v, want 0", st.FlowsRate)
	}
}
