//go:build linux

package datapath

import (
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// TestTCCost reports the per-packet run time of the tc program from kernel
// BPF stats over 100k test runs of each frame, with the per-CPU flow cache
// and without, next to the counting floor program's. It only fails if
// stats are unavailable or the cost is absurd (> 20 us), since machines
// are shared and noisy: the bench (tc_vs_floor) holds the target.
func TestTCCost(t *testing.T) {
	floor := floorTC(t)
	t.Run("flow cache", func(t *testing.T) { tcCost(t, Config{}, floor) })
	t.Run("no flow cache", func(t *testing.T) { tcCost(t, Config{NoFlowCache: true}, floor) })
}

// floorTC is the bench's counting tc program, the floor the hook's cost is
// measured against, closed when the test ends.
func floorTC(t *testing.T) *ebpf.Program {
	t.Helper()
	counter, err := testutil.NewCounter()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { counter.Close() })
	floor, err := testutil.NewFloorTC(counter)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { floor.Close() })
	return floor
}

func tcCost(t *testing.T, cfg Config, floor *ebpf.Program) {
	d := load(t, cfg)
	pinCPU(t, -1) // the flow cache is per CPU: every run must find its slot
	stop, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable bpf stats: %v", err)
	}
	defer stop.Close()
	const n = 100000
	cost := func(p *ebpf.Program, frame []byte) time.Duration {
		t.Helper()
		before, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Run(&ebpf.RunOptions{Data: frame, Repeat: n}); err != nil {
			t.Fatal(err)
		}
		after, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		// At least n: a test run that a signal cuts short (the Go
		// runtime's preemption, more often under -race) returns EINTR,
		// and the library runs the whole repeat again.
		runs := after.RunCount - before.RunCount
		per := (after.Runtime - before.Runtime) / time.Duration(max(runs, 1))
		if runs < n || per <= 0 || per > 20*time.Microsecond {
			t.Fatalf("%s: runs=%d per=%v", p, runs, per)
		}
		return per
	}
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"ipv4 tcp ack (aggregated)", tcpFrame(53000, decode.TCPAck, 100)},
		{"ipv6 tcp ack (aggregated)", cat(eth(0x86dd), ipv6(6, "fd00::1", "fd00::2", tcp(53001, 443, decode.TCPAck)))},
		{"ipv4 udp (aggregated)", cat(eth(0x0800), ipv4(17, "10.1.0.1", "10.1.0.2", 0, nil, udp(53003, 53, make([]byte, 22))))},
		{"arp (not ip)", cat(eth(0x0806), make([]byte, 28))},
		// DF and above the MTU-check threshold: one FIB lookup, then the per-flow cache.
		{"ipv4 tcp 1400B DF (aggregated, mtu check)", cat(eth(0x0800), ipv4(6, "10.1.0.1", "10.1.0.2", 0x4000, nil, cat(tcp(53002, 443, decode.TCPAck), make([]byte, 1380))))},
	} {
		per, fl := cost(d.Ingress(), c.frame), cost(floor, c.frame)
		t.Logf("%s: %v per packet, floor %v, %.2fx", c.name, per, fl, float64(per)/float64(max(fl, 1)))
		drain(t, d)
	}
}

// TestDropCost reports the drop hook's run time per drop in a one-flow
// storm (identical NO_SOCKET drops from one socket, one CPU), next to the
// counting floor program's in the same kind of storm just before. Like
// TestTCCost it only fails if stats are unavailable or the figures absurd:
// the bench (kfree_skb_vs_floor) holds the target.
func TestDropCost(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinCPU(t, -1)
	stop, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable bpf stats: %v", err)
	}
	defer stop.Close()
	const n = 200000
	storm := func(t *testing.T, name string, p *ebpf.Program) time.Duration {
		t.Helper()
		send := udpSenderIn(t, name)
		send(1000, 7) // warm: the fold slot exists, caches are hot
		before, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		send(n, 7)
		after, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		runs := after.RunCount - before.RunCount
		if runs < n {
			t.Fatalf("%s: %d runs for %d drops", p, runs, n)
		}
		return (after.Runtime - before.Runtime) / time.Duration(runs)
	}

	counter, err := testutil.NewCounter()
	if err != nil {
		t.Fatal(err)
	}
	defer counter.Close()
	fp, fl, err := testutil.AttachFloorDrop(counter)
	if err != nil {
		t.Fatal(err)
	}
	floorName, _ := testNetns(t)
	floor := storm(t, floorName, fp)
	fl.Close()
	fp.Close()

	// In subtests: each datapath is gone (its cleanups) before the next.
	// The copied read only where the default reads in place: elsewhere it
	// is the same hook, and a storm under the matrix's emulation is ~50 s.
	direct := false
	for _, cfg := range []Config{{}, {noDropDirect: true}} {
		if cfg.noDropDirect && !direct {
			break
		}
		t.Run(fmt.Sprintf("direct=%v", !cfg.noDropDirect), func(t *testing.T) {
			d, name, _, _ := followDrops(t, cfg)
			direct = direct || d.Features().DropDirect
			per := storm(t, name, d.DropProgram())
			t.Logf("one-flow storm: drop hook %v per drop (headers read in place %v), floor %v, %.2fx",
				per, d.Features().DropDirect, floor, float64(per)/float64(max(floor, 1)))
			if per <= 0 || per > 20*time.Microsecond || floor <= 0 {
				t.Fatalf("drop hook %v, floor %v per drop", per, floor)
			}
		})
	}
}

// TestChurnCost reports the tc programs' run time per connection for the
// bench's churn (SYN, SYN-ACK, ACK, the server's FIN, ACK, the client's
// RST: each connection new, on new ports), at one device, next to the
// counting floor program's for the same six packets, with first reports
// held as deployed (bpf/ft_defer.h) and sent at the first packet. Under
// churn the hook is no longer a flow-cache hit: every connection makes and
// ends two flow entries at each device it crosses, so this, not
// TestTCCost, is the kernel's share of churn_cost_pct (less the held
// reports' timer callback, which BPF stats do not count). Like TestTCCost
// it only fails if stats are unavailable or the figures absurd, or if
// churn leaves flow entries behind.
func TestChurnCost(t *testing.T) {
	floor := floorTC(t)
	type step struct {
		reply bool
		flags uint8
	}
	seq := []step{
		{false, decode.TCPSyn}, {true, decode.TCPSyn | decode.TCPAck}, {false, decode.TCPAck},
		{true, decode.TCPFin | decode.TCPAck}, {false, decode.TCPAck}, {false, decode.TCPRst | decode.TCPAck},
	}
	// The client leaves through egress and the replies come in through
	// ingress: both directions of a connection meet at one device.
	progTime := func(ps ...*ebpf.Program) (time.Duration, uint64) {
		t.Helper()
		var rt time.Duration
		var n uint64
		for i, p := range ps {
			if i > 0 && p == ps[0] {
				continue // the floor serves both directions
			}
			s, err := p.Stats()
			if err != nil {
				t.Fatal(err)
			}
			rt += s.Runtime
			n += s.RunCount
		}
		return rt, n
	}
	// Batches of 100 connections, then a pause as long as the held
	// reports' delay (outside the timed part): test runs make connections
	// ~50 times as fast as the bench's 20,000/s, which would fill the
	// first-report queue (1024 a CPU) and time reports sent at once.
	const conns, batch = 6000, 100
	churn := func(d *Datapath, egress, ingress *ebpf.Program, port0 uint16, pause time.Duration) time.Duration {
		t.Helper()
		var total time.Duration
		for b := 0; b < conns/batch; b++ {
			rt0, n0 := progTime(egress, ingress)
			for c := range batch {
				port := port0 + uint16(b*batch+c)
				for _, s := range seq {
					if s.reply {
						run(t, ingress, replyFrame(port, s.flags, 0))
					} else {
						run(t, egress, tcpFrame(port, s.flags, 0))
					}
				}
			}
			rt1, n1 := progTime(egress, ingress)
			if n1-n0 != uint64(batch*len(seq)) {
				t.Fatalf("%d runs for %d packets", n1-n0, batch*len(seq))
			}
			total += rt1 - rt0
			time.Sleep(pause)
			if d != nil {
				drain(t, d) // the ring must not fill
			}
		}
		return total / conns
	}
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"first reports held", defaultFirstReportDelay}, {"first reports at the first packet", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			d := load(t, Config{FlowReportInterval: time.Hour, FirstReportDelay: tc.delay})
			pinCPU(t, -1)
			stop, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
			if err != nil {
				t.Fatalf("enable bpf stats: %v", err)
			}
			defer stop.Close()
			pause := max(d.Features().FirstReportDelay+5*time.Millisecond, time.Millisecond)
			fl := churn(nil, floor, floor, 10000, pause)
			per := churn(d, d.Egress(), d.Ingress(), 20000, pause)
			// The last batch's held entries leave at their delay, when the
			// timer's callback runs: a one-CPU qemu guest can run it late.
			// A leak leaves them for good; a second is ~50 delays.
			left := len(flowEntries(t, d))
			for since := time.Now(); left != 0 && time.Since(since) < time.Second; left = len(flowEntries(t, d)) {
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("churn at one device: %v per connection (%v a packet), floor %v, %.2fx; %d flow entries left; %d first reports sent at once",
				per, per/time.Duration(len(seq)), fl, float64(per)/float64(max(fl, 1)), left, stats(t, d)["first_reports_unqueued"])
			// Absurd anywhere: under qemu's emulation (the kernel matrix) a
			// connection takes ~100 us, natively ~2 us.
			if per <= 0 || per > time.Millisecond || fl <= 0 {
				t.Fatalf("%v per connection, floor %v", per, fl)
			}
			if left != 0 {
				t.Errorf("%d flow entries left after %d closed connections: churn would fill the table", left, conns)
			}
		})
	}
}
