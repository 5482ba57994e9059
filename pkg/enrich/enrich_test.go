package enrich

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/dropreason"
	"github.com/flowtrace/flowtrace/pkg/identity"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type fakeIDs map[netip.Addr]*identity.Pod

func (f fakeIDs) PodByIP(ip netip.Addr) (*identity.Pod, bool)      { p, ok := f[ip]; return p, ok }
func (f fakeIDs) ServiceByIP(netip.Addr) (*identity.Service, bool) { return nil, false }
func (fakeReasons) Lookup(c uint32) dropreason.Reason {
	return dropreason.Reason{Code: c, Kernel: "NETFILTER_DROP", Stable: flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP}
}
func (fakeSyms) Resolve(a uint64) string { return "nf_hook_slow+0x8d" }
func (fakeIfaces) InterfaceName(ns, idx uint32) (string, string) {
	return map[uint32]string{7: "ftv-frontend", 9: "ftbr0"}[idx], "node"
}

type (
	fakeReasons struct{}
	fakeSyms    struct{}
	fakeIfaces  struct{}
)

var (
	frontend = netip.MustParseAddr("10.244.0.10")
	db       = netip.MustParseAddr("10.244.0.30")
	ids      = fakeIDs{
		frontend: {Namespace: "shop", Name: "frontend-1", Labels: map[string]string{"app": "frontend"}, Workload: identity.Workload{Kind: "Deployment", Name: "frontend"}, Node: "n1"},
		db:       {Namespace: "shop", Name: "db-0", Node: "n1"},
	}
)

func TestDrop(t *testing.T) {
	e := New("n1", ids, fakeReasons{}, fakeSyms{}, fakeIfaces{})
	now := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)
	ev := &decode.Event{Kind: decode.KindDrop, Time: now, IPVersion: 4, Src: frontend, Dst: db, SrcPort: 40000, DstPort: 5432,
		Proto: 6, TCPFlags: 0x02, DropReason: 77, Location: 0xffffffff81001010, Ifindex: 9, SkbIif: 7, Netns: 4026531840, PktLen: 60, Count: 1}
	f := e.Flow(ev)
	if f.Verdict != flowtracev1.Verdict_VERDICT_DROPPED || f.DropReason != flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP ||
		f.DropReasonKernel != "NETFILTER_DROP" || f.DropReasonCode != 77 || f.DropLocation != "nf_hook_slow+0x8d" {
		t.Fatalf("drop fields: %v", f)
	}
	if f.Source.GetPodName() != "frontend-1" || f.Destination.GetPodName() != "db-0" || f.Source.Workload.GetName() != "frontend" {
		t.Errorf("endpoints: %v %v", f.Source, f.Destination)
	}
	if f.Interface.GetName() != "ftbr0" || f.InputInterface.GetName() != "ftv-frontend" {
		t.Errorf("interfaces: %v %v", f.Interface, f.InputInterface)
	}
	tcp := f.L4.GetTcp()
	if tcp.GetDestinationPort() != 5432 || !tcp.GetFlags().GetSyn() || tcp.GetFlags().GetAck() {
		t.Errorf("l4: %v", f.L4)
	}
	if !f.Time.AsTime().Equal(now) || f.NodeName != "n1" || f.EventCount != 1 {
		t.Errorf("meta: %v", f)
	}
	if !strings.Contains(f.Summary, "NETFILTER_DROP at nf_hook_slow") {
		t.Errorf("summary %q", f.Summary)
	}
	if f.LastTime != nil {
		t.Errorf("a single drop has a last time: %v", f.LastTime)
	}

	// A folded report: its count, and the span of its drops.
	ev.Count, ev.LastTime = 5000, now.Add(1500*time.Millisecond)
	f = e.Flow(ev)
	if f.EventCount != 5000 || f.Packets != 5000 || !f.Time.AsTime().Equal(now) || !f.GetLastTime().AsTime().Equal(ev.LastTime) {
		t.Errorf("folded report: count %d, packets %d, time %v, last %v", f.EventCount, f.Packets, f.Time.AsTime(), f.GetLastTime())
	}
}

func TestFlowAndUnknowns(t *testing.T) {
	e := New("n1", ids, nil, nil, nil)
	ev := &decode.Event{Kind: decode.KindFlow, IPVersion: 6, Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"),
		Proto: 17, SrcPort: 1, DstPort: 53, Packets: 3, Bytes: 300, Direction: decode.DirEgress, FlowReason: decode.ReasonPeriodic, Ifindex: 3}
	f := e.Flow(ev)
	if f.Verdict != flowtracev1.Verdict_VERDICT_FORWARDED || f.Report != flowtracev1.FlowReport_FLOW_REPORT_PERIODIC ||
		f.ObservationPoint != flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_EGRESS || f.Packets != 3 || f.Bytes != 300 {
		t.Fatalf("flow fields: %v", f)
	}
	if f.Source != nil || f.Destination != nil {
		t.Errorf("unknown IPs got names: %v %v", f.Source, f.Destination)
	}
	if f.Ip.IpVersion != flowtracev1.IPVersion_IP_VERSION_IPV6 || f.L4.GetUdp().GetDestinationPort() != 53 {
		t.Errorf("network: %v %v", f.Ip, f.L4)
	}
	// A drop on a kernel without reasons is still a drop, with an honest unknown.
	d := e.Flow(&decode.Event{Kind: decode.KindDrop, DropReason: 5})
	if d.Verdict != flowtracev1.Verdict_VERDICT_DROPPED || d.DropReason != flowtracev1.DropReason_DROP_REASON_UNKNOWN || d.Ip != nil {
		t.Errorf("reasonless drop: %v", d)
	}
	if f.Uuid == d.Uuid || len(f.Uuid) != 36 {
		t.Errorf("uuids %q %q", f.Uuid, d.Uuid)
	}
}

func BenchmarkFlow(b *testing.B) {
	e := New("n1", ids, fakeReasons{}, fakeSyms{}, fakeIfaces{})
	ev := &decode.Event{Kind: decode.KindDrop, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, SrcPort: 1, DstPort: 5432, Ifindex: 9}
	b.ReportAllocs()
	for b.Loop() {
		_ = e.Flow(ev)
	}
}

func TestTranslatedAndServices(t *testing.T) {
	vip, backend := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.0.20")
	web := &identity.Service{Namespace: "shop", Name: "web", VIPs: []netip.Addr{vip}, Ports: []identity.ServicePort{{Name: "http", Port: 80}}}
	idsWithSvc := svcIDs{fakeIDs: ids, svcs: map[netip.Addr]*identity.Service{vip: web}}
	e := New("n1", idsWithSvc, nil, nil, nil)
	ct := decode.Conntrack{Flags: decode.CTKnown | decode.CTDNAT, IPVersion: 4, OrigSrc: frontend, OrigDst: vip, OrigSrcPort: 40000, OrigDstPort: 80}

	xl := e.Flow(&decode.Event{Kind: decode.KindTranslated, IPVersion: 4, Proto: 6, Src: frontend, Dst: backend, SrcPort: 40000, DstPort: 8080,
		CT: ct, XlatSrc: frontend, XlatDst: backend, XlatSrcPort: 40000, XlatDstPort: 8080, Direction: decode.DirEgress})
	if xl.Verdict != flowtracev1.Verdict_VERDICT_TRANSLATED || xl.Translation.GetOriginalIp() != "10.96.0.10" ||
		xl.Translation.GetTranslatedPort() != 8080 || xl.Translation.GetTranslatedSourceIp() != "" ||
		xl.DestinationService.GetName() != "web" || xl.DestinationService.GetPortName() != "http" ||
		xl.Ip.GetDestination() != "10.96.0.10" || xl.L4.GetTcp().GetDestinationPort() != 80 {
		t.Fatalf("translated: %v", xl)
	}

	// The backend's reply names the Service as its source.
	reply := e.Flow(&decode.Event{Kind: decode.KindFlow, IPVersion: 4, Proto: 6, Src: backend, Dst: frontend, SrcPort: 8080, DstPort: 40000,
		CT: decode.Conntrack{Flags: ct.Flags | decode.CTReply, IPVersion: 4, OrigSrc: frontend, OrigDst: vip, OrigSrcPort: 40000, OrigDstPort: 80}})
	if reply.SourceService.GetName() != "web" || reply.DestinationService != nil {
		t.Errorf("reply services: %v / %v", reply.SourceService, reply.DestinationService)
	}

	// ICMP conntrack tuples carry id and type where ports would be: an
	// unchanged address is no translation, and names no Service.
	icmpCT := decode.Conntrack{Flags: decode.CTKnown | decode.CTDNAT | decode.CTSNAT, IPVersion: 4, OrigSrc: frontend, OrigDst: backend, OrigDstPort: 2048}
	if f := e.Flow(&decode.Event{Kind: decode.KindTranslated, IPVersion: 4, Proto: 1, Src: frontend, Dst: backend, CT: icmpCT,
		XlatSrc: frontend, XlatDst: backend, XlatDstPort: 3674}); f != nil {
		t.Errorf("ICMP without address change reported as TRANSLATED: %v", f)
	}
}

// TestServicesOnlyForAddressesNoPodHas: without a conntrack view (the
// client's first packet, before DNAT) a flow to a ClusterIP names its
// Service from the address itself; a flow between two pods asks the
// identity source for no Service at all (most of a node's traffic: two
// lookups an event that could only miss).
func TestServicesOnlyForAddressesNoPodHas(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	web := &identity.Service{Namespace: "shop", Name: "web", VIPs: []netip.Addr{vip}, Ports: []identity.ServicePort{{Name: "http", Port: 80}}}
	src := countingSvcs{svcIDs: svcIDs{fakeIDs: ids, svcs: map[netip.Addr]*identity.Service{vip: web}}, asked: map[netip.Addr]int{}}
	e := New("n1", src, nil, nil, nil)
	toVIP := e.Flow(&decode.Event{Kind: decode.KindFlow, IPVersion: 4, Proto: 6, Src: frontend, Dst: vip, SrcPort: 40000, DstPort: 80, TCPFlags: 0x02})
	if toVIP.DestinationService.GetName() != "web" || toVIP.SourceService != nil || src.asked[frontend] != 0 {
		t.Errorf("to the VIP: services %v / %v, source asked %d times for the client pod", toVIP.SourceService, toVIP.DestinationService, src.asked[frontend])
	}
	podToPod := &decode.Event{Kind: decode.KindFlow, IPVersion: 4, Proto: 6, Src: frontend, Dst: db, SrcPort: 40000, DstPort: 5432, TCPFlags: 0x02}
	f := e.Flow(podToPod)
	_, refs, _ := e.Lazy(podToPod, nil)
	if f.SourceService != nil || f.DestinationService != nil || refs.SourceService != nil || refs.DestinationService != nil ||
		src.asked[frontend]+src.asked[db] != 0 {
		t.Errorf("pod to pod: services %v / %v, lazy %v / %v, asked %v", f.SourceService, f.DestinationService,
			refs.SourceService, refs.DestinationService, src.asked)
	}
}

// countingSvcs counts the Service lookups by address.
type countingSvcs struct {
	svcIDs
	asked map[netip.Addr]int
}

func (c countingSvcs) ServiceByIP(ip netip.Addr) (*identity.Service, bool) {
	c.asked[ip]++
	return c.svcIDs.ServiceByIP(ip)
}

type svcIDs struct {
	fakeIDs
	svcs map[netip.Addr]*identity.Service
}

func (s svcIDs) ServiceByIP(ip netip.Addr) (*identity.Service, bool) {
	v, ok := s.svcs[ip]
	return v, ok
}

type longSyms struct{}

func (longSyms) Resolve(uint64) string {
	return strings.Repeat("a_long_kernel_function_name_", 4) + "+0x8d"
}

// TestSummariesAndBlocks: summaries short enough to live in the flow's own
// block and longer ones are both whole, and flows do not share bytes.
func TestSummariesAndBlocks(t *testing.T) {
	short := New("n1", ids, fakeReasons{}, fakeSyms{}, fakeIfaces{})
	long := New("n1", ids, fakeReasons{}, longSyms{}, fakeIfaces{})
	drop := &decode.Event{Kind: decode.KindDrop, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, DropReason: 6, Location: 1, Count: 1}
	flow := &decode.Event{Kind: decode.KindFlow, IPVersion: 4, Src: frontend, Dst: db, Proto: 17, SrcPort: 1, DstPort: 53, Packets: 3, Bytes: 300}
	f1, f2 := short.Flow(drop), long.Flow(drop)
	f3 := short.Flow(flow)
	flow.Packets = 4
	f4 := short.Flow(flow)
	if want := "dropped: NETFILTER_DROP at nf_hook_slow+0x8d"; f1.Summary != want {
		t.Errorf("short summary %q, want %q", f1.Summary, want)
	}
	if blk := (*flowBlock)(unsafe.Pointer(f1)); unsafe.StringData(f1.Summary) != &blk.summary[0] {
		t.Errorf("a short summary (%d bytes) is not in the flow's block (%d)", len(f1.Summary), summaryInline)
	}
	if want := "dropped: NETFILTER_DROP at " + (longSyms{}).Resolve(0); f2.Summary != want || len(want) <= summaryInline {
		t.Errorf("long summary %q, want %q (longer than %d)", f2.Summary, want, summaryInline)
	}
	if f3.Packets != 3 || f4.Packets != 4 || f3.Bytes != 300 {
		t.Errorf("flow counts %d/%d, %d", f3.Packets, f3.Bytes, f4.Packets)
	}
	if f3.L4.GetUdp().GetDestinationPort() != 53 || f3.L4.GetUdp() == f4.L4.GetUdp() || f3.Uuid == f4.Uuid {
		t.Errorf("flows share their blocks: %v %v", f3, f4)
	}
}

// TestClosingReport: a TCP connection's closing report carries the other
// direction's last counts and flags (its FIN is not reported on its own)
// in the flow's reverse fields; other reports have none. FORWARDED flows
// have no summary: it would restate those fields.
func TestClosingReport(t *testing.T) {
	e := New("n1", ids, nil, nil, nil)
	ev := &decode.Event{Kind: decode.KindFlow, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, SrcPort: 40000, DstPort: 5432,
		TCPFlags: decode.TCPRst | decode.TCPAck, Packets: 3, Bytes: 162, FlowReason: decode.ReasonTCPFlags, Direction: decode.DirIngress,
		RevPackets: 1, RevBytes: 54, RevTCPFlags: decode.TCPFin | decode.TCPAck}
	f := e.Flow(ev)
	if f.ReversePackets != 1 || f.ReverseBytes != 54 || !f.ReverseTcpFlags.GetFin() || !f.ReverseTcpFlags.GetAck() ||
		f.ReverseTcpFlags.GetRst() || !f.L4.GetTcp().GetFlags().GetRst() {
		t.Fatalf("closing report: %v", f)
	}
	if f.Summary != "" {
		t.Errorf("a FORWARDED flow has a summary: %q", f.Summary)
	}
	ev.RevPackets, ev.RevBytes, ev.RevTCPFlags, ev.FlowReason = 0, 0, 0, decode.ReasonNew
	if g := e.Flow(ev); g.ReversePackets != 0 || g.ReverseTcpFlags != nil || g.ReverseBytes != 0 {
		t.Errorf("a report without the other direction has reverse fields: %v", g)
	}
}

// TestAddrText: the formatted address is the address's own, whichever of
// the recent slots, the map or a fresh format answers, including
// addresses equal but for their form (IPv4 and IPv4-mapped IPv6).
func TestAddrText(t *testing.T) {
	e := New("n1", nil, nil, nil, nil)
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1"),
		netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.0.0.2"), {}}
	for i := range 50 {
		a := addrs[(i*i+i/3)%len(addrs)]
		if got := e.addr(a); got != a.String() {
			t.Fatalf("step %d: addr(%v) = %q", i, a, got)
		}
	}
}

// TestUUIDs: flow uuids are canonical version-4 UUIDs (history packs only
// those into 16 bytes): the run's random head, then the sequence number
// with the variant's bits.
func TestUUIDs(t *testing.T) {
	canonical := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	e := New("n1", nil, nil, nil, nil)
	for _, seq := range []uint64{0, 1, 0xff, 0x1_0000_0000_0000, 0x3fff_ffff_ffff_fffe, 0xffff_ffff_ffff_fffe} {
		e.seq = seq
		var u [36]byte
		e.uuid(&u)
		s := string(u[:])
		if !canonical.MatchString(s) {
			t.Fatalf("seq %#x: %q is not a canonical version-4 UUID", seq+1, s)
		}
		if s[:19] != string(e.uuidHead[:]) {
			t.Errorf("seq %#x: %q does not start with the run's head %q", seq+1, s, e.uuidHead[:])
		}
		v := (seq+1)&^(3<<62) | 2<<62
		if want := fmt.Sprintf("%04x-%012x", v>>48, v&(1<<48-1)); s[19:] != want {
			t.Errorf("seq %#x: tail %q, want %q", seq+1, s[19:], want)
		}
	}
}

type (
	reasonTable map[uint32]dropreason.Reason
	symTable    map[uint64]string
)

func (r reasonTable) Lookup(c uint32) dropreason.Reason { return r[c] }
func (s symTable) Resolve(a uint64) string              { return s[a] }

// The kernel's drop reasons the cause tests name, as a kernel's BTF would
// map them: no reason (before 5.17) reads UNKNOWN, a reason newer than
// flowtrace reads UNKNOWN under its own kernel name.
const noSocket, notSpecified, noReason, filtered, badSource, newReason = 3, 2, 0, 77, 78, 99

var causeReasons = reasonTable{
	noSocket:     {Code: noSocket, Kernel: "NO_SOCKET", Stable: flowtracev1.DropReason_DROP_REASON_NO_SOCKET},
	notSpecified: {Code: notSpecified, Kernel: "NOT_SPECIFIED", Stable: flowtracev1.DropReason_DROP_REASON_NOT_SPECIFIED},
	noReason:     {Code: noReason, Kernel: "UNKNOWN", Stable: flowtracev1.DropReason_DROP_REASON_UNKNOWN},
	filtered:     {Code: filtered, Kernel: "NETFILTER_DROP", Stable: flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP},
	badSource:    {Code: badSource, Kernel: "IP_INVALID_SOURCE", Stable: flowtracev1.DropReason_DROP_REASON_UNKNOWN},
	newReason:    {Code: newReason, Kernel: "SOME_NEW_REASON", Stable: flowtracev1.DropReason_DROP_REASON_UNKNOWN},
}

// An echo reply no ping socket asked for says why (a root ping's raw socket
// had its copy), whichever way the kernel names the drop; other echo reply
// drops and other NO_SOCKET drops keep no cause.
func TestEchoReplyUnclaimed(t *testing.T) {
	const pingRcv, icmpRcv, icmpv6Rcv, nfHook = 1, 2, 3, 4
	syms := symTable{pingRcv: "ping_rcv+0xb3", icmpRcv: "icmp_rcv+0x1f2", icmpv6Rcv: "icmpv6_rcv+0x2a0", nfHook: "nft_do_chain+0x46f"}
	e := New("n1", ids, causeReasons, syms, fakeIfaces{})
	v6 := netip.MustParseAddr("fd00::10")
	for _, c := range []struct {
		name      string
		proto     uint8
		icmpType  uint8
		reason    uint32
		location  uint64
		unclaimed bool
	}{
		{"6.0+: ping_rcv's NO_SOCKET", 1, 0, noSocket, pingRcv, true},
		{"IPv6 echo reply, NO_SOCKET", 58, 129, noSocket, pingRcv, true},
		{"5.17-5.19: NOT_SPECIFIED in icmp_rcv", 1, 0, notSpecified, icmpRcv, true},
		{"before 5.17: no reason, in icmpv6_rcv", 58, 129, noReason, icmpv6Rcv, true},
		{"no reason, elsewhere", 1, 0, noReason, nfHook, false},
		{"a reason newer than flowtrace in icmp_rcv", 1, 0, newReason, icmpRcv, false},
		{"a policy drop of an echo reply", 1, 0, filtered, nfHook, false},
		{"an echo request to nobody", 1, 8, noSocket, pingRcv, false},
		{"UDP to a closed port", 17, 0, noSocket, nfHook, false},
	} {
		src, dst, ipv := frontend, db, uint8(4)
		if c.proto == 58 {
			src, dst, ipv = v6, v6, 6
		}
		ev := &decode.Event{Kind: decode.KindDrop, IPVersion: ipv, Src: src, Dst: dst, Proto: c.proto, ICMPType: c.icmpType,
			DropReason: c.reason, Location: c.location, Ifindex: 7, Count: 1}
		checkCause(t, c.name, e.Flow(ev), flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED, c.unclaimed, "raw-socket ping got its own copy")
	}
}

// checkCause says whether f carries cause, as wanted, and its summary the
// cause's text exactly when it does.
func checkCause(t *testing.T, name string, f *flowtracev1.Flow, cause flowtracev1.DropCause, want bool, text string) {
	t.Helper()
	got := f.DropCause == cause
	if got != want {
		t.Errorf("%s: cause %v (reason %s at %s)", name, f.DropCause, f.DropReasonKernel, f.DropLocation)
	}
	if got != strings.Contains(f.Summary, text) {
		t.Errorf("%s: summary %q", name, f.Summary)
	}
}

// A multicast packet freed unnamed where IP takes it in is one nothing
// here joined the group of, on either IP version and whatever suffix the
// kernel's build gave the function; a multicast packet dropped by policy
// or for a named reason, and a unicast packet freed there, are not.
func TestMulticastNotJoined(t *testing.T) {
	const mc6, rcv4, rcv4Inlined, rcv4List, nfHook, icmp6 = 1, 2, 3, 4, 5, 6
	syms := symTable{mc6: "ip6_mc_input+0xd4", rcv4: "ip_rcv_finish_core+0x260", rcv4Inlined: "ip_rcv_finish.isra.0+0x1c1",
		rcv4List: "ip_list_rcv_finish.constprop.0+0x9a", nfHook: "nft_do_chain+0x46f", icmp6: "icmpv6_rcv+0x2a0"}
	e := New("n1", ids, causeReasons, syms, fakeIfaces{})
	mld, group4, uni6 := netip.MustParseAddr("ff02::16"), netip.MustParseAddr("239.1.2.3"), netip.MustParseAddr("fd00::10")
	for _, c := range []struct {
		name     string
		dst      netip.Addr
		proto    uint8
		reason   uint32
		location uint64
		want     bool
	}{
		{"an MLD report at ip6_mc_input", mld, 58, notSpecified, mc6, true},
		{"IPv4 UDP to a group, route lookup", group4, 17, notSpecified, rcv4, true},
		{"before 5.17: no reason, inlined caller", group4, 17, noReason, rcv4Inlined, true},
		{"the list receive path", group4, 17, notSpecified, rcv4List, true},
		{"a policy drop of multicast", group4, 17, filtered, nfHook, false},
		{"a refused source", group4, 17, badSource, rcv4, false},
		{"multicast freed in ICMPv6", mld, 58, notSpecified, icmp6, false},
		{"unicast freed at ip6_mc_input's place", uni6, 17, notSpecified, mc6, false},
		{"IPv6 at IPv4's function", mld, 17, notSpecified, rcv4, false},
	} {
		ipv := uint8(4)
		if c.dst.Is6() {
			ipv = 6
		}
		ev := &decode.Event{Kind: decode.KindDrop, IPVersion: ipv, Dst: c.dst, Proto: c.proto,
			DropReason: c.reason, Location: c.location, Ifindex: 7, Count: 1}
		if ipv == 4 {
			ev.Src = frontend
		} else {
			ev.Src = uni6
		}
		checkCause(t, c.name, e.Flow(ev), flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED, c.want, "multicast group nothing here joined")
	}
}
