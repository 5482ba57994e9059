package observer

import (
	"encoding/binary"
	"sync"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// appendFlow appends f's protobuf wire encoding to b, as proto.Marshal
// would write it (fields in number order, zero scalars omitted, present
// messages written even when empty), so any protobuf reader decodes it.
//
// Why by hand: every flow the agent publishes is marshalled into history,
// and the generic table-driven marshaller (a size pass, then an append pass
// with reflection-driven coders) was a fifth of the agent's CPU under
// connection churn. The messages every flow carries are written here
// directly; the rare ones (translation, MTU, encapsulation, SCTP, ICMP)
// go through proto's own marshaller. TestAppendFlowMatchesProto fails when
// Flow gains a field this file does not write.
//
// ok is false when a string is not valid UTF-8, which proto.Marshal
// refuses: the caller then lets proto.Marshal report the error.
func appendFlow(b []byte, f *flowtracev1.Flow) (_ []byte, ok bool) {
	return appendFlowCached(b, f, nil, nil)
}

// appendFlowCached is appendFlow reusing, through c (may be nil), the
// encodings of the pod endpoints and interfaces that many flows share, and
// recording into sp (may be nil) where it wrote the fields history's
// dictionary looks for.
func appendFlowCached(b []byte, f *flowtracev1.Flow, c *encodeCache, sp *flowSpans) (_ []byte, ok bool) {
	e := encoder{b: b, cache: c, spans: sp, base: len(b)}
	if sp != nil {
		sp.n = 0
	}
	e.flow(f)
	return e.b, e.ok()
}

// encodeCache keeps the encoded bodies of the messages the enricher shares
// between flows (a pod's endpoint, an interface, a Service port), keyed by
// pointer: a published flow and its messages are never modified (see
// Publish), and a pointer held as a key cannot be reused for another
// message. Bounded: emptied when full.
type encodeCache struct {
	endpoints map[*flowtracev1.Endpoint]*sharedMsg
	ifaces    map[*flowtracev1.Interface]*sharedMsg
	services  map[*flowtracev1.Service]*sharedMsg
}

// sharedMsg is a shared message's encoded body and, for history, the
// dictionary id it was last interned under. The id is a hint: history
// takes it only while its entry still holds this very string (dict.refShared),
// so an entry released and reused for another value is never mistaken
// for it, and the cache needs no reference of its own in the dictionary.
type sharedMsg struct {
	body string
	id   uint32
}

const encodeCacheLimit = 4096

func newEncodeCache() *encodeCache {
	return &encodeCache{endpoints: map[*flowtracev1.Endpoint]*sharedMsg{}, ifaces: map[*flowtracev1.Interface]*sharedMsg{},
		services: map[*flowtracev1.Service]*sharedMsg{}}
}

type encoder struct {
	b     []byte
	bad   bool // an invalid string, or a sub-message proto refused
	cache *encodeCache
	// spans, when not nil, records the top-level fields history's
	// dictionary interns or packs (dict.splitSpans); base is where the
	// flow's encoding starts in b.
	spans *flowSpans
	base  int
	// allShared: every shared message becomes a reference, however short
	// (PublishLazy: its record has no room for inline fields).
	allShared bool
}

// Flow's fields that hold shared messages.
const (
	fieldSource             protowire.Number = 12
	fieldDestination        protowire.Number = 13
	fieldInterface          protowire.Number = 14
	fieldSourceService      protowire.Number = 24
	fieldDestinationService protowire.Number = 25
)

// fieldSpan is one top-level length-delimited field of an encoded flow:
// [start, end) is the whole field, [val, end) its value, offsets from the
// start of the flow's encoding. A shared message history interns is not
// written at all: its span is empty, at where it would be, and shared
// holds its body (encoder.sharedField).
type fieldSpan struct {
	num             protowire.Number
	start, val, end int32
	shared          *sharedMsg
}

// flowSpans are the fields the encoder recorded, in the order it wrote
// them: each of the fields dict.split looks for (uuid and the interned
// ones) at most once.
type flowSpans struct {
	n int
	s [maxSpans]fieldSpan
}

// maxSpans: Flow's uuid and the fields dict interns (newDict).
const maxSpans = 10

// mark records the field num written to e.b from start, if anything was
// (an empty string is not written).
func (e *encoder) mark(num protowire.Number, start int) {
	if e.spans == nil || len(e.b) == start || e.spans.n == maxSpans {
		return
	}
	tag := protowire.SizeTag(num)
	_, n := protowire.ConsumeVarint(e.b[start+tag:])
	e.spans.s[e.spans.n] = fieldSpan{num: num, start: int32(start - e.base),
		val: int32(start + tag + n - e.base), end: int32(len(e.b) - e.base)}
	e.spans.n++
}

func (e *encoder) ok() bool { return !e.bad }

// flow writes f. The fields dict.split looks for are marked (see mark):
// keep the two in step when Flow changes (TestSplitSpans).
func (e *encoder) flow(f *flowtracev1.Flow) {
	if f.Time != nil {
		e.timestamp(1, f.Time)
	}
	s := len(e.b)
	e.str(2, f.Uuid)
	e.mark(2, s)
	s = len(e.b)
	e.str(3, f.NodeName)
	e.mark(3, s)
	e.varint(4, uint64(f.Verdict))
	e.varint(5, uint64(f.DropReason))
	s = len(e.b)
	e.str(6, f.DropReasonKernel)
	e.mark(6, s)
	e.varint(7, uint64(f.DropReasonCode))
	s = len(e.b)
	e.str(8, f.DropLocation)
	e.mark(8, s)
	e.varint(9, uint64(f.EventCount))
	if f.Ip != nil {
		e.ip(10, f.Ip)
	}
	if f.L4 != nil {
		e.layer4(11, f.L4)
	}
	if f.Source != nil {
		s = len(e.b)
		e.endpoint(fieldSource, f.Source)
		e.mark(fieldSource, s)
	}
	if f.Destination != nil {
		s = len(e.b)
		e.endpoint(fieldDestination, f.Destination)
		e.mark(fieldDestination, s)
	}
	if f.Interface != nil {
		s = len(e.b)
		e.iface(fieldInterface, f.Interface)
		e.mark(fieldInterface, s)
	}
	e.varint(15, uint64(f.TrafficDirection))
	e.varint(16, uint64(f.ObservationPoint))
	e.varint(17, f.Packets)
	e.varint(18, f.Bytes)
	e.varint(19, uint64(f.Report))
	e.varint(20, uint64(f.VlanId))
	e.varint(21, uint64(f.PacketLength))
	if f.InputInterface != nil {
		s = len(e.b)
		e.iface(22, f.InputInterface)
		e.mark(22, s)
	}
	e.str(23, f.Summary)
	if f.SourceService != nil {
		s = len(e.b)
		e.service(fieldSourceService, f.SourceService)
		e.mark(fieldSourceService, s)
	}
	if f.DestinationService != nil {
		s = len(e.b)
		e.service(fieldDestinationService, f.DestinationService)
		e.mark(fieldDestinationService, s)
	}
	if f.Translation != nil {
		e.message(26, f.Translation)
	}
	if f.Mtu != nil {
		e.message(27, f.Mtu)
	}
	if f.Encapsulation != nil {
		e.message(28, f.Encapsulation)
	}
	e.varint(29, uint64(f.DropCause))
	if f.IsReply {
		e.varint(30, 1)
	}
	e.varint(31, f.ReversePackets)
	e.varint(32, f.ReverseBytes)
	if f.ReverseTcpFlags != nil {
		e.tcpFlags(33, f.ReverseTcpFlags)
	}
	if f.LastTime != nil {
		e.timestamp(34, f.LastTime)
	}
}

// varint writes a non-zero integer field (enums, uint32/64, bools, and
// int32/int64 as their two's complement, as protobuf does).
func (e *encoder) varint(num protowire.Number, v uint64) {
	if v == 0 {
		return
	}
	e.b = appendVarint(appendTag(e.b, num, protowire.VarintType), v)
}

// appendVarint and appendTag are protowire's, with the one-byte case first:
// nearly every tag and most values here are below 128.
func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendTag(b []byte, num protowire.Number, typ protowire.Type) []byte {
	return appendVarint(b, uint64(num)<<3|uint64(typ))
}

func (e *encoder) str(num protowire.Number, s string) {
	if s == "" {
		return
	}
	if !isASCII(s) && !utf8.ValidString(s) {
		e.bad = true
		return
	}
	e.b = appendTag(e.b, num, protowire.BytesType)
	e.b = append(appendVarint(e.b, uint64(len(s))), s...)
}

// isASCII reports whether s is all ASCII (so valid UTF-8), eight bytes at a
// time: nearly every string a flow carries is (uuid, addresses, names the
// enricher made), and utf8.ValidString, which assembles its words byte by
// byte, was ~5% of publishing a flow.
func isASCII(s string) bool {
	var acc uint64
	for len(s) >= 8 {
		acc |= binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s), 8))
		s = s[8:]
	}
	for i := 0; i < len(s); i++ {
		acc |= uint64(s[i])
	}
	return acc&0x8080808080808080 == 0
}

// open starts a length-delimited field with a one-byte length placeholder
// (most sub-messages are shorter than 128 bytes); close writes the length,
// moving the body when its varint needs more bytes.
func (e *encoder) open(num protowire.Number) int {
	e.b = append(appendTag(e.b, num, protowire.BytesType), 0)
	return len(e.b)
}

func (e *encoder) close(start int) {
	n := len(e.b) - start
	if n < 0x80 {
		e.b[start-1] = byte(n)
		return
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	for range extra {
		e.b = append(e.b, 0)
	}
	copy(e.b[start+extra:], e.b[start:start+n])
	appendVarint(e.b[:start-1], uint64(n)) // in place: capacity is there
}

func (e *encoder) timestamp(num protowire.Number, t *timestamppb.Timestamp) {
	s := e.open(num)
	e.varint(1, uint64(t.Seconds))
	e.varint(2, uint64(int64(t.Nanos)))
	e.close(s)
}

func (e *encoder) ip(num protowire.Number, ip *flowtracev1.IP) {
	s := e.open(num)
	e.str(1, ip.Source)
	e.str(2, ip.Destination)
	e.varint(3, uint64(ip.IpVersion))
	e.close(s)
}

func (e *encoder) layer4(num protowire.Number, l4 *flowtracev1.Layer4) {
	switch l4.Protocol.(type) {
	case nil, *flowtracev1.Layer4_Tcp, *flowtracev1.Layer4_Udp, *flowtracev1.Layer4_Other:
	default:
		// ICMP and SCTP: rare enough for the generic marshaller.
		e.message(num, l4)
		return
	}
	s := e.open(num)
	switch p := l4.Protocol.(type) {
	case nil:
	case *flowtracev1.Layer4_Tcp:
		t := e.open(1)
		if p.Tcp != nil {
			e.varint(1, uint64(p.Tcp.SourcePort))
			e.varint(2, uint64(p.Tcp.DestinationPort))
			if fl := p.Tcp.Flags; fl != nil {
				e.tcpFlags(3, fl)
			}
		}
		e.close(t)
	case *flowtracev1.Layer4_Udp:
		u := e.open(2)
		if p.Udp != nil {
			e.varint(1, uint64(p.Udp.SourcePort))
			e.varint(2, uint64(p.Udp.DestinationPort))
		}
		e.close(u)
	case *flowtracev1.Layer4_Other:
		// A oneof scalar is written even when zero: it is set.
		e.b = appendVarint(appendTag(e.b, 6, protowire.VarintType), uint64(p.Other))
	}
	e.close(s)
}

func (e *encoder) tcpFlags(num protowire.Number, fl *flowtracev1.TCPFlags) {
	fs := e.open(num)
	e.flag(1, fl.Fin)
	e.flag(2, fl.Syn)
	e.flag(3, fl.Rst)
	e.flag(4, fl.Psh)
	e.flag(5, fl.Ack)
	e.flag(6, fl.Urg)
	e.flag(7, fl.Ece)
	e.flag(8, fl.Cwr)
	e.close(fs)
}

func (e *encoder) flag(num protowire.Number, v bool) {
	if v {
		e.b = append(e.b, byte(num)<<3|byte(protowire.VarintType), 1)
	}
}

func (e *encoder) endpoint(num protowire.Number, ep *flowtracev1.Endpoint) {
	// Pods' endpoints are shared; a node's is made per flow and small.
	if c := e.cache; c != nil && ep.PodName != "" {
		cachedField(e, c.endpoints, ep, num, e.endpointBody)
		return
	}
	e.endpointBody(num, ep)
}

// cachedField writes field num, the message m, from its encoding in cache,
// or encodes it with write and keeps that encoding.
func cachedField[M comparable](e *encoder, cache map[M]*sharedMsg, m M, num protowire.Number, write func(protowire.Number, M)) {
	msg, ok := cache[m]
	if !ok {
		start := len(e.b)
		write(num, m)
		if e.bad {
			return
		}
		if len(cache) >= encodeCacheLimit {
			clear(cache)
		}
		msg = &sharedMsg{body: bodyOf(e.b[start:]), id: noID}
		cache[m] = msg
		e.b = e.b[:start] // written below like any cached one
	}
	if e.sharedField(num, msg) {
		return
	}
	e.b = appendVarint(appendTag(e.b, num, protowire.BytesType), uint64(len(msg.body)))
	e.b = append(e.b, msg.body...)
}

// noID is a sharedMsg's id before history interned it: never an entry's.
const noID = ^uint32(0)

// sharedField records msg as field num of the flow for history, which
// interns it without the encoder writing its bytes or the dictionary
// comparing them: each flow copied a pod's endpoint (~60 bytes) twice and
// compared it once, per end. It reports false when history is not the
// reader (no spans), or would keep the field inline (too short, the
// spans full), so the caller writes it.
func (e *encoder) sharedField(num protowire.Number, msg *sharedMsg) bool {
	sp := e.spans
	if sp == nil || sp.n == maxSpans || (len(msg.body) < minInterned && !e.allShared) || !internedField(num) {
		return false
	}
	at := int32(len(e.b) - e.base)
	sp.s[sp.n] = fieldSpan{num: num, start: at, val: at, end: at, shared: msg}
	sp.n++
	return true
}

// bodyOf copies the body of the one length-delimited field in b.
func bodyOf(b []byte) string {
	_, _, n := protowire.ConsumeTag(b)
	body, _ := protowire.ConsumeBytes(b[n:])
	return string(body)
}

func (e *encoder) endpointBody(num protowire.Number, ep *flowtracev1.Endpoint) {
	s := e.open(num)
	e.str(1, ep.Namespace)
	e.str(2, ep.PodName)
	for _, l := range ep.Labels {
		// Repeated strings are written even when empty.
		if !utf8.ValidString(l) {
			e.bad = true
			continue
		}
		e.b = appendTag(e.b, 3, protowire.BytesType)
		e.b = append(appendVarint(e.b, uint64(len(l))), l...)
	}
	if w := ep.Workload; w != nil {
		ws := e.open(4)
		e.str(1, w.Kind)
		e.str(2, w.Name)
		e.close(ws)
	}
	e.str(5, ep.NodeName)
	e.close(s)
}

func (e *encoder) iface(num protowire.Number, i *flowtracev1.Interface) {
	if c := e.cache; c != nil {
		cachedField(e, c.ifaces, i, num, e.ifaceBody)
		return
	}
	e.ifaceBody(num, i)
}

func (e *encoder) ifaceBody(num protowire.Number, i *flowtracev1.Interface) {
	s := e.open(num)
	e.str(1, i.Name)
	e.varint(2, uint64(i.Index))
	e.varint(3, uint64(i.NetnsInode))
	e.str(4, i.Netns)
	e.close(s)
}

// service writes a Service; the enricher shares one per Service port.
func (e *encoder) service(num protowire.Number, svc *flowtracev1.Service) {
	if c := e.cache; c != nil {
		cachedField(e, c.services, svc, num, e.serviceBody)
		return
	}
	e.serviceBody(num, svc)
}

func (e *encoder) serviceBody(num protowire.Number, svc *flowtracev1.Service) {
	s := e.open(num)
	e.str(1, svc.Namespace)
	e.str(2, svc.Name)
	e.str(3, svc.PortName)
	e.varint(4, uint64(svc.Port))
	e.close(s)
}

// message writes a sub-message with proto's marshaller.
func (e *encoder) message(num protowire.Number, m proto.Message) {
	s := e.open(num)
	out, err := proto.MarshalOptions{}.MarshalAppend(e.b, m)
	if err != nil {
		e.bad = true
		out = e.b[:s]
	}
	e.b = out
	e.close(s)
}

// ResponseEncoder writes flow responses with this file's flow encoder,
// reusing the encodings of shared endpoints and interfaces across every
// response it writes. Safe for concurrent use: the gRPC server's codec
// serves all streams with one.
type ResponseEncoder struct {
	mu    sync.Mutex
	cache *encodeCache
}

func NewResponseEncoder() *ResponseEncoder { return &ResponseEncoder{cache: newEncodeCache()} }

// responseHead writes a GetFlowsResponse's fields before its flow:
// proto.Marshal writes the fields outside oneofs first, then the oneof's
// member (the flow, field 1).
func (e *encoder) responseHead(node string, t *timestamppb.Timestamp) {
	e.str(3, node)
	if t != nil {
		e.timestamp(4, t)
	}
}

// AppendResponse appends the wire encoding of the flow response e stands
// for: a GetFlowsResponse with this node name, time and flow, its fields in
// proto.Marshal's order. The flow's bytes are history's (the same fields,
// the interned ones last, which protobuf readers accept in any order). ok
// is false when the node name is not valid UTF-8.
func (e *EncodedFlow) AppendResponse(b []byte) (_ []byte, ok bool) {
	enc := encoder{b: b}
	enc.responseHead(e.NodeName, e.Time)
	enc.b = appendTag(enc.b, 1, protowire.BytesType)
	enc.b = append(appendVarint(enc.b, uint64(len(e.Flow))), e.Flow...)
	return enc.b, enc.ok()
}

// Append appends the wire encoding of a flow response (r carries a Flow) to
// b, byte for byte what proto.Marshal writes. ok is false for any other
// response, or when proto.Marshal must judge the flow (an invalid string):
// the caller then marshals r with proto.
func (re *ResponseEncoder) Append(b []byte, r *flowtracev1.GetFlowsResponse) (_ []byte, ok bool) {
	f, isFlow := r.GetResponseTypes().(*flowtracev1.GetFlowsResponse_Flow)
	if !isFlow || f.Flow == nil || len(r.ProtoReflect().GetUnknown()) > 0 {
		return b, false
	}
	re.mu.Lock()
	defer re.mu.Unlock()
	e := encoder{b: b, cache: re.cache}
	e.responseHead(r.NodeName, r.Time)
	start := e.open(1)
	e.flow(f.Flow)
	e.close(start)
	return e.b, e.ok()
}
