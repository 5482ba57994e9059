package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. Every
// Linux architecture Go supports reports 100.
const clockTicks = 100

// cpuTicks is the machine's CPU time from /proc/stat's first line, in
// clock ticks, all CPUs together.
type cpuTicks struct{ busy, total uint64 }

// machineCPU reads cpuTicks now. Busy is user, nice, system, irq and
// softirq: a tracer's process and its BPF programs (which run in the
// sending thread or in softirq) alike. Idle, iowait and steal (the
// hypervisor running someone else) are not.
func machineCPU() (cpuTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTicks{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseCPUTicks(line)
}

// parseCPUTicks reads /proc/stat's "cpu" line (machineCPU).
func parseCPUTicks(line string) (cpuTicks, error) {
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTicks{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var t cpuTicks
	for i, s := range f[1:9] { // user nice system idle iowait irq softirq steal
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTicks{}, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		t.total += v
		if i != 3 && i != 4 && i != 7 {
			t.busy += v
		}
	}
	return t, nil
}

// busySince is the share of the machine's CPU time (0..1) that was busy
// between then and t.
func (t cpuTicks) busySince(then cpuTicks) float64 {
	if t.total <= then.total {
		return 0
	}
	return float64(t.busy-then.busy) / float64(t.total-then.total)
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
