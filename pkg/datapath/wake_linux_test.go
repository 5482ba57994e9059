//go:build linux

package datapath

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowtrace/flowtrace/pkg/decode"
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
