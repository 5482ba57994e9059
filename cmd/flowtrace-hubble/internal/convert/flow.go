// Package convert turns flowtrace's native flows, lost events and filters
// into Hubble's (github.com/cilium/cilium/api/v1/flow) and back, so the
// Hubble Observer API can be served from a flowtrace agent.
//
// What the Hubble CLI prints for a flow is fixed by the CLI: the TYPE column
// comes from event_type (for drops, Cilium's drop-code table indexed by
// sub_type) and the text in parentheses from Summary. Cilium's drop codes
// describe Cilium's datapath, so a kernel drop reason is mapped to one only
// where the meaning is the same; the kernel's own reason always leads the
// Summary, whatever the code.
package convert

import (
	"fmt"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/flowtrace/flowtrace/pkg/printer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// InterfaceKind says what kind of device an observation point is on; it
// decides Hubble's endpoint-relative traffic direction and trace point.
type InterfaceKind int

const (
	// KindUnknown: nothing is known about the device.
	KindUnknown InterfaceKind = iota
	// KindVeth: the node side of a pod's veth. tc ingress there carries
	// what the pod sends (Hubble: from-endpoint, EGRESS), tc egress what
	// it receives (to-endpoint, INGRESS).
	KindVeth
	// KindDevice: a NIC or other device of the node (from-/to-network).
	KindDevice
)

// Kinds maps interface names (in the node's namespace) to their kind.
type Kinds map[string]InterfaceKind

// Cilium's monitor message types and trace points (pkg/monitor/api, from
// bpf/lib/trace.h), which the CLI decodes event_type with. Copied as numbers
// because the Go package links Kubernetes code. Keep in sync with cilium.
const (
	messageTypeDrop  = 1
	messageTypeTrace = 4

	traceToLxc       uint8 = 0
	traceToStack     uint8 = 3
	traceFromLxc     uint8 = 5
	traceFromStack   uint8 = 8
	traceFromNetwork uint8 = 10
	traceToNetwork   uint8 = 11
)

// DropCodeUnmatched is the Cilium drop code (event_type.sub_type) flowtrace
// sends when no Cilium code means what the kernel reported. It is outside
// Cilium's table on purpose: the CLI prints it as "1, 0" rather than a
// Cilium reason that would be wrong (code 0 would print "Success").
const DropCodeUnmatched = 1

// dropCodeFragNeeded is Cilium's monitor code the CLI prints as
// "Fragmentation needed". flowpb's enum gives 136 another name
// (CT_MISSING_TCP_ACK_FLAG), so it is used for sub_type only.
const dropCodeFragNeeded = 136

// kernelToCilium maps a kernel drop reason to the Cilium drop reason with
// the same meaning. Only true equivalents are listed: NETFILTER_DROP, for
// one, is not POLICY_DENIED (kube-proxy, firewalls and policy engines all
// drop through netfilter).
var kernelToCilium = map[flowtracev1.DropReason]flowpb.DropReason{
	flowtracev1.DropReason_DROP_REASON_IP_INNOROUTES:       flowpb.DropReason_FIB_LOOKUP_FAILED,
	flowtracev1.DropReason_DROP_REASON_IP_OUTNOROUTES:      flowpb.DropReason_FIB_LOOKUP_FAILED,
	flowtracev1.DropReason_DROP_REASON_IP_NOPROTO:          flowpb.DropReason_UNKNOWN_L4_PROTOCOL,
	flowtracev1.DropReason_DROP_REASON_UNHANDLED_PROTO:     flowpb.DropReason_UNSUPPORTED_L3_PROTOCOL,
	flowtracev1.DropReason_DROP_REASON_IPV6_BAD_EXTHDR:     flowpb.DropReason_INVALID_IPV6_EXTENSION_HEADER,
	flowtracev1.DropReason_DROP_REASON_IP_INVALID_SOURCE:   flowpb.DropReason_INVALID_SOURCE_IP,
	flowtracev1.DropReason_DROP_REASON_VXLAN_VNI_NOT_FOUND: flowpb.DropReason_INVALID_VNI,
}

// CiliumDropReason returns the Cilium drop reason equivalent to a native
// drop, and whether there is one. A drop flowtrace explains as a Service
// without endpoints is SERVICE_BACKEND_NOT_FOUND, whatever the kernel's
// reason (kube-proxy rejects such connections).
func CiliumDropReason(f *flowtracev1.Flow) (flowpb.DropReason, bool) {
	if f.GetDropCause() == flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS {
		return flowpb.DropReason_SERVICE_BACKEND_NOT_FOUND, true
	}
	r, ok := kernelToCilium[f.GetDropReason()]
	return r, ok
}

// Flow converts a native flow. kinds may be nil.
func Flow(f *flowtracev1.Flow, kinds Kinds) *flowpb.Flow {
	out := &flowpb.Flow{
		Time:               f.GetTime(),
		Uuid:               f.GetUuid(),
		NodeName:           f.GetNodeName(),
		Type:               flowpb.FlowType_L3_L4,
		IP:                 ip(f),
		L4:                 l4(f.GetL4()),
		Source:             endpoint(f.GetSource()),
		Destination:        endpoint(f.GetDestination()),
		SourceService:      service(f.GetSourceService()),
		DestinationService: service(f.GetDestinationService()),
		IsReply:            isReply(f.GetL4()),
	}
	if i := f.GetInterface(); i != nil {
		out.Interface = &flowpb.NetworkInterface{Index: i.GetIndex(), Name: i.GetName()}
	}
	if e := f.GetEncapsulation(); e != nil {
		out.Tunnel = &flowpb.Tunnel{
			Protocol: flowpb.Tunnel_VXLAN,
			IP:       &flowpb.IP{Source: e.GetOuterSource(), Destination: e.GetOuterDestination(), IpVersion: ipVersionOf(e.GetOuterSource())},
			L4:       &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{DestinationPort: e.GetPort()}}},
			Vni:      e.GetVni(),
		}
	}

	kind := KindUnknown
	if kinds != nil {
		kind = kinds[f.GetInterface().GetName()]
	}
	point, dir := tracePoint(f.GetTrafficDirection(), kind)

	switch f.GetVerdict() {
	case flowtracev1.Verdict_VERDICT_DROPPED:
		out.Verdict = flowpb.Verdict_DROPPED
		code := int32(DropCodeUnmatched)
		if r, ok := CiliumDropReason(f); ok {
			out.DropReasonDesc = r
			out.DropReason = uint32(r)
			code = int32(r)
		}
		out.EventType = &flowpb.CiliumEventType{Type: messageTypeDrop, SubType: code}
		out.TrafficDirection = dir
		out.Summary = dropSummary(f)
	case flowtracev1.Verdict_VERDICT_MTU_EXCEEDED:
		// Hubble has no MTU verdict; a too-big packet the kernel cannot
		// forward is a drop, and an ICMP "too big" reports one.
		out.Verdict = flowpb.Verdict_DROPPED
		out.EventType = &flowpb.CiliumEventType{Type: messageTypeDrop, SubType: dropCodeFragNeeded}
		out.TrafficDirection = dir
		out.Summary = mtuSummary(f)
	case flowtracev1.Verdict_VERDICT_TRANSLATED:
		// Hubble's TRANSLATED: "an address has been translated".
		out.Verdict = flowpb.Verdict_TRANSLATED
		out.EventType = &flowpb.CiliumEventType{Type: messageTypeTrace, SubType: int32(point)}
		out.TraceObservationPoint = traceObservationPoint(point)
		out.TrafficDirection = dir
		out.Summary = translatedSummary(f)
		if t := f.GetTranslation(); t.GetTranslatedSourceIp() != "" && out.IP != nil {
			out.IP.SourceXlated = t.GetTranslatedSourceIp()
		}
	default:
		out.Verdict = flowpb.Verdict_FORWARDED
		out.EventType = &flowpb.CiliumEventType{Type: messageTypeTrace, SubType: int32(point)}
		out.TraceObservationPoint = traceObservationPoint(point)
		out.TrafficDirection = dir
		out.Summary = forwardedSummary(f)
	}
	return out
}

// tracePoint returns Cilium's trace observation point (monitor code) and
// Hubble's endpoint-relative direction for a tc direction on a device.
func tracePoint(d flowtracev1.TrafficDirection, kind InterfaceKind) (uint8, flowpb.TrafficDirection) {
	in := d == flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_INGRESS
	out := d == flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS
	switch {
	case kind == KindVeth && in:
		return traceFromLxc, flowpb.TrafficDirection_EGRESS
	case kind == KindVeth && out:
		return traceToLxc, flowpb.TrafficDirection_INGRESS
	case kind == KindDevice && in:
		return traceFromNetwork, flowpb.TrafficDirection_INGRESS
	case kind == KindDevice && out:
		return traceToNetwork, flowpb.TrafficDirection_EGRESS
	case in:
		return traceFromStack, flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN
	case out:
		return traceToStack, flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN
	}
	return traceToStack, flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN
}

func traceObservationPoint(p uint8) flowpb.TraceObservationPoint {
	if p == traceToLxc {
		// flowpb renumbers to-endpoint, whose monitor code is 0.
		return flowpb.TraceObservationPoint_TO_ENDPOINT
	}
	return flowpb.TraceObservationPoint(p)
}

func ipVersionOf(addr string) flowpb.IPVersion {
	switch {
	case addr == "":
		return flowpb.IPVersion_IP_NOT_USED
	case strings.Contains(addr, ":"):
		return flowpb.IPVersion_IPv6
	}
	return flowpb.IPVersion_IPv4
}

func ip(f *flowtracev1.Flow) *flowpb.IP {
	i := f.GetIp()
	if i == nil {
		return nil
	}
	v := flowpb.IPVersion_IP_NOT_USED
	switch i.GetIpVersion() {
	case flowtracev1.IPVersion_IP_VERSION_IPV4:
		v = flowpb.IPVersion_IPv4
	case flowtracev1.IPVersion_IP_VERSION_IPV6:
		v = flowpb.IPVersion_IPv6
	}
	return &flowpb.IP{Source: i.GetSource(), Destination: i.GetDestination(), IpVersion: v}
}

func l4(l *flowtracev1.Layer4) *flowpb.Layer4 {
	switch p := l.GetProtocol().(type) {
	case *flowtracev1.Layer4_Tcp:
		t := p.Tcp
		fl := t.GetFlags()
		out := &flowpb.TCP{SourcePort: t.GetSourcePort(), DestinationPort: t.GetDestinationPort()}
		if fl != nil {
			out.Flags = &flowpb.TCPFlags{
				FIN: fl.GetFin(), SYN: fl.GetSyn(), RST: fl.GetRst(), PSH: fl.GetPsh(),
				ACK: fl.GetAck(), URG: fl.GetUrg(), ECE: fl.GetEce(), CWR: fl.GetCwr(),
			}
		}
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: out}}
	case *flowtracev1.Layer4_Udp:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: p.Udp.GetSourcePort(), DestinationPort: p.Udp.GetDestinationPort()}}}
	case *flowtracev1.Layer4_Sctp:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: p.Sctp.GetSourcePort(), DestinationPort: p.Sctp.GetDestinationPort()}}}
	case *flowtracev1.Layer4_Icmpv4:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: p.Icmpv4.GetType(), Code: p.Icmpv4.GetCode()}}}
	case *flowtracev1.Layer4_Icmpv6:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{Type: p.Icmpv6.GetType(), Code: p.Icmpv6.GetCode()}}}
	}
	return nil
}

// isReply is known only where the packet itself says so: a SYN without ACK
// opens a connection, a SYN-ACK answers one. Anything else is unknown (nil),
// which the CLI prints as "<>" instead of guessing an arrow.
func isReply(l *flowtracev1.Layer4) *wrapperspb.BoolValue {
	fl := l.GetTcp().GetFlags()
	if fl == nil || !fl.GetSyn() {
		return nil
	}
	return wrapperspb.Bool(fl.GetAck())
}

func endpoint(e *flowtracev1.Endpoint) *flowpb.Endpoint {
	if e == nil {
		return nil
	}
	out := &flowpb.Endpoint{Namespace: e.GetNamespace(), PodName: e.GetPodName()}
	// Cilium labels carry their source; Kubernetes pod labels are "k8s:".
	for _, l := range e.GetLabels() {
		out.Labels = append(out.Labels, "k8s:"+l)
	}
	if e.GetNamespace() != "" && e.GetPodName() != "" {
		out.Labels = append(out.Labels, "k8s:io.kubernetes.pod.namespace="+e.GetNamespace())
	}
	if w := e.GetWorkload(); w.GetName() != "" {
		out.Workloads = []*flowpb.Workload{{Name: w.GetName(), Kind: w.GetKind()}}
	}
	return out
}

func service(s *flowtracev1.Service) *flowpb.Service {
	if s == nil || s.GetName() == "" {
		return nil
	}
	return &flowpb.Service{Name: s.GetName(), Namespace: s.GetNamespace()}
}

// tcpSummary is what Cilium's own summaries say for TCP, so the CLI's
// output reads the same: "TCP Flags: SYN, ACK".
func tcpSummary(l *flowtracev1.Layer4) string {
	return tcpFlagsSummary(l.GetTcp().GetFlags())
}

func tcpFlagsSummary(fl *flowtracev1.TCPFlags) string {
	if fl == nil {
		return ""
	}
	var names []string
	for _, x := range []struct {
		on   bool
		name string
	}{{fl.GetSyn(), "SYN"}, {fl.GetFin(), "FIN"}, {fl.GetRst(), "RST"}, {fl.GetPsh(), "PSH"}, {fl.GetAck(), "ACK"}, {fl.GetUrg(), "URG"}, {fl.GetEce(), "ECE"}, {fl.GetCwr(), "CWR"}} {
		if x.on {
			names = append(names, x.name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return "TCP Flags: " + strings.Join(names, ", ")
}

func join(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, "; ")
}

func dropSummary(f *flowtracev1.Flow) string {
	k := f.GetDropReasonKernel()
	if k == "" {
		k = strings.TrimPrefix(f.GetDropReason().String(), "DROP_REASON_")
	}
	s := "kernel drop reason " + k
	if f.GetDropLocation() != "" {
		s += " at " + f.GetDropLocation()
	}
	if n := f.GetInterface().GetName(); n != "" {
		s += " on " + n
	}
	cause := printer.CauseText(f)
	count := ""
	if n := f.GetEventCount(); n > 1 {
		count = fmt.Sprintf("%d packets", n)
		if span := printer.FoldSpan(f); span != "" {
			count += " over " + span
		}
	}
	return join(s, cause, tcpSummary(f.GetL4()), count)
}

func mtuSummary(f *flowtracev1.Flow) string {
	m := f.GetMtu()
	var s string
	switch m.GetEvent() {
	case flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED:
		s = fmt.Sprintf("ICMP fragmentation needed: path MTU %d", m.GetMtu())
	case flowtracev1.MTUEvent_MTU_EVENT_ICMPV6_PACKET_TOO_BIG:
		s = fmt.Sprintf("ICMPv6 packet too big: path MTU %d", m.GetMtu())
	default:
		s = fmt.Sprintf("MTU exceeded: %d-byte packet, MTU %d", m.GetPacketLength(), m.GetMtu())
		if n := m.GetEgressInterface().GetName(); n != "" {
			s += " of " + n
		}
	}
	if q := m.GetQuotedIp(); q.GetSource() != "" {
		s += fmt.Sprintf(" for %s -> %s", q.GetSource(), q.GetDestination())
	}
	icmp := ""
	if m.GetIcmpSent() {
		icmp = "ICMP error sent to the sender"
	}
	return join(s, icmp, tcpSummary(f.GetL4()))
}

func translatedSummary(f *flowtracev1.Flow) string {
	t := f.GetTranslation()
	s := fmt.Sprintf("DNAT %s:%d -> %s:%d", t.GetOriginalIp(), t.GetOriginalPort(), t.GetTranslatedIp(), t.GetTranslatedPort())
	if svc := f.GetDestinationService(); svc.GetName() != "" {
		s += fmt.Sprintf(" (Service %s/%s)", svc.GetNamespace(), svc.GetName())
	}
	snat := ""
	if t.GetTranslatedSourceIp() != "" {
		snat = fmt.Sprintf("SNAT to %s:%d", t.GetTranslatedSourceIp(), t.GetTranslatedSourcePort())
	}
	return join(s, snat, tcpSummary(f.GetL4()))
}

// forwardedSummary also says what a connection's closing report carries of
// the other direction (its FIN): Hubble's Flow has no field for it.
func forwardedSummary(f *flowtracev1.Flow) string {
	counts, reverse := "", ""
	if f.GetPackets() > 0 {
		counts = fmt.Sprintf("%d packets, %d bytes", f.GetPackets(), f.GetBytes())
	}
	if n := f.GetReversePackets(); n > 0 {
		reverse = fmt.Sprintf("reverse %d packets, %d bytes", n, f.GetReverseBytes())
		if fl := tcpFlagsSummary(f.GetReverseTcpFlags()); fl != "" {
			reverse = fmt.Sprintf("reverse %s, %d packets, %d bytes", fl, n, f.GetReverseBytes())
		}
	}
	return join(tcpSummary(f.GetL4()), counts, reverse)
}

// LostEvent converts a native loss report.
func LostEvent(l *flowtracev1.LostEvents) *flowpb.LostEvent {
	out := &flowpb.LostEvent{NumEventsLost: l.GetNumEventsLost()}
	switch l.GetSource() {
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER:
		out.Source = flowpb.LostEventSource_PERF_EVENT_RING_BUFFER
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE:
		out.Source = flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED,
		flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE:
		// Both are the server side losing flows before this client read
		// them, which Hubble reports as its ring buffer.
		out.Source = flowpb.LostEventSource_HUBBLE_RING_BUFFER
	}
	if l.Cpu != nil {
		out.Cpu = wrapperspb.Int32(int32(l.GetCpu()))
	}
	return out
}
