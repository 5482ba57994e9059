//go:build linux

package datapath

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
)

// blastUDPIn sends n datagrams from one unconnected socket inside the named
// netns, round-robin over ports on 127.0.0.1 (closed: each is a NO_SOCKET
// drop). Unconnected, so ICMP port unreachable never fails a send.
func blastUDPIn(t *testing.T, name string, n int, ports ...int) {
	t.Helper()
	udpSenderIn(t, name)(n, ports...)
}

// udpSenderIn opens blastUDPIn's socket, closed at the end of the test, and
// returns its send: bursts from one socket share a source port, so their
// drops are one signature.
func udpSenderIn(t *testing.T, name string) func(n int, ports ...int) {
	t.Helper()
	return udpSenderTo(t, name, [4]byte{127, 0, 0, 1})
}

// udpSenderTo is udpSenderIn's sender, to addr.
func udpSenderTo(t *testing.T, name string, addr [4]byte) func(n int, ports ...int) {
	t.Helper()
	var fd int
	var err error
	inNetns(t, name, func() { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	msg := []byte("storm")
	return func(n int, ports ...int) {
		t.Helper()
		for i := 0; i < n; i++ {
			to := &unix.SockaddrInet4{Port: ports[i%len(ports)], Addr: addr}
			if err := unix.Sendto(fd, msg, 0, to); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
	}
}

// udpNoPorts reads Udp NoPorts from /proc/net/snmp inside the named netns:
// the kernel's own count of datagrams to a closed port.
func udpNoPorts(t *testing.T, name string) uint64 {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", name, "cat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatalf("read snmp in %s: %v", name, err)
	}
	var hdr []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if hdr == nil {
			hdr = f
			continue
		}
		for i := range hdr {
			if hdr[i] == "NoPorts" && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatalf("no Udp NoPorts in %s", out)
	return 0
}

// follower runs d.Run like an agent does and keeps the drop events of one
// netns with their arrival time.
type follower struct {
	mu      sync.Mutex
	netns   uint32
	evs     []decode.Event
	arrived []time.Time
}

// followDrops loads a datapath with cfg, makes a test netns whose drops it
// reports, and follows them.
func followDrops(t *testing.T, cfg Config) (*Datapath, string, uint32, *follower) {
	t.Helper()
	d := load(t, cfg)
	name, ino := testNetns(t)
	if err := d.AllowNetns(ino); err != nil {
		t.Fatal(err)
	}
	return d, name, ino, follow(t, d, ino)
}

func follow(t *testing.T, d *Datapath, ino uint32) *follower {
	t.Helper()
	f := &follower{netns: ino}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- d.Run(ctx, func(ev *decode.Event) {
			if ev.Kind != decode.KindDrop || ev.Netns != ino || ev.Proto != 17 {
				return
			}
			f.mu.Lock()
			f.evs = append(f.evs, *ev)
			f.arrived = append(f.arrived, time.Now())
			f.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return f
}

// counts sums the counts per destination port.
func (f *follower) counts() (map[uint16]uint64, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[uint16]uint64{}
	for _, ev := range f.evs {
		m[ev.DstPort] += uint64(ev.Count)
	}
	return m, len(f.evs)
}

// waitCounts waits until the per-port sums reach want (or a deadline), then
// a little longer so an overcount would show.
func (f *follower) waitCounts(t *testing.T, want map[uint16]uint64) (map[uint16]uint64, int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		got, _ := f.counts()
		ok := true
		for p, n := range want {
			ok = ok && got[p] >= n
		}
		if ok {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return f.counts()
}

func TestDropFoldStatIndex(t *testing.T) {
	if statNames[foldedStat] != "drops_folded" {
		t.Fatalf("statNames[%d] = %q", foldedStat, statNames[foldedStat])
	}
}

// TestDropFoldStorm: 20,000 identical drops as fast as one socket can send
// become far fewer events whose counts add up exactly to what the kernel
// counted (Udp NoPorts) and to what the BPF side saw.
func TestDropFoldStorm(t *testing.T) {
	d, name, _, f := followDrops(t, Config{})
	stop, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable bpf stats: %v", err)
	}
	defer stop.Close()
	const n = 20000
	noPorts0 := udpNoPorts(t, name)
	st0 := stats(t, d)
	ps0, err := d.DropProgram().Stats()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	blastUDPIn(t, name, n, 7)
	sendTime := time.Since(start)
	got, events := f.waitCounts(t, map[uint16]uint64{7: n})
	ps1, err := d.DropProgram().Stats()
	if err != nil {
		t.Fatal(err)
	}
	st1 := stats(t, d)
	noPorts := udpNoPorts(t, name) - noPorts0
	lost, _, err := d.Lost()
	if err != nil {
		t.Fatal(err)
	}
	runs := ps1.RunCount - ps0.RunCount
	t.Logf("storm: %d datagrams in %v, NoPorts +%d, %d events, count sum %d, drops_folded +%d, drop_events +%d, "+
		"fold_reported %d, fold_lost %d, ring lost %d; drop hook %d runs, %v per run",
		n, sendTime, noPorts, events, got[7], st1["drops_folded"]-st0["drops_folded"],
		st1["drop_events"]-st0["drop_events"], st1["drops_fold_reported"], st1["drops_fold_lost"], lost,
		runs, (ps1.Runtime-ps0.Runtime)/time.Duration(max(runs, 1)))
	if noPorts != n {
		t.Fatalf("kernel counted %d closed-port datagrams, sent %d", noPorts, n)
	}
	if got[7] != n {
		t.Fatalf("drop counts add up to %d, want %d", got[7], n)
	}
	if events > n/20 {
		t.Fatalf("%d events for %d identical drops: not folded", events, n)
	}
	if lost != 0 || st1["drops_fold_lost"] != 0 {
		t.Fatalf("lost: ring %d, fold %d", lost, st1["drops_fold_lost"])
	}
	// Every in-scope drop of this netns is a NO_SOCKET drop to port 7, so
	// what the BPF side emitted plus what it folded is the storm.
	if emitted, folded := st1["drop_events"]-st0["drop_events"], st1["drops_folded"]-st0["drops_folded"]; emitted+folded != n {
		t.Fatalf("drop_events %d + drops_folded %d != %d (drop_hook_missed +%d)", emitted, folded, n,
			st1["drop_hook_missed"]-st0["drop_hook_missed"])
	}
	// A drop the kernel ran no hook for would be counted here.
	if _, ok := st1["drop_hook_missed"]; !ok {
		t.Fatal("Stats has no drop_hook_missed")
	}
	// The fold walk decides whether anything folded since the last walk
	// from this total: it must see every counter drops_folded sums.
	if total, err := d.foldedTotal(); err != nil || total != st1["drops_folded"] || total == 0 {
		t.Fatalf("foldedTotal %d (%v), drops_folded %d", total, err, st1["drops_folded"])
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	multi := 0
	for _, ev := range f.evs {
		if ev.Count == 0 || ev.FirstNs > ev.LastNs || ev.DstPort != 7 || ev.Src != a("127.0.0.1") || ev.Ifindex != 1 {
			t.Fatalf("bad folded event %+v", ev)
		}
		// A report of several drops says when the last one was (a
		// flow's last_time), no earlier than its time; one drop has none.
		switch {
		case ev.Count == 1 && !ev.LastTime.IsZero():
			t.Fatalf("a one-drop report has a last time: %+v", ev)
		case ev.Count > 1 && (ev.LastTime.IsZero() || ev.LastTime.Before(ev.Time)):
			t.Fatalf("a %d-drop report's last time %v, time %v", ev.Count, ev.LastTime, ev.Time)
		case ev.Count > 1:
			multi++
		}
	}
	if multi == 0 {
		t.Fatal("no report folded several drops")
	}
}

// TestDropFoldLone: a single drop (first of its signature) reaches a
// follower within 100 ms, and so does the next one after the window.
func TestDropFoldLone(t *testing.T) {
	_, name, _, f := followDrops(t, Config{DropFoldWindow: 100 * time.Millisecond})
	for i := 0; i < 3; i++ {
		sent := time.Now()
		blastUDPIn(t, name, 1, 8)
		var lat time.Duration
		for time.Since(sent) < time.Second {
			f.mu.Lock()
			if len(f.evs) > i {
				lat = f.arrived[i].Sub(sent)
				if f.evs[i].Count != 1 {
					t.Errorf("lone drop count %d", f.evs[i].Count)
				}
			}
			f.mu.Unlock()
			if lat != 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("drop %d visible after %v", i, lat)
		if lat == 0 || lat > 100*time.Millisecond {
			t.Fatalf("drop %d: latency %v", i, lat)
		}
		time.Sleep(150 * time.Millisecond) // past the window: not folded
	}
}

// TestDropFoldFirstAfterPause: drops that resume after a pause within the
// window are reported as starting after the pause, not dated back to the
// drop before it: a client retrying every few hundred ms must not look like
// one drop lasting the whole time, and the report's age (what the storm
// bench's latency measures) is not that of the pause.
func TestDropFoldFirstAfterPause(t *testing.T) {
	_, name, _, f := followDrops(t, Config{DropFoldWindow: 5 * time.Second})
	// One CPU, so both bursts fold into the same per-CPU slot: the case
	// where the previous report's last drop was the only bound.
	pinCPU(t, -1)
	const n, pause = 200, 600 * time.Millisecond
	send := udpSenderIn(t, name)
	send(n, 9)
	time.Sleep(pause) // ~12 walks read the slot meanwhile
	resumed := uint64(bootNs())
	send(n, 9)
	sent := uint64(bootNs())
	got, _ := f.waitCounts(t, map[uint16]uint64{9: 2 * n})
	if got[9] != 2*n {
		t.Fatalf("drop counts add up to %d, want %d", got[9], 2*n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var second uint64
	for _, ev := range f.evs {
		// Reports of the first burst end a whole pause before resumed.
		if ev.LastNs+uint64(pause/2) < resumed {
			continue
		}
		second += uint64(ev.Count)
		t.Logf("report of %d drops: first %v after the resume, last %v", ev.Count,
			time.Duration(int64(ev.FirstNs-resumed)), time.Duration(int64(ev.LastNs-resumed)))
		if ev.Count == 1 && ev.FirstNs == ev.LastNs && ev.FirstNs >= resumed {
			continue // an emitted drop is dated exactly
		}
		// Walks are foldReportEvery apart; allow several, and the clock slack.
		if ev.FirstNs+uint64(200*time.Millisecond) < resumed {
			t.Errorf("report after the pause dated %v before it", time.Duration(resumed-ev.FirstNs))
		}
		if ev.FirstNs > sent || ev.FirstNs > ev.LastNs {
			t.Errorf("first drop %d after the burst ended (%d) or after the last (%d)", ev.FirstNs, sent, ev.LastNs)
		}
	}
	if second != n {
		t.Errorf("reports after the pause carry %d drops, want %d", second, n)
	}
}

// TestDropFoldSignatures: interleaved drops to two ports fold per port, never
// into each other.
func TestDropFoldSignatures(t *testing.T) {
	_, name, _, f := followDrops(t, Config{})
	const n = 3000
	blastUDPIn(t, name, 2*n, 11, 12)
	got, events := f.waitCounts(t, map[uint16]uint64{11: n, 12: n})
	t.Logf("%d events: %v", events, got)
	if got[11] != n || got[12] != n || len(got) != 2 {
		t.Fatalf("per-port counts %v, want %d each", got, n)
	}
	if events > n/5 {
		t.Fatalf("%d events for 2x%d drops: not folded", events, n)
	}
}

// lonePorts: n ports from 20000 on, each expected to drop once.
func lonePorts(n int) ([]int, map[uint16]uint64) {
	ports := make([]int, n)
	want := make(map[uint16]uint64, n)
	for i := range ports {
		ports[i] = 20000 + i
		want[uint16(ports[i])] = 1
	}
	return ports, want
}

// TestDropFoldSpent: drops that are each the only one of their signature
// (a closed port hit once per connection, as under connection churn) are
// reported once each, leave no fold slot behind, and a
// signature that comes back afterwards is reported again, exactly.
func TestDropFoldSpent(t *testing.T) {
	const window = 100 * time.Millisecond
	d, name, ino, f := followDrops(t, Config{DropFoldWindow: window})
	const n = 400
	ports, want := lonePorts(n)
	blastUDPIn(t, name, n, ports...)
	got, events := f.waitCounts(t, want)
	if events != n || len(got) != n {
		t.Fatalf("%d events over %d ports for %d lone drops", events, len(got), n)
	}
	// A lone drop makes no fold slot (ft_drop_recent remembers it); wait
	// a little in case one was made and is reclaimed by a walk.
	left := -1
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		left = 0
		var k ftFtDropKey
		var v []ftFtDropFold
		it := d.objs.FtDropFolds.Iterate()
		for it.Next(&k, &v) {
			if k.Netns == ino && k.Tuple.Proto == 17 && k.Tuple.Dport >= 20000 && k.Tuple.Dport < 20000+n {
				left++
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
	}
	if left != 0 {
		t.Fatalf("%d spent fold slots still in the table", left)
	}
	// The same signatures again, three drops each: folded as new ones.
	for i := range ports {
		want[uint16(ports[i])] = 4
	}
	blastUDPIn(t, name, 3*n, ports...)
	got, _ = f.waitCounts(t, want)
	for p, w := range want {
		if got[p] != w {
			t.Fatalf("port %d: %d drops reported, want %d", p, got[p], w)
		}
	}
	if st := stats(t, d); st["drops_fold_lost"] != 0 {
		t.Fatalf("drops_fold_lost %d", st["drops_fold_lost"])
	}
}

// TestDropFoldScanState: a scan (thousands of signatures that each drop
// once) makes no fold slot in the kernel (ft_drop_recent remembers it) and
// leaves no per-signature state in user space, while a storm's folded
// drops beside it are still counted exactly; slots with nothing to report
// cost FlushDrops no allocation per signature, and idle ones are deleted.
func TestDropFoldScanState(t *testing.T) {
	d, name, ino, f := followDrops(t, Config{})
	const scan, storm = 4000, 3000
	ports, want := lonePorts(scan)
	blastUDPIn(t, name, scan, ports...)
	blastUDPIn(t, name, storm, 9)
	want[9] = storm
	got, events := f.waitCounts(t, want)
	for p, n := range want {
		if got[p] != n {
			t.Fatalf("port %d: count %d, want %d (%d events)", p, got[p], n, events)
		}
	}
	var inMap int
	var k ftFtDropKey
	var v []ftFtDropFold
	for it := d.objs.FtDropFolds.Iterate(); it.Next(&k, &v); {
		inMap++
	}
	d.folds.mu.Lock()
	held := len(d.folds.seen)
	d.folds.mu.Unlock()
	t.Logf("%d signatures in the kernel's fold map, %d in user space", inMap, held)
	if inMap > 1 {
		t.Fatalf("fold map holds %d signatures, want only the storm's", inMap)
	}
	if held > 1 {
		t.Fatalf("user space keeps %d signatures, want at most the storm's one", held)
	}
	// Slots with nothing folded, as the kernel leaves on a CPU that only
	// emitted: user space must not keep or allocate anything for them.
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	now := uint64(bootNs())
	vals := make([]ftFtDropFold, ncpu)
	for i := range vals {
		vals[i] = ftFtDropFold{CreatedNs: now, EmitNs: now}
	}
	for i := range scan {
		sk := ftFtDropKey{Netns: ino, Reason: 1, Location: uint64(i + 1)}
		if err := d.objs.FtDropFolds.Update(&sk, vals, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	inMap += scan
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	const passes = 5
	for range passes {
		if _, err := d.FlushDrops(func(*decode.Event) {}); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&m1)
	// The old tracker allocated a visited set and an entry per signature
	// every pass (~400 KB here); what is left is the library's per-batch
	// syscall buffers and whatever the follower's goroutine allocated.
	if per := (m1.TotalAlloc - m0.TotalAlloc) / passes; per > 64<<10 {
		t.Fatalf("FlushDrops allocates %d bytes per pass over %d signatures", per, inMap)
	}
	// Two windows later the scan is idle: Run's passes delete it, at most
	// maxReclaim signatures a pass, so the key list stays small. These
	// slots came with no drop for the reader to read, so once the storm's
	// passes are over it may be asleep until its next timed chore (the idle
	// flow walk, every FlowReportInterval), whose pass deletes them: a
	// one-CPU qemu guest slept past a deadline of two windows + 3 s.
	deadline := time.Now().Add(2*d.cfg.DropFoldWindow + d.cfg.FlowReportInterval + 3*time.Second)
	for inMap > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		inMap = 0
		for it := d.objs.FtDropFolds.Iterate(); it.Next(&k, &v); {
			inMap++
		}
	}
	d.folds.mu.Lock()
	idleCap := cap(d.folds.idle)
	d.folds.mu.Unlock()
	if inMap != 0 {
		t.Fatalf("%d idle signatures still in the fold map", inMap)
	}
	if idleCap > maxReclaim {
		t.Fatalf("idle key list grew to %d, want at most %d", idleCap, maxReclaim)
	}
}

// TestDropFoldDisabled: a negative window turns folding off, every drop is
// its own event with count 1.
func TestDropFoldDisabled(t *testing.T) {
	d, name, _, f := followDrops(t, Config{DropFoldWindow: -1})
	st0 := stats(t, d)
	const n = 500
	blastUDPIn(t, name, n, 13)
	got, events := f.waitCounts(t, map[uint16]uint64{13: n})
	st1 := stats(t, d)
	if got[13] != n || events != n {
		t.Fatalf("%d events summing to %d, want %d of 1", events, got[13], n)
	}
	if st1["drops_folded"] != st0["drops_folded"] {
		t.Fatalf("drops_folded moved with folding off")
	}
}

// TestDropFoldCost reports the drop hook's cost per drop from BPF stats,
// folding off and on, for the same storm.
func TestDropFoldCost(t *testing.T) {
	stop, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable bpf stats: %v", err)
	}
	defer stop.Close()
	for _, c := range []struct {
		name   string
		window time.Duration
	}{{"folding off", -1}, {"folding on", 0}} {
		d, name, _, f := followDrops(t, Config{DropFoldWindow: c.window, RingBufferBytes: 16 << 20})
		const n = 20000
		s0, err := d.DropProgram().Stats()
		if err != nil {
			t.Fatal(err)
		}
		blastUDPIn(t, name, n, 14)
		s1, err := d.DropProgram().Stats()
		if err != nil {
			t.Fatal(err)
		}
		got, events := f.waitCounts(t, map[uint16]uint64{14: n})
		runs := s1.RunCount - s0.RunCount
		per := (s1.Runtime - s0.Runtime) / time.Duration(max(runs, 1))
		t.Logf("%s: %d drop hook runs, %v per run; %d events, count sum %d", c.name, runs, per, events, got[14])
		if got[14] != n || runs < n || per <= 0 || per > 20*time.Microsecond {
			t.Fatalf("%s: sum %d runs %d per %v", c.name, got[14], runs, per)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDropMemo: on one CPU, a storm's drops after the third are counted in
// the drop hook's per-CPU memo, not the fold slot; FlushDrops writes the
// memo back first, so one report carries every folded drop exactly.
// Drops a memo holds for a slot that vanished meanwhile (LRU eviction,
// here a delete) are counted as lost, never silently dropped. With the
// memo off the same storm is reported the same, with no memo hits.
func TestDropMemo(t *testing.T) {
	for _, memo := range []bool{true, false} {
		t.Run(fmt.Sprintf("memo=%v", memo), func(t *testing.T) {
			d := load(t, Config{DropFoldWindow: 5 * time.Second, NoDropMemo: !memo})
			if d.Features().DropMemo != memo {
				t.Fatalf("Features().DropMemo = %v, want %v", d.Features().DropMemo, memo)
			}
			name, ino := testNetns(t)
			if err := d.AllowNetns(ino); err != nil {
				t.Fatal(err)
			}
			pinCPU(t, -1) // the sender's CPU is where loopback drops its datagrams
			send := udpSenderIn(t, name)
			reports := func() (events int, count uint64) {
				t.Helper()
				if _, err := d.FlushDrops(func(ev *decode.Event) {
					if ev.Netns == ino && ev.DstPort == 13 {
						events++
						count += uint64(ev.Count)
					}
				}); err != nil {
					t.Fatal(err)
				}
				return events, count
			}
			// The first drop is emitted, the second makes the slot, the
			// third folds into it and the memo takes it: 97 memo hits.
			const n = 100
			send(n, 13)
			if evs := drain(t, d); len(evs) != 1 {
				t.Fatalf("%d events in the ring buffer, want the first drop's", len(evs))
			}
			st := stats(t, d)
			hits := uint64(0)
			if memo {
				hits = n - 3
				// Not counted as folded before the write-back.
				if st["drops_folded"] != 2 {
					t.Fatalf("drops_folded %d before the write-back, want 2", st["drops_folded"])
				}
			}
			if st["drop_memo_hits"] != hits {
				t.Fatalf("drop_memo_hits %d, want %d", st["drop_memo_hits"], hits)
			}
			if events, count := reports(); events != 1 || count != n-1 {
				t.Fatalf("%d reports of %d folded drops, want 1 of %d", events, count, n-1)
			}
			if st := stats(t, d); st["drops_folded"] != n-1 || st["drops_fold_reported"] != n-1 {
				t.Fatalf("after the walk: drops_folded %d, reported %d, want %d", st["drops_folded"], st["drops_fold_reported"], n-1)
			}

			// The slot vanishes while the drops are folding: they are lost.
			send(50, 13)
			var k ftFtDropKey
			var v []ftFtDropFold
			var keys []ftFtDropKey
			for it := d.objs.FtDropFolds.Iterate(); it.Next(&k, &v); {
				if k.Netns == ino {
					keys = append(keys, k)
				}
			}
			if len(keys) != 1 {
				t.Fatalf("%d fold slots of the test netns, want 1", len(keys))
			}
			if err := d.objs.FtDropFolds.Delete(&keys[0]); err != nil {
				t.Fatal(err)
			}
			if events, count := reports(); events != 0 || count != 0 {
				t.Fatalf("%d reports of %d drops from a deleted slot", events, count)
			}
			if st := stats(t, d); st["drops_folded"] != n-1+50 || st["drops_fold_lost"] != 50 {
				t.Fatalf("deleted slot: drops_folded %d, lost %d, want %d and 50", st["drops_folded"], st["drops_fold_lost"], n-1+50)
			}
			if memo && stats(t, d)["drop_memo_hits"] != hits+49 {
				t.Fatalf("drop_memo_hits %d, want %d", stats(t, d)["drop_memo_hits"], hits+49)
			}
		})
	}
}
