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

	time.Sleep(100 * time.Millisecond) // more than the gap at any HZ >= 100
	before := state()
	burst(1)
	if got := state().Wakes - before.Wakes; got != 1 {
		t.Fatalf("the first event after a quiet spell woke the reader %d times, want 1", got)
	}
	drain(t, d)

	// 2,000 events (~370 KB, under the backlog): one wake-up per gap at
	// most, and a gap is at least 4 ms (HZ <= 1000). Every 256th event
	// would have been 7.
	before = state()
	took := burst(2000)
	allowed := 1 + uint64(took/(4*time.Millisecond))
	if got := state().Wakes - before.Wakes; got > allowed {
		t.Fatalf("2,000 events in %v woke the reader %d times, want at most %d", took, got, allowed)
	}

	// Left unread, 2,000 more pass the backlog (an eighth of the 4 MiB
	// ring): that wakes the reader within the gap, once the jiffy of the
	// last wake-up is over.
	time.Sleep(11 * time.Millisecond) // a jiffy at HZ >= 100
	before = state()
	burst(2000)
	after := state()
	if after.Wakes == before.Wakes {
		t.Fatalf("a backlog of ~740 KB did not wake the reader (last wake-up at jiffy %d, now %d)", before.Woke, after.Woke)
	}
	if after.Woke-before.Woke >= ringWakeGap {
		t.Logf("the gap (%d jiffies) passed during the burst: the backlog rule was not what woke it", after.Woke-before.Woke)
	}
	if evs := drain(t, d); len(evs) != 4000 {
		t.Fatalf("read %d events, want 4000", len(evs))
	}
}
