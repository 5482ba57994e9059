package hubblefilter

import (
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

func TestMatch(t *testing.T) {
	drop := &flowpb.Flow{Verdict: flowpb.Verdict_DROPPED, NodeName: "lab-node",
		IP:                 &flowpb.IP{Source: "10.244.0.10", Destination: "10.244.0.30", IpVersion: flowpb.IPVersion_IPv4},
		L4:                 &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 5432, Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source:             &flowpb.Endpoint{Namespace: "shop", PodName: "frontend-1", Labels: []string{"k8s:app=frontend"}},
		Destination:        &flowpb.Endpoint{Namespace: "shop", PodName: "db-0"},
		DestinationService: &flowpb.Service{Namespace: "shop", Name: "web"}}
	for _, c := range []struct {
		name        string
		allow, deny []*flowpb.FlowFilter
		want        bool
	}{
		{"none", nil, nil, true},
		{"verdict", []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_FORWARDED}}}, nil, false},
		{"pod OR", []*flowpb.FlowFilter{{SourcePod: []string{"shop/db"}}, {DestinationPod: []string{"shop/db"}}}, nil, true},
		{"namespace", []*flowpb.FlowFilter{{SourcePod: []string{"kube-system/"}}}, nil, false},
		{"AND across fields", []*flowpb.FlowFilter{{SourcePod: []string{"shop/"}, DestinationPort: []string{"80"}}}, nil, false},
		{"not", nil, []*flowpb.FlowFilter{{DestinationPort: []string{"5432"}}}, false},
		{"cidr", []*flowpb.FlowFilter{{DestinationIp: []string{"10.244.0.0/24"}}}, nil, true},
		{"service", []*flowpb.FlowFilter{{DestinationService: []string{"shop/web"}}}, nil, true},
		{"label any source", []*flowpb.FlowFilter{{SourceLabel: []string{"app=frontend"}}}, nil, true},
		{"label other value", []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:app=db"}}}, nil, false},
		{"tcp flags", []*flowpb.FlowFilter{{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}}, nil, true},
		{"node glob", []*flowpb.FlowFilter{{NodeName: []string{"lab-*"}}}, nil, true},
		{"dns never", []*flowpb.FlowFilter{{DnsQuery: []string{"x"}}}, nil, false},
		{"reply of a drop", []*flowpb.FlowFilter{{Reply: []bool{false}}}, nil, true},
	} {
		m, err := Build(c.allow, c.deny)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := m.Match(drop); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if _, err := Build([]*flowpb.FlowFilter{{SourceIp: []string{"10.0.0.300"}}}, nil); err == nil {
		t.Error("bad IP accepted")
	}
	if _, err := Build([]*flowpb.FlowFilter{{Experimental: &flowpb.FlowFilter_Experimental{CelExpression: []string{"true"}}}}, nil); err == nil {
		t.Error("CEL accepted")
	}
}
