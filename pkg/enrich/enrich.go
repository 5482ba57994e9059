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
	"time"
	"unsafe"

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

	// uuidHead is the text of a flow uuid's first 8 bytes and its dashes
	// ("xxxxxxxx-xxxx-4xxx-"): random per agent run, written once; a
	// sequence number makes the rest.
	uuidHead [19]byte
	seq      uint64

	// Per-event allocation is most of the agent's CPU (GC), so parts that
	// repeat across events are built once and shared by the flows that
	// carry them. Published flows are never modified (observer, filters and
	// field masks treat them as shared), so sharing is safe. Each cache is
	// bounded: it is emptied when full, which also drops deleted pods.
	endpoints  map[*identity.Pod]*flowtracev1.Endpoint // sources replace a Pod on any change
	nodeEps    map[*identity.Node]*flowtracev1.Endpoint
	addrs      map[netip.Addr]string
	ifaceCache map[ifaceKey]*flowtracev1.Interface
	locations  map[uint64]string
	svcCache   map[serviceKey]*flowtracev1.Service // sources replace a Service on any change
	// recent are the last two addresses addr formatted, looked at before
	// the map: a connection's reports come together and name the same two
	// addresses, and hashing a netip.Addr for the map (two lookups per
	// event) was ~5% of the agent's per-event path.
	recent [2]recentAddr // the latest first

	// free holds blocks of recycled flows (Recycle) for Flow to reuse.
	free []*flowBlock
}

// maxFree bounds the recycled blocks kept: a batch or two of the agent's
// pipeline (32 flows each) is what one reuse cycle needs.
const maxFree = 128

type ifaceKey struct{ netns, ifindex uint32 }

// serviceKey is a Service as the identity source handed it out, and the
// port a flow used.
type serviceKey struct {
	svc  *identity.Service
	port uint16
}

// cacheLimit bounds each cache: a busy node has a few hundred pods and
// interfaces; a scan of many addresses only costs re-formatting.
const cacheLimit = 4096

// New returns an Enricher. reasons may be nil on kernels without drop
// reasons; drops are then reported with an unknown reason.
func New(node string, ids identity.Getter, reasons Reasons, syms SymbolResolver, ifaces InterfaceNamer) *Enricher {
	e := &Enricher{node: node, ids: ids, reasons: reasons, syms: syms, ifaces: ifaces,
		endpoints: map[*identity.Pod]*flowtracev1.Endpoint{}, nodeEps: map[*identity.Node]*flowtracev1.Endpoint{},
		addrs:      map[netip.Addr]string{},
		ifaceCache: map[ifaceKey]*flowtracev1.Interface{}, locations: map[uint64]string{},
		svcCache: map[serviceKey]*flowtracev1.Service{}}
	var prefix [8]byte
	_, _ = rand.Read(prefix[:])
	prefix[6] = prefix[6]&0x0f | 0x40 // version 4
	hex.Encode(e.uuidHead[0:8], prefix[0:4])
	e.uuidHead[8] = '-'
	hex.Encode(e.uuidHead[9:13], prefix[4:6])
	e.uuidHead[13] = '-'
	hex.Encode(e.uuidHead[14:18], prefix[6:8])
	e.uuidHead[18] = '-'
	return e
}

// uuid writes a unique id into dst without a syscall per event: a random
// prefix chosen at start and a sequence number, laid out as a
// version-4-style UUID. Only the sequence's 8 bytes are formatted per
// event.
func (e *Enricher) uuid(dst *[36]byte) {
	e.seq++
	formatUUID(dst, &e.uuidHead, e.seq)
}

// formatUUID writes the uuid of sequence number seq under head.
func formatUUID(dst *[36]byte, head *[19]byte, seq uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	b[0] = b[0]&0x3f | 0x80 // the variant
	copy(dst[:19], head[:])
	hex.Encode(dst[19:23], b[:2])
	dst[23] = '-'
	hex.Encode(dst[24:], b[2:])
}

// flowBlock holds the messages every flow has, so a flow costs one
// allocation instead of one per message; the flow points into its own
// block, which lives exactly as long as the flow. The messages are never
// copied (protobuf forbids copying a message once used).
//
// flow is the first field: Recycle finds a flow's block from its address.
type flowBlock struct {
	flow flowtracev1.Flow
	time timestamppb.Timestamp
	ip   flowtracev1.IP
	l4   flowtracev1.Layer4
	// Both layer 4 blocks: a few unused bytes cost less than a second
	// allocation per flow.
	tcp      tcpBlock
	udp      udpBlock
	revFlags flowtracev1.TCPFlags // a closing report's reverse_tcp_flags
	uuid     [36]byte             // backs flow.Uuid: written once, before the string is made
	// summary backs a drop's Flow.Summary when it fits (nearly always).
	summary [summaryInline]byte
}

// summaryInline fits most drop summaries (reason and location, ~40-80
// bytes; a Service with no endpoints adds its name) and fills the block,
// with its 8-byte malloc header, to the 896-byte size class.
const summaryInline = 128

// bytesString makes the summary appended into the flow's block (or, when it
// outgrew the block, into a slice of its own) the flow's string without a
// copy: nothing writes to those bytes afterwards.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// tcpBlock and udpBlock do the same for the layer 4 oneof and its message.
type tcpBlock struct {
	oneof flowtracev1.Layer4_Tcp
	tcp   flowtracev1.TCP
	flags flowtracev1.TCPFlags
}

type udpBlock struct {
	oneof flowtracev1.Layer4_Udp
	udp   flowtracev1.UDP
}

// Flow converts one event; ev is not retained. It returns nil for an event
// that, once read, reports nothing: a "translation" of an ICMP connection
// whose addresses did not change (conntrack's ICMP tuples hold the echo id
// and type/code where other protocols hold ports, so they always differ).
// Flow and Recycle are not safe for concurrent use.
func (e *Enricher) Flow(ev *decode.Event) *flowtracev1.Flow {
	if ev.Kind == decode.KindTranslated && !isNAT(ev) {
		return nil
	}
	var blk *flowBlock
	if n := len(e.free); n > 0 {
		blk = e.free[n-1]
		e.free[n-1] = nil
		e.free = e.free[:n-1]
		*blk = flowBlock{} // a new message, as protobuf requires
	} else {
		blk = new(flowBlock)
	}
	f := &blk.flow
	e.uuid(&blk.uuid)
	var src, dst string
	if ev.Src.IsValid() {
		src, dst = e.addr(ev.Src), e.addr(ev.Dst)
	}
	fillHead(blk, ev, e.node, src, dst)
	if ev.Src.IsValid() {
		f.Source = e.endpoint(ev.Src, ev.Time)
		f.Destination = e.endpoint(ev.Dst, ev.Time)
	}
	f.Interface = e.iface(ev.Netns, ev.Ifindex)
	f.SourceService, f.DestinationService = e.services(ev, f.Source, f.Destination)
	if ev.Encap.Src.IsValid() {
		f.Encapsulation = &flowtracev1.Encapsulation{
			OuterSource: ev.Encap.Src.String(), OuterDestination: ev.Encap.Dst.String(),
			Vni: ev.Encap.VNI, Port: uint32(ev.Encap.DstPort),
		}
	}

	switch ev.Kind {
	case decode.KindFlow:
		fillForwarded(blk, ev)
	case decode.KindDrop:
		f.Verdict = flowtracev1.Verdict_VERDICT_DROPPED
		f.ObservationPoint = flowtracev1.ObservationPoint_OBSERVATION_POINT_KFREE_SKB
		f.Packets, f.Bytes = uint64(max(ev.Count, 1)), uint64(ev.PktLen)
		f.EventCount = max(ev.Count, 1)
		if ev.Count > 1 && !ev.LastTime.IsZero() {
			// Its own allocation: only a folded report has one.
			f.LastTime = timestamppb.New(ev.LastTime)
		}
		if e.reasons != nil {
			r := e.reasons.Lookup(ev.DropReason)
			f.DropReason, f.DropReasonKernel = r.Stable, r.Kernel
		} else {
			f.DropReason, f.DropReasonKernel = flowtracev1.DropReason_DROP_REASON_UNKNOWN, "UNKNOWN"
		}
		f.DropReasonCode = ev.DropReason
		if e.syms != nil {
			f.DropLocation = e.location(ev.Location)
		}
		if ev.SkbIif != 0 && ev.SkbIif != ev.Ifindex {
			f.InputInterface = e.iface(ev.Netns, ev.SkbIif)
		}
		if svc := f.DestinationService; svc != nil { // implies e.ids != nil
			if s, ok := e.lookupService(e.serviceVIP(ev), uint16(svc.Port), ev.Proto); ok && s.NoEndpoints() {
				f.DropCause = flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS
			}
		}
		switch {
		case echoReplyUnclaimed(ev, f):
			f.DropCause = flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED
		case multicastNotJoined(ev, f):
			f.DropCause = flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED
		}
		f.Summary = bytesString(appendSummaryDrop(blk.summary[:0], f))
	case decode.KindTranslated:
		e.translated(ev, f)
	case decode.KindMTU:
		e.mtu(ev, f)
	}
	return f
}

// fillHead writes what every flow of ev has into blk's flow, all but its
// uuid (in blk.uuid already), the identities and the interfaces: the
// time, the node, the packet and the addresses (src and dst are their
// text, unused when ev has none).
func fillHead(blk *flowBlock, ev *decode.Event, node, src, dst string) {
	f := &blk.flow
	blk.time.Seconds, blk.time.Nanos = ev.Time.Unix(), int32(ev.Time.Nanosecond())
	f.Time = &blk.time
	f.Uuid = unsafe.String(&blk.uuid[0], len(blk.uuid))
	f.NodeName, f.PacketLength, f.VlanId = node, ev.PktLen, uint32(ev.VLAN)
	if fillNetwork(ev, src, dst, &blk.ip, &blk.l4, &blk.tcp, &blk.udp) {
		f.Ip, f.L4 = &blk.ip, &blk.l4
	}
}

// fillForwarded writes a forwarded-traffic report's own fields.
func fillForwarded(blk *flowBlock, ev *decode.Event) {
	f := &blk.flow
	f.Verdict = flowtracev1.Verdict_VERDICT_FORWARDED
	f.Packets, f.Bytes = ev.Packets, ev.Bytes
	if ev.RevPackets != 0 {
		f.ReversePackets, f.ReverseBytes = ev.RevPackets, ev.RevBytes
		setTCPFlags(&blk.revFlags, ev.RevTCPFlags)
		f.ReverseTcpFlags = &blk.revFlags
	}
	f.Report = report(ev.FlowReason)
	f.IsReply = ev.CT.Flags.Has(decode.CTKnown | decode.CTReply)
	f.ObservationPoint, f.TrafficDirection = observation(ev.Direction)
	// No summary: it would restate l4's flags, the counts and the
	// reverse fields, which every printer renders. Built and stored
	// for each of these (the bulk of all events), it was a tenth of
	// the agent's per-event CPU and a fifth of a flow's bytes in
	// history. Hubble deprecated its Flow.Summary for the same reason.
}

// Recycle hands back flows Flow returned that nothing references any more,
// their strings included (the observer kept only their encoding): Flow
// reuses their memory instead of allocating, so an agent that nobody
// follows allocates almost nothing per event, and its GC, a fifth of its
// CPU under connection churn, has little to do. Every flow in fs must come
// from this Enricher's Flow, and none may be used afterwards; nil entries
// are skipped.
func (e *Enricher) Recycle(fs []*flowtracev1.Flow) {
	for _, f := range fs {
		if len(e.free) == maxFree {
			return
		}
		if f != nil {
			e.free = append(e.free, (*flowBlock)(unsafe.Pointer(f)))
		}
	}
}

// services names the Service of the connection on both ends. conntrack's
// original tuple keeps the VIP the client addressed for the whole life of a
// DNAT'd connection, so flows seen at the backend and replies are named too;
// without conntrack, a VIP in the packet itself still names it.
func (e *Enricher) services(ev *decode.Event, srcEp, dstEp *flowtracev1.Endpoint) (src, dst *flowtracev1.Service) {
	if e.ids == nil {
		return nil, nil
	}
	if ev.CT.Flags.Has(decode.CTKnown|decode.CTDNAT) && !isICMP(ev.Proto) {
		svc := e.service(ev.CT.OrigDst, ev.CT.OrigDstPort, ev.Proto)
		if ev.CT.Flags.Has(decode.CTReply) {
			return svc, nil
		}
		return nil, svc
	}
	// An address a pod has is not a Service's: ClusterIPs come from the
	// Service range, and the node addresses of NodePorts are no pod's
	// (host-network pods are named by node, not by pod IP). Pod-to-pod
	// traffic, most of a node's, then looks no Service up.
	if ev.Dst.IsValid() && dstEp.GetPodName() == "" {
		dst = e.service(ev.Dst, ev.DstPort, ev.Proto)
	}
	if ev.Src.IsValid() && srcEp.GetPodName() == "" {
		src = e.service(ev.Src, ev.SrcPort, ev.Proto)
	}
	return src, dst
}

func isICMP(proto uint8) bool { return proto == protoICMP || proto == protoICMPv6 }

// isNAT reports whether a TRANSLATED event changed an address, or a port of
// a protocol that has ports.
func isNAT(ev *decode.Event) bool {
	if ev.XlatDst != ev.CT.OrigDst || (ev.CT.Flags.Has(decode.CTSNAT) && ev.XlatSrc != ev.CT.OrigSrc) {
		return true
	}
	return !isICMP(ev.Proto) && (ev.XlatDstPort != ev.CT.OrigDstPort || ev.CT.Flags.Has(decode.CTSNAT) && ev.XlatSrcPort != ev.CT.OrigSrcPort)
}

// serviceVIP is the address the client addressed.
func (e *Enricher) serviceVIP(ev *decode.Event) netip.Addr {
	if ev.CT.Flags.Has(decode.CTKnown|decode.CTDNAT) && !isICMP(ev.Proto) {
		return ev.CT.OrigDst
	}
	return ev.Dst
}

func (e *Enricher) service(ip netip.Addr, port uint16, proto uint8) *flowtracev1.Service {
	if !ip.IsValid() {
		return nil
	}
	s, ok := e.lookupService(ip, port, proto)
	if !ok {
		return nil
	}
	// Most of a node's traffic goes to Services: one message per Service
	// port, shared, not one per flow.
	k := serviceKey{s, port}
	if m, ok := e.svcCache[k]; ok {
		return m
	}
	m := &flowtracev1.Service{Namespace: s.Namespace, Name: s.Name, Port: uint32(port), PortName: s.PortName(port)}
	if len(e.svcCache) >= cacheLimit {
		clear(e.svcCache)
	}
	e.svcCache[k] = m
	return m
}

// lookupService finds the Service of VIP:port, by port when the source
// knows ports (a VIP shared by Services on different ports, NodePorts).
func (e *Enricher) lookupService(ip netip.Addr, port uint16, proto uint8) (*identity.Service, bool) {
	if sg, ok := e.ids.(identity.ServiceGetter); ok {
		return sg.ServiceByVIPPort(ip, port, protoName(proto))
	}
	return e.ids.ServiceByIP(ip)
}

// translated describes a connection's NAT. The flow's addresses are what
// the client sent (client -> VIP); the translation says where it went.
func (e *Enricher) translated(ev *decode.Event, f *flowtracev1.Flow) {
	f.Verdict = flowtracev1.Verdict_VERDICT_TRANSLATED
	f.ObservationPoint, f.TrafficDirection = observation(ev.Direction)
	ct := ev.CT
	orig := *ev
	orig.Src, orig.Dst, orig.SrcPort, orig.DstPort = ct.OrigSrc, ct.OrigDst, ct.OrigSrcPort, ct.OrigDstPort
	orig.IPVersion = ct.IPVersion
	f.Ip, f.L4 = e.network(&orig)
	f.Source = e.endpoint(ct.OrigSrc, ev.Time)
	f.Destination = e.endpoint(ev.XlatDst, ev.Time)
	t := &flowtracev1.Translation{
		OriginalIp: ct.OrigDst.String(), OriginalPort: uint32(ct.OrigDstPort),
		TranslatedIp: ev.XlatDst.String(), TranslatedPort: uint32(ev.XlatDstPort),
	}
	if ct.Flags.Has(decode.CTSNAT) && ev.XlatSrc.IsValid() {
		t.TranslatedSourceIp, t.TranslatedSourcePort = ev.XlatSrc.String(), uint32(ev.XlatSrcPort)
	}
	f.Translation = t
	f.SourceService = nil
	if e.ids != nil {
		f.DestinationService = e.service(ct.OrigDst, ct.OrigDstPort, ev.Proto)
	}
	svc := ""
	if s := f.DestinationService; s != nil {
		svc = " (" + s.Namespace + "/" + s.Name + ")"
	}
	f.Summary = fmt.Sprintf("%s ⇒ %s%s", netip.AddrPortFrom(ct.OrigDst, ct.OrigDstPort), netip.AddrPortFrom(ev.XlatDst, ev.XlatDstPort), svc)
}

// mtu describes a too-big packet or an ICMP error about one.
func (e *Enricher) mtu(ev *decode.Event, f *flowtracev1.Flow) {
	f.Verdict = flowtracev1.Verdict_VERDICT_MTU_EXCEEDED
	f.ObservationPoint, f.TrafficDirection = observation(ev.Direction)
	m := &flowtracev1.MTUInfo{Mtu: ev.MTU, PacketLength: ev.PktLen}
	switch ev.MTUKind {
	case decode.MTUExceeded:
		m.Event = flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED
		m.EgressInterface = e.iface(ev.Netns, ev.EgressIfindex)
		f.Summary = fmt.Sprintf("%d-byte packet exceeds MTU %d of %s", ev.PktLen, ev.MTU, m.EgressInterface.GetName())
	case decode.MTUICMPFragNeeded, decode.MTUICMPv6PacketTooBig:
		m.Event = flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED
		if ev.MTUKind == decode.MTUICMPv6PacketTooBig {
			m.Event = flowtracev1.MTUEvent_MTU_EVENT_ICMPV6_PACKET_TOO_BIG
		}
		q := decode.Event{IPVersion: ev.Embedded.IPVersion, Proto: ev.Embedded.Proto, Src: ev.Embedded.Src, Dst: ev.Embedded.Dst,
			SrcPort: ev.Embedded.SrcPort, DstPort: ev.Embedded.DstPort}
		m.QuotedIp, m.QuotedL4 = e.network(&q)
		f.Summary = fmt.Sprintf("path MTU %d announced for %s -> %s", ev.MTU, ev.Embedded.Src, ev.Embedded.Dst)
	}
	f.Mtu = m
}

func observation(d decode.Direction) (flowtracev1.ObservationPoint, flowtracev1.TrafficDirection) {
	switch d {
	case decode.DirIngress:
		return flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_INGRESS, flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_INGRESS
	case decode.DirEgress:
		return flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_EGRESS, flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS
	}
	return flowtracev1.ObservationPoint_OBSERVATION_POINT_UNSPECIFIED, flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_UNSPECIFIED
}

// iface names a device. The namer is asked every time (an index can be
// reused by another device); the message is reused while its answer holds.
func (e *Enricher) iface(netns, ifindex uint32) *flowtracev1.Interface {
	if ifindex == 0 {
		return nil
	}
	var name, nsName string
	if e.ifaces != nil {
		name, nsName = e.ifaces.InterfaceName(netns, ifindex)
	}
	k := ifaceKey{netns, ifindex}
	if i, ok := e.ifaceCache[k]; ok && i.Name == name && i.Netns == nsName {
		return i
	}
	i := &flowtracev1.Interface{Index: ifindex, NetnsInode: netns, Name: name, Netns: nsName}
	if len(e.ifaceCache) >= cacheLimit {
		clear(e.ifaceCache)
	}
	e.ifaceCache[k] = i
	return i
}

type recentAddr struct {
	addr netip.Addr
	text string // "" while the slot is unused
}

// addr formats an address once: the same few addresses carry most events.
func (e *Enricher) addr(a netip.Addr) string {
	for i := range e.recent {
		if r := &e.recent[i]; r.addr == a && r.text != "" {
			return r.text
		}
	}
	s, ok := e.addrs[a]
	if !ok {
		s = a.String()
		if len(e.addrs) >= cacheLimit {
			clear(e.addrs)
		}
		e.addrs[a] = s
	}
	e.recent[0], e.recent[1] = recentAddr{a, s}, e.recent[0]
	return s
}

// location resolves a drop location once per kernel address.
func (e *Enricher) location(pc uint64) string {
	if s, ok := e.locations[pc]; ok {
		return s
	}
	s := e.syms.Resolve(pc)
	if len(e.locations) >= cacheLimit {
		clear(e.locations)
	}
	e.locations[pc] = s
	return s
}

// endpoint names ip as it was at t: a pod that was deleted after the packet
// (or whose IP was since reused) is named as it was, when the identity
// source keeps history. An address of no pod may be a node's.
func (e *Enricher) endpoint(ip netip.Addr, t time.Time) *flowtracev1.Endpoint {
	if e.ids == nil {
		return nil
	}
	var p *identity.Pod
	var ok bool
	if tg, timed := e.ids.(identity.TimedGetter); timed && !t.IsZero() {
		p, ok = tg.PodByIPAt(ip, t)
	} else {
		p, ok = e.ids.PodByIP(ip)
	}
	if !ok {
		if ng, nodes := e.ids.(identity.NodeGetter); nodes {
			if n, ok := ng.NodeByIP(ip); ok {
				return e.nodeEndpoint(n)
			}
		}
		return nil
	}
	// Sources never modify a Pod they handed out (they replace it), so the
	// pointer identifies this version of the pod.
	if ep, ok := e.endpoints[p]; ok {
		return ep
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
	if len(e.endpoints) >= cacheLimit {
		clear(e.endpoints)
	}
	e.endpoints[p] = ep
	return ep
}

// nodeEndpoint is a node's endpoint, shared like a pod's (history keeps
// shared messages as references).
func (e *Enricher) nodeEndpoint(n *identity.Node) *flowtracev1.Endpoint {
	if ep, ok := e.nodeEps[n]; ok {
		return ep
	}
	ep := &flowtracev1.Endpoint{NodeName: n.Name}
	if len(e.nodeEps) >= cacheLimit {
		clear(e.nodeEps)
	}
	e.nodeEps[n] = ep
	return ep
}

func (e *Enricher) network(ev *decode.Event) (*flowtracev1.IP, *flowtracev1.Layer4) {
	if !ev.Src.IsValid() {
		return nil, nil
	}
	ip, l4 := &flowtracev1.IP{}, &flowtracev1.Layer4{}
	fillNetwork(ev, e.addr(ev.Src), e.addr(ev.Dst), ip, l4, nil, nil)
	return ip, l4
}

// fillNetwork describes ev's addresses (src and dst: their text) and ports
// in ip and l4, in tcp or udp when given (else allocated); it reports
// false, leaving them untouched, for an event without addresses.
func fillNetwork(ev *decode.Event, src, dst string, ip *flowtracev1.IP, l4 *flowtracev1.Layer4, tcp *tcpBlock, udp *udpBlock) bool {
	if !ev.Src.IsValid() {
		return false
	}
	ip.Source, ip.Destination = src, dst
	switch ev.IPVersion {
	case 4:
		ip.IpVersion = flowtracev1.IPVersion_IP_VERSION_IPV4
	case 6:
		ip.IpVersion = flowtracev1.IPVersion_IP_VERSION_IPV6
	}
	sp, dp := uint32(ev.SrcPort), uint32(ev.DstPort)
	switch ev.Proto {
	case protoTCP:
		b := tcp
		if b == nil {
			b = new(tcpBlock)
		}
		b.tcp.SourcePort, b.tcp.DestinationPort = sp, dp
		setTCPFlags(&b.flags, ev.TCPFlags)
		b.tcp.Flags = &b.flags
		b.oneof.Tcp = &b.tcp
		l4.Protocol = &b.oneof
	case protoUDP:
		b := udp
		if b == nil {
			b = new(udpBlock)
		}
		b.udp.SourcePort, b.udp.DestinationPort = sp, dp
		b.oneof.Udp = &b.udp
		l4.Protocol = &b.oneof
	case protoSCTP:
		l4.Protocol = &flowtracev1.Layer4_Sctp{Sctp: &flowtracev1.SCTP{SourcePort: sp, DestinationPort: dp}}
	case protoICMP:
		l4.Protocol = &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: uint32(ev.ICMPType), Code: uint32(ev.ICMPCode)}}
	case protoICMPv6:
		l4.Protocol = &flowtracev1.Layer4_Icmpv6{Icmpv6: &flowtracev1.ICMPv6{Type: uint32(ev.ICMPType), Code: uint32(ev.ICMPCode)}}
	default:
		l4.Protocol = &flowtracev1.Layer4_Other{Other: uint32(ev.Proto)}
	}
	return true
}

// IANA protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132
)

func setTCPFlags(f *flowtracev1.TCPFlags, b uint8) {
	f.Fin, f.Syn, f.Rst, f.Psh = b&0x01 != 0, b&0x02 != 0, b&0x04 != 0, b&0x08 != 0
	f.Ack, f.Urg, f.Ece, f.Cwr = b&0x10 != 0, b&0x20 != 0, b&0x40 != 0, b&0x80 != 0
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
	case decode.ReasonClosed:
		return flowtracev1.FlowReport_FLOW_REPORT_CLOSED
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

// echoReplyUnclaimed says whether f is an ICMP echo reply the kernel freed
// because no ICMP datagram ("ping") socket asked for it. ping run as root
// uses a raw socket, which gets its own copy of every reply before that:
// each reply of a working ping otherwise read as a NO_SOCKET drop. From
// 6.0 the kernel says so (NO_SOCKET); before, the reply is freed unnamed
// (no reasons before 5.17, NOT_SPECIFIED after) where ICMP is received.
func echoReplyUnclaimed(ev *decode.Event, f *flowtracev1.Flow) bool {
	if !(ev.Proto == protoICMP && ev.ICMPType == 0) && !(ev.Proto == protoICMPv6 && ev.ICMPType == 129) {
		return false
	}
	switch {
	case f.DropReason == flowtracev1.DropReason_DROP_REASON_NO_SOCKET:
		return true
	case unnamedDrop(f):
		sym := dropSymbol(f)
		return sym == "icmp_rcv" || sym == "icmpv6_rcv" || sym == "ping_rcv"
	}
	return false
}

// unnamedDrop says whether the kernel freed f without naming why: no
// reason before 5.17, NOT_SPECIFIED (a plain kfree_skb) after.
func unnamedDrop(f *flowtracev1.Flow) bool {
	return f.DropReason == flowtracev1.DropReason_DROP_REASON_NOT_SPECIFIED ||
		f.DropReason == flowtracev1.DropReason_DROP_REASON_UNKNOWN && f.DropReasonKernel == "UNKNOWN"
}

// dropSymbol is the function f's drop location names, without its offset
// or the compiler's suffixes (".isra.0", ".constprop.0"), which vary with
// the kernel's build.
func dropSymbol(f *flowtracev1.Flow) string {
	sym, _, _ := strings.Cut(f.DropLocation, "+")
	sym, _, _ = strings.Cut(sym, ".")
	return sym
}

// multicastNotJoined says whether f is a multicast packet freed because
// nothing in the receiving namespace joined its group: every host of a
// link receives its multicast (the MLD reports each interface sends to
// ff02::16 when it comes up, for one), and a host that did not ask for it
// frees it unnamed where IP takes it in: ip6_mc_input for IPv6; for IPv4
// the multicast route lookup in ip_rcv_finish_core (a source the kernel
// refuses is IP_INVALID_SOURCE there, not unnamed), inlined into its
// callers on some builds. A multicast router here would forward it instead.
func multicastNotJoined(ev *decode.Event, f *flowtracev1.Flow) bool {
	if !ev.Dst.IsMulticast() || !unnamedDrop(f) {
		return false
	}
	switch dropSymbol(f) {
	case "ip6_mc_input":
		return ev.IPVersion == 6
	case "ip_rcv_finish_core", "ip_rcv_finish", "ip_list_rcv_finish":
		return ev.IPVersion == 4
	}
	return false
}

func appendSummaryDrop(b []byte, f *flowtracev1.Flow) []byte {
	b = append(b, "dropped: "...)
	b = append(b, f.DropReasonKernel...)
	if f.DropCause == flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS {
		b = append(b, " (Service "...)
		b = append(b, f.DestinationService.GetNamespace()...)
		b = append(b, '/')
		b = append(b, f.DestinationService.GetName()...)
		b = append(b, " has no endpoints)"...)
	}
	switch f.DropCause {
	case flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED:
		b = append(b, " (echo reply no ping socket asked for; a raw-socket ping got its own copy)"...)
	case flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED:
		b = append(b, " (multicast group nothing here joined)"...)
	}
	if f.DropLocation != "" {
		b = append(b, " at "...)
		b = append(b, f.DropLocation...)
	}
	return b
}
