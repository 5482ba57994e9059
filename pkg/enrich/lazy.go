package enrich

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/flowtrace/flowtrace/pkg/decode"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// A forwarded-traffic report (the bulk of all events: a churned connection
// makes six) can be kept in history without becoming a Flow: Lazy names it
// (the identity lookups, which must happen now, while the pods are the
// ones that sent it) and packs the rest of the event into a payload;
// Builder.Materialize makes the Flow from the payload when someone reads
// it. Building a Flow and encoding it for history was two thirds of the
// agent's CPU per event under connection churn, for flows nobody may ever
// read; Lazy with history's copy of the payload is about a third of that
// (BenchmarkEnrichPublish).
//
// The payload is this package's own: [payloadV1][fixed fields, little
// endian][source address][destination address], each address 0, 4 or 16
// bytes as the event held it, so the Flow a reader gets is the one Flow
// would have made (TestLazyMatchesFlow).

// Refs are the shared messages that name a lazy flow: the enricher's
// cached messages, never modified, so history may keep them by reference.
type Refs struct {
	Source, Destination               *flowtracev1.Endpoint
	Interface                         *flowtracev1.Interface
	SourceService, DestinationService *flowtracev1.Service
}

const (
	payloadV1 = 1
	// Offsets of the fixed fields.
	pIPVersion   = 1
	pProto       = 2
	pTCPFlags    = 3
	pICMPType    = 4
	pICMPCode    = 5
	pDirection   = 6
	pReason      = 7
	pRevTCPFlags = 8
	pReply       = 9
	pSrcLen      = 10
	pDstLen      = 11
	pVLAN        = 12
	pSrcPort     = 14
	pDstPort     = 16
	pPktLen      = 20
	pTime        = 24
	pSeq         = 32
	pPackets     = 40
	pBytes       = 48
	pRevPackets  = 56
	pRevBytes    = 64
	pFixed       = 72
)

// MaxPayload is the largest payload Lazy appends.
const MaxPayload = pFixed + 32

// Lazy appends ev's payload to buf and returns it with the messages that
// name ev, for a forwarded-traffic report; ok is false for any other event
// (drops, translations, MTU and encapsulated traffic take Flow). It counts
// one flow like Flow does: the uuid a reader gets is this one's.
func (e *Enricher) Lazy(ev *decode.Event, buf []byte) (_ []byte, refs Refs, ok bool) {
	if ev.Kind != decode.KindFlow || ev.Encap.Src.IsValid() {
		return buf, refs, false
	}
	e.seq++
	start := len(buf)
	buf = append(buf, make([]byte, pFixed)...)
	p := buf[start:]
	p[0] = payloadV1
	p[pIPVersion], p[pProto], p[pTCPFlags] = ev.IPVersion, ev.Proto, ev.TCPFlags
	p[pICMPType], p[pICMPCode] = ev.ICMPType, ev.ICMPCode
	p[pDirection], p[pReason], p[pRevTCPFlags] = byte(ev.Direction), byte(ev.FlowReason), ev.RevTCPFlags
	if ev.CT.Flags.Has(decode.CTKnown | decode.CTReply) {
		p[pReply] = 1
	}
	p[pSrcLen], p[pDstLen] = byte(ev.Src.BitLen()/8), byte(ev.Dst.BitLen()/8)
	le := binary.LittleEndian
	le.PutUint16(p[pVLAN:], ev.VLAN)
	le.PutUint16(p[pSrcPort:], ev.SrcPort)
	le.PutUint16(p[pDstPort:], ev.DstPort)
	le.PutUint32(p[pPktLen:], ev.PktLen)
	le.PutUint64(p[pTime:], uint64(ev.Time.UnixNano()))
	le.PutUint64(p[pSeq:], e.seq)
	le.PutUint64(p[pPackets:], ev.Packets)
	le.PutUint64(p[pBytes:], ev.Bytes)
	le.PutUint64(p[pRevPackets:], ev.RevPackets)
	le.PutUint64(p[pRevBytes:], ev.RevBytes)
	buf = appendAddr(buf, ev.Src)
	buf = appendAddr(buf, ev.Dst)

	if ev.Src.IsValid() {
		refs.Source = e.endpoint(ev.Src, ev.Time)
		refs.Destination = e.endpoint(ev.Dst, ev.Time)
	}
	refs.Interface = e.iface(ev.Netns, ev.Ifindex)
	refs.SourceService, refs.DestinationService = e.services(ev, refs.Source, refs.Destination)
	return buf, refs, true
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch a.BitLen() {
	case 32:
		v := a.As4()
		return append(b, v[:]...)
	case 128:
		v := a.As16()
		return append(b, v[:]...)
	}
	return b
}

// Builder makes flows from payloads. Unlike the Enricher it is safe for
// concurrent use: history's readers materialize with it.
type Builder struct {
	node     string
	uuidHead [19]byte
}

// Builder returns the Builder of the payloads e makes.
func (e *Enricher) Builder() *Builder { return &Builder{node: e.node, uuidHead: e.uuidHead} }

var errPayload = errors.New("not a flow payload of this version")

// Materialize makes the flow of payload, but for the messages of its
// Refs, which the caller keeps.
func (b *Builder) Materialize(payload []byte) (*flowtracev1.Flow, error) {
	if len(payload) < pFixed || payload[0] != payloadV1 {
		return nil, errPayload
	}
	p := payload
	sl, dl := int(p[pSrcLen]), int(p[pDstLen])
	if len(p) != pFixed+sl+dl {
		return nil, fmt.Errorf("flow payload of %d bytes, want %d", len(p), pFixed+sl+dl)
	}
	le := binary.LittleEndian
	ev := decode.Event{Kind: decode.KindFlow, IPVersion: p[pIPVersion], Proto: p[pProto], TCPFlags: p[pTCPFlags],
		ICMPType: p[pICMPType], ICMPCode: p[pICMPCode], Direction: decode.Direction(p[pDirection]),
		FlowReason: decode.FlowReason(p[pReason]), RevTCPFlags: p[pRevTCPFlags],
		VLAN: le.Uint16(p[pVLAN:]), SrcPort: le.Uint16(p[pSrcPort:]), DstPort: le.Uint16(p[pDstPort:]),
		PktLen: le.Uint32(p[pPktLen:]), Time: time.Unix(0, int64(le.Uint64(p[pTime:]))),
		Packets: le.Uint64(p[pPackets:]), Bytes: le.Uint64(p[pBytes:]),
		RevPackets: le.Uint64(p[pRevPackets:]), RevBytes: le.Uint64(p[pRevBytes:])}
	if p[pReply] != 0 {
		ev.CT.Flags = decode.CTKnown | decode.CTReply
	}
	var ok1, ok2 bool
	ev.Src, ok1 = addrOf(p[pFixed : pFixed+sl])
	ev.Dst, ok2 = addrOf(p[pFixed+sl:])
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("flow payload: address lengths %d and %d", sl, dl)
	}
	// A block of its own: the flow's strings point into it.
	blk := new(flowBlock)
	formatUUID(&blk.uuid, &b.uuidHead, le.Uint64(p[pSeq:]))
	var src, dst string
	if ev.Src.IsValid() {
		src, dst = ev.Src.String(), ev.Dst.String()
	}
	fillHead(blk, &ev, b.node, src, dst)
	fillForwarded(blk, &ev)
	return &blk.flow, nil
}

func addrOf(b []byte) (netip.Addr, bool) {
	switch len(b) {
	case 0:
		return netip.Addr{}, true
	case 4:
		return netip.AddrFrom4([4]byte(b)), true
	case 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}
