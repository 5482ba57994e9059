package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. Every
// Linux architecture Go supports reports 100.
const clockTicks = 100

// cpuTicks is what /proc/stat says of the machine's CPUs at one moment:
// their idle time in clock ticks (all CPUs together), how many there are,
// and when it was read.
type cpuTicks struct {
	idle uint64
	cpus int
	at   time.Time
}

// machineCPU reads cpuTicks now. Idle is idle, iowait and steal (the
// hypervisor running someone else); busy is the rest of the wall-clock
// time of all CPUs: user, system, irq and softirq alike, a tracer's
// process and its BPF programs (which run in the sending thread or in
// softirq).
//
// Busy comes from the idle time, not from /proc/stat's busy fields: with
// tick-based accounting (this kernel: CONFIG_TICK_CPU_ACCOUNTING, HZ 250)
// user and system are charged a whole tick to whatever runs when the tick
// fires, while a tickless idle CPU's idle time is measured exactly. The
// paced churn is bursty (each dialer runs a millisecond ahead, then
// sleeps), and the sampled busy ticks of one 5 s run ranged 29.6-34.7%
// over five rounds with no tracer, the wall-clock figure 34.2-36.1%; the
// counting floor's cost read 2.2% [-1.9-5.5] from the ticks, 0.6%
// [0.5-2.3] this way (its BPF stats: 0.45%); flowtrace's 10.0% [4.7-12.4]
// and 10.9% [8.2-13.1].
func machineCPU() (cpuTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTicks{}, err
	}
	return parseCPUTicks(string(b), time.Now())
}

// parseCPUTicks reads /proc/stat's text (machineCPU), read at at.
func parseCPUTicks(stat string, at time.Time) (cpuTicks, error) {
	line, rest, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTicks{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	t := cpuTicks{at: at}
	for i, s := range f[1:9] { // user nice system idle iowait irq softirq steal
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTicks{}, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		if i == 3 || i == 4 || i == 7 {
			t.idle += v
		}
	}
	// The first line sums the online CPUs, each of which has a line.
	for _, l := range strings.Split(rest, "\n") {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			t.cpus++
		}
	}
	if t.cpus == 0 {
		return cpuTicks{}, fmt.Errorf("/proc/stat: no per-CPU lines after %q", line)
	}
	return t, nil
}

// busySince is the share of the machine's CPU time (0..1) that was busy
// between then and t: all CPUs' wall-clock time less their idle time.
func (t cpuTicks) busySince(then cpuTicks) float64 {
	all := t.at.Sub(then.at).Seconds() * clockTicks * float64(t.cpus)
	if all <= 0 || t.idle < then.idle {
		return 0
	}
	return max(0, 1-float64(t.idle-then.idle)/all)
}

// cpuSeconds returns the user+system CPU time of pid and its reaped children.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces: fields count from after ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
	if len(f) < 15 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	var total float64
	for _, k := range []int{11, 12, 13, 14} {
		v, err := strconv.ParseFloat(f[k], 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat field %d: %w", pid, k+3, err)
		}
		total += v
	}
	return total / clockTicks, nil
}

// peakRSSMB returns VmHWM of pid in MiB.
func peakRSSMB(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM of pid %d: %w", pid, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", pid)
}

// progIDs lists the BPF programs pid holds open, from the prog_id lines
// of its fdinfo: the tracer's own programs, whatever else runs on the
// machine (other engineers' tests load programs of the same names).
func progIDs(pid int) ([]ebpf.ProgramID, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list fds of pid %d: %w", pid, err)
	}
	seen := map[ebpf.ProgramID]bool{}
	var ids []ebpf.ProgramID
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // the fd closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "prog_id:"); ok {
				v, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 32)
				if err == nil && !seen[ebpf.ProgramID(v)] {
					seen[ebpf.ProgramID(v)] = true
					ids = append(ids, ebpf.ProgramID(v))
				}
			}
		}
	}
	return ids, nil
}

// progKind groups programs by hook: "tc" or "drop" (kfree_skb).
func progKind(t ebpf.ProgramType) string {
	switch t {
	case ebpf.SchedCLS, ebpf.SchedACT:
		return "tc"
	case ebpf.Tracing, ebpf.RawTracepoint, ebpf.TracePoint:
		return "drop"
	}
	return ""
}

// progRun is cumulative BPF stats of one hook kind.
type progRun struct {
	ns  uint64
	cnt uint64
}

// progSet is a tracer's programs, read by id so the bench needs no handle
// from the tracer process.
type progSet struct {
	progs map[string][]*ebpf.Program
	names []string
}

func openPrograms(ids []ebpf.ProgramID) (*progSet, error) {
	ps := &progSet{progs: map[string][]*ebpf.Program{}}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		k := progKind(p.Type())
		if k == "" {
			p.Close()
			continue
		}
		info, err := p.Info()
		if err == nil {
			ps.names = append(ps.names, k+":"+info.Name)
		}
		ps.progs[k] = append(ps.progs[k], p)
	}
	return ps, nil
}

func ownedPrograms(progs map[string][]*ebpf.Program) *progSet {
	ps := &progSet{progs: map[string][]*ebpf.Program{}}
	for k, list := range progs {
		for _, p := range list {
			c, err := p.Clone()
			if err == nil {
				ps.progs[k] = append(ps.progs[k], c)
			}
		}
	}
	return ps
}

// snapshot sums run time and count per hook kind.
func (ps *progSet) snapshot() map[string]progRun {
	out := map[string]progRun{}
	if ps == nil {
		return out
	}
	for k, list := range ps.progs {
		var r progRun
		for _, p := range list {
			st, err := p.Stats()
			if err != nil {
				continue
			}
			r.ns += uint64(st.Runtime.Nanoseconds())
			r.cnt += st.RunCount
		}
		out[k] = r
	}
	return out
}

func (ps *progSet) Close() {
	if ps == nil {
		return
	}
	for _, list := range ps.progs {
		for _, p := range list {
			p.Close()
		}
	}
}

// nsPer returns the kernel ns per run of kind between two snapshots, and
// the number of runs.
func nsPer(before, after map[string]progRun, kind string) (float64, uint64) {
	a, b := after[kind], before[kind]
	if a.cnt <= b.cnt {
		return 0, 0
	}
	return float64(a.ns-b.ns) / float64(a.cnt-b.cnt), a.cnt - b.cnt
}
