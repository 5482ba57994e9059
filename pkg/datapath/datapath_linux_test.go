//go:build linux

package datapath

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

const tcActUnspec = ^uint32(0) // TC_ACT_UNSPEC (-1) as returned by BPF_PROG_TEST_RUN

func load(t *testing.T, cfg Config) *Datapath {
	t.Helper()
	testutil.RequirePrivileged(t)
	if cfg.FirstReportDelay == 0 {
		// Most tests look at what each packet reports as it comes:
		// defer_linux_test.go tests the held first report.
		cfg.FirstReportDelay = -1
	}
	d, err := Load(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close datapath: %v", err)
		}
	})
	return d
}

// drain reads every record already in the ring buffer without waiting for
// a wakeup (the BPF side wakes the reader at most every few ms per CPU).
func drain(t *testing.T, d *Datapath) []decode.Event {
	t.Helper()
	var out []decode.Event
	for {
		d.rd.SetDeadline(time.Now().Add(20 * time.Millisecond))
		rec, err := d.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read ring buffer: %v", err)
		}
		var ev decode.Event
		if err := decode.Decode(rec.RawSample, &ev); err != nil {
			t.Fatalf("decode: %v", err)
		}
		out = append(out, ev)
	}
}

func run(t *testing.T, p *ebpf.Program, frame []byte) {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	if ret != tcActUnspec {
		t.Fatalf("return code %#x, want TC_ACT_UNSPEC", ret)
	}
}

// pinCPU keeps the calling goroutine on one CPU (cpu < 0: the first it may
// use) until the test ends, and returns that CPU. Test runs of a tc program
// run on the caller's CPU: a test that checks what one report of an entry
// counts pins itself, as packets counted on another CPU may sit in that
// CPU's flow-cache slot until the next write-back.
func pinCPU(t *testing.T, cpu int) int {
	t.Helper()
	runtime.LockOSThread()
	var orig, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		t.Fatal(err)
	}
	for c := 0; cpu < 0 && c < 1024; c++ {
		if orig.IsSet(c) {
			cpu = c
		}
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatalf("pin to CPU %d: %v", cpu, err)
	}
	t.Cleanup(func() {
		if err := unix.SchedSetaffinity(0, &orig); err != nil {
			t.Error(err)
		}
		runtime.UnlockOSThread()
	})
	return cpu
}

func selfNetns(t *testing.T) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

func stats(t *testing.T, d *Datapath) map[string]uint64 {
	t.Helper()
	s, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// flowFields is what a parse test checks; time, CPU and counts are checked separately.
type flowFields struct {
	EtherType        uint16
	IPVersion        uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto, TCPFlags  uint8
	ICMPType         uint8
	ICMPCode         uint8
	VLAN             uint16
}

func fieldsOf(ev decode.Event) flowFields {
	return flowFields{ev.EtherType, ev.IPVersion, ev.Src, ev.Dst, ev.SrcPort, ev.DstPort,
		ev.Proto, ev.TCPFlags, ev.ICMPType, ev.ICMPCode, ev.VLAN}
}

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestParse(t *testing.T) {
	const (
		h6a = "fd00::a"
		h6b = "fd00::b"
	)
	v4 := func(proto uint8, sp, dp uint16, flags, it, ic uint8) flowFields {
		return flowFields{0x0800, 4, a("10.0.0.1"), a("10.0.0.2"), sp, dp, proto, flags, it, ic, 0}
	}
	v6 := func(proto uint8, sp, dp uint16, flags, it, ic uint8) flowFields {
		return flowFields{0x86dd, 6, a(h6a), a(h6b), sp, dp, proto, flags, it, ic, 0}
	}
	withVLAN := func(f flowFields, vid uint16) flowFields { f.VLAN = vid; return f }
	opts := []byte{0x94, 0x04, 0, 0, 1, 1, 1, 0} // router alert + NOPs + EOL: 8 bytes
	tcpSyn := tcp(40000, 80, 0x02)

	cases := []struct {
		name  string
		frame []byte
		want  *flowFields // nil: no event expected
		stat  string      // counter that must move when want is nil
	}{
		{"ipv4 tcp syn", cat(eth(0x0800), ipv4(6, "10.0.0.1", "10.0.0.2", 0, nil, tcpSyn)),
			ptr(v4(6, 40000, 80, 0x02, 0, 0)), ""},
		{"ipv4 options", cat(eth(0x0800), ipv4(6, "10.0.0.1", "10.0.0.2", 0, opts, tcp(40001, 81, 0x10))),
			ptr(v4(6, 40001, 81, 0x10, 0, 0)), ""},
		{"802.1q", cat(eth(0x8100), vlanTag(100, 0x0800), ipv4(17, "10.0.0.1", "10.0.0.2", 0, nil, udp(5000, 53, nil))),
			ptr(withVLAN(v4(17, 5000, 53, 0, 0, 0), 100)), ""},
		{"qinq", cat(eth(0x88a8), vlanTag(200, 0x8100), vlanTag(300, 0x0800), ipv4(17, "10.0.0.1", "10.0.0.2", 0, nil, udp(5001, 53, nil))),
			ptr(withVLAN(v4(17, 5001, 53, 0, 0, 0), 300)), ""},
		{"three tags", cat(eth(0x88a8), vlanTag(1, 0x8100), vlanTag(2, 0x8100), vlanTag(3, 0x0800), ipv4(17, "10.0.0.1", "10.0.0.2", 0, nil, udp(1, 2, nil))),
			nil, "malformed"},
		{"ipv4 udp", cat(eth(0x0800), ipv4(17, "10.0.0.1", "10.0.0.2", 0, nil, udp(1234, 5678, []byte("hi")))),
			ptr(v4(17, 1234, 5678, 0, 0, 0)), ""},
		{"ipv4 non-first fragment", cat(eth(0x0800), ipv4(17, "10.0.0.1", "10.0.0.2", 185, nil, udp(1234, 5678, nil))),
			ptr(v4(17, 0, 0, 0, 0, 0)), ""},
		{"icmp echo", cat(eth(0x0800), ipv4(1, "10.0.0.1", "10.0.0.2", 0, nil, icmpEcho(8))),
			ptr(v4(1, 0, 0, 0, 8, 0)), ""},
		{"sctp", cat(eth(0x0800), ipv4(132, "10.0.0.1", "10.0.0.2", 0, nil, sctp(3868, 3869))),
			ptr(v4(132, 3868, 3869, 0, 0, 0)), ""},
		{"unknown l4", cat(eth(0x0800), ipv4(47, "10.0.0.1", "10.0.0.2", 0, nil, make([]byte, 8))),
			ptr(v4(47, 0, 0, 0, 0, 0)), ""},
		{"ipv6 tcp", cat(eth(0x86dd), ipv6(6, h6a, h6b, tcp(40002, 443, 0x12))),
			ptr(v6(6, 40002, 443, 0x12, 0, 0)), ""},
		{"ipv6 ext first fragment", cat(eth(0x86dd), ipv6(0, h6a, h6b,
			cat(ext6(43, 0), ext6(60, 1), ext6(44, 0), frag6(17, 0, true), udp(7000, 7001, nil)))),
			ptr(v6(17, 7000, 7001, 0, 0, 0)), ""},
		{"ipv6 ext non-first fragment", cat(eth(0x86dd), ipv6(0, h6a, h6b,
			cat(ext6(43, 0), ext6(60, 0), ext6(44, 0), frag6(17, 100, false), udp(7000, 7001, nil)))),
			ptr(v6(17, 0, 0, 0, 0, 0)), ""},
		{"ipv6 too many ext", cat(eth(0x86dd), ipv6(60, h6a, h6b,
			cat(ext6(60, 0), ext6(60, 0), ext6(60, 0), ext6(60, 0), ext6(60, 0), ext6(60, 0), ext6(17, 0), udp(1, 2, nil)))),
			nil, "malformed"},
		{"icmpv6 echo", cat(eth(0x86dd), ipv6(58, h6a, h6b, icmpEcho(128))),
			ptr(v6(58, 0, 0, 0, 128, 0)), ""},
		{"arp", cat(eth(0x0806), make([]byte, 28)), nil, "non_ip"},
		// The kernel refuses test frames shorter than a full IPv4 header, so the
		// truncated-header cases use an IHL that points past the frame.
		{"ipv4 options cut short", cat(eth(0x0800), []byte{0x4f}, make([]byte, 30)), nil, "truncated"},
		{"ipv4 options cut short tcp", cat(eth(0x0800), ipv4(6, "10.0.0.1", "10.0.0.2", 0, make([]byte, 8), nil)), nil, "truncated"},
		{"tcp header cut short", cat(eth(0x0800), ipv4(6, "10.0.0.1", "10.0.0.2", 0, nil, tcpSyn[:10])), nil, "truncated"},
		{"ipv6 tcp cut short", cat(eth(0x86dd), ipv6(6, h6a, h6b, tcpSyn[:12])), nil, "truncated"},
		{"ipv6 ext cut short", cat(eth(0x86dd), ipv6(0, h6a, h6b, ext6(6, 3)[:16])), nil, "truncated"},
		{"bad ip version", cat(eth(0x0800), ipv6(6, h6a, h6b, tcpSyn)), nil, "malformed"},
		{"bad ihl", cat(eth(0x0800), []byte{0x44}, make([]byte, 30)), nil, "malformed"},
		{"garbage", []byte("\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04\x05\x06\x12\x34garbage-garbage-garbage"), nil, "non_ip"},
	}
	netns := selfNetns(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := load(t, Config{})
			for _, dir := range []struct {
				p    *ebpf.Program
				want decode.Direction
			}{{d.Ingress(), decode.DirIngress}, {d.Egress(), decode.DirEgress}} {
				before := stats(t, d)
				run(t, dir.p, c.frame)
				evs := drain(t, d)
				after := stats(t, d)
				if after["tc_packets"] != before["tc_packets"]+1 {
					t.Fatalf("tc_packets %d -> %d", before["tc_packets"], after["tc_packets"])
				}
				if c.want == nil {
					if len(evs) != 0 {
						t.Fatalf("unexpected events: %+v", evs)
					}
					if after[c.stat] != before[c.stat]+1 {
						t.Fatalf("stat %s %d -> %d", c.stat, before[c.stat], after[c.stat])
					}
					continue
				}
				if len(evs) != 1 {
					t.Fatalf("got %d events, want 1: %+v", len(evs), evs)
				}
				ev := evs[0]
				if got := fieldsOf(ev); got != *c.want {
					t.Fatalf("%v:\n got  %+v\n want %+v", dir.want, got, *c.want)
				}
				if ev.Kind != decode.KindFlow || ev.Direction != dir.want || ev.FlowReason != decode.ReasonNew ||
					ev.Packets != 1 || ev.Bytes != uint64(len(c.frame)) || ev.PktLen != uint32(len(c.frame)) ||
					ev.Ifindex != 1 || ev.Netns != netns || ev.ParseStatus != decode.ParseOK {
					t.Fatalf("%v: bad flow metadata: %+v", dir.want, ev)
				}
				if after["flow_events"] != before["flow_events"]+1 {
					t.Fatalf("flow_events did not move")
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func tcpFrame(sport uint16, flags uint8, payload int) []byte {
	return cat(eth(0x0800), ipv4(6, "10.1.0.1", "10.1.0.2", 0, nil, cat(tcp(sport, 443, flags), make([]byte, payload))))
}

func TestAggregation(t *testing.T) {
	d := load(t, Config{})
	pinCPU(t, -1)
	var frames [][]byte
	frames = append(frames, tcpFrame(50000, decode.TCPSyn, 0))
	for i := 0; i < 998; i++ {
		frames = append(frames, tcpFrame(50000, decode.TCPAck, i%100))
	}
	frames = append(frames, tcpFrame(50000, decode.TCPRst|decode.TCPAck, 0))
	var total uint64
	for _, f := range frames {
		run(t, d.Ingress(), f)
		total += uint64(len(f))
	}
	evs := drain(t, d)
	if len(evs) != 2 {
		t.Fatalf("got %d events for 1000 packets, want 2 (new, rst): %+v", len(evs), evs)
	}
	if evs[0].FlowReason != decode.ReasonNew || evs[0].Packets != 1 || evs[0].TCPFlags != decode.TCPSyn {
		t.Fatalf("first event: %+v", evs[0])
	}
	if evs[1].FlowReason != decode.ReasonTCPFlags || evs[1].Packets != 999 ||
		evs[1].TCPFlags != decode.TCPRst|decode.TCPAck {
		t.Fatalf("second event: %+v", evs[1])
	}
	if got := evs[0].Bytes + evs[1].Bytes; got != total {
		t.Fatalf("bytes %d, want %d", got, total)
	}
}

func TestPeriodicAndIdleFlush(t *testing.T) {
	const interval = 100 * time.Millisecond
	d := load(t, Config{FlowReportInterval: interval})
	pinCPU(t, -1)
	f := tcpFrame(51000, decode.TCPAck, 10)
	run(t, d.Egress(), f) // NEW
	run(t, d.Egress(), f) // counted, not reported
	time.Sleep(interval + 20*time.Millisecond)
	run(t, d.Egress(), f) // PERIODIC with 2 packets
	run(t, d.Egress(), f)
	run(t, d.Egress(), f) // 2 unreported
	evs := drain(t, d)
	if len(evs) != 2 || evs[0].FlowReason != decode.ReasonNew || evs[1].FlowReason != decode.ReasonPeriodic ||
		evs[1].Packets != 2 || evs[1].Bytes != 2*uint64(len(f)) {
		t.Fatalf("events: %+v", evs)
	}

	var flushed []decode.Event
	collect := func(ev *decode.Event) { flushed = append(flushed, *ev) }
	if n, err := d.FlushIdle(collect); err != nil || n != 0 {
		t.Fatalf("flush of a busy entry: n=%d err=%v", n, err)
	}
	time.Sleep(interval + 20*time.Millisecond)
	if n, err := d.FlushIdle(collect); err != nil || n != 1 {
		t.Fatalf("idle flush: n=%d err=%v", n, err)
	}
	ev := flushed[0]
	if ev.FlowReason != decode.ReasonIdleFlush || ev.Packets != 2 || ev.Bytes != 2*uint64(len(f)) ||
		ev.Direction != decode.DirEgress || ev.Src != a("10.1.0.1") || ev.DstPort != 443 || ev.SrcPort != 51000 ||
		ev.TCPFlags != decode.TCPAck || ev.EtherType != 0x0800 || ev.Netns != selfNetns(t) || ev.Time.IsZero() {
		t.Fatalf("idle flush event: %+v", ev)
	}
	if n, _ := d.FlushIdle(collect); n != 0 {
		t.Fatalf("flushed the same counts twice")
	}
	time.Sleep(interval + 20*time.Millisecond) // now idle > 2x interval
	if _, err := d.FlushIdle(collect); err != nil {
		t.Fatal(err)
	}
	var k ftFtFlowKey
	var v ftFtFlowVal
	if it := d.objs.FtFlows.Iterate(); it.Next(&k, &v) {
		t.Fatalf("entry not deleted after 2x interval: %+v", k)
	}
	run(t, d.Egress(), f)
	if evs := drain(t, d); len(evs) != 1 || evs[0].FlowReason != decode.ReasonNew {
		t.Fatalf("after delete, want NEW: %+v", evs)
	}
}

// TestReportTimeAheadOfClock: an entry's last report may carry a time a
// little after the clock of the CPU counting the next packet (another CPU's
// per-jiffy clock memo, or FlushIdle's exact clock against the kernel's
// coarse one). That must read as "just reported", not as a wrapped-around
// interval that fires a periodic report.
func TestReportTimeAheadOfClock(t *testing.T) {
	d := load(t, Config{FlowReportInterval: time.Second})
	f := tcpFrame(51500, decode.TCPAck, 10)
	run(t, d.Egress(), f) // NEW
	if evs := drain(t, d); len(evs) != 1 || evs[0].FlowReason != decode.ReasonNew {
		t.Fatalf("events: %+v", evs)
	}
	var k ftFtFlowKey
	var v ftFtFlowVal
	it := d.objs.FtFlows.Iterate()
	if !it.Next(&k, &v) {
		t.Fatalf("no flow entry: %v", it.Err())
	}
	v.LastReportNs = uint64(monoNs()) + uint64(50*time.Millisecond)
	if err := d.objs.FtFlows.Update(&k, &v, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		run(t, d.Egress(), f)
	}
	if evs := drain(t, d); len(evs) != 0 {
		t.Fatalf("report time ahead of the clock fired reports: %+v", evs)
	}
	if err := d.flushFlowCache(); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.FtFlows.Lookup(&k, &v); err != nil || v.Packets != 10 {
		t.Fatalf("entry after 10 packets: %+v %v", v, err)
	}
}

// TestRunDeliversLoneEvent checks that a single event (no forced wakeup) is
// delivered promptly through Run, with a plausible wall time.
func TestRunDeliversLoneEvent(t *testing.T) {
	t.Run("netpoller", func(t *testing.T) {
		d := load(t, Config{})
		if d.wait == nil {
			t.Fatal("the ring buffer fd was not pollable by the Go runtime")
		}
		testLoneEvent(t, d)
	})
	// Where the netpoller refuses the fd, the reader's own wait is used.
	t.Run("epoll_wait", func(t *testing.T) {
		d := load(t, Config{})
		if err := d.wait.Close(); err != nil {
			t.Fatal(err)
		}
		d.wait = nil
		testLoneEvent(t, d)
	})
}

func testLoneEvent(t *testing.T, d *Datapath) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan decode.Event, 16)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func(ev *decode.Event) { got <- *ev }) }()
	time.Sleep(100 * time.Millisecond) // let Run block in its read
	start := time.Now()
	run(t, d.Ingress(), tcpFrame(52000, decode.TCPSyn, 0))
	select {
	case ev := <-got:
		lat := time.Since(start)
		// readPoll is 25ms; the bound leaves room for emulated (qemu TCG)
		// kernels in the matrix (~265ms seen on 5.10), and still fails an
		// event that waits for more events to wake the reader.
		if lat > time.Second {
			t.Errorf("lone event took %v", lat)
		}
		if skew := ev.Time.Sub(start); skew < -5*time.Millisecond || skew > time.Second {
			t.Errorf("wall time %v is %v away from send time", ev.Time, skew)
		}
		if ev.SrcPort != 52000 {
			t.Errorf("wrong event %+v", ev)
		}
	case <-time.After(time.Second):
		t.Fatal("no event within 1s")
	}
	// Close interrupts a waiting Run, which returns without error.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	waitErr(t, done, 2*time.Second, "Run, after Close")
	cancel()
}

// waitErr fails the test unless ch delivers a nil error within d; what
// names the call whose result ch carries.
func waitErr(t *testing.T, ch <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func TestLostCounter(t *testing.T) {
	d := load(t, Config{RingBufferBytes: os.Getpagesize()})
	for i := 0; i < 100; i++ { // 100 new flows * 184 bytes overflows one page
		run(t, d.Ingress(), tcpFrame(uint16(1000+i), decode.TCPAck, 0))
	}
	total, per, err := d.Lost()
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	if total == 0 || sum != total {
		t.Fatalf("lost total=%d per-cpu=%v", total, per)
	}
	if got := len(drain(t, d)); uint64(got)+total != 100 {
		t.Fatalf("read %d + lost %d != 100", got, total)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{{RingBufferBytes: 3 << 20}, {RingBufferBytes: 100}, {FlowReportInterval: -1}, {FlowTableEntries: -5},
		{MTUCheckMinLen: -1}, {MTUCheckMinLen: 70000}} {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

// TestABIMatchesGenerated ties pkg/decode's offsets to the C layout as
// compiled (bpf2go output), so a change in bpf/ft_event.h cannot silently
// desynchronize the decoder.
func TestABIMatchesGenerated(t *testing.T) {
	var f ftFtFlowEvent
	var dr ftFtDropEvent
	var tu ftFtTuple
	var h ftFtEventHdr
	var ct ftFtCt
	var ctt ftFtCtTuple
	var en ftFtEncap
	var x ftFtXlateEvent
	var m ftFtMtuEvent
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"hdr size", unsafe.Sizeof(h), decode.HdrSize},
		{"hdr type", unsafe.Offsetof(h.Type), decode.OffHdrType},
		{"hdr version", unsafe.Offsetof(h.Version), decode.OffHdrVersion},
		{"hdr len", unsafe.Offsetof(h.Len), decode.OffHdrLen},
		{"hdr cpu", unsafe.Offsetof(h.Cpu), decode.OffHdrCPU},
		{"hdr ts", unsafe.Offsetof(h.TsNs), decode.OffHdrTsNs},
		{"tuple size", unsafe.Sizeof(tu), decode.TupleSize},
		{"tuple saddr", unsafe.Offsetof(tu.Saddr), decode.OffTupleSaddr},
		{"tuple daddr", unsafe.Offsetof(tu.Daddr), decode.OffTupleDaddr},
		{"tuple sport", unsafe.Offsetof(tu.Sport), decode.OffTupleSport},
		{"tuple dport", unsafe.Offsetof(tu.Dport), decode.OffTupleDport},
		{"tuple ethertype", unsafe.Offsetof(tu.Ethertype), decode.OffTupleEtherType},
		{"tuple vlan", unsafe.Offsetof(tu.Vlan), decode.OffTupleVLAN},
		{"tuple ipver", unsafe.Offsetof(tu.IpVersion), decode.OffTupleIPVersion},
		{"tuple proto", unsafe.Offsetof(tu.Proto), decode.OffTupleProto},
		{"tuple flags", unsafe.Offsetof(tu.TcpFlags), decode.OffTupleTCPFlags},
		{"tuple icmp type", unsafe.Offsetof(tu.IcmpType), decode.OffTupleICMPType},
		{"tuple icmp code", unsafe.Offsetof(tu.IcmpCode), decode.OffTupleICMPCode},
		{"tuple status", unsafe.Offsetof(tu.Status), decode.OffTupleStatus},
		{"flow size", unsafe.Sizeof(f), decode.FlowSize},
		{"flow tuple", unsafe.Offsetof(f.Tuple), decode.OffFlowTuple},
		{"flow packets", unsafe.Offsetof(f.Packets), decode.OffFlowPackets},
		{"flow bytes", unsafe.Offsetof(f.Bytes), decode.OffFlowBytes},
		{"flow ifindex", unsafe.Offsetof(f.Ifindex), decode.OffFlowIfindex},
		{"flow netns", unsafe.Offsetof(f.Netns), decode.OffFlowNetns},
		{"flow pktlen", unsafe.Offsetof(f.PktLen), decode.OffFlowPktLen},
		{"flow dir", unsafe.Offsetof(f.Dir), decode.OffFlowDir},
		{"flow reason", unsafe.Offsetof(f.Reason), decode.OffFlowReason},
		{"flow rev flags", unsafe.Offsetof(f.RevTcpFlags), decode.OffFlowRevTCPFlags},
		{"flow rev packets", unsafe.Offsetof(f.RevPackets), decode.OffFlowRevPackets},
		{"flow rev bytes", unsafe.Offsetof(f.RevBytes), decode.OffFlowRevBytes},
		{"drop size", unsafe.Sizeof(dr), decode.DropSize},
		{"drop tuple", unsafe.Offsetof(dr.Tuple), decode.OffDropTuple},
		{"drop location", unsafe.Offsetof(dr.Location), decode.OffDropLocation},
		{"drop first", unsafe.Offsetof(dr.FirstNs), decode.OffDropFirstNs},
		{"drop last", unsafe.Offsetof(dr.LastNs), decode.OffDropLastNs},
		{"drop reason", unsafe.Offsetof(dr.Reason), decode.OffDropReason},
		{"drop ifindex", unsafe.Offsetof(dr.Ifindex), decode.OffDropIfindex},
		{"drop skb_iif", unsafe.Offsetof(dr.SkbIif), decode.OffDropSkbIif},
		{"drop netns", unsafe.Offsetof(dr.Netns), decode.OffDropNetns},
		{"drop pktlen", unsafe.Offsetof(dr.PktLen), decode.OffDropPktLen},
		{"drop count", unsafe.Offsetof(dr.Count), decode.OffDropCount},
		{"drop ct", unsafe.Offsetof(dr.Ct), decode.OffDropCT},
		{"flow ct", unsafe.Offsetof(f.Ct), decode.OffFlowCT},
		{"flow encap", unsafe.Offsetof(f.Encap), decode.OffFlowEncap},
		{"ct tuple size", unsafe.Sizeof(ctt), decode.CTTupleSize},
		{"ct tuple saddr", unsafe.Offsetof(ctt.Saddr), decode.OffCTTupleSaddr},
		{"ct tuple daddr", unsafe.Offsetof(ctt.Daddr), decode.OffCTTupleDaddr},
		{"ct tuple sport", unsafe.Offsetof(ctt.Sport), decode.OffCTTupleSport},
		{"ct tuple dport", unsafe.Offsetof(ctt.Dport), decode.OffCTTupleDport},
		{"ct size", unsafe.Sizeof(ct), decode.CTSize},
		{"ct orig", unsafe.Offsetof(ct.Orig), decode.OffCTOrig},
		{"ct flags", unsafe.Offsetof(ct.Flags), decode.OffCTFlags},
		{"ct ipver", unsafe.Offsetof(ct.IpVersion), decode.OffCTIPVersion},
		{"encap size", unsafe.Sizeof(en), decode.EncapSize},
		{"encap saddr", unsafe.Offsetof(en.Saddr), decode.OffEncapSaddr},
		{"encap daddr", unsafe.Offsetof(en.Daddr), decode.OffEncapDaddr},
		{"encap vni", unsafe.Offsetof(en.Vni), decode.OffEncapVNI},
		{"encap dport", unsafe.Offsetof(en.Dport), decode.OffEncapDport},
		{"encap ipver", unsafe.Offsetof(en.IpVersion), decode.OffEncapIPVersion},
		{"xlate size", unsafe.Sizeof(x), decode.XlateSize},
		{"xlate tuple", unsafe.Offsetof(x.Tuple), decode.OffXlateTuple},
		{"xlate ct", unsafe.Offsetof(x.Ct), decode.OffXlateCT},
		{"xlate xlat", unsafe.Offsetof(x.Xlat), decode.OffXlateXlat},
		{"xlate ifindex", unsafe.Offsetof(x.Ifindex), decode.OffXlateIfindex},
		{"xlate netns", unsafe.Offsetof(x.Netns), decode.OffXlateNetns},
		{"xlate dir", unsafe.Offsetof(x.Dir), decode.OffXlateDir},
		{"mtu size", unsafe.Sizeof(m), decode.MTUSize},
		{"mtu tuple", unsafe.Offsetof(m.Tuple), decode.OffMTUTuple},
		{"mtu emb", unsafe.Offsetof(m.Emb), decode.OffMTUEmb},
		{"mtu emb proto", unsafe.Offsetof(m.EmbProto), decode.OffMTUEmbProto},
		{"mtu emb ipver", unsafe.Offsetof(m.EmbIpVersion), decode.OffMTUEmbIPVersion},
		{"mtu kind", unsafe.Offsetof(m.Kind), decode.OffMTUKind},
		{"mtu dir", unsafe.Offsetof(m.Dir), decode.OffMTUDir},
		{"mtu pktlen", unsafe.Offsetof(m.PktLen), decode.OffMTUPktLen},
		{"mtu mtu", unsafe.Offsetof(m.Mtu), decode.OffMTUMTU},
		{"mtu ifindex", unsafe.Offsetof(m.Ifindex), decode.OffMTUIfindex},
		{"mtu egress", unsafe.Offsetof(m.EgressIfindex), decode.OffMTUEgressIfindex},
		{"mtu netns", unsafe.Offsetof(m.Netns), decode.OffMTUNetns},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: C layout %d, decode constant %d", c.name, c.got, c.want)
		}
	}
}

// TestCounterOffsets checks that user space reads the counters the BPF
// side keeps in its per-CPU state (struct ft_scratch, struct ft_drop_hdr)
// where the object's BTF says they are, as 8-byte integers.
func TestCounterOffsets(t *testing.T) {
	spec, err := loadFt()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		typ, path string
		off       int
	}{
		{"ft_scratch", "tc_packets", scratchTCPacketsOff},
		{"ft_scratch", "fc_hits", scratchFCHitsOff},
		{"ft_drop_hdr", "seen", dropHdrSeenOff},
		{"ft_drop_hdr", "folded", dropHdrFoldedOff},
		{"ft_drop_hdr", "memo_hits", dropHdrMemoHitsOff},
		{"ft_drop_hdr", "parsed_fast", dropHdrParsedFastOff},
		{"ft_drop_hdr", "memo.pending", dropHdrPendingOff},
	} {
		var st *btf.Struct
		if err := spec.Types.TypeByName(c.typ, &st); err != nil {
			t.Fatal(err)
		}
		off, size, err := memberAt(st, strings.Split(c.path, "."))
		if err != nil {
			t.Fatalf("%s.%s: %v", c.typ, c.path, err)
		}
		if off != c.off || size != 8 {
			t.Errorf("%s.%s: %d bytes at %d, user space reads offset %d", c.typ, c.path, size, off, c.off)
		}
	}
}

// TestRodataOneCacheLine: the load-time knobs (bpf/ft_config.h), which the
// programs still load on every packet and drop, stay within one 64-byte
// cache line. The map value is page-aligned (.rodata is mmapable).
func TestRodataOneCacheLine(t *testing.T) {
	spec, err := loadFt()
	if err != nil {
		t.Fatal(err)
	}
	ro, ok := spec.Maps[".rodata"]
	if !ok {
		t.Fatal("no .rodata in the object")
	}
	if ro.ValueSize > 64 {
		t.Errorf(".rodata is %d bytes: its knobs span two cache lines (define them widest first)", ro.ValueSize)
	}
}

// memberAt finds a (nested) member of st: its offset and size in bytes.
func memberAt(st *btf.Struct, path []string) (int, int, error) {
	for _, m := range st.Members {
		if m.Name != path[0] {
			continue
		}
		off := int(m.Offset.Bytes())
		if len(path) == 1 {
			size, err := btf.Sizeof(m.Type)
			return off, size, err
		}
		inner, ok := btf.UnderlyingType(m.Type).(*btf.Struct)
		if !ok {
			return 0, 0, fmt.Errorf("%s is not a struct", m.Name)
		}
		o, size, err := memberAt(inner, path[1:])
		return off + o, size, err
	}
	return 0, 0, fmt.Errorf("no member %s in struct %s", path[0], st.Name)
}

// TestFlushIdleBatches fills the flow table past several lookup batches and
// checks the batched walk visits every entry once: idle ones with counts are
// emitted, stale ones deleted, including keys another writer removed first.
func TestFlushIdleBatches(t *testing.T) {
	// Seconds of margin: under emulation (the kernel matrix) the batch
	// update and the walks below take far more than 100 ms.
	const interval = 2 * time.Second
	d := load(t, Config{FlowReportInterval: interval})
	const n = 3*flowBatch + 17
	// Entry times are CLOCK_MONOTONIC; a guest booted seconds ago must be
	// old enough for "now - 3 intervals" to exist.
	if up := time.Duration(monoNs()); up < 4*interval {
		time.Sleep(4*interval - up)
	}
	now := uint64(monoNs())
	keys := make([]ftFtFlowKey, n)
	vals := make([]ftFtFlowVal, n)
	for i := range keys {
		keys[i] = ftFtFlowKey{Sport: uint16(i), Dport: 80, Proto: 6, IpVersion: 4, Dir: 1, Ifindex: 1}
		keys[i].Saddr[0], keys[i].Daddr[0] = 10, 10
		switch i % 3 {
		case 0: // busy: left alone
			vals[i].LastSeenNs = now
		case 1: // idle with counts: emitted and kept
			vals[i].LastSeenNs = now - uint64(interval) - uint64(interval/4)
			vals[i].Packets = uint64(i + 1)
		case 2: // stale, no counts: deleted
			vals[i].LastSeenNs = now - 3*uint64(interval)
		}
	}
	if _, err := d.objs.FtFlows.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
	seen := map[uint16]int{}
	if err := d.walkFlows(func(k *ftFtFlowKey, _ *ftFtFlowVal) { seen[k.Sport]++ }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("walk saw %d distinct entries, want %d", len(seen), n)
	}
	for p, c := range seen {
		if c != 1 {
			t.Fatalf("entry %d visited %d times", p, c)
		}
	}
	// The fallback for kernels without batch operations sees the same.
	clear(seen)
	if err := d.walkFlowsOneByOne(func(k *ftFtFlowKey, _ *ftFtFlowVal) { seen[k.Sport]++ }); err != nil || len(seen) != n {
		t.Fatalf("one-by-one walk saw %d entries (err %v), want %d", len(seen), err, n)
	}
	var packets uint64
	got, err := d.FlushIdle(func(ev *decode.Event) {
		if ev.SrcPort%3 != 1 || ev.FlowReason != decode.ReasonIdleFlush {
			t.Errorf("unexpected flush event %+v", ev)
		}
		packets += ev.Packets
	})
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	wantN := 0
	for i := 1; i < n; i += 3 {
		want += uint64(i + 1)
		wantN++
	}
	if got != wantN || packets != want {
		t.Fatalf("emitted %d events with %d packets, want %d with %d", got, packets, wantN, want)
	}
	left := 0
	if err := d.walkFlows(func(k *ftFtFlowKey, v *ftFtFlowVal) {
		left++
		if k.Sport%3 == 2 {
			t.Errorf("stale entry %d not deleted", k.Sport)
		}
		if k.Sport%3 == 1 && v.Packets != 0 {
			t.Errorf("flushed entry %d still has %d packets", k.Sport, v.Packets)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if want := n - countMod(n, 2); left != want {
		t.Fatalf("%d entries left, want %d", left, want)
	}
	// Keys already gone (2 and 5 are stale: deleted above) do not stop the
	// deletion of the others.
	gone := []ftFtFlowKey{keys[2], keys[0], keys[5], keys[3]}
	if err := deleteKeys(d.objs.FtFlows, gone); err != nil {
		t.Fatal(err)
	}
	var v ftFtFlowVal
	for _, k := range []ftFtFlowKey{keys[0], keys[3]} {
		if err := d.objs.FtFlows.Lookup(&k, &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("key %d not deleted: %v", k.Sport, err)
		}
	}
}

// countMod counts i in [0,n) with i%3 == r.
func countMod(n, r int) int {
	c := 0
	for i := range n {
		if i%3 == r {
			c++
		}
	}
	return c
}

// TestCloseWaitsForRun: Close returns only after a running Run has, so
// Run's table walks never use a map Close has closed (the race detector
// once caught a fold walk reading a map's descriptor while Close closed it).
func TestCloseWaitsForRun(t *testing.T) {
	d := load(t, Config{})
	inFn, release := make(chan struct{}), make(chan struct{})
	runDone := make(chan error, 1)
	go func() {
		var once bool
		runDone <- d.Run(context.Background(), func(*decode.Event) {
			if !once {
				once = true
				close(inFn)
				<-release // Run is busy (as in a walk) while Close is called
			}
		})
	}()
	run(t, d.Ingress(), tcpFrame(53000, decode.TCPSyn, 0))
	select {
	case <-inFn:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not deliver the event")
	}
	closeDone := make(chan error, 1)
	go func() { closeDone <- d.Close() }()
	select {
	case err := <-closeDone:
		t.Fatalf("Close returned (%v) while Run was still busy", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	waitErr(t, runDone, 5*time.Second, "Run, after Close")
	waitErr(t, closeDone, 5*time.Second, "Close, after Run")
}

// TestICMPFlowsKeepTheirType: ICMP messages of different types between the
// same two addresses are flows of their own, and every report of one, the
// idle walk's included, names its type and code (the key holds them where
// other protocols hold ports). Sharing one entry, echo replies were counted
// into a neighbour advertisement's flow, and idle reports said type 0.
func TestICMPFlowsKeepTheirType(t *testing.T) {
	const interval = 100 * time.Millisecond
	d := load(t, Config{FlowReportInterval: interval})
	pinCPU(t, -1)
	frames := []struct {
		proto     uint8
		typ, code uint8
		frame     []byte
	}{
		{1, 8, 0, cat(eth(0x0800), ipv4(1, "10.1.0.1", "10.1.0.2", 0, nil, icmpEcho(8)))},
		{1, 3, 4, cat(eth(0x0800), ipv4(1, "10.1.0.1", "10.1.0.2", 0, nil, []byte{3, 4, 0, 0, 0, 0, 0x05, 0x46}))},
		{58, 128, 0, cat(eth(0x86dd), ipv6(58, "fd00::1", "fd00::2", icmpEcho(128)))},
		{58, 136, 0, cat(eth(0x86dd), ipv6(58, "fd00::1", "fd00::2", []byte{136, 0, 0, 0, 0, 0, 0, 0}))},
	}
	for _, f := range frames {
		for range 2 {
			run(t, d.Egress(), f.frame)
		}
	}
	evs := drain(t, d)
	if len(evs) != len(frames) {
		t.Fatalf("%d reports, want a NEW for each of %d ICMP types: %+v", len(evs), len(frames), evs)
	}
	time.Sleep(interval + 20*time.Millisecond)
	if _, err := d.FlushIdle(func(ev *decode.Event) { evs = append(evs, *ev) }); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2*len(frames) {
		t.Fatalf("%d reports after the idle walk, want %d: %+v", len(evs), 2*len(frames), evs)
	}
	// Each type once among the NEW reports (in order) and once among the
	// idle walk's (in the table's order).
	for pass, reports := range [][]decode.Event{evs[:len(frames)], evs[len(frames):]} {
		seen := map[[3]uint8]bool{}
		for i, ev := range reports {
			if pass == 0 && (ev.Proto != frames[i].proto || ev.ICMPType != frames[i].typ) {
				t.Errorf("NEW report %d: proto %d type %d, want proto %d type %d", i, ev.Proto, ev.ICMPType, frames[i].proto, frames[i].typ)
			}
			if ev.Packets != 1 || ev.SrcPort != 0 || ev.DstPort != 0 {
				t.Errorf("report %v: %d packets, ports %d/%d; want 1 packet, no ports", ev.FlowReason, ev.Packets, ev.SrcPort, ev.DstPort)
			}
			seen[[3]uint8{ev.Proto, ev.ICMPType, ev.ICMPCode}] = true
		}
		for _, f := range frames {
			if !seen[[3]uint8{f.proto, f.typ, f.code}] {
				t.Errorf("pass %d: no report of proto %d type %d code %d: %+v", pass, f.proto, f.typ, f.code, reports)
			}
		}
	}
}
