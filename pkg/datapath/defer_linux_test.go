package datapath

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// deferTestDelay is long enough for a test's packets (test runs of ~10 µs
// each) to come well within it on a loaded VM.
const deferTestDelay = 60 * time.Millisecond

// loadDeferred loads a datapath that holds first reports for delay, and
// checks that it does where the kernel can (bpf_timer, bpf_loop: 5.17+).
// It reports whether it does.
func loadDeferred(t *testing.T, cfg Config) (*Datapath, bool) {
	t.Helper()
	d := load(t, cfg)
	can := features.HaveProgramHelper(ebpf.SchedCLS, asm.FnTimerStart) == nil &&
		features.HaveProgramHelper(ebpf.SchedCLS, asm.FnLoop) == nil
	got := d.Features().FirstReportDelay
	switch {
	case can && got != cfg.FirstReportDelay:
		t.Fatalf("Features.FirstReportDelay %v on a kernel with bpf_timer and bpf_loop, want %v", got, cfg.FirstReportDelay)
	case !can && got != 0:
		t.Fatalf("Features.FirstReportDelay %v on a kernel without bpf_timer or bpf_loop, want 0", got)
	}
	return d, can
}

// TestFirstReportHeld: a new entry's first report is held for the delay.
// A connection that ends within it is one report per entry pair, its
// close, with everything a NEW would have said (the SYN among the flags,
// every packet); one that lives on gets a NEW at the delay that counts
// every packet so far and is dated by its first; the held entries of a
// closed connection leave the table at the delay. Where the kernel cannot
// hold (before 5.17), every first packet is reported at once, as before.
func TestFirstReportHeld(t *testing.T) {
	type pkt struct {
		reply bool
		flags uint8
		udp   bool
	}
	syn, synAck, ack := pkt{false, decode.TCPSyn, false}, pkt{true, decode.TCPSyn | decode.TCPAck, false}, pkt{false, decode.TCPAck, false}
	rst := pkt{false, decode.TCPRst | decode.TCPAck, false}
	replyFin := pkt{true, decode.TCPFin | decode.TCPAck, false}
	for _, tc := range []struct {
		name string
		pkts []pkt
		// now: the reports before the delay (reason each); later: the
		// reports the delay brings.
		now, later []decode.FlowReason
		// flags: the OR of the TCP flags of all reports of the client's
		// direction (its SYN must be among them).
		flags uint8
		// closed: flows_closed once the delay is up; left: entries then.
		closed uint64
		left   int
	}{
		{"connect, then RST: the close alone", []pkt{syn, synAck, ack, rst},
			[]decode.FlowReason{decode.ReasonTCPFlags}, nil, decode.TCPSyn | decode.TCPAck | decode.TCPRst, 2, 0},
		{"churn as the bench makes it: the close alone", []pkt{syn, synAck, ack, replyFin, ack, rst},
			[]decode.FlowReason{decode.ReasonTCPFlags}, nil, decode.TCPSyn | decode.TCPAck | decode.TCPRst, 2, 0},
		{"refused: the RST's own report, with the SYN as the other direction", []pkt{syn, {true, decode.TCPRst | decode.TCPAck, false}},
			[]decode.FlowReason{decode.ReasonNew}, nil, decode.TCPSyn, 2, 0},
		{"open past the delay: a NEW each way", []pkt{syn, synAck, ack},
			nil, []decode.FlowReason{decode.ReasonNew, decode.ReasonNew}, decode.TCPSyn | decode.TCPAck, 0, 2},
		{"a UDP packet: its NEW at the delay", []pkt{{false, 0, true}},
			nil, []decode.FlowReason{decode.ReasonNew}, 0, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cpu := pinCPU(t, -1)
			var d *Datapath
			var held bool
			var first uint64
			var sent time.Duration
			var now []decode.Event
			var start time.Time
			// The packets must all be in well within the delay, and their
			// reports read before it is up (drain waits 20 ms for more).
			// A busy machine (a qemu guest beside another) can stall a send
			// or a read for tens of milliseconds: try again on a fresh
			// datapath, whose tables the slow attempt has not touched.
			for attempt := 1; ; attempt++ {
				d, held = loadDeferred(t, Config{FlowReportInterval: 4 * deferTestDelay, FirstReportDelay: deferTestDelay})
				first = uint64(bootNs())
				start = time.Now()
				for _, p := range tc.pkts {
					switch {
					case p.udp:
						run(t, d.Egress(), cat(eth(0x0800), ipv4(17, "10.1.0.1", "10.1.0.2", 0, nil, udp(53000, 53, make([]byte, 20)))))
					case p.reply:
						run(t, d.Ingress(), replyFrame(51000, p.flags, 0))
					default:
						run(t, d.Egress(), tcpFrame(51000, p.flags, 0))
					}
				}
				sent = time.Since(start)
				took := sent
				if sent <= deferTestDelay/2 {
					now = drain(t, d)
					// Read before a held report could fire: what it read
					// is what came at once.
					if took = time.Since(start); took < deferTestDelay {
						break
					}
				}
				if attempt == 5 {
					testutil.SkipOrFail(t, fmt.Sprintf("sending and reading took %v (and as long in %d attempts before), too close to the delay %v to tell",
						took, attempt-1, deferTestDelay))
				}
				t.Logf("attempt %d: sending and reading took %v, too close to the delay %v to tell; again", attempt, took, deferTestDelay)
			}
			// Where the queue's timer is pinned to its CPU (6.7+), a close on
			// that CPU (the test runs' own, pinned) ends its entries at once,
			// while they are in the cache, and leaves the callback a void
			// slot: nothing is left for the delay to delete.
			if held && tc.closed > 0 && deferPinned(t, d, cpu) {
				n, left := stats(t, d)["flows_closed"], len(flowEntries(t, d))
				if time.Since(start) < deferTestDelay && (n != tc.closed || left != tc.left) {
					t.Errorf("before the delay: flows_closed %d, %d entries left; want %d and %d at the close", n, left, tc.closed, tc.left)
				}
			}
			time.Sleep(deferTestDelay + 40*time.Millisecond)
			later := drain(t, d)
			// A one-CPU qemu guest can run the delay's timer late: wait up
			// to a second more for what it must bring.
			for since := time.Now(); len(later) < len(tc.later) && time.Since(since) < time.Second; {
				later = append(later, drain(t, d)...)
			}
			all := append(append([]decode.Event(nil), now...), later...)
			var packets uint64
			var flags uint8
			for _, ev := range all {
				packets += ev.Packets + ev.RevPackets
				if ev.Direction == decode.DirEgress {
					flags |= ev.TCPFlags
				} else {
					flags |= ev.RevTCPFlags
				}
			}
			if !held {
				// Every entry's first packet reported at once, as a NEW.
				news := map[decode.Direction]bool{}
				for _, ev := range now {
					news[ev.Direction] = news[ev.Direction] || ev.FlowReason == decode.ReasonNew
				}
				for _, p := range tc.pkts {
					if dir := map[bool]decode.Direction{false: decode.DirEgress, true: decode.DirIngress}[p.reply]; !news[dir] {
						t.Errorf("no NEW at once for direction %v on a kernel that does not hold first reports: %+v", dir, now)
					}
				}
				for _, ev := range later {
					t.Errorf("report after the packets on a kernel that does not hold them: %+v", ev)
				}
				return
			}
			// Held, every packet so far is in the reports.
			if packets != uint64(len(tc.pkts)) {
				t.Errorf("reports count %d packets, want %d: %+v", packets, len(tc.pkts), all)
			}
			if flags&tc.flags != tc.flags {
				t.Errorf("the client direction's flags %#x, want %#x among them: %+v", flags, tc.flags, all)
			}
			reasons := func(evs []decode.Event) (out []decode.FlowReason) {
				for _, ev := range evs {
					out = append(out, ev.FlowReason)
				}
				return out
			}
			if got := reasons(now); !slices.Equal(got, tc.now) {
				t.Errorf("reports before the delay %v, want %v: %+v", got, tc.now, now)
			}
			if got := reasons(later); !slices.Equal(got, tc.later) {
				t.Errorf("reports the delay brought %v, want %v: %+v", got, tc.later, later)
			}
			for _, ev := range later {
				// Dated by the entry's first packet, not the delay.
				if ev.TimeNs < first || ev.TimeNs > first+uint64(sent) {
					t.Errorf("held NEW dated %d ns after the first packet, want within the %v of sending", int64(ev.TimeNs-first), sent)
				}
			}
			if n := stats(t, d)["flows_closed"]; n != tc.closed {
				t.Errorf("flows_closed %d, want %d", n, tc.closed)
			}
			// Every slot found its entry, or a void: none was taken for one
			// deleted under it.
			if n := stats(t, d)["first_reports_evicted"]; n != 0 {
				t.Errorf("first_reports_evicted %d, want 0", n)
			}
			left := flowEntries(t, d)
			for since := time.Now(); len(left) > tc.left && time.Since(since) < time.Second; left = flowEntries(t, d) {
				time.Sleep(10 * time.Millisecond)
			}
			if len(left) != tc.left {
				t.Errorf("%d entries left after the delay, want %d: %+v", len(left), tc.left, left)
			}
		})
	}
}

// deferPinned reports whether CPU cpu's first-report queue runs its timer
// on that CPU (BPF_F_TIMER_CPU_PIN, 6.7+).
func deferPinned(t *testing.T, d *Datapath, cpu int) bool {
	t.Helper()
	var q ftFtDeferQ
	if err := d.objs.FtDefer.Lookup(uint32(cpu), &q); err != nil {
		t.Fatalf("CPU %d's first-report queue: %v", cpu, err)
	}
	return q.Pin != 0
}

// TestFirstReportNeverLost: under overload the held first reports are
// still every flow's: a queue that is full reports at once
// (first_reports_unqueued), a packet the full flow table has no room for
// is reported on its own (flow_table_full), and an entry deleted before
// its delay (the idle walk racing its making) is reported from the queue
// (first_reports_evicted), so each of many one-packet flows is reported
// exactly once either way.
func TestFirstReportNeverLost(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flows   int
		entries int
		del     bool // delete every entry from user space after the packets
		stat    string
	}{
		{"more new flows than a CPU's queue holds", deferSlots + 200, 65536, false, "first_reports_unqueued"},
		{"a flow table too small for them", 600, 128, false, "flow_table_full"},
		{"entries deleted before the delay", 300, 65536, true, "first_reports_evicted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A longer delay: the flows must all be sent within it (~170 ms
			// under qemu's emulation).
			const delay = time.Second
			d, held := loadDeferred(t, Config{FlowReportInterval: 4 * delay, FirstReportDelay: delay, FlowTableEntries: tc.entries})
			pinCPU(t, -1)
			start := time.Now()
			for i := range tc.flows {
				run(t, d.Egress(), cat(eth(0x0800), ipv4(17, "10.1.0.1", "10.1.0.2", 0, nil, udp(uint16(20000+i), 53, make([]byte, 20)))))
			}
			if tc.del {
				for k := range flowEntries(t, d) {
					if err := d.objs.FtFlows.Delete(&k); err != nil {
						t.Fatal(err)
					}
				}
			}
			if sent := time.Since(start); sent > delay/2 {
				testutil.SkipOrFail(t, fmt.Sprintf("sending took %v, too close to the delay %v to tell", sent, delay))
			}
			time.Sleep(delay + 100*time.Millisecond)
			seen := map[uint16]int{}
			for _, ev := range drain(t, d) {
				if ev.FlowReason != decode.ReasonNew || ev.Packets != 1 {
					t.Errorf("report %+v, want a NEW of its one packet", ev)
				}
				seen[ev.SrcPort]++
			}
			for i := range tc.flows {
				if n := seen[uint16(20000+i)]; n != 1 {
					t.Errorf("flow %d reported %d times, want once", i, n)
				}
			}
			// Where the kernel reports at once, each flow's NEW is its own;
			// a full table is full either way.
			if n := stats(t, d)[tc.stat]; (held || tc.stat == "flow_table_full") && n == 0 {
				t.Errorf("%s is 0: the case did not happen", tc.stat)
			}
		})
	}
}
