package agent

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// costWindow is how far back the status's CPU rate looks: the last minute,
// as its flows_rate, so a busy spell shows while it lasts and a quiet hour
// does not average it away.
const costWindow = time.Minute

// cpuSample is the process's CPU time at a moment.
type cpuSample struct {
	at  time.Time
	cpu time.Duration
}

// costMeter keeps a minute of the agent's CPU time, one sample a second,
// taken on the loss report's tick so it adds no wake-up of its own.
type costMeter struct {
	// warned: a part of the cost was found unavailable and said so at
	// warning level; later failures (a status each scrape) go to debug.
	warned atomic.Bool

	mu    sync.Mutex
	start cpuSample // when Run began
	ring  [int(costWindow/time.Second) + 1]cpuSample
	n     int // samples taken; the latest is ring[(n-1)%len(ring)]
}

// begin records the sample the rate falls back to in the first minute.
func (m *costMeter) begin(s cpuSample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.start, m.n = s, 0
}

func (m *costMeter) add(s cpuSample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ring[m.n%len(m.ring)] = s
	m.n++
}

// rate returns CPU seconds per second from the oldest sample at most
// costWindow before now (the start while the agent is younger than that) to
// now, and the window it covers. Without such a sample (the ticks stalled)
// it is from the latest one. A clock or counter that went back gives zero
// over a zero window.
func (m *costMeter) rate(now cpuSample) (float64, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	from := m.start
	if now.at.Sub(from.at) > costWindow {
		for i := max(m.n-len(m.ring), 0); i < m.n; i++ {
			from = m.ring[i%len(m.ring)]
			if now.at.Sub(from.at) <= costWindow {
				break
			}
		}
	}
	win := now.at.Sub(from.at)
	if win <= 0 || now.cpu < from.cpu {
		return 0, 0
	}
	return float64(now.cpu-from.cpu) / float64(win), win
}

// processCPU is the process's CPU time: every thread's, user and system.
func processCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// sampleCPU is processCPU now; not ok when the kernel refuses, which the
// tick skips and a status logs (getrusage on itself does not fail in
// practice).
func sampleCPU() (cpuSample, bool) {
	at := time.Now()
	cpu, err := processCPU()
	return cpuSample{at: at, cpu: cpu}, err == nil
}

// selfStatus is this process's /proc status (VmRSS, VmHWM in bytes).
func selfStatus() (procfs.ProcStatus, error) {
	p, err := procfs.Self()
	if err != nil {
		return procfs.ProcStatus{}, fmt.Errorf("/proc/self: %w", err)
	}
	return p.NewStatus()
}

// cost is the status's AgentCost: what this process takes, and what its
// programs take in the kernel. A part the kernel does not answer is left
// out (and logged), not reported as zero.
func (a *Agent) cost() *flowtracev1.AgentCost {
	c := &flowtracev1.AgentCost{}
	if now, ok := sampleCPU(); ok {
		c.CpuTime = durationpb.New(now.cpu)
		r, win := a.costs.rate(now)
		c.CpuRate, c.CpuWindow = r, durationpb.New(win)
	} else {
		a.costUnavailable("agent CPU time unavailable", nil)
	}
	// procfs: the parser the process collector of --metrics-address uses.
	if st, err := selfStatus(); err != nil {
		a.costUnavailable("agent memory unavailable", err)
	} else {
		c.RssBytes, c.PeakRssBytes = st.VmRSS, st.VmHWM
	}
	progs, err := a.dp.ProgramCosts()
	if err != nil {
		a.costUnavailable("BPF program statistics unavailable", err)
	}
	for _, p := range progs {
		c.Programs = append(c.Programs, &flowtracev1.ProgramCost{Name: p.Name, RunCount: p.Runs, RunTime: durationpb.New(p.RunTime)})
	}
	return c
}

// costUnavailable logs a part of the cost the kernel did not give: at
// warning level the first time, then at debug level, as every status and
// metrics scrape would repeat it.
func (a *Agent) costUnavailable(msg string, err error) {
	if a.costs.warned.CompareAndSwap(false, true) {
		a.log.Warn(msg+" (repeats are logged at debug level)", "error", err)
		return
	}
	a.log.Debug(msg, "error", err)
}
