package enrich

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/identity"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// switchIfaces answers with whatever name it holds now.
type switchIfaces struct{ name string }

func (s *switchIfaces) InterfaceName(_, _ uint32) (string, string) { return s.name, "node" }

// Shared parts must follow their source: a replaced Pod (sources replace,
// never modify) and a renamed interface show up in the next flow, while
// earlier flows keep what they said.
func TestCachesFollowSources(t *testing.T) {
	src := netip.MustParseAddr("10.244.0.10")
	dst := netip.MustParseAddr("10.244.0.20")
	pods := fakeIDs{
		src: (&identity.Pod{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web", "v": "1"}}).CacheLabels(),
		dst: {Namespace: "shop", Name: "db-0"},
	}
	names := &switchIfaces{name: "veth-a"}
	e := New("n1", pods, nil, nil, names)
	ev := &decode.Event{Kind: decode.KindFlow, Time: time.Unix(1, 2), IPVersion: 4, Src: src, Dst: dst, Proto: 17,
		SrcPort: 1000, DstPort: 53, Ifindex: 4, Packets: 1, Bytes: 80, FlowReason: decode.ReasonNew}
	first := e.Flow(ev)
	again := e.Flow(ev)
	if first.Source != again.Source {
		t.Error("same pod: endpoint not reused")
	}
	if first.Uuid == again.Uuid {
		t.Errorf("uuid repeated: %s", first.Uuid)
	}
	before := proto.Clone(first)

	pods[src] = (&identity.Pod{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web", "v": "2"}}).CacheLabels()
	names.name = "veth-b"
	next := e.Flow(ev)
	if got := next.Source.GetLabels(); len(got) != 2 || got[1] != "v=2" {
		t.Errorf("replaced pod: labels %v", got)
	}
	if next.Interface.GetName() != "veth-b" {
		t.Errorf("renamed interface: %q", next.Interface.GetName())
	}
	if !proto.Equal(first, before) {
		t.Errorf("an earlier flow changed:\n%v\n%v", first, before)
	}
	if !first.Time.AsTime().Equal(time.Unix(1, 2)) || first.L4.GetUdp().GetDestinationPort() != 53 || first.Ip.GetSource() != "10.244.0.10" {
		t.Errorf("flow fields: %v", first)
	}
}

// Enriching a flow or a drop whose ends are known costs three allocations:
// the flow's block, its layer 4 block and the summary. More means a cache or
// a block stopped working.
func TestFlowAllocations(t *testing.T) {
	e := New("n1", ids, fakeReasons{}, fakeSyms{}, fakeIfaces{})
	for _, ev := range []decode.Event{
		{Kind: decode.KindFlow, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, SrcPort: 40000, DstPort: 5432,
			TCPFlags: decode.TCPSyn, Ifindex: 7, Direction: decode.DirIngress, Packets: 3, Bytes: 180, FlowReason: decode.ReasonNew},
		{Kind: decode.KindDrop, IPVersion: 4, Src: frontend, Dst: db, Proto: 17, SrcPort: 40000, DstPort: 53,
			Ifindex: 9, SkbIif: 7, DropReason: 6, Location: 0xffffffff81001010, Count: 1},
	} {
		e.Flow(&ev) // fill the caches
		if n := testing.AllocsPerRun(200, func() { _ = e.Flow(&ev) }); n > 3 {
			t.Errorf("%v: %.0f allocations per event, want ≤ 3", ev.Kind, n)
		}
	}
}

// Recycled blocks are reused, and a flow built in one holds nothing of the
// flow before it: the same events make the same flows as in a fresh
// enricher, uuids aside. Building and recycling a flow allocates nothing.
func TestRecycle(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	web := &identity.Service{Namespace: "shop", Name: "web", VIPs: []netip.Addr{vip}, Ports: []identity.ServicePort{{Name: "http", Port: 80}}}
	withSvc := svcIDs{fakeIDs: ids, svcs: map[netip.Addr]*identity.Service{vip: web}}
	ct := decode.Conntrack{Flags: decode.CTKnown | decode.CTDNAT, IPVersion: 4, OrigSrc: frontend, OrigDst: vip, OrigSrcPort: 40000, OrigDstPort: 80}
	evs := []decode.Event{
		{Kind: decode.KindDrop, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, SrcPort: 40000, DstPort: 5432, TCPFlags: decode.TCPSyn,
			Ifindex: 9, SkbIif: 7, DropReason: 6, Location: 0xffffffff81001010, Count: 40, PktLen: 60},
		{Kind: decode.KindFlow, IPVersion: 6, Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: 17,
			SrcPort: 1, DstPort: 53, Packets: 3, Bytes: 300, Direction: decode.DirEgress, FlowReason: decode.ReasonPeriodic, Ifindex: 3},
		{Kind: decode.KindTranslated, IPVersion: 4, Proto: 6, Src: frontend, Dst: db, SrcPort: 40000, DstPort: 8080, CT: ct,
			XlatSrc: frontend, XlatDst: db, XlatSrcPort: 40000, XlatDstPort: 8080, Direction: decode.DirEgress},
		{Kind: decode.KindDrop, DropReason: 5},
		{Kind: decode.KindFlow, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, SrcPort: 40000, DstPort: 5432, CT: ct,
			TCPFlags: decode.TCPSyn, Ifindex: 7, Direction: decode.DirIngress, Packets: 3, Bytes: 180, FlowReason: decode.ReasonNew},
	}
	fresh := New("n1", withSvc, fakeReasons{}, fakeSyms{}, fakeIfaces{})
	r := New("n1", withSvc, fakeReasons{}, fakeSyms{}, fakeIfaces{})
	var prev *flowtracev1.Flow
	for round := range 2 {
		for i := range evs {
			got, want := r.Flow(&evs[i]), fresh.Flow(&evs[i])
			if prev != nil && got != prev {
				t.Errorf("round %d, event %d: recycled block not reused", round, i)
			}
			g, w := proto.Clone(got).(*flowtracev1.Flow), proto.Clone(want).(*flowtracev1.Flow)
			g.Uuid, w.Uuid = "", ""
			if !proto.Equal(g, w) {
				t.Errorf("round %d, event %d: in a recycled block\n%v\nfresh\n%v", round, i, g, w)
			}
			r.Recycle([]*flowtracev1.Flow{got, nil})
			prev = got
		}
	}
	for _, i := range []int{0, 4} { // a drop; a flow to a Service (its message is shared)
		ev := evs[i]
		if n := testing.AllocsPerRun(200, func() { r.Recycle([]*flowtracev1.Flow{r.Flow(&ev)}) }); n > 0 {
			t.Errorf("%v: %.0f allocations per recycled event, want 0", ev.Kind, n)
		}
	}
}

// A Service port's message is shared by the flows that name it, and
// follows its source: a replaced Service (sources replace, never modify)
// names the next flow, while earlier flows keep what they said.
func TestServiceShared(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	svcs := map[netip.Addr]*identity.Service{vip: {Namespace: "shop", Name: "web", VIPs: []netip.Addr{vip},
		Ports: []identity.ServicePort{{Name: "http", Port: 80}, {Name: "https", Port: 443}}}}
	e := New("n1", svcIDs{fakeIDs: ids, svcs: svcs}, nil, nil, nil)
	ev := &decode.Event{Kind: decode.KindFlow, IPVersion: 4, Src: frontend, Dst: db, Proto: 6, SrcPort: 40000, DstPort: 8080,
		CT: decode.Conntrack{Flags: decode.CTKnown | decode.CTDNAT, IPVersion: 4, OrigSrc: frontend, OrigDst: vip, OrigSrcPort: 40000, OrigDstPort: 80}}
	first, again := e.Flow(ev), e.Flow(ev)
	if first.DestinationService == nil || first.DestinationService != again.DestinationService {
		t.Fatalf("same Service port: message not shared: %v, %v", first.DestinationService, again.DestinationService)
	}
	ev.CT.OrigDstPort = 443
	if other := e.Flow(ev).DestinationService; other.GetPort() != 443 || other.GetPortName() != "https" {
		t.Errorf("another port of the Service: %v", other)
	}
	svcs[vip] = &identity.Service{Namespace: "shop", Name: "web", VIPs: []netip.Addr{vip}, Ports: []identity.ServicePort{{Name: "web", Port: 80}}}
	ev.CT.OrigDstPort = 80
	if next := e.Flow(ev).DestinationService; next.GetPortName() != "web" {
		t.Errorf("replaced Service: %v", next)
	}
	if first.DestinationService.GetPortName() != "http" {
		t.Errorf("an earlier flow changed: %v", first.DestinationService)
	}
}
