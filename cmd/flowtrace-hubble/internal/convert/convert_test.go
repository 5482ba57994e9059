package convert

import (
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func policyDrop() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Uuid: "u1", NodeName: "lab-node", Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
		DropReason: flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, DropReasonKernel: "NETFILTER_DROP", DropLocation: "nft_do_chain+0x3e8",
		Ip: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.0.30", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV4},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{SourcePort: 40000, DestinationPort: 5432,
			Flags: &flowtracev1.TCPFlags{Syn: true}}}},
		Source:      &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-1", Labels: []string{"app=frontend"}, Workload: &flowtracev1.Workload{Kind: "Deployment", Name: "frontend"}},
		Destination: &flowtracev1.Endpoint{Namespace: "shop", PodName: "db-0"},
		Interface:   &flowtracev1.Interface{Name: "ftv-db", Index: 5},
	}
}

func TestFlowDrop(t *testing.T) {
	f := Flow(policyDrop(), nil)
	if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetEventType().GetType() != messageTypeDrop || f.GetEventType().GetSubType() != DropCodeUnmatched {
		t.Errorf("verdict/event type: %v %v", f.GetVerdict(), f.GetEventType())
	}
	// NETFILTER_DROP has no true Cilium equivalent.
	if f.GetDropReasonDesc() != flowpb.DropReason_DROP_REASON_UNKNOWN {
		t.Errorf("drop_reason_desc %v", f.GetDropReasonDesc())
	}
	if want := "kernel drop reason NETFILTER_DROP at nft_do_chain+0x3e8 on ftv-db; TCP Flags: SYN"; f.GetSummary() != want {
		t.Errorf("summary %q, want %q", f.GetSummary(), want)
	}
	if f.GetIsReply() == nil || f.GetIsReply().GetValue() || f.GetSource().GetPodName() != "frontend-1" ||
		f.GetSource().GetWorkloads()[0].GetKind() != "Deployment" || f.GetSource().GetLabels()[0] != "k8s:app=frontend" {
		t.Errorf("endpoint/reply: %v %v", f.GetSource(), f.GetIsReply())
	}

	nf := policyDrop()
	nf.DropReason, nf.DropReasonKernel = flowtracev1.DropReason_DROP_REASON_IP_INNOROUTES, "IP_INNOROUTES"
	if f := Flow(nf, nil); f.GetDropReasonDesc() != flowpb.DropReason_FIB_LOOKUP_FAILED || f.GetEventType().GetSubType() != int32(flowpb.DropReason_FIB_LOOKUP_FAILED) {
		t.Errorf("IP_INNOROUTES: %v %v", f.GetDropReasonDesc(), f.GetEventType())
	}
	nf.DropCause = flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS
	nf.DestinationService = &flowtracev1.Service{Namespace: "shop", Name: "ghost"}
	if f := Flow(nf, nil); f.GetDropReasonDesc() != flowpb.DropReason_SERVICE_BACKEND_NOT_FOUND || !strings.Contains(f.GetSummary(), "Service shop/ghost has no endpoints") {
		t.Errorf("no endpoints: %v %q", f.GetDropReasonDesc(), f.GetSummary())
	}

	// A root ping's echo reply: why it is no loss.
	echo := policyDrop()
	echo.DropReason, echo.DropReasonKernel, echo.DropLocation = flowtracev1.DropReason_DROP_REASON_NO_SOCKET, "NO_SOCKET", "ping_rcv+0xb3"
	echo.L4 = &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 0}}}
	echo.DropCause = flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED
	if got := Flow(echo, nil).GetSummary(); !strings.Contains(got, "kernel drop reason NO_SOCKET at ping_rcv+0xb3 on ftv-db; echo reply no ping socket asked for; a raw-socket ping got its own copy") {
		t.Errorf("echo reply summary %q", got)
	}

	// A folded storm: its count and span, in the summary Hubble's CLI shows.
	storm := policyDrop()
	storm.EventCount = 2000
	storm.Time = timestamppb.New(time.Date(2026, 12, 7, 4, 15, 23, 0, time.UTC))
	storm.LastTime = timestamppb.New(storm.Time.AsTime().Add(48 * time.Millisecond))
	if want := "kernel drop reason NETFILTER_DROP at nft_do_chain+0x3e8 on ftv-db; TCP Flags: SYN; 2000 packets over 48ms"; Flow(storm, nil).GetSummary() != want {
		t.Errorf("storm summary %q, want %q", Flow(storm, nil).GetSummary(), want)
	}
}

func TestFlowMTUAndDirection(t *testing.T) {
	m := &flowtracev1.Flow{Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
		Mtu: &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED, Mtu: 1400, PacketLength: 1500, EgressInterface: &flowtracev1.Interface{Name: "vx0"}}}
	f := Flow(m, nil)
	if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetEventType().GetSubType() != dropCodeFragNeeded ||
		f.GetSummary() != "MTU exceeded: 1500-byte packet, MTU 1400 of vx0" {
		t.Errorf("MTU flow: %v %v %q", f.GetVerdict(), f.GetEventType(), f.GetSummary())
	}
	fw := &flowtracev1.Flow{Verdict: flowtracev1.Verdict_VERDICT_FORWARDED, TrafficDirection: flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_INGRESS,
		Interface: &flowtracev1.Interface{Name: "ftv-frontend"}}
	f = Flow(fw, Kinds{"ftv-frontend": KindVeth})
	// tc ingress on the node side of a pod's veth: the pod sent it.
	if f.GetTrafficDirection() != flowpb.TrafficDirection_EGRESS || f.GetTraceObservationPoint() != flowpb.TraceObservationPoint_FROM_ENDPOINT {
		t.Errorf("veth ingress: %v %v", f.GetTrafficDirection(), f.GetTraceObservationPoint())
	}
	fw.TrafficDirection = flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS
	if f = Flow(fw, Kinds{"ftv-frontend": KindVeth}); f.GetTraceObservationPoint() != flowpb.TraceObservationPoint_TO_ENDPOINT || f.GetEventType().GetSubType() != 0 {
		t.Errorf("veth egress: %v %v", f.GetTraceObservationPoint(), f.GetEventType())
	}
}

// TestClosingReportSummary: a connection's closing report says in its
// summary what it carries of the other direction (its FIN), which Hubble's
// Flow has no field for.
func TestClosingReportSummary(t *testing.T) {
	fw := &flowtracev1.Flow{Verdict: flowtracev1.Verdict_VERDICT_FORWARDED, Packets: 3, Bytes: 198,
		L4:             &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{Flags: &flowtracev1.TCPFlags{Rst: true, Ack: true}}}},
		ReversePackets: 3, ReverseBytes: 203, ReverseTcpFlags: &flowtracev1.TCPFlags{Fin: true, Ack: true}}
	want := "TCP Flags: RST, ACK; 3 packets, 198 bytes; reverse TCP Flags: FIN, ACK, 3 packets, 203 bytes"
	if got := Flow(fw, nil).GetSummary(); got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	fw.ReversePackets, fw.ReverseBytes, fw.ReverseTcpFlags = 0, 0, nil
	if got := Flow(fw, nil).GetSummary(); strings.Contains(got, "reverse") {
		t.Errorf("summary without a reverse direction: %q", got)
	}
}

func TestFilters(t *testing.T) {
	p := Filters([]*flowpb.FlowFilter{{SourcePod: []string{"shop/frontend"}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, nil)
	if !p.Exact || len(p.Allow) != 1 || p.Allow[0].GetSourcePod()[0] != "shop/frontend" || len(p.Allow[0].GetVerdict()) != 2 {
		t.Errorf("exact pushdown: %+v", p)
	}
	p = Filters([]*flowpb.FlowFilter{{SourcePod: []string{"shop/frontend"}, SourceLabel: []string{"app=x"}}},
		[]*flowpb.FlowFilter{{DnsQuery: []string{"x"}}, {DestinationPort: []string{"53"}}})
	if p.Exact || len(p.Allow[0].GetSourcePod()) != 1 || len(p.Deny) != 1 || p.Deny[0].GetDestinationPort()[0] != 53 {
		t.Errorf("partial pushdown: %+v", p)
	}
	// A value the agent would reject is not pushed down.
	if p = Filters([]*flowpb.FlowFilter{{SourcePort: []string{"0"}, SourceIp: []string{"nope"}}}, nil); p.Exact || len(p.Allow[0].GetSourcePort())+len(p.Allow[0].GetSourceIp()) != 0 {
		t.Errorf("bad values: %+v", p)
	}
}
