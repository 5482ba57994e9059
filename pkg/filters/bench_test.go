package filters_test

import (
	"testing"

	"github.com/flowtrace/flowtrace/pkg/filters"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func benchDropFlow() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict:    flowtracev1.Verdict_VERDICT_DROPPED,
		DropReason: flowtracev1.DropReason_DROP_REASON_NO_SOCKET,
		NodeName:   "n1",
		Ip:         &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.0.30", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV4},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
			SourcePort: 40000, DestinationPort: 5432, Flags: &flowtracev1.TCPFlags{Syn: true}}}},
		Source:      &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d", Labels: []string{"app=frontend"}},
		Destination: &flowtracev1.Endpoint{Namespace: "shop", PodName: "db-0", Labels: []string{"app=db"}},
		Interface:   &flowtracev1.Interface{Name: "ftv-frontend"},
	}
}

// BenchmarkFilterMatch measures one compiled request against one flow: the
// cost every subscriber pays per event.
func BenchmarkFilterMatch(b *testing.B) {
	cases := []struct {
		name        string
		allow, deny []*flowtracev1.FlowFilter
	}{
		{"all", nil, nil},
		{"verdict+pod+port", []*flowtracev1.FlowFilter{{
			Verdict:         []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED},
			SourcePod:       []string{"shop/frontend"},
			DestinationPort: []uint32{5432},
		}}, nil},
		{"cidr+deny-namespace", []*flowtracev1.FlowFilter{{SourceIp: []string{"10.244.0.0/16"}}},
			[]*flowtracev1.FlowFilter{{DestinationNamespace: []string{"kube-system"}}}},
	}
	f := benchDropFlow()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			m, err := filters.Build(c.allow, c.deny)
			if err != nil {
				b.Fatal(err)
			}
			if !m.Match(f) {
				b.Fatal("the benchmark flow must match")
			}
			b.ReportAllocs()
			for b.Loop() {
				m.Match(f)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
