//go:build linux

package datapath

import (
	"testing"
	"time"

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
	cpus := allowedCPUs(t)
	if len(cpus) < 2 {
		testutil.SkipInKernelMatrix(t, "needs two CPUs; the guests boot with one")
		testutil.SkipOrFail(t, "needs two CPUs")
	}
	f := tcpFrame(52000, decode.TCPAck, 10)
	fin := tcpFrame(52000, decode.TCPFin|decode.TCPAck, 0)
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
	send(f, 50) // NEW, then 49 in CPU A's slot
	var k ftFtFlowKey
	var v ftFtFlowVal
	if it := d.objs.FtFlows.Iterate(); !it.Next(&k, &v) || v.Packets != 0 {
		t.Fatalf("entry: %+v (the slot should hold the packets after NEW)", v)
	}
	pinCPU(t, cpus[1])
	send(f, 30) // 1 into the entry, 29 in CPU B's slot
	send(fin, 1)

	evs := drain(t, d)
	if len(evs) != 2 || evs[0].FlowReason != decode.ReasonNew || evs[1].FlowReason != decode.ReasonTCPFlags {
		t.Fatalf("events: %+v", evs)
	}
	// FIN's report: the entry's packet, CPU B's slot and the FIN itself.
	if evs[1].Packets != 31 || evs[1].TCPFlags != decode.TCPFin|decode.TCPAck {
		t.Fatalf("FIN report: %d packets flags %#x, want 31 (CPU A's 49 are still in its slot)",
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
	if len(evs) != 3 || evs[2].FlowReason != decode.ReasonIdleFlush || evs[2].Packets != 49 ||
		got != sent || gotBytes != sentBytes {
		t.Fatalf("reported %d packets %d bytes in %d events, sent %d and %d: %+v",
			got, gotBytes, len(evs), sent, sentBytes, evs)
	}
	st1 := stats(t, d)
	if hits := st1["flow_cache_hits"] - st0["flow_cache_hits"]; hits != 49+29 {
		t.Fatalf("flow_cache_hits %d, want %d", hits, 49+29)
	}
	if st1["tc_packets"]-st0["tc_packets"] != sent {
		t.Fatalf("tc_packets %d, want %d", st1["tc_packets"]-st0["tc_packets"], sent)
	}
}

// TestFlowCacheOrphaned: counts a slot holds for an entry that is gone
// when they are written back are counted, not silently lost.
func TestFlowCacheOrphaned(t *testing.T) {
	d := load(t, Config{})
	pinCPU(t, -1)
	f := tcpFrame(52100, decode.TCPAck, 10)
	for range 11 {
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
