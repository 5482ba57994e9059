// Package decode turns raw flowtrace ring buffer records into typed events.
//
// It is pure Go (no cgo, no root) so it can be fuzzed and unit-tested
// anywhere. Decode reads fields by explicit offsets after checking type,
// version and length; it never allocates.
package decode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Kind is the event type (enum ft_event_type).
type Kind uint8

// Event kinds. Keep in sync with bpf/ft_event.h.
const (
	KindFlow       Kind = 1
	KindDrop       Kind = 2
	KindTranslated Kind = 3 // a connection's NAT, once per connection and netns
	KindMTU        Kind = 4 // MTU exceeded, or an ICMP PMTU error seen
)

func (k Kind) String() string {
	switch k {
	case KindFlow:
		return "flow"
	case KindDrop:
		return "drop"
	case KindTranslated:
		return "translated"
	case KindMTU:
		return "mtu"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Direction is the tc hook that saw a flow (enum ft_direction).
type Direction uint8

// Directions. Keep in sync with bpf/ft_event.h.
const (
	DirUnknown Direction = 0
	DirIngress Direction = 1
	DirEgress  Direction = 2
)

func (d Direction) String() string {
	switch d {
	case DirIngress:
		return "ingress"
	case DirEgress:
		return "egress"
	}
	return "unknown"
}

// FlowReason says why a flow event was emitted (enum ft_flow_reason).
type FlowReason uint8

// Flow report reasons. Keep in sync with bpf/ft_event.h.
const (
	ReasonNew       FlowReason = 1
	ReasonTCPFlags  FlowReason = 2
	ReasonPeriodic  FlowReason = 3
	ReasonIdleFlush FlowReason = 4
	ReasonClosed    FlowReason = 5
)

func (r FlowReason) String() string {
	switch r {
	case ReasonNew:
		return "new"
	case ReasonTCPFlags:
		return "tcp_flags"
	case ReasonPeriodic:
		return "periodic"
	case ReasonIdleFlush:
		return "idle_flush"
	case ReasonClosed:
		return "closed"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// CTFlags describe the conntrack view of a packet (ft_ct.flags).
type CTFlags uint8

// Has reports whether all bits of f are set.
func (c CTFlags) Has(f CTFlags) bool { return c&f == f }

// MTUKind says what an MTU event reports (enum ft_mtu_kind).
type MTUKind uint8

// MTU event kinds. Keep in sync with bpf/ft_event.h.
const (
	MTUExceeded           MTUKind = 1 // packet larger than its egress device's MTU
	MTUICMPFragNeeded     MTUKind = 2 // ICMP type 3 code 4
	MTUICMPv6PacketTooBig MTUKind = 3 // ICMPv6 type 2
)

func (m MTUKind) String() string {
	switch m {
	case MTUExceeded:
		return "mtu_exceeded"
	case MTUICMPFragNeeded:
		return "icmp_frag_needed"
	case MTUICMPv6PacketTooBig:
		return "icmpv6_packet_too_big"
	}
	return fmt.Sprintf("mtu_kind(%d)", uint8(m))
}

// Conntrack is the connection of a packet as conntrack first saw it (the
// ORIGINAL direction). With CTDNAT set, OrigDst:OrigDstPort is the Service
// VIP, in both directions of the connection; OrigSrc is the client before
// masquerade. Zero when Flags lacks CTKnown.
type Conntrack struct {
	Flags                    CTFlags
	IPVersion                uint8
	OrigSrc, OrigDst         netip.Addr
	OrigSrcPort, OrigDstPort uint16
}

// Encap is the outer header of a VXLAN packet; zero when not encapsulated.
type Encap struct {
	IPVersion uint8
	Src, Dst  netip.Addr // underlay (node) addresses
	DstPort   uint16     // 4789 or 8472
	VNI       uint32
}

// Embedded is the header quoted by an ICMP error: the flow it is about, as
// that flow's sender sent it.
type Embedded struct {
	IPVersion        uint8
	Proto            uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// Event is one decoded event. Fields that do not apply to Kind are zero.
type Event struct {
	Kind   Kind
	CPU    uint32
	TimeNs uint64    // CLOCK_BOOTTIME nanoseconds from the kernel
	Time   time.Time // wall time, filled by the datapath
	// LastTime is a folded drop report's last drop (LastNs) in wall time,
	// filled by the datapath when the report stands for several drops.
	LastTime  time.Time
	Ifindex   uint32
	Netns     uint32
	Direction Direction

	EtherType        uint16
	IPVersion        uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
	TCPFlags         uint8
	ICMPType         uint8
	ICMPCode         uint8
	VLAN             uint16
	PktLen           uint32
	ParseStatus      uint8

	// Flow events.
	Packets, Bytes uint64
	FlowReason     FlowReason
	// A TCP connection's closing report (RST, CLOSED) also carries what the
	// other direction's entry at the same hook held unreported (its FIN,
	// the last ACKs): that entry ends with it.
	RevPackets, RevBytes uint64
	RevTCPFlags          uint8

	// Drop events.
	DropReason uint32
	Location   uint64
	SkbIif     uint32
	Count      uint32
	FirstNs    uint64
	LastNs     uint64

	// Flow, drop and translated events.
	CT Conntrack

	// Translated events: the original packet after NAT (the REPLY tuple
	// reversed): XlatDst is the backend, XlatSrc the source after SNAT.
	XlatSrc, XlatDst         netip.Addr
	XlatSrcPort, XlatDstPort uint16

	// Flow events seen on a VXLAN underlay: the tuple is the inner one.
	Encap Encap

	// MTU events. PktLen is the L3 length of the too-big (or quoted) packet.
	MTUKind       MTUKind
	MTU           uint32
	EgressIfindex uint32
	Embedded      Embedded
}

// Sentinel errors; Decode wraps them with the offending values.
var (
	ErrShort   = errors.New("short event")
	ErrVersion = errors.New("unsupported event version")
	ErrKind    = errors.New("unknown event kind")
	ErrLength  = errors.New("bad event length")
)

var le = binary.LittleEndian // the BPF objects are bpfel only

// RecordKind is the kind a record's header names, without decoding or
// checking the rest (Decode does); ok is false for a record too short to
// have a header.
func RecordKind(b []byte) (k Kind, ok bool) {
	if len(b) < HdrSize {
		return 0, false
	}
	return Kind(b[OffHdrType]), true
}

// Decode fills ev from one ring buffer record. ev is reset first, so a
// caller can reuse one Event for every record. It does not allocate on
// success; error paths may.
func Decode(b []byte, ev *Event) error {
	*ev = Event{}
	if len(b) < HdrSize {
		return fmt.Errorf("%w: %d bytes", ErrShort, len(b))
	}
	if b[OffHdrVersion] != Version {
		return fmt.Errorf("%w: %d", ErrVersion, b[OffHdrVersion])
	}
	kind := Kind(b[OffHdrType])
	n := int(le.Uint16(b[OffHdrLen:]))
	var want int
	switch kind {
	case KindFlow:
		want = FlowSize
	case KindDrop:
		want = DropSize
	case KindTranslated:
		want = XlateSize
	case KindMTU:
		want = MTUSize
	default:
		return fmt.Errorf("%w: %d", ErrKind, b[OffHdrType])
	}
	// Equal sizes only: a version bump is required for any layout change.
	if n != want || len(b) < want {
		return fmt.Errorf("%w: %v header says %d, record has %d, want %d", ErrLength, kind, n, len(b), want)
	}
	ev.Kind = kind
	ev.CPU = le.Uint32(b[OffHdrCPU:])
	ev.TimeNs = le.Uint64(b[OffHdrTsNs:])

	switch kind {
	case KindFlow:
		decodeTuple(b[OffFlowTuple:OffFlowTuple+TupleSize], ev)
		ev.Packets = le.Uint64(b[OffFlowPackets:])
		ev.Bytes = le.Uint64(b[OffFlowBytes:])
		ev.Ifindex = le.Uint32(b[OffFlowIfindex:])
		ev.Netns = le.Uint32(b[OffFlowNetns:])
		ev.PktLen = le.Uint32(b[OffFlowPktLen:])
		ev.Direction = Direction(b[OffFlowDir])
		ev.FlowReason = FlowReason(b[OffFlowReason])
		ev.RevTCPFlags = b[OffFlowRevTCPFlags]
		ev.RevPackets = le.Uint64(b[OffFlowRevPackets:])
		ev.RevBytes = le.Uint64(b[OffFlowRevBytes:])
		decodeCT(b[OffFlowCT:OffFlowCT+CTSize], ev)
		decodeEncap(b[OffFlowEncap:OffFlowEncap+EncapSize], ev)
	case KindDrop:
		decodeTuple(b[OffDropTuple:OffDropTuple+TupleSize], ev)
		ev.Location = le.Uint64(b[OffDropLocation:])
		ev.FirstNs = le.Uint64(b[OffDropFirstNs:])
		ev.LastNs = le.Uint64(b[OffDropLastNs:])
		ev.DropReason = le.Uint32(b[OffDropReason:])
		ev.Ifindex = le.Uint32(b[OffDropIfindex:])
		ev.SkbIif = le.Uint32(b[OffDropSkbIif:])
		ev.Netns = le.Uint32(b[OffDropNetns:])
		ev.PktLen = le.Uint32(b[OffDropPktLen:])
		ev.Count = le.Uint32(b[OffDropCount:])
		decodeCT(b[OffDropCT:OffDropCT+CTSize], ev)
	case KindTranslated:
		decodeTuple(b[OffXlateTuple:OffXlateTuple+TupleSize], ev)
		decodeCT(b[OffXlateCT:OffXlateCT+CTSize], ev)
		x := b[OffXlateXlat : OffXlateXlat+CTTupleSize]
		ev.XlatSrc, ev.XlatDst = Addrs(ev.CT.IPVersion, x[OffCTTupleSaddr:OffCTTupleSaddr+16], x[OffCTTupleDaddr:OffCTTupleDaddr+16])
		ev.XlatSrcPort = le.Uint16(x[OffCTTupleSport:])
		ev.XlatDstPort = le.Uint16(x[OffCTTupleDport:])
		ev.Ifindex = le.Uint32(b[OffXlateIfindex:])
		ev.Netns = le.Uint32(b[OffXlateNetns:])
		ev.Direction = Direction(b[OffXlateDir])
	case KindMTU:
		decodeTuple(b[OffMTUTuple:OffMTUTuple+TupleSize], ev)
		e := b[OffMTUEmb : OffMTUEmb+CTTupleSize]
		ev.Embedded.IPVersion = b[OffMTUEmbIPVersion]
		ev.Embedded.Proto = b[OffMTUEmbProto]
		ev.Embedded.Src, ev.Embedded.Dst = Addrs(ev.Embedded.IPVersion, e[OffCTTupleSaddr:OffCTTupleSaddr+16], e[OffCTTupleDaddr:OffCTTupleDaddr+16])
		ev.Embedded.SrcPort = le.Uint16(e[OffCTTupleSport:])
		ev.Embedded.DstPort = le.Uint16(e[OffCTTupleDport:])
		ev.MTUKind = MTUKind(b[OffMTUKind])
		ev.Direction = Direction(b[OffMTUDir])
		ev.PktLen = le.Uint32(b[OffMTUPktLen:])
		ev.MTU = le.Uint32(b[OffMTUMTU:])
		ev.Ifindex = le.Uint32(b[OffMTUIfindex:])
		ev.EgressIfindex = le.Uint32(b[OffMTUEgressIfindex:])
		ev.Netns = le.Uint32(b[OffMTUNetns:])
	}
	return nil
}

// decodeCT leaves ev.CT zero unless the kernel marked it known, so a
// consumer can compare Conntrack values without looking at stray bytes.
func decodeCT(c []byte, ev *Event) {
	f := CTFlags(c[OffCTFlags])
	if !f.Has(CTKnown) {
		return
	}
	o := c[OffCTOrig : OffCTOrig+CTTupleSize]
	ev.CT.Flags = f
	ev.CT.IPVersion = c[OffCTIPVersion]
	ev.CT.OrigSrc, ev.CT.OrigDst = Addrs(ev.CT.IPVersion, o[OffCTTupleSaddr:OffCTTupleSaddr+16], o[OffCTTupleDaddr:OffCTTupleDaddr+16])
	ev.CT.OrigSrcPort = le.Uint16(o[OffCTTupleSport:])
	ev.CT.OrigDstPort = le.Uint16(o[OffCTTupleDport:])
}

func decodeEncap(c []byte, ev *Event) {
	v := c[OffEncapIPVersion]
	if v == 0 {
		return
	}
	ev.Encap.IPVersion = v
	ev.Encap.Src, ev.Encap.Dst = Addrs(v, c[OffEncapSaddr:OffEncapSaddr+16], c[OffEncapDaddr:OffEncapDaddr+16])
	ev.Encap.DstPort = le.Uint16(c[OffEncapDport:])
	ev.Encap.VNI = le.Uint32(c[OffEncapVNI:])
}

func decodeTuple(t []byte, ev *Event) {
	ev.SrcPort = le.Uint16(t[OffTupleSport:])
	ev.DstPort = le.Uint16(t[OffTupleDport:])
	ev.EtherType = le.Uint16(t[OffTupleEtherType:])
	ev.VLAN = le.Uint16(t[OffTupleVLAN:])
	ev.IPVersion = t[OffTupleIPVersion]
	ev.Proto = t[OffTupleProto]
	ev.TCPFlags = t[OffTupleTCPFlags]
	ev.ICMPType = t[OffTupleICMPType]
	ev.ICMPCode = t[OffTupleICMPCode]
	ev.ParseStatus = t[OffTupleStatus]
	ev.Src, ev.Dst = Addrs(ev.IPVersion, t[OffTupleSaddr:OffTupleSaddr+16], t[OffTupleDaddr:OffTupleDaddr+16])
}

// Addrs converts the 16-byte address fields of a tuple or flow key. IPv4
// uses the first four bytes; an unknown version yields invalid addresses.
func Addrs(ipVersion uint8, src, dst []byte) (netip.Addr, netip.Addr) {
	switch ipVersion {
	case 4:
		return netip.AddrFrom4([4]byte(src[:4])), netip.AddrFrom4([4]byte(dst[:4]))
	case 6:
		return netip.AddrFrom16([16]byte(src[:16])), netip.AddrFrom16([16]byte(dst[:16]))
	}
	return netip.Addr{}, netip.Addr{}
}
