//go:build linux

package datapath

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// ringWakeGap is FT_RB_WAKE_GAP (bpf/ft_maps.h), in jiffies.
const ringWakeGap = 4

// TestRingWakeups: the BPF side wakes the ring buffer's reader for the
// first event after a quiet spell, then at most once per few jiffies per
// CPU however many events follow, and within that gap only for a backlog
// of an eighth of the ring. Each wake-up is a self-interrupt (trapped in a
// VM) plus a sleep/wake cycle of the agent's threads: every 256th event,
// the rule before, cost ~6% of the machine under connection churn.
func TestRingWakeups(t *testing.T) {
	d := load(t, Config{})
	cpu := pinCPU(t, -1)
	state := func() ftFtRbState {
		var vals []ftFtRbState
		if err := d.objs.FtRbSeq.Lookup(uint32(0), &vals); err != nil {
			t.Fatalf("read ft_rb_seq: %v", err)
		}
		return vals[cpu]
	}
	// Every run of this SYN reports (SYN is a reporting flag): one event
	// (a flow record, 184 bytes with its header) per packet.
	burst := func(n uint32) time.Duration {
		start := time.Now()
		if _, err := d.Ingress().Run(&ebpf.RunOptions{Data: tcpFrame(41000, decode.TCPSyn, 0), Repeat: n}); err != nil {
			t.Fatalf("test run: %v", err)
		}
		return time.Since(start)
	}
	if d.readPoll != readPollLone {
		// No jiffies (before 5.5): every 256th event wakes it.
		before := state().Wakes
		burst(512)
		if got := state().Wakes - before; got != 2 {
			t.Fatalf("512 events woke the reader %d times without jiffies, want 2", got)
		}
		return
	}

	// Another program's event on this CPU (a drop the hook reports) would
	// move the wake-up state under a step: such a step is tried again.
	for attempt := 1; ; attempt++ {
		disturbed := wakeSteps(t, state, burst)
		if disturbed == "" {
			break
		}
		if attempt == 5 {
			t.Fatalf("every attempt was disturbed by other events on CPU %d: %s", cpu, disturbed)
		}
		t.Logf("attempt %d: %s; again", attempt, disturbed)
		drain(t, d)
	}
	// Every one of the attempt's events is in the ring: none were lost.
	if evs := drain(t, d); len(evs) < 4001 {
		t.Fatalf("read %d events, want the attempt's 4,001", len(evs))
	}
}

// wakeSteps checks the wake-up rule in three steps (TestRingWakeups). It
// returns why a step's figures cannot be trusted (events other than its
// own were submitted on the CPU), or "" once all three passed.
func wakeSteps(t *testing.T, state func() ftFtRbState, burst func(uint32) time.Duration) string {
	t.Helper()
	own := func(before, after ftFtRbState, n uint64) bool { return after.Seq-before.Seq == n }

	quiet := state()
	time.Sleep(100 * time.Millisecond) // more than the gap at any HZ >= 100
	before := state()
	burst(1)
	after := state()
	if !own(quiet, after, 1) {
		return "an event during the quiet spell or the first event"
	}
	if got := after.Wakes - before.Wakes; got != 1 {
		t.Fatalf("the first event after a quiet spell woke the reader %d times, want 1", got)
	}

	// 2,000 events (~370 KB with the one before, under the backlog): one
	// wake-up per gap at most, and a gap is at least 4 ms (HZ <= 1000).
	// Every 256th event would have been 7.
	before = state()
	took := burst(2000)
	after = state()
	if !own(before, after, 2000) {
		return "an event during the burst"
	}
	allowed := 1 + uint64(took/(4*time.Millisecond))
	if got := after.Wakes - before.Wakes; got > allowed {
		t.Fatalf("2,000 events in %v woke the reader %d times, want at most %d", took, got, allowed)
	}

	// Left unread, 2,000 more pass the backlog (an eighth of the 4 MiB
	// ring): that wakes the reader within the gap, once the jiffy of the
	// last wake-up is over.
	time.Sleep(11 * time.Millisecond) // a jiffy at HZ >= 100
	before = state()
	burst(2000)
	after = state()
	if !own(before, after, 2000) {
		return "an event during the backlog burst"
	}
	if after.Wakes == before.Wakes {
		t.Fatalf("a backlog of ~740 KB did not wake the reader (last wake-up at jiffy %d, now %d)", before.Woke, after.Woke)
	}
	if after.Woke-before.Woke >= ringWakeGap {
		t.Logf("the gap (%d jiffies) passed during the burst: the backlog rule was not what woke it", after.Woke-before.Woke)
	}
	return ""
}

// TestReaderSleepsWhenQuiet: a readPollLone after the last record it read,
// the reader is announced every record (ft_rb_flags) and sleeps until its
// next timed chore instead of polling ten times a second, each wake-up a
// few thread switches on CPUs the node's pods use. It still gets a record
// submitted without a wake-up just after one, and its ctx's end still
// stops it at once. Without jiffies it must keep polling.
func TestReaderSleepsWhenQuiet(t *testing.T) {
	d := load(t, Config{FlowReportInterval: time.Hour})
	if d.wait == nil {
		t.Fatal("the ring buffer fd was not pollable by the Go runtime")
	}
	cpu := pinCPU(t, -1)
	wakes := func() uint64 {
		var vals []ftFtRbState
		if err := d.objs.FtRbSeq.Lookup(uint32(0), &vals); err != nil {
			t.Fatalf("read ft_rb_seq: %v", err)
		}
		return vals[cpu].Wakes
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan uint16, 64)
	var looks atomic.Int64 // the reader's passes: each wake-up is one
	done := make(chan error, 1)
	go func() {
		done <- d.RunFlush(ctx, func(ev *decode.Event) { got <- ev.SrcPort }, func() { looks.Add(1) })
	}()
	await := func(port uint16, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			select {
			case p := <-got:
				if p == port {
					return time.Since(start)
				}
			case <-time.After(within):
				t.Fatalf("the record of port %d was not read within %v", port, within)
			}
		}
	}

	// A record right after one the reader was woken for and has read goes
	// unannounced (the CPU woke it less than FT_RB_WAKE_GAP ago). The
	// bounds are loose for emulated kernels in the matrix; a reader that
	// slept till its next chore would wait the clock resync's 10 s.
	port := uint16(43000)
	// After a quiet spell longer than the short poll, so the reader must
	// have noted the read of the first record to look again for the next.
	time.Sleep(readPollLone + 50*time.Millisecond)
	for attempt := 1; ; attempt++ {
		run(t, d.Ingress(), tcpFrame(port, decode.TCPSyn, 0))
		await(port, 2*time.Second)
		before := wakes()
		run(t, d.Ingress(), tcpFrame(port+1, decode.TCPSyn, 0))
		announced := wakes() != before
		lat := await(port+1, 2*time.Second)
		if !announced {
			t.Logf("an unannounced record was read after %v", lat)
			break
		}
		if attempt == 5 {
			// A single emulated CPU (the kernel matrix's guests) can take
			// longer than the gap (4 jiffies) from a read to the next run.
			if os.Getenv(testutil.InVMEnv) == "1" {
				t.Logf("the gap passed between the read and the next record in %d attempts: not checked here", attempt)
				break
			}
			t.Fatalf("the record after a read one woke the reader in %d attempts: the gap passed in between", attempt)
		}
		port += 2
	}

	// Quiet: count the reader's passes over a second, once a readPollLone
	// has passed since the last record. Records from elsewhere (the drop
	// hook sees the whole machine) disturb a window: it is tried again.
	for attempt := 1; ; attempt++ {
		time.Sleep(readPollLone + 50*time.Millisecond)
		n0 := looks.Load()
		time.Sleep(time.Second)
		n := looks.Load() - n0
		if len(got) > 0 {
			if attempt == 5 {
				t.Fatalf("records arrived in every quiet second of %d", attempt)
			}
			for len(got) > 0 {
				<-got
			}
			continue
		}
		if d.readPoll == readPollLone && n > 1 {
			t.Fatalf("the quiet reader woke %d times in a second, want at most 1", n)
		}
		if d.readPoll != readPollLone && n < int64(time.Second/readPoll/2) {
			t.Fatalf("without jiffies the reader woke %d times in a second: it must poll every %v", n, readPoll)
		}
		t.Logf("the quiet reader woke %d times in a second", n)
		break
	}
	cancel()
	waitErr(t, done, time.Second, "Run, after its ctx ended")
}
