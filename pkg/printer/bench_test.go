package printer_test

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/enrich"
	"github.com/flowtrace/flowtrace/pkg/filters"
	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/pkg/printer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type benchIDs map[netip.Addr]*identity.Pod

func (m benchIDs) PodByIP(ip netip.Addr) (*identity.Pod, bool)    { p, ok := m[ip]; return p, ok }
func (benchIDs) ServiceByIP(netip.Addr) (*identity.Service, bool) { return nil, false }

var (
	benchSrc = netip.MustParseAddr("10.244.0.10")
	benchDst = netip.MustParseAddr("10.244.0.30")
)

func benchEnricher() *enrich.Enricher {
	ids := benchIDs{}
	for _, ip := range []netip.Addr{benchSrc, benchDst} {
		ids[ip] = &identity.Pod{Namespace: "shop", Name: "pod-" + ip.String(), Labels: map[string]string{"app": "web"},
			Workload: identity.Workload{Kind: "Deployment", Name: "web"}, Node: "n1", IPs: []netip.Addr{ip}}
	}
	return enrich.New("n1", ids, nil, nil, nil)
}

func benchResponse() *flowtracev1.GetFlowsResponse {
	ev := decode.Event{Kind: decode.KindFlow, IPVersion: 4, EtherType: 0x0800, Src: benchSrc, Dst: benchDst, Proto: 6,
		SrcPort: 40000, DstPort: 8080, TCPFlags: decode.TCPSyn, Ifindex: 4, Direction: decode.DirIngress,
		Packets: 10, Bytes: 15000, FlowReason: decode.ReasonNew, Time: time.Unix(1700000000, 0)}
	f := benchEnricher().Flow(&ev)
	return &flowtracev1.GetFlowsResponse{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f},
		NodeName: "n1", Time: timestamppb.New(ev.Time)}
}

// BenchmarkSerialize is the per-event cost of each way a flow leaves the
// agent: gRPC's proto encoding, and the CLI's printers.
func BenchmarkSerialize(b *testing.B) {
	r := benchResponse()
	b.Run("proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], r); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protojson.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	for _, format := range printer.Formats() {
		b.Run("printer-"+format, func(b *testing.B) {
			p, err := printer.New(format, io.Discard, printer.Options{Location: time.UTC})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Print(r); err != nil {
					b.Fatal(err)
				}
			}
			if err := p.Flush(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkPipeline runs one ring buffer record through decode, enrich,
// filter and proto encoding on one core: the agent's whole per-event path
// short of the channels between its stages.
func BenchmarkPipeline(b *testing.B) {
	rec := make([]byte, decode.FlowSize)
	rec[decode.OffHdrType] = byte(decode.KindFlow)
	rec[decode.OffHdrVersion] = decode.Version
	rec[decode.OffHdrLen], rec[decode.OffHdrLen+1] = byte(decode.FlowSize), byte(decode.FlowSize>>8)
	t := rec[decode.OffFlowTuple:]
	copy(t[decode.OffTupleSaddr:], benchSrc.AsSlice())
	copy(t[decode.OffTupleDaddr:], benchDst.AsSlice())
	t[decode.OffTupleIPVersion], t[decode.OffTupleProto] = 4, 6
	t[decode.OffTupleDport], t[decode.OffTupleDport+1] = 0x90, 0x1f // 8080
	e := benchEnricher()
	m, err := filters.Build([]*flowtracev1.FlowFilter{{SourcePod: []string{"shop/"}, DestinationPort: []uint32{8080}}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	var ev decode.Event
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		if err := decode.Decode(rec, &ev); err != nil {
			b.Fatal(err)
		}
		f := e.Flow(&ev)
		if !m.Match(f) {
			b.Fatal("the pipeline flow must match")
		}
		r := &flowtracev1.GetFlowsResponse{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f}, NodeName: "n1"}
		if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
