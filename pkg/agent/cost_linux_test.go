package agent

import (
	"math"
	"testing"
	"time"
)

func TestCostMeterRate(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var m costMeter
	m.begin(cpuSample{at: t0, cpu: 900 * time.Millisecond}) // start-up already spent
	check := func(name string, now cpuSample, rate float64, win time.Duration) {
		t.Helper()
		r, w := m.rate(now)
		if math.Abs(r-rate) > 1e-9 || w != win {
			t.Errorf("%s: rate %v over %v, want %v over %v", name, r, w, rate, win)
		}
	}
	check("no time passed", cpuSample{at: t0, cpu: 900 * time.Millisecond}, 0, 0)
	// 30 s busy at half a CPU, then 90 s idle; a sample every second.
	cpu := 900 * time.Millisecond
	for s := 1; s <= 120; s++ {
		if s <= 30 {
			cpu += 500 * time.Millisecond
		}
		m.add(cpuSample{at: at(s), cpu: cpu})
		if s == 10 {
			check("younger than the window: since the start", cpuSample{at: at(10), cpu: cpu}, 0.5, 10*time.Second)
		}
		if s == 45 {
			check("45 s old: since the start", cpuSample{at: at(45), cpu: cpu}, 15.0/45, 45*time.Second)
		}
		if s == 75 {
			check("a minute whose first 15 s were busy", cpuSample{at: at(75), cpu: cpu}, 15*0.5/60, time.Minute)
		}
	}
	check("a quiet minute after a busy spell", cpuSample{at: at(120), cpu: cpu}, 0, time.Minute)
	// Between ticks: the window is the oldest sample within the minute.
	check("between ticks", cpuSample{at: at(120).Add(400 * time.Millisecond), cpu: cpu + 100*time.Millisecond},
		0.1/59.4, 59*time.Second+400*time.Millisecond)
	// Ticks that stopped (the ring's samples all too old): from the latest.
	check("stalled ticks", cpuSample{at: at(300), cpu: cpu + 18*time.Second}, 0.1, 180*time.Second)
	check("counter went back", cpuSample{at: at(121), cpu: 0}, 0, 0)
}

func TestSelfStatus(t *testing.T) {
	// This process's own, as the agent reads it.
	st, err := selfStatus()
	if err != nil || st.VmRSS == 0 || st.VmHWM < st.VmRSS {
		t.Errorf("/proc/self/status: rss %d bytes, peak %d bytes, %v", st.VmRSS, st.VmHWM, err)
	}
}
