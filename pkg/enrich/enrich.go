// Package enrich turns decoded datapath events into API flows: it names the
// drop reason, the kernel location, the interfaces and both ends of the flow.
//
// It never talks to Kubernetes or netlink itself; everything it needs comes
// through small interfaces so its tests pass fakes.
package enrich

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/dropreason"
	"github.com/flowtrace/flowtrace/pkg/identity"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// InterfaceNamer names a device given its netns inode and ifindex.
// netns is "node" for the agent's own namespace, a pod or namespace name
// otherwise, or "" when unknown.
type InterfaceNamer interface {
	InterfaceName(netnsInode, ifindex uint32) (name, netns string)
}

// SymbolResolver turns a kernel text address into "symbol+0xoff".
type SymbolResolver interface {
	Resolve(addr uint64) string
}

// Reasons resolves kernel drop reason values.
type Reasons interface {
	Lookup(code uint32) dropreason.Reason
}

// Enricher builds flows. It is used by one goroutine (the event pipeline).
type Enricher struct {
	node    string
	ids     identity.Getter
	reasons Reasons
	syms    SymbolResolver
	ifaces  InterfaceNamer

	uuidPrefix [8]byte // random per agent run; the suffix counts
	seq        uint64
}

// New returns an Enricher. reasons may be nil on kernels without drop
// reasons; drops are then reported with an unknown reason.
func New(node string, ids identity.Getter, reasons Reasons, syms SymbolResolver, ifaces InterfaceNamer) *Enricher {
	e := &Enricher{node: node, ids: ids, reasons: reasons, syms: syms, ifaces: ifaces}
	_, _ = rand.Read(e.uuidPrefix[:])
	return e
}

// uuid returns a unique id without a syscall per event: a random prefix
// chosen at start and a sequence number, laid out as a version-4-style UUID.
func (e *Enricher) uuid() string {
	e.seq++
	var b [16]byte
	copy(b[:8], e.uuidPrefix[:])
	binary.BigEndian.PutUint64(b[8:], e.seq)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// Flow converts one event. ev is not retained.
func (e *Enricher) Flow(ev *decode.Event) *flowtracev1.Flow {
	f := &flowtracev1.Flow{
		Time:         timestamppb.New(ev.Time),
		Uuid:         e.uuid(),
		NodeName:     e.node,
		PacketLength: ev.PktLen,
		VlanId:       uint32(ev.VLAN),
	}
	f.Ip, f.L4 = network(ev)
	if ev.Src.IsValid() {
		f.Source = e.endpoint(ev.Src)
		f.Destination = e.endpoint(ev.Dst)
	}
	f.Interface = e.iface(ev.Netns, ev.Ifindex)

	switch ev.Kind {
	case decode.KindFlow:
		f.Verdict = flowtracev1.Verdict_VERDICT_FORWARDED
		f.Packets, f.Bytes = ev.Packets, ev.Bytes
		f.Report = report(ev.FlowReason)
		switch ev.Direction {
		case decode.DirIngress:
			f.TrafficDirection = flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_INGRESS
			f.ObservationPoint = flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_INGRESS
		case decode.DirEgress:
			f.TrafficDirection = flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS
			f.ObservationPoint = flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_EGRESS
		}
		f.Summary = summaryFlow(ev)
	case decode.KindDrop:
		f.Verdict = flowtracev1.Verdict_VERDICT_DROPPED
		f.ObservationPoint = flowtracev1.ObservationPoint_OBSERVATION_POINT_KFREE_SKB
		f.Packets, f.Bytes = uint64(max(ev.Count, 1)), uint64(ev.PktLen)
		f.EventCount = max(ev.Count, 1)
		if e.reasons != nil {
			r := e.reasons.Lookup(ev.DropReason)
			f.DropReason, f.DropReasonKernel = r.Stable, r.Kernel
		} else {
			f.DropReason, f.DropReasonKernel = flowtracev1.DropReason_DROP_REASON_UNKNOWN, "UNKNOWN"
		}
		f.DropReasonCode = ev.DropReason
		if e.syms != nil {
			f.DropLocation = e.syms.Resolve(ev.Location)
		}
		if ev.SkbIif != 0 && ev.SkbIif != ev.Ifindex {
			f.InputInterface = e.iface(ev.Netns, ev.SkbIif)
		}
		f.Summary = summaryDrop(f)
	}
	return f
}

func (e *Enricher) iface(netns, ifindex uint32) *flowtracev1.Interface {
	if ifindex == 0 {
		return nil
	}
	i := &flowtracev1.Interface{Index: ifindex, NetnsInode: netns}
	if e.ifaces != nil {
		i.Name, i.Netns = e.ifaces.InterfaceName(netns, ifindex)
	}
	return i
}

func (e *Enricher) endpoint(ip netip.Addr) *flowtracev1.Endpoint {
	if e.ids == nil {
		return nil
	}
	p, ok := e.ids.PodByIP(ip)
	if !ok {
		return nil
	}
	ep := &flowtracev1.Endpoint{
		Namespace: p.Namespace,
		PodName:   p.Name,
		Labels:    p.LabelList(),
		NodeName:  p.Node,
	}
	if p.Workload.Name != "" {
		ep.Workload = &flowtracev1.Workload{Kind: p.Workload.Kind, Name: p.Workload.Name}
	}
	return ep
}

func network(ev *decode.Event) (*flowtracev1.IP, *flowtracev1.Layer4) {
	if !ev.Src.IsValid() {
		return nil, nil
	}
	ip := &flowtracev1.IP{Source: ev.Src.String(), Destination: ev.Dst.String()}
	switch ev.IPVersion {
	case 4:
		ip.IpVersion = flowtracev1.IPVersion_IP_VERSION_IPV4
	case 6:
		ip.IpVersion = flowtracev1.IPVersion_IP_VERSION_IPV6
	}
	l4 := &flowtracev1.Layer4{}
	sp, dp := uint32(ev.SrcPort), uint32(ev.DstPort)
	switch ev.Proto {
	case protoTCP:
		l4.Protocol = &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{SourcePort: sp, DestinationPort: dp, Flags: tcpFlags(ev.TCPFlags)}}
	case protoUDP:
		l4.Protocol = &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: sp, DestinationPort: dp}}
	case protoSCTP:
		l4.Protocol = &flowtracev1.Layer4_Sctp{Sctp: &flowtracev1.SCTP{SourcePort: sp, DestinationPort: dp}}
	case protoICMP:
		l4.Protocol = &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: uint32(ev.ICMPType), Code: uint32(ev.ICMPCode)}}
	case protoICMPv6:
		l4.Protocol = &flowtracev1.Layer4_Icmpv6{Icmpv6: &flowtracev1.ICMPv6{Type: uint32(ev.ICMPType), Code: uint32(ev.ICMPCode)}}
	default:
		l4.Protocol = &flowtracev1.Layer4_Other{Other: uint32(ev.Proto)}
	}
	return ip, l4
}

// IANA protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132
)

func tcpFlags(b uint8) *flowtracev1.TCPFlags {
	return &flowtracev1.TCPFlags{
		Fin: b&0x01 != 0, Syn: b&0x02 != 0, Rst: b&0x04 != 0, Psh: b&0x08 != 0,
		Ack: b&0x10 != 0, Urg: b&0x20 != 0, Ece: b&0x40 != 0, Cwr: b&0x80 != 0,
	}
}

// TCPFlagNames renders flags as "SYN,ACK".
func TCPFlagNames(b uint8) string {
	names := [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if b&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

func report(r decode.FlowReason) flowtracev1.FlowReport {
	switch r {
	case decode.ReasonNew:
		return flowtracev1.FlowReport_FLOW_REPORT_NEW
	case decode.ReasonTCPFlags:
		return flowtracev1.FlowReport_FLOW_REPORT_TCP_FLAGS
	case decode.ReasonPeriodic:
		return flowtracev1.FlowReport_FLOW_REPORT_PERIODIC
	case decode.ReasonIdleFlush:
		return flowtracev1.FlowReport_FLOW_REPORT_IDLE_FLUSH
	}
	return flowtracev1.FlowReport_FLOW_REPORT_UNSPECIFIED
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "TCP"
	case protoUDP:
		return "UDP"
	case protoSCTP:
		return "SCTP"
	case protoICMP:
		return "ICMPv4"
	case protoICMPv6:
		return "ICMPv6"
	}
	return fmt.Sprintf("proto %d", p)
}

func summaryFlow(ev *decode.Event) string {
	if !ev.Src.IsValid() {
		return ""
	}
	s := protoName(ev.Proto)
	if ev.Proto == protoTCP && ev.TCPFlags != 0 {
		s += " " + TCPFlagNames(ev.TCPFlags)
	}
	return fmt.Sprintf("%s, %d packets, %d bytes", s, ev.Packets, ev.Bytes)
}

func summaryDrop(f *flowtracev1.Flow) string {
	s := "dropped: " + f.DropReasonKernel
	if f.DropLocation != "" {
		s += " at " + f.DropLocation
	}
	return s
}
