package enrich

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/identity"
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
