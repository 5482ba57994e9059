package enrich

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/identity"
)

// lazyIDs adds a Service and a node to the fake pods.
type lazyIDs struct {
	fakeIDs
	vip  netip.Addr
	svc  *identity.Service
	node *identity.Node
}

func (l lazyIDs) ServiceByIP(ip netip.Addr) (*identity.Service, bool) {
	return l.svc, ip == l.vip
}

func (l lazyIDs) NodeByIP(ip netip.Addr) (*identity.Node, bool) {
	for _, a := range l.node.IPs {
		if a == ip {
			return l.node, true
		}
	}
	return nil, false
}

// TestLazyMatchesFlow: a forwarded-traffic report kept as a payload and
// its Refs reads back as the very Flow that Flow makes of it, uuid
// included, for every shape of event; other events are refused.
func TestLazyMatchesFlow(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	nodeIP := netip.MustParseAddr("192.168.1.5")
	ids := lazyIDs{fakeIDs: ids, vip: vip, svc: &identity.Service{Namespace: "shop", Name: "db", VIPs: []netip.Addr{vip},
		Ports: []identity.ServicePort{{Name: "pg", Port: 5432, Protocol: "TCP"}}},
		node: &identity.Node{Name: "n2", IPs: []netip.Addr{nodeIP}}}
	now := time.Date(2026, 12, 6, 1, 2, 3, 456789012, time.UTC)
	base := decode.Event{Kind: decode.KindFlow, Time: now, IPVersion: 4, EtherType: 0x0800, Src: frontend, Dst: db,
		SrcPort: 40000, DstPort: 5432, Proto: 6, TCPFlags: decode.TCPSyn, Ifindex: 7, Netns: 4026531840,
		Direction: decode.DirIngress, PktLen: 74, Packets: 1, Bytes: 74, FlowReason: decode.ReasonNew,
		CT: decode.Conntrack{Flags: decode.CTKnown}}
	cases := map[string]func(ev *decode.Event){
		"new TCP":       func(*decode.Event) {},
		"reply, egress": func(ev *decode.Event) { ev.CT.Flags |= decode.CTReply; ev.Direction = decode.DirEgress },
		"closed with the other direction": func(ev *decode.Event) {
			ev.FlowReason, ev.TCPFlags = decode.ReasonClosed, decode.TCPAck
			ev.RevPackets, ev.RevBytes, ev.RevTCPFlags = 2, 120, decode.TCPFin|decode.TCPAck
		},
		"through a Service (DNAT)": func(ev *decode.Event) {
			ev.CT = decode.Conntrack{Flags: decode.CTKnown | decode.CTDNAT, IPVersion: 4, OrigSrc: frontend, OrigDst: vip,
				OrigSrcPort: 40000, OrigDstPort: 5432}
		},
		"to the VIP itself": func(ev *decode.Event) { ev.Dst = vip; ev.CT = decode.Conntrack{} },
		"from a node":       func(ev *decode.Event) { ev.Src = nodeIP },
		"unknown ends, VLAN, big counts": func(ev *decode.Event) {
			ev.Src, ev.Dst, ev.VLAN = netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("10.9.9.8"), 42
			ev.Packets, ev.Bytes, ev.FlowReason = 1<<40, 1<<50, decode.ReasonPeriodic
		},
		"IPv6 UDP": func(ev *decode.Event) {
			ev.IPVersion, ev.Src, ev.Dst, ev.Proto, ev.TCPFlags = 6, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 17, 0
		},
		"ICMP": func(ev *decode.Event) { ev.Proto, ev.ICMPType, ev.ICMPCode, ev.SrcPort, ev.DstPort = 1, 8, 0, 0, 0 },
		"ICMPv6": func(ev *decode.Event) {
			ev.IPVersion, ev.Src, ev.Dst, ev.Proto, ev.ICMPType = 6, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 58, 128
		},
		"SCTP":                func(ev *decode.Event) { ev.Proto = 132 },
		"another protocol":    func(ev *decode.Event) { ev.Proto = 47 },
		"IPv4-mapped address": func(ev *decode.Event) { ev.Src = netip.AddrFrom16(frontend.As16()) },
		"no addresses":        func(ev *decode.Event) { ev.Src, ev.Dst, ev.IPVersion, ev.Proto = netip.Addr{}, netip.Addr{}, 0, 0 },
		"no interface":        func(ev *decode.Event) { ev.Ifindex = 0 },
		"idle flush":          func(ev *decode.Event) { ev.FlowReason = decode.ReasonIdleFlush },
		"unknown direction":   func(ev *decode.Event) { ev.Direction = 9 },
	}
	for name, change := range cases {
		full, lazy := New("n1", ids, nil, nil, fakeIfaces{}), New("n1", ids, nil, nil, fakeIfaces{})
		lazy.uuidHead = full.uuidHead
		ev := base
		change(&ev)
		want := full.Flow(&ev)
		payload, refs, ok := lazy.Lazy(&ev, []byte("prefix"))
		if !ok {
			t.Fatalf("%s: refused", name)
		}
		payload = payload[len("prefix"):]
		if len(payload) > MaxPayload {
			t.Errorf("%s: %d-byte payload, MaxPayload %d", name, len(payload), MaxPayload)
		}
		got, err := lazy.Builder().Materialize(payload)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got.Source, got.Destination, got.Interface = refs.Source, refs.Destination, refs.Interface
		got.SourceService, got.DestinationService = refs.SourceService, refs.DestinationService
		if !proto.Equal(got, want) {
			t.Errorf("%s: lazy flow\n%v\nwant\n%v", name, got, want)
		}
	}

	e := New("n1", ids, nil, nil, fakeIfaces{})
	for _, kind := range []decode.Kind{decode.KindDrop, decode.KindTranslated, decode.KindMTU} {
		ev := base
		ev.Kind = kind
		if _, _, ok := e.Lazy(&ev, nil); ok {
			t.Errorf("%v event taken lazily", kind)
		}
	}
	ev := base
	ev.Encap = decode.Encap{IPVersion: 4, Src: nodeIP, Dst: nodeIP, DstPort: 4789, VNI: 1}
	if _, _, ok := e.Lazy(&ev, nil); ok {
		t.Error("encapsulated event taken lazily")
	}
}

// TestMaterializeRefusesGarbage: a payload that is not one (another
// version, truncated, wrong address lengths) is an error, not a panic.
func TestMaterializeRefusesGarbage(t *testing.T) {
	e := New("n1", ids, nil, nil, nil)
	ev := decode.Event{Kind: decode.KindFlow, IPVersion: 4, Src: frontend, Dst: db, Proto: 6}
	good, _, _ := e.Lazy(&ev, nil)
	b := e.Builder()
	if _, err := b.Materialize(good); err != nil {
		t.Fatal(err)
	}
	bad := [][]byte{nil, good[:10], good[:len(good)-1], append([]byte{2}, good[1:]...)}
	wrongLen := append([]byte(nil), good...)
	wrongLen[pSrcLen] = 5
	bad = append(bad, wrongLen)
	for i, p := range bad {
		if f, err := b.Materialize(p); err == nil {
			t.Errorf("garbage %d made a flow: %v", i, f)
		}
	}
}
