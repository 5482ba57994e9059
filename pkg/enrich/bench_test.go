package enrich_test

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/dropreason"
	"github.com/flowtrace/flowtrace/pkg/enrich"
	"github.com/flowtrace/flowtrace/pkg/identity"
)

// benchIDs is an identity source the size of a busy node: every lookup hits
// a map, as the file and Kubernetes sources do.
type benchIDs map[netip.Addr]*identity.Pod

func (m benchIDs) PodByIP(ip netip.Addr) (*identity.Pod, bool)    { p, ok := m[ip]; return p, ok }
func (benchIDs) ServiceByIP(netip.Addr) (*identity.Service, bool) { return nil, false }

type benchSyms struct{}

func (benchSyms) Resolve(uint64) string { return "nf_hook_slow+0x8d" }

type benchIfaces struct{}

func (benchIfaces) InterfaceName(_, _ uint32) (string, string) { return "ftv-frontend", "node" }

func benchEnricher() (*enrich.Enricher, netip.Addr, netip.Addr) {
	ids := benchIDs{}
	for i := range 250 {
		ip := netip.AddrFrom4([4]byte{10, 244, 0, byte(i + 1)})
		ids[ip] = &identity.Pod{Namespace: "shop", Name: "pod-" + ip.String(), Labels: map[string]string{"app": "web"},
			Workload: identity.Workload{Kind: "Deployment", Name: "web"}, Node: "n1", IPs: []netip.Addr{ip}}
	}
	reasons := dropreason.FromEnum(&btf.Enum{Name: "skb_drop_reason", Size: 4, Values: []btf.EnumValue{
		{Name: "SKB_NOT_DROPPED_YET", Value: 0}, {Name: "SKB_CONSUMED", Value: 1},
		{Name: "SKB_DROP_REASON_NOT_SPECIFIED", Value: 2}, {Name: "SKB_DROP_REASON_NO_SOCKET", Value: 3},
		{Name: "SKB_DROP_REASON_NETFILTER_DROP", Value: 6},
	}})
	return enrich.New("n1", ids, reasons, benchSyms{}, benchIfaces{}),
		netip.MustParseAddr("10.244.0.10"), netip.MustParseAddr("10.244.0.30")
}

func BenchmarkEnrichEvent(b *testing.B) {
	e, src, dst := benchEnricher()
	for _, c := range []struct {
		name string
		ev   decode.Event
	}{
		{"flow", decode.Event{Kind: decode.KindFlow, IPVersion: 4, EtherType: 0x0800, Src: src, Dst: dst, Proto: 6,
			SrcPort: 40000, DstPort: 8080, TCPFlags: decode.TCPSyn, Ifindex: 4, Direction: decode.DirIngress,
			Packets: 10, Bytes: 15000, FlowReason: decode.ReasonNew}},
		{"drop", decode.Event{Kind: decode.KindDrop, IPVersion: 4, EtherType: 0x0800, Src: src, Dst: dst, Proto: 6,
			SrcPort: 40000, DstPort: 5432, TCPFlags: decode.TCPSyn, Ifindex: 4, DropReason: 6, Location: 0xffffffff81000000, Count: 1}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if f := e.Flow(&c.ev); f == nil {
					b.Fatal("no flow")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
