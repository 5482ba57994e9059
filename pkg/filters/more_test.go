package filters

import (
	"strings"
	"testing"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func richFlow() *flowtracev1.Flow {
	f := tcpFlow()
	f.Uuid = "u-1"
	f.NodeName = "kind-worker2"
	f.IsReply = true
	f.TrafficDirection = flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS
	f.ObservationPoint = flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_EGRESS
	f.Source.Labels = []string{"app=web", "tier=front", "canary=true"}
	f.Source.Workload = &flowtracev1.Workload{Kind: "Deployment", Name: "frontend"}
	f.Destination.Labels = []string{"app=db"}
	f.Destination.Workload = &flowtracev1.Workload{Kind: "StatefulSet", Name: "db"}
	f.L4.GetTcp().Flags = &flowtracev1.TCPFlags{Syn: true, Ack: true}
	return f
}

// closingFlow is a TCP connection's closing report: the client's RST, with
// the server's FIN as the other direction's last flags.
func closingFlow() *flowtracev1.Flow {
	f := tcpFlow()
	f.L4.GetTcp().Flags = &flowtracev1.TCPFlags{Rst: true, Ack: true}
	f.Report = flowtracev1.FlowReport_FLOW_REPORT_TCP_FLAGS
	f.ReversePackets, f.ReverseBytes = 1, 52
	f.ReverseTcpFlags = &flowtracev1.TCPFlags{Fin: true, Ack: true}
	return f
}

func TestMatchMore(t *testing.T) {
	syn := &flowtracev1.TCPFlags{Syn: true}
	synack := &flowtracev1.TCPFlags{Syn: true, Ack: true}
	fin := &flowtracev1.TCPFlags{Fin: true}
	tests := []struct {
		name string
		ff   *ff
		flow *flowtracev1.Flow
		want bool
	}{
		{"uuid", &ff{Uuid: []string{"x", "u-1"}}, richFlow(), true},
		{"uuid miss", &ff{Uuid: []string{"u-2"}}, richFlow(), false},
		{"label eq", &ff{SourceLabel: []string{"app=web"}}, richFlow(), true},
		{"label ==", &ff{SourceLabel: []string{"app==web"}}, richFlow(), true},
		{"label eq miss", &ff{SourceLabel: []string{"app=db"}}, richFlow(), false},
		{"label in", &ff{DestinationLabel: []string{"app in (web, db)"}}, richFlow(), true},
		{"label notin", &ff{DestinationLabel: []string{"app notin (web,db)"}}, richFlow(), false},
		{"label notin absent key", &ff{DestinationLabel: []string{"tier notin (front)"}}, richFlow(), true},
		{"label exists", &ff{SourceLabel: []string{"canary"}}, richFlow(), true},
		{"label not exists", &ff{SourceLabel: []string{"!canary"}}, richFlow(), false},
		{"label not exists dest", &ff{DestinationLabel: []string{"!canary"}}, richFlow(), true},
		{"label != absent key", &ff{DestinationLabel: []string{"tier!=db"}}, richFlow(), true},
		{"label != other value", &ff{SourceLabel: []string{"tier!=db"}}, richFlow(), true},
		{"label != same value", &ff{SourceLabel: []string{"tier!=front"}}, richFlow(), false},
		{"label AND", &ff{SourceLabel: []string{"app=web,tier in (front,back),!gone"}}, richFlow(), true},
		{"label AND miss", &ff{SourceLabel: []string{"app=web,tier=back"}}, richFlow(), false},
		{"label OR values", &ff{SourceLabel: []string{"app=web,tier=back", "canary=true"}}, richFlow(), true},
		{"label on unknown endpoint", &ff{SourceLabel: []string{"!x"}}, &flowtracev1.Flow{}, false},
		{"workload kind/name", &ff{SourceWorkload: []string{"deployment/frontend"}}, richFlow(), true},
		{"workload name", &ff{DestinationWorkload: []string{"db"}}, richFlow(), true},
		{"workload kind/", &ff{DestinationWorkload: []string{"StatefulSet/"}}, richFlow(), true},
		{"workload wrong kind", &ff{DestinationWorkload: []string{"Deployment/db"}}, richFlow(), false},
		{"node", &ff{NodeName: []string{"kind-worker2"}}, richFlow(), true},
		{"node prefix", &ff{NodeName: []string{"kind-*"}}, richFlow(), true},
		{"node miss", &ff{NodeName: []string{"kind-worker"}}, richFlow(), false},
		{"tcp flags subset", &ff{TcpFlags: []*flowtracev1.TCPFlags{syn}}, richFlow(), true},
		{"tcp flags all", &ff{TcpFlags: []*flowtracev1.TCPFlags{synack}}, richFlow(), true},
		{"tcp flags miss", &ff{TcpFlags: []*flowtracev1.TCPFlags{fin}}, richFlow(), false},
		{"tcp flags OR", &ff{TcpFlags: []*flowtracev1.TCPFlags{fin, syn}}, richFlow(), true},
		{"tcp flags on udp", &ff{TcpFlags: []*flowtracev1.TCPFlags{syn}}, udp6Flow(), false},
		{"tcp flags, the other direction's FIN", &ff{TcpFlags: []*flowtracev1.TCPFlags{fin}}, closingFlow(), true},
		{"tcp flags, own RST", &ff{TcpFlags: []*flowtracev1.TCPFlags{{Rst: true}}}, closingFlow(), true},
		{"tcp flags, never both directions' union", &ff{TcpFlags: []*flowtracev1.TCPFlags{{Fin: true, Rst: true}}}, closingFlow(), false},
		{"direction", &ff{TrafficDirection: []flowtracev1.TrafficDirection{flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS}}, richFlow(), true},
		{"direction miss", &ff{TrafficDirection: []flowtracev1.TrafficDirection{flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_INGRESS}}, richFlow(), false},
		{"obs point", &ff{ObservationPoint: []flowtracev1.ObservationPoint{flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_EGRESS}}, richFlow(), true},
		{"ip version v6", &ff{IpVersion: []flowtracev1.IPVersion{flowtracev1.IPVersion_IP_VERSION_IPV6}}, udp6Flow(), true},
		{"ip version v4 miss", &ff{IpVersion: []flowtracev1.IPVersion{flowtracev1.IPVersion_IP_VERSION_IPV4}}, udp6Flow(), false},
		{"reply true", &ff{Reply: []bool{true}}, richFlow(), true},
		{"reply false", &ff{Reply: []bool{false}}, richFlow(), false},
		{"reply false on request", &ff{Reply: []bool{false}}, tcpFlow(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Build([]*ff{tt.ff}, nil)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if got := m.Match(tt.flow); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildErrorsMore(t *testing.T) {
	tests := []struct {
		name string
		ff   *ff
		want string
	}{
		{"label empty", &ff{SourceLabel: []string{""}}, `allowlist[0].source_label: "" is not a label selector`},
		{"label bad op", &ff{SourceLabel: []string{"app in web"}}, `allowlist[0].source_label: "app in web" is not a label selector`},
		{"label unbalanced", &ff{DestinationLabel: []string{"app in (a,b"}}, `allowlist[0].destination_label: "app in (a,b" is not a label selector: unbalanced parentheses`},
		{"label bad key", &ff{SourceLabel: []string{"a pp=x"}}, `is not a label key`},
		{"label bad value", &ff{SourceLabel: []string{"app=x y"}}, `"x y" is not a label value`},
		{"workload", &ff{SourceWorkload: []string{"/x"}}, `allowlist[0].source_workload: "/x" is not a workload`},
		{"node", &ff{NodeName: []string{"a/b"}}, `allowlist[0].node_name: "a/b" is not a node name`},
		{"uuid", &ff{Uuid: []string{""}}, `allowlist[0].uuid: "" is not a flow uuid`},
		{"tcp flags empty", &ff{TcpFlags: []*flowtracev1.TCPFlags{{}}}, `allowlist[0].tcp_flags:`},
		{"direction", &ff{TrafficDirection: []flowtracev1.TrafficDirection{7}}, `allowlist[0].traffic_direction: 7 is not a known traffic direction`},
		{"obs point unspecified", &ff{ObservationPoint: []flowtracev1.ObservationPoint{0}}, `allowlist[0].observation_point: 0 is not a known observation point`},
		{"ip version", &ff{IpVersion: []flowtracev1.IPVersion{9}}, `allowlist[0].ip_version: 9 is not a known IP version`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build([]*ff{tt.ff}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseTCPFlags(t *testing.T) {
	fl, err := ParseTCPFlags("syn,ACK")
	if err != nil || !fl.GetSyn() || !fl.GetAck() || fl.GetFin() {
		t.Errorf("got %v %v", fl, err)
	}
	if _, err := ParseTCPFlags("SYN,NOPE"); err == nil || !strings.Contains(err.Error(), `"NOPE" is not a TCP flag`) {
		t.Errorf("bad flag: %v", err)
	}
	if _, err := ParseTCPFlags(","); err == nil {
		t.Error("empty flags accepted")
	}
}

func TestFieldMaskPaths(t *testing.T) {
	for _, bad := range []struct{ path, want string }{
		{"nope", `flowtrace.v1.Flow has no field "nope"`},
		{"source.pod", `flowtrace.v1.Endpoint has no field "pod"`},
		{"verdict.x", `"verdict" is not a message`},
		{"source.labels.x", `"source.labels" is not a message`},
		{"", "empty path"},
	} {
		if _, err := NewFieldMask([]string{"time", bad.path}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("path %q: %v, want %q", bad.path, err, bad.want)
		}
	}
	m, err := NewFieldMask([]string{"source", "source.pod_name", "ip.source"})
	if err != nil {
		t.Fatal(err)
	}
	f := richFlow()
	out := m.Apply(f)
	if out.GetSource().GetNamespace() != "shop" || len(out.GetSource().GetLabels()) != 3 {
		t.Errorf("whole source not kept: %v", out.GetSource())
	}
	if out.GetIp().GetSource() != "10.244.0.10" || out.GetIp().GetDestination() != "" || out.GetDestination() != nil || out.GetVerdict() != 0 {
		t.Errorf("masked: %v", out)
	}
	if f.GetDestination() == nil {
		t.Error("Apply modified its input")
	}
	if n, _ := NewFieldMask(nil); n.Apply(f) != f {
		t.Error("nil mask must return the flow itself")
	}
	if ps := FlowFieldPaths(); !containsString(ps, "source.pod_name") || !containsString(ps, "l4.tcp.flags.syn") {
		t.Errorf("paths %v", ps)
	}
}

func FuzzLabelSelector(f *testing.F) {
	for _, s := range []string{"app=web", "app in (a,b)", "!canary", "tier!=db,env=prod", "a notin ()", "((", ",", "x=="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := parseLabelSelector(s)
		if err != nil {
			return
		}
		// Compiled selectors evaluate without panicking on any label set.
		sel.match([]string{"app=web", "=", "noequals", ""})
		sel.match(nil)
	})
}
