package datapath

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// replyFrame is tcpFrame's other direction: server 10.1.0.2:443 to the client.
func replyFrame(cport uint16, flags uint8, payload int) []byte {
	return cat(eth(0x0800), ipv4(6, "10.1.0.2", "10.1.0.1", 0, nil, cat(tcp(443, cport, flags), make([]byte, payload))))
}

func flowEntries(t *testing.T, d *Datapath) map[ftFtFlowKey]ftFtFlowVal {
	t.Helper()
	out := map[ftFtFlowKey]ftFtFlowVal{}
	var k ftFtFlowKey
	var v ftFtFlowVal
	it := d.objs.FtFlows.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFlowEntriesEndWithConnection: a TCP connection's close is reported
// once per hook, by the packet that ends it (RST, or the final ACK after
// both FINs: CLOSED), with what the other direction held unreported (its
// FIN, the last ACKs) as the report's rev counts; a FIN is not reported on
// its own. Both entries are then deleted, so closed connections do not
// fill the table, and no count is lost on the way: the client leaves
// through egress, the server's replies come in through ingress of the same
// device.
func TestFlowEntriesEndWithConnection(t *testing.T) {
	const interval = 200 * time.Millisecond
	type pkt struct {
		reply   bool
		flags   uint8
		payload int
	}
	syn, synAck := pkt{false, decode.TCPSyn, 0}, pkt{true, decode.TCPSyn | decode.TCPAck, 0}
	ack := pkt{false, decode.TCPAck, 0}
	finAck, replyFinAck := pkt{false, decode.TCPFin | decode.TCPAck, 0}, pkt{true, decode.TCPFin | decode.TCPAck, 0}
	rst := pkt{false, decode.TCPRst | decode.TCPAck, 0}
	for _, tc := range []struct {
		name string
		pkts []pkt
		// left: the entries (their direction) still in the table after
		// the last packet; closed: flows_closed's count.
		left   []decode.Direction
		closed uint64
		// reports: events before the idle walk; rev: the last one's
		// packets of the other direction, revFlags their TCP flags.
		reports  int
		rev      uint64
		revFlags uint8
		// idle: packets the idle walk reports afterwards (0: no report).
		idle uint64
		// last: the last report's reason.
		last decode.FlowReason
	}{
		{"connect, then RST", []pkt{syn, synAck, ack, rst}, nil, 2, 3, 0, 0, 0, decode.ReasonTCPFlags},
		{"churn as the bench makes it: the server's FIN, then the client's RST",
			[]pkt{syn, synAck, ack, replyFinAck, ack, rst}, nil, 2, 3, 1, decode.TCPFin | decode.TCPAck, 0, decode.ReasonTCPFlags},
		{"refused: the server's RST makes and ends its entry", []pkt{syn, {true, decode.TCPRst | decode.TCPAck, 0}}, nil, 2, 2, 0, 0, 0,
			decode.ReasonNew},
		// The reply's second packet went into its entry, then took a flow-cache
		// slot: the entry stays (fin 3) until the slot leaves it, empty.
		{"RST while the reply direction holds counts: they come with it",
			[]pkt{syn, synAck, ack, {true, decode.TCPAck, 100}, rst}, []decode.Direction{decode.DirIngress}, 1, 3, 1, decode.TCPAck, 0,
			decode.ReasonTCPFlags},
		{"FIN from both: the final ACK ends both entries, with the second FIN",
			[]pkt{syn, synAck, ack, finAck, replyFinAck, ack}, nil, 2, 3, 1, decode.TCPFin | decode.TCPAck, 0, decode.ReasonClosed},
		{"FIN from one side only: it comes with the idle walk's report", []pkt{syn, synAck, ack, finAck, {true, decode.TCPAck, 10}},
			[]decode.Direction{decode.DirEgress, decode.DirIngress}, 0, 2, 0, 0, 3, decode.ReasonIdleFlush},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := load(t, Config{FlowReportInterval: interval})
			pinCPU(t, -1)
			var sent uint64
			for _, p := range tc.pkts {
				if p.reply {
					run(t, d.Ingress(), replyFrame(51000, p.flags, p.payload))
				} else {
					run(t, d.Egress(), tcpFrame(51000, p.flags, p.payload))
				}
				sent++
			}
			evs := drain(t, d)
			left := flowEntries(t, d)
			if len(left) != len(tc.left) {
				t.Errorf("%d flow entries left, want %d: %+v", len(left), len(tc.left), left)
			}
			for k := range left {
				found := false
				for _, dir := range tc.left {
					found = found || k.Dir == uint8(dir)
				}
				if !found {
					t.Errorf("entry of direction %d left", k.Dir)
				}
			}
			if n := stats(t, d)["flows_closed"]; n != tc.closed {
				t.Errorf("flows_closed %d, want %d", n, tc.closed)
			}
			if len(evs) != tc.reports {
				t.Errorf("%d reports, want %d: %+v", len(evs), tc.reports, evs)
			} else if l := evs[len(evs)-1]; l.RevPackets != tc.rev || l.RevTCPFlags != tc.revFlags || (l.RevBytes == 0) != (tc.rev == 0) {
				t.Errorf("last report's other direction: %d packets, %d bytes, flags %#x; want %d packets, flags %#x",
					l.RevPackets, l.RevBytes, l.RevTCPFlags, tc.rev, tc.revFlags)
			}
			// Every packet is in exactly one report, now or from the idle walk.
			time.Sleep(interval + 20*time.Millisecond)
			var idle uint64
			if _, err := d.FlushIdle(func(ev *decode.Event) { idle += ev.Packets; evs = append(evs, *ev) }); err != nil {
				t.Fatal(err)
			}
			var reported uint64
			for _, ev := range evs {
				reported += ev.Packets + ev.RevPackets
			}
			if reported != sent || idle != tc.idle {
				t.Errorf("reported %d packets (%d by the idle walk), want %d (%d): %+v", reported, idle, sent, tc.idle, evs)
			}
			if len(evs) == 0 || evs[len(evs)-1].FlowReason != tc.last {
				t.Errorf("last report %+v, want reason %v", evs, tc.last)
			}
		})
	}
}

// TestFlowEntryKeptWhileASlotHoldsIt: a connection that closes on another
// CPU than the one whose flow-cache slot holds its last packets keeps its
// entry, so those packets go into it with the slot and are reported, not
// orphaned.
func TestFlowEntryKeptWhileASlotHoldsIt(t *testing.T) {
	const interval = 200 * time.Millisecond
	d := load(t, Config{FlowReportInterval: interval, fcHold: time.Minute})
	cpus := twoCPUs(t)
	pinCPU(t, cpus[0])
	run(t, d.Egress(), tcpFrame(51100, decode.TCPSyn, 0))
	run(t, d.Ingress(), replyFrame(51100, decode.TCPSyn|decode.TCPAck, 0))
	// The second packet goes into the entry and fills the slot, the
	// next three stay in the slot.
	for range 4 {
		run(t, d.Egress(), tcpFrame(51100, decode.TCPAck, 100))
	}
	pinCPU(t, cpus[1])
	run(t, d.Egress(), tcpFrame(51100, decode.TCPRst, 0))
	evs := drain(t, d)
	left := flowEntries(t, d)
	if len(left) != 1 {
		t.Fatalf("%d entries left, want the client's, which a slot holds: %+v", len(left), left)
	}
	for k, v := range left {
		if k.Dir != uint8(decode.DirEgress) || v.Slots != 1 {
			t.Fatalf("left %+v %+v, want the egress entry held by one slot", k, v)
		}
	}
	time.Sleep(interval + 20*time.Millisecond)
	if _, err := d.FlushIdle(func(ev *decode.Event) { evs = append(evs, *ev) }); err != nil {
		t.Fatal(err)
	}
	var reported uint64
	for _, ev := range evs {
		reported += ev.Packets
	}
	st := stats(t, d)
	if reported != 7 || st["flow_cache_orphaned"] != 0 || st["flows_closed"] != 1 {
		t.Fatalf("reported %d packets, want 7; orphaned %d, closed %d (want 0, the server's entry): %+v",
			reported, st["flow_cache_orphaned"], st["flows_closed"], evs)
	}
}

// TestConntrackLookupSkipped: tc calls the conntrack kfunc only where it
// can find something: not for a pure SYN (conntrack cannot know a
// connection's first packet yet at ingress) and not at egress when the
// packet carries no conntrack mark (this netns's conntrack has run and did
// not track it). Test runs carry no mark. Under churn in a netns without
// conntrack rules every report missed at ~0.3-0.5 us.
func TestConntrackLookupSkipped(t *testing.T) {
	d := load(t, Config{FlowReportInterval: time.Hour})
	f := d.Features()
	pinCPU(t, -1)
	var lookup, egressLookup uint64
	if f.ConntrackLookup {
		lookup = 1
		if !f.ConntrackNfct {
			egressLookup = 1 // no mark to read: the lookup is all there is
		}
	}
	for _, s := range []struct {
		name    string
		egress  bool
		frame   []byte
		lookups uint64
	}{
		{"ingress pure SYN", false, tcpFrame(52300, decode.TCPSyn, 0), 0},
		{"ingress SYN-ACK", false, replyFrame(52300, decode.TCPSyn|decode.TCPAck, 0), lookup},
		{"ingress RST", false, tcpFrame(52300, decode.TCPRst, 0), lookup},
		{"ingress UDP", false, cat(eth(0x0800), ipv4(17, "10.1.0.1", "10.1.0.2", 0, nil, udp(5353, 53, make([]byte, 8)))), lookup},
		{"egress pure SYN", true, tcpFrame(52301, decode.TCPSyn, 0), 0},
		{"egress RST, no conntrack mark", true, tcpFrame(52301, decode.TCPRst|decode.TCPAck, 0), egressLookup},
	} {
		before := stats(t, d)["ct_lookups"]
		p := d.Ingress()
		if s.egress {
			p = d.Egress()
		}
		run(t, p, s.frame)
		if n := stats(t, d)["ct_lookups"] - before; n != s.lookups {
			t.Errorf("%s: %d conntrack lookups, want %d (features %+v)", s.name, n, s.lookups, f)
		}
	}
}

// TestNoPathRefusedForSize: the first load, with every optional path the
// kernel seems to offer, may be refused for what the kernel lacks (a
// kfunc the BTF probe could not rule out), never for the programs' own
// size: the loader would switch paths off until they fit, and users of
// that kernel would lose them with every test still passing. (A flow
// event's tuple copy once put tc's call chain at 544 bytes of stack on
// 6.1, where conntrack then went off.)
func TestNoPathRefusedForSize(t *testing.T) {
	d := load(t, Config{})
	err := d.loadRefusal
	if err == nil {
		return
	}
	msg := strings.ToLower(err.Error())
	for _, size := range []string{"too large", "too deep", "too complex"} {
		if strings.Contains(msg, size) {
			t.Fatalf("the first load was refused for size (features now %+v): %v", d.Features(), err)
		}
	}
	t.Logf("first load refused for what this kernel lacks: %v", err)
}

// TestCloseReportedWhenASlotTookTheFinalACK: the final ACK after both FINs
// can land in another CPU's flow-cache slot (the closing thread moved), so
// the entry never sees the packet that ends it. The idle walk, which
// writes the slots back first, then reports the close as the kernel would
// have: CLOSED, with the other direction's FIN as its rev counts, and
// deletes both entries, instead of two idle reports and entries left for
// twice the report interval.
func TestCloseReportedWhenASlotTookTheFinalACK(t *testing.T) {
	const interval = 200 * time.Millisecond
	d := load(t, Config{FlowReportInterval: interval, fcHold: time.Minute})
	cpus := twoCPUs(t)
	if !d.Features().FlowCache {
		testutil.SkipOrFail(t, "the flow cache is off on this kernel")
	}
	pinCPU(t, cpus[0])
	run(t, d.Egress(), tcpFrame(51200, decode.TCPSyn, 0))
	run(t, d.Ingress(), replyFrame(51200, decode.TCPSyn|decode.TCPAck, 0))
	// The second data packet fills this CPU's slot for the client's side.
	for range 2 {
		run(t, d.Egress(), tcpFrame(51200, decode.TCPAck, 100))
	}
	pinCPU(t, cpus[1])
	run(t, d.Egress(), tcpFrame(51200, decode.TCPFin|decode.TCPAck, 0))
	run(t, d.Ingress(), replyFrame(51200, decode.TCPFin|decode.TCPAck, 0))
	pinCPU(t, cpus[0])
	run(t, d.Egress(), tcpFrame(51200, decode.TCPAck, 0)) // the final ACK, into the slot
	const sent = 7
	evs := drain(t, d)
	for _, ev := range evs {
		if ev.FlowReason == decode.ReasonClosed {
			t.Fatalf("closed before the walk: the final ACK did not go to the slot, the test sets up nothing: %+v", evs)
		}
	}
	time.Sleep(interval + 20*time.Millisecond)
	var walked []decode.Event
	if _, err := d.FlushIdle(func(ev *decode.Event) { walked = append(walked, *ev) }); err != nil {
		t.Fatal(err)
	}
	if len(walked) != 1 {
		t.Fatalf("the walk reported %d events, want the close alone: %+v", len(walked), walked)
	}
	c := walked[0]
	if c.FlowReason != decode.ReasonClosed || c.Direction != decode.DirEgress || c.RevTCPFlags&decode.TCPFin == 0 {
		t.Errorf("the walk reported %+v, want CLOSED at egress with the server's FIN as its rev flags", c)
	}
	var reported uint64
	for _, ev := range append(evs, walked...) {
		reported += ev.Packets + ev.RevPackets
	}
	if reported != sent {
		t.Errorf("reported %d packets, want each of the %d once: %+v %+v", reported, sent, evs, walked)
	}
	if left := flowEntries(t, d); len(left) != 0 {
		t.Errorf("entries left after the close: %+v", left)
	}
}

// TestRetransmittedSYN: a SYN inserts its entry without looking it up
// first; a retransmitted one finds the insert refused and is counted into
// the entry that exists, reported as a flag change (a second SYN is what
// a user looks for when a connection hangs), with no second entry and no
// packet lost.
func TestRetransmittedSYN(t *testing.T) {
	d := load(t, Config{FlowReportInterval: time.Hour})
	pinCPU(t, -1)
	for range 3 {
		run(t, d.Egress(), tcpFrame(51500, decode.TCPSyn, 0))
	}
	evs := drain(t, d)
	if len(evs) != 3 || evs[0].FlowReason != decode.ReasonNew ||
		evs[1].FlowReason != decode.ReasonTCPFlags || evs[2].FlowReason != decode.ReasonTCPFlags {
		t.Fatalf("reports %+v, want NEW and two flag changes", evs)
	}
	for i, ev := range evs {
		if ev.Packets != 1 || ev.TCPFlags != decode.TCPSyn {
			t.Errorf("report %d: %d packets, flags %#x; want 1 SYN", i, ev.Packets, ev.TCPFlags)
		}
	}
	if n := len(flowEntries(t, d)); n != 1 {
		t.Errorf("%d flow entries, want 1", n)
	}
}

// TestConntrackViewFromTheOtherDirection: at ingress, where only the
// conntrack kfunc could answer, a reply's first packet (the SYN-ACK) and a
// closing RST take the conntrack view of their connection's other entry
// at the hook (which egress read from the packet's _nfct) instead of
// calling the kfunc, seen from their own end: same original tuple and
// NAT, the other direction. Test runs carry no _nfct, so the egress
// entry's view is written into the table the way egress would have.
func TestConntrackViewFromTheOtherDirection(t *testing.T) {
	d := load(t, Config{FlowReportInterval: time.Hour})
	pinCPU(t, -1)
	// known sends frame (client port cport; reply: the server's packet)
	// through egress and gives the entry it made the view egress reads
	// when the client 10.1.0.1 dialled a Service VIP that DNAT sent to
	// 10.1.0.2:443.
	known := func(frame []byte, cport uint16, reply bool) {
		t.Helper()
		run(t, d.Egress(), frame)
		for k, v := range flowEntries(t, d) {
			if k.Dir != uint8(decode.DirEgress) || (k.Sport != cport && k.Dport != cport) {
				continue
			}
			flags := decode.CTKnown | decode.CTDNAT | decode.CTViaNfct
			if reply {
				flags |= decode.CTReply
			}
			v.Ct = ftFtCt{Flags: uint8(flags), IpVersion: 4}
			v.Ct.Orig.Saddr = [16]uint8{10, 1, 0, 1}
			v.Ct.Orig.Daddr = [16]uint8{10, 96, 0, 10}
			v.Ct.Orig.Sport, v.Ct.Orig.Dport = cport, 80
			if err := d.objs.FtFlows.Put(k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(what string, ev decode.Event, reply bool) {
		t.Helper()
		want := decode.CTKnown | decode.CTDNAT | decode.CTViaRev
		if reply {
			want |= decode.CTReply
		}
		if ev.CT.Flags != want || ev.CT.OrigSrc != netip.MustParseAddr("10.1.0.1") ||
			ev.CT.OrigDst != netip.MustParseAddr("10.96.0.10") || ev.CT.OrigDstPort != 80 {
			t.Errorf("%s: conntrack %+v, want flags %#x and the VIP as the original destination", what, ev.CT, want)
		}
	}
	lookups := func() uint64 { return stats(t, d)["ct_lookups"] }

	// The server's side: the SYN leaves through egress, the SYN-ACK comes in.
	known(tcpFrame(52400, decode.TCPSyn, 0), 52400, false)
	drain(t, d)
	before := lookups()
	run(t, d.Ingress(), replyFrame(52400, decode.TCPSyn|decode.TCPAck, 0))
	evs := drain(t, d)
	if n := lookups() - before; n != 0 || len(evs) != 1 {
		t.Fatalf("SYN-ACK: %d conntrack lookups, %d reports; want 0 and 1", n, len(evs))
	}
	check("SYN-ACK", evs[0], true)

	// The client's side: the SYN comes in before conntrack has it, the
	// SYN-ACK leaves through egress, the client's RST comes in and closes.
	run(t, d.Ingress(), tcpFrame(52401, decode.TCPSyn, 0))
	known(replyFrame(52401, decode.TCPSyn|decode.TCPAck, 0), 52401, true)
	drain(t, d)
	before = lookups()
	run(t, d.Ingress(), tcpFrame(52401, decode.TCPRst|decode.TCPAck, 0))
	evs = drain(t, d)
	if n := lookups() - before; n != 0 || len(evs) != 1 {
		t.Fatalf("RST: %d conntrack lookups, %d reports; want 0 and 1", n, len(evs))
	}
	check("RST", evs[0], false)

	// Egress read the SYN's _nfct and found it empty: this netns's
	// conntrack does not track the connection (bridged, no br_netfilter),
	// and a lookup for its SYN-ACK would only miss. Where tc cannot read
	// _nfct, the kfunc (if the kernel has it) is asked as before.
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"untracked", Config{FlowReportInterval: time.Hour}}, {"no _nfct at tc", Config{FlowReportInterval: time.Hour, denyCTCast: true}}} {
		d := load(t, c.cfg)
		f := d.Features()
		run(t, d.Egress(), tcpFrame(52402, decode.TCPSyn, 0))
		before := stats(t, d)["ct_lookups"]
		run(t, d.Ingress(), replyFrame(52402, decode.TCPSyn|decode.TCPAck, 0))
		var want uint64
		if f.ConntrackLookup && !f.ConntrackNfct {
			want = 1
		}
		if n := stats(t, d)["ct_lookups"] - before; n != want {
			t.Errorf("%s: SYN-ACK after an egress SYN without conntrack: %d lookups, want %d", c.name, n, want)
		}
		for _, ev := range drain(t, d) {
			if ev.CT.Flags != 0 {
				t.Errorf("%s: a view where conntrack has none: %+v", c.name, ev.CT)
			}
		}
	}
}

// TestFlowTableUse: what `flowtrace status` says of the kernel flow table
// (its size, as configured, and the entries the idle walk saw), and that
// a table with no room left reports the flows it cannot hold on their own
// and counts them, rather than losing them.
func TestFlowTableUse(t *testing.T) {
	const capacity = 64
	d := load(t, Config{FlowTableEntries: capacity})
	if n := d.objs.FtFlows.MaxEntries(); n != capacity {
		t.Fatalf("flow table of %d entries, want the configured %d", n, capacity)
	}
	ft := d.FlowTable()
	if ft.Capacity != capacity || ft.Used != 0 || !ft.WalkedAt.IsZero() {
		t.Fatalf("before any walk: %+v, want capacity %d, no use and no walk", ft, capacity)
	}
	pinCPU(t, -1)
	send := func(from, n int) {
		for i := from; i < from+n; i++ {
			run(t, d.Egress(), cat(eth(0x0800), ipv4(17, "10.1.0.1", "10.1.0.2", 0, nil, udp(uint16(20000+i), 53, make([]byte, 20)))))
		}
	}
	walk := func() FlowTable {
		t.Helper()
		before := time.Now()
		if _, err := d.FlushIdle(func(*decode.Event) {}); err != nil {
			t.Fatal(err)
		}
		ft := d.FlowTable()
		if ft.WalkedAt.Before(before) || ft.Capacity != capacity {
			t.Fatalf("after a walk at %v: %+v", before, ft)
		}
		return ft
	}
	send(0, 40)
	if ft := walk(); ft.Used != 40 {
		t.Errorf("40 flows in the table, the walk says %d", ft.Used)
	}
	drain(t, d)
	send(40, 100)
	if ft := walk(); ft.Used != capacity {
		t.Errorf("140 flows into %d entries, the walk says %d used", capacity, ft.Used)
	}
	if n := stats(t, d)["flow_table_full"]; n != 140-capacity {
		t.Errorf("flow_table_full %d, want the %d flows that found no room", n, 140-capacity)
	}
	// Each of them was reported all the same, at its packet.
	ports := map[uint16]bool{}
	for _, ev := range drain(t, d) {
		ports[ev.SrcPort] = true
	}
	for i := 40; i < 140; i++ {
		if !ports[uint16(20000+i)] {
			t.Errorf("flow from port %d never reported", 20000+i)
		}
	}
}
