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

// Event kinds. Keep in sync with bpf/ft_event.h; 3 and 4 are reserved for
// TRANSLATED and MTU events.
const (
	KindFlow Kind = 1
	KindDrop Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindFlow:
		return "flow"
	case KindDrop:
		return "drop"
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
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Event is one decoded flow or drop. Fields that do not apply to Kind are zero.
type Event struct {
	Kind      Kind
	CPU       uint32
	TimeNs    uint64    // CLOCK_BOOTTIME nanoseconds from the kernel
	Time      time.Time // wall time, filled by the datapath
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

	// Drop events.
	DropReason uint32
	Location   uint64
	SkbIif     uint32
	Count      uint32
	FirstNs    uint64
	LastNs     uint64
}

// Sentinel errors; Decode wraps them with the offending values.
var (
	ErrShort   = errors.New("short event")
	ErrVersion = errors.New("unsupported event version")
	ErrKind    = errors.New("unknown event kind")
	ErrLength  = errors.New("bad event length")
)

var le = binary.LittleEndian // the BPF objects are bpfel only

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
	}
	return nil
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
