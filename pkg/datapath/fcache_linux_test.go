//go:build linux

package datapath

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// TestFlowCacheExact: packets counted in the CPUs' flow-cache slots reach
// the reports exactly once. A report of the entry takes the slot of its own
// CPU with it; another CPU's slot arrives with the idle flush, which writes
// every CPU's slots back before it walks the table.
func TestFlowCacheExact(t *testing.T) {
	const interval = 200 * time.Millisecond
	d := load(t, Config{FlowReportInterval: interval})
	if !d.Features().FlowCache {
		t.Fatal("flow cache off on a kernel that can write its slots back")
	}
	cpus := twoCPUs(t)
	f := tcpFrame(52000, decode.TCPAck, 10)
	rst := tcpFrame(52000, decode.TCPRst|decode.TCPAck, 0)
	var sent, sentBytes uint64
	send := func(frame []byte, n int) {
		for range n {
			run(t, d.Egress(), frame)
			sent++
			sentBytes += uint64(len(frame))
		}
	}
	st0 := stats(t, d)

	pinCPU(t, cpus[0])
	send(f, 50) // NEW, 1 into the entry (it fills CPU A's slot), then 48 in the slot
	var k ftFtFlowKey
	var v ftFtFlowVal
	if it := d.objs.FtFlows.Iterate(); !it.Next(&k, &v) || v.Packets != 1 {
		t.Fatalf("entry: %+v (the slot should hold the packets after the second)", v)
	}
	pinCPU(t, cpus[1])
	send(f, 30) // 1 into the entry, 29 in CPU B's slot
	send(rst, 1)

	evs := drain(t, d)
	if len(evs) != 2 || evs[0].FlowReason != decode.ReasonNew || evs[1].FlowReason != decode.ReasonTCPFlags {
		t.Fatalf("events: %+v", evs)
	}
	// RST's report: the entry's two packets, CPU B's slot and the RST itself.
	if evs[1].Packets != 32 || evs[1].TCPFlags != decode.TCPRst|decode.TCPAck {
		t.Fatalf("RST report: %d packets flags %#x, want 32 (CPU A's 48 are still in its slot)",
			evs[1].Packets, evs[1].TCPFlags)
	}
	time.Sleep(interval + 20*time.Millisecond)
	collect := func(ev *decode.Event) { evs = append(evs, *ev) }
	if _, err := d.FlushIdle(collect); err != nil {
		t.Fatal(err)
	}
	var got, gotBytes uint64
	for _, ev := range evs {
		got += ev.Packets
		gotBytes += ev.Bytes
	}
	if len(evs) != 3 || evs[2].FlowReason != decode.ReasonIdleFlush || evs[2].Packets != 48 ||
		got != sent || gotBytes != sentBytes {
		t.Fatalf("reported %d packets %d bytes in %d events, sent %d and %d: %+v",
			got, gotBytes, len(evs), sent, sentBytes, evs)
	}
	st1 := stats(t, d)
	if hits := st1["flow_cache_hits"] - st0["flow_cache_hits"]; hits != 48+29 {
		t.Fatalf("flow_cache_hits %d, want %d", hits, 48+29)
	}
	if st1["tc_packets"]-st0["tc_packets"] != sent {
		t.Fatalf("tc_packets %d, want %d", st1["tc_packets"]-st0["tc_packets"], sent)
	}
}

// TestFlowCacheShortConnection: a connection that is over after a few
// packets (connect, then RST, as under connection churn), its packets on
// two CPUs, is reported in two events, NEW and the RST's with every packet
// since: no count is left in a slot for a later idle report of its own.
func TestFlowCacheShortConnection(t *testing.T) {
	const interval = 200 * time.Millisecond
	d := load(t, Config{FlowReportInterval: interval})
	cpus := twoCPUs(t)
	pinCPU(t, cpus[0])
	run(t, d.Egress(), tcpFrame(52200, decode.TCPSyn, 0))
	run(t, d.Egress(), tcpFrame(52200, decode.TCPAck, 0))
	pinCPU(t, cpus[1])
	run(t, d.Egress(), tcpFrame(52200, decode.TCPRst|decode.TCPAck, 0))
	evs := drain(t, d)
	time.Sleep(interval + 20*time.Millisecond)
	if _, err := d.FlushIdle(func(ev *decode.Event) { evs = append(evs, *ev) }); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].FlowReason != decode.ReasonNew || evs[0].Packets != 1 ||
		evs[1].FlowReason != decode.ReasonTCPFlags || evs[1].Packets != 2 {
		t.Fatalf("want NEW of 1 packet and the RST's report of 2, got %+v", evs)
	}
}

// TestFlowCacheOrphaned: counts a slot holds for an entry that is gone
// when they are written back are counted, not silently lost.
func TestFlowCacheOrphaned(t *testing.T) {
	d := load(t, Config{fcHold: time.Minute})
	pinCPU(t, -1)
	f := tcpFrame(52100, decode.TCPAck, 10)
	for range 12 { // NEW, one into the entry (it fills the slot), 10 in the slot
		run(t, d.Egress(), f)
	}
	var k ftFtFlowKey
	var v ftFtFlowVal
	if it := d.objs.FtFlows.Iterate(); !it.Next(&k, &v) {
		t.Fatal("no flow entry")
	}
	if err := d.objs.FtFlows.Delete(&k); err != nil {
		t.Fatal(err)
	}
	st0 := stats(t, d)
	if err := d.flushFlowCache(); err != nil {
		t.Fatal(err)
	}
	if n := stats(t, d)["flow_cache_orphaned"] - st0["flow_cache_orphaned"]; n != 10 {
		t.Fatalf("flow_cache_orphaned %d, want the slot's 10", n)
	}
	// The slot is empty now: the next packet makes a NEW entry of 1.
	drain(t, d)
	run(t, d.Egress(), f)
	if evs := drain(t, d); len(evs) != 1 || evs[0].FlowReason != decode.ReasonNew || evs[0].Packets != 1 {
		t.Fatalf("after write-back: %+v", evs)
	}
}

// twoCPUs returns the CPUs this test may run on, at least two of them: a
// test of what happens across CPUs skips (fails when privileged tests
// must run) otherwise.
func twoCPUs(t *testing.T) []int {
	t.Helper()
	cpus := allowedCPUs(t)
	if len(cpus) < 2 {
		testutil.SkipInKernelMatrix(t, "needs two CPUs; the guests boot with one")
		testutil.SkipOrFail(t, "needs two CPUs")
	}
	return cpus
}

func allowedCPUs(t *testing.T) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := 0; c < 1024; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// TestFlowCacheFastPath: every kind of packet is counted exactly once
// whether tc's fast path (ft_fc_fast: matched straight from its headers)
// or the full parse takes it, and the fast path takes exactly the kinds it
// is for. Which one ran shows in the per-CPU scratch tuple, which only the
// full parse writes: after an ARP frame (zeroed tuple, no slot touched) it
// still says port 0 when the next packet took the fast path.
func TestFlowCacheFastPath(t *testing.T) {
	const n = 20
	d := load(t, Config{FlowReportInterval: time.Hour, fcHold: time.Minute})
	cpu := pinCPU(t, -1)
	sportAt := scratchSportOffset(t)
	arp := cat(eth(0x0806), make([]byte, 28))
	big := cat(tcp(41005, 443, decode.TCPAck), make([]byte, 1380))
	inner := cat(eth(0x0800), ipv4(6, "10.244.0.5", "10.244.1.7", 0, nil, tcp(41007, 8080, decode.TCPAck)))
	for _, c := range []struct {
		name  string
		frame []byte
		sport uint16
		fast  bool
	}{
		{"ipv4 tcp", cat(eth(0x0800), ipv4(6, "10.9.0.1", "10.9.0.2", 0, nil, tcp(41000, 80, decode.TCPAck))), 41000, true},
		{"ipv4 tcp, other addresses", cat(eth(0x0800), ipv4(6, "10.9.0.3", "10.9.0.4", 0, nil, tcp(41000, 80, decode.TCPAck))), 41000, true},
		{"ipv6 tcp", cat(eth(0x86dd), ipv6(6, "fd09::1", "fd09::2", tcp(41001, 80, decode.TCPAck))), 41001, true},
		{"ipv4 udp", cat(eth(0x0800), ipv4(17, "10.9.0.1", "10.9.0.2", 0, nil, udp(41002, 53, make([]byte, 20)))), 41002, true},
		{"ipv6 udp", cat(eth(0x86dd), ipv6(17, "fd09::1", "fd09::2", udp(41003, 53, make([]byte, 20)))), 41003, true},
		{"ipv4 tcp, DF above the MTU-check threshold", cat(eth(0x0800), ipv4(6, "10.9.0.1", "10.9.0.2", 0x4000, nil, big)), 41005, true},
		{"ipv4 tcp with options", cat(eth(0x0800), ipv4(6, "10.9.0.1", "10.9.0.2", 0, []byte{1, 1, 1, 0}, tcp(41004, 80, decode.TCPAck))), 41004, false},
		{"802.1q ipv4 udp", cat(eth(0x8100), vlanTag(100, 0x0800), ipv4(17, "10.9.0.1", "10.9.0.2", 0, nil, udp(41006, 53, nil))), 41006, false},
		{"ipv6 tcp after a destination options header", cat(eth(0x86dd), ipv6(60, "fd09::1", "fd09::2", cat(ext6(6, 0), tcp(41008, 80, decode.TCPAck)))), 41008, false},
		{"vxlan (the inner flow)", cat(eth(0x0800), ipv4(17, "192.168.9.1", "192.168.9.2", 0, nil, udp(41009, 4789, cat(vxlanHdr(7, true), inner)))), 41007, false},
	} {
		for _, p := range []*ebpf.Program{d.Ingress(), d.Egress()} {
			drain(t, d)
			st0 := stats(t, d)
			for range n - 1 {
				run(t, p, c.frame)
			}
			run(t, p, arp)
			run(t, p, c.frame)
			if got := scratchSport(t, d, cpu, sportAt); (got == 0) != c.fast {
				t.Errorf("%s at %s: the last packet took the fast path: %v, want %v", c.name, p, got == 0, c.fast)
			} else if !c.fast && got != c.sport {
				t.Errorf("%s at %s: full parse left port %d, want %d", c.name, p, got, c.sport)
			}
			// The first packet made the entry, the second filled the slot.
			if hits := stats(t, d)["flow_cache_hits"] - st0["flow_cache_hits"]; hits != n-2 {
				t.Errorf("%s at %s: %d flow cache hits, want %d", c.name, p, hits, n-2)
			}
			if err := d.flushFlowCache(); err != nil {
				t.Fatal(err)
			}
			var pk, by uint64
			var k ftFtFlowKey
			var v ftFtFlowVal
			for it := d.objs.FtFlows.Iterate(); it.Next(&k, &v); {
				if k.Sport == c.sport {
					pk += v.Packets
					by += v.Bytes
				}
				if err := d.objs.FtFlows.Delete(&k); err != nil {
					t.Fatal(err)
				}
			}
			// The NEW report carried the first packet.
			if pk != n-1 || by != uint64((n-1)*len(c.frame)) {
				t.Errorf("%s at %s: entry holds %d packets %d bytes after NEW, want %d and %d",
					c.name, p, pk, by, n-1, (n-1)*len(c.frame))
			}
		}
	}
}

// scratchSportOffset finds ft_scratch.t.sport in the object's BTF.
func scratchSportOffset(t *testing.T) int {
	t.Helper()
	spec, err := loadFt()
	if err != nil {
		t.Fatal(err)
	}
	var st *btf.Struct
	if err := spec.Types.TypeByName("ft_scratch", &st); err != nil {
		t.Fatal(err)
	}
	off, size, err := memberAt(st, []string{"t", "sport"})
	if err != nil || size != 2 {
		t.Fatalf("ft_scratch.t.sport: %v (size %d)", err, size)
	}
	return off
}

// scratchSport reads the source port of the tuple tc last parsed in full
// on cpu.
func scratchSport(t *testing.T, d *Datapath, cpu, off int) uint16 {
	t.Helper()
	var per [][]byte
	if err := d.objs.FtScratch.Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint16(per[cpu][off:])
}

// TestFastParseIsTheGeneralParse: a packet the flow cache's fast parse read
// but could not count in a slot (a SYN, FIN or RST, a first packet) is
// accounted from the tuple and metadata that parse left, not parsed again.
// Its reports must be the ones the general parse gives: the same frames
// through a datapath without the flow cache report the same events.
func TestFastParseIsTheGeneralParse(t *testing.T) {
	fast := load(t, Config{})
	if !fast.Features().FlowCache {
		t.Fatal("flow cache off on a kernel that can write its slots back")
	}
	general := load(t, Config{NoFlowCache: true})
	pinCPU(t, -1)
	type frame struct {
		ingress bool
		b       []byte
	}
	v4tcp := func(src, dst string, sport, dport uint16, flags uint8, fragOff uint16, payload int) []byte {
		return cat(eth(0x0800), ipv4(6, src, dst, fragOff, nil, cat(tcp(sport, dport, flags), make([]byte, payload))))
	}
	v6tcp := func(src, dst string, sport, dport uint16, flags uint8) []byte {
		return cat(eth(0x86dd), ipv6(6, src, dst, tcp(sport, dport, flags)))
	}
	frames := []frame{
		// A connection at one device: out through egress, back through ingress.
		{false, v4tcp("10.1.0.1", "10.1.0.2", 41000, 443, decode.TCPSyn, 0x4000, 0)},
		{true, v4tcp("10.1.0.2", "10.1.0.1", 443, 41000, decode.TCPSyn|decode.TCPAck, 0x4000, 0)},
		{false, v4tcp("10.1.0.1", "10.1.0.2", 41000, 443, decode.TCPAck, 0x4000, 0)},
		{false, v4tcp("10.1.0.1", "10.1.0.2", 41000, 443, decode.TCPAck|decode.TCPPsh, 0x4000, 1200)},
		{true, v4tcp("10.1.0.2", "10.1.0.1", 443, 41000, decode.TCPFin|decode.TCPAck, 0x4000, 0)},
		{false, v4tcp("10.1.0.1", "10.1.0.2", 41000, 443, decode.TCPFin|decode.TCPAck, 0x4000, 0)},
		{true, v4tcp("10.1.0.2", "10.1.0.1", 443, 41000, decode.TCPAck, 0x4000, 0)},
		// A SYN with data above the MTU check's minimum, at ingress.
		{true, v4tcp("10.1.0.9", "10.1.0.1", 41001, 80, decode.TCPSyn, 0x4000, 1300)},
		// IPv6, both ways, and a refused connection's RST.
		{false, v6tcp("fd00::1", "fd00::2", 41002, 443, decode.TCPSyn)},
		{true, v6tcp("fd00::2", "fd00::1", 443, 41002, decode.TCPRst|decode.TCPAck)},
		// UDP: a first packet each way, IPv4 and IPv6.
		{false, cat(eth(0x0800), ipv4(17, "10.1.0.1", "10.1.0.3", 0, nil, udp(41003, 53, make([]byte, 40))))},
		{true, cat(eth(0x0800), ipv4(17, "10.1.0.3", "10.1.0.1", 0, nil, udp(53, 41003, make([]byte, 90))))},
		{false, cat(eth(0x86dd), ipv6(17, "fd00::1", "fd00::3", udp(41004, 53, make([]byte, 20))))},
	}
	for _, d := range []*Datapath{fast, general} {
		for _, f := range frames {
			p := d.Egress()
			if f.ingress {
				p = d.Ingress()
			}
			run(t, p, f.b)
		}
	}
	st := stats(t, fast)
	evFast, evGeneral := drain(t, fast), drain(t, general)
	if len(evFast) < len(frames)/2 {
		t.Fatalf("%d events for %d frames: %+v", len(evFast), len(frames), evFast)
	}
	if len(evFast) != len(evGeneral) {
		t.Fatalf("%d events with the fast parse, %d with the general one:\n%+v\n%+v", len(evFast), len(evGeneral), evFast, evGeneral)
	}
	for i := range evFast {
		a, b := evFast[i], evGeneral[i]
		a.TimeNs, a.Time, a.CPU = 0, time.Time{}, 0
		b.TimeNs, b.Time, b.CPU = 0, time.Time{}, 0
		if a != b {
			t.Errorf("event %d:\nfast parse:    %+v\ngeneral parse: %+v", i, a, b)
		}
	}
	// The data packet after the ACK that filled the slot was counted there.
	if st["flow_cache_hits"] == 0 {
		t.Errorf("no flow-cache hit: the frames never took the fast path's count")
	}
}
