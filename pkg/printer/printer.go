// Package printer renders GetFlowsResponses for people (compact, table) and
// for programs (json: one protojson object per line).
package printer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Output formats.
const (
	Compact = "compact"
	JSON    = "json"
	Table   = "table"
	Dict    = "dict"
)

// Formats lists the accepted output formats.
func Formats() []string { return []string{Compact, Dict, JSON, Table} }

// Options configure a Printer.
type Options struct {
	// Location for printed times; nil means time.Local.
	Location *time.Location
	// TableFlushEvery flushes the table every N rows so that --follow shows
	// output; columns are aligned within each batch. 0 means 50.
	TableFlushEvery int
	// TimeFormat is one of TimeFormats (case-insensitive); "" is StampMilli.
	TimeFormat string
	// Color marks verdicts, drop reasons and losses with ANSI colours. The
	// caller decides (a terminal, --color); json is never coloured.
	Color bool
}

// Printer writes responses in one format. Call Flush when done.
type Printer struct {
	format string
	w      *bufio.Writer
	tw     *tabwriter.Writer
	loc    *time.Location
	every  int
	rows   int
	tf     string
	color  bool
	sb     strings.Builder
	jb     bytes.Buffer
}

// New returns a printer of format writing to w.
func New(format string, w io.Writer, opts Options) (*Printer, error) {
	switch format {
	case Compact, JSON, Table, Dict:
	default:
		return nil, fmt.Errorf("unknown output format %q (want one of %s)", format, strings.Join(Formats(), ", "))
	}
	tf, err := ParseTimeFormat(opts.TimeFormat)
	if err != nil {
		return nil, err
	}
	p := &Printer{format: format, w: bufio.NewWriter(w), loc: opts.Location, every: opts.TableFlushEvery,
		tf: tf, color: opts.Color && format != JSON}
	if p.loc == nil {
		p.loc = time.Local
	}
	if p.every <= 0 {
		p.every = 50
	}
	if format == Table {
		p.tw = tabwriter.NewWriter(p.w, 2, 8, 2, ' ', 0)
	}
	return p, nil
}

// Print writes one response. Compact and json lines are flushed at once so
// that a followed stream shows up as it happens.
func (p *Printer) Print(r *flowtracev1.GetFlowsResponse) error {
	switch p.format {
	case JSON:
		return p.printJSON(r)
	case Table:
		return p.printTable(r)
	case Dict:
		p.sb.Reset()
		p.dict(r)
		if _, err := p.w.WriteString(p.sb.String()); err != nil {
			return err
		}
		return p.w.Flush()
	default:
		p.sb.Reset()
		p.compact(r)
		p.sb.WriteByte('\n')
		if _, err := p.w.WriteString(p.sb.String()); err != nil {
			return err
		}
		return p.w.Flush()
	}
}

// Flush writes out anything buffered (the table's last rows).
func (p *Printer) Flush() error {
	if p.tw != nil {
		if err := p.tw.Flush(); err != nil {
			return err
		}
	}
	return p.w.Flush()
}

func (p *Printer) printJSON(r *flowtracev1.GetFlowsResponse) error {
	if err := WriteJSONLine(p.w, &p.jb, r); err != nil {
		return err
	}
	return p.w.Flush()
}

// WriteJSONLine writes m to w as one line of protojson, using buf (reset
// first) as scratch: what -o json prints, one object per line.
func WriteJSONLine(w io.Writer, buf *bytes.Buffer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	// protojson randomizes whitespace on purpose; compacting gives one stable
	// object per line for scripts and golden files.
	buf.Reset()
	if err := json.Compact(buf, b); err != nil {
		return fmt.Errorf("compact json: %w", err)
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

func (p *Printer) timeOf(r *flowtracev1.GetFlowsResponse) string {
	ts := r.GetTime()
	if ts == nil {
		ts = r.GetFlow().GetTime()
	}
	if ts == nil {
		return "-"
	}
	return p.FormatTime(ts.AsTime())
}

// FormatTime renders t in the printer's time format and location.
func (p *Printer) FormatTime(t time.Time) string {
	if p.tf == "unix" {
		return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
	}
	return t.In(p.loc).Format(p.tf)
}

func (p *Printer) compact(r *flowtracev1.GetFlowsResponse) {
	sb := &p.sb
	sb.WriteString(p.timeOf(r))
	sb.WriteString(": ")
	if le := r.GetLostEvents(); le != nil {
		sb.WriteString(p.paint(colorLost, LostText(le)))
		return
	}
	if hs := r.GetHistoryStart(); hs != nil {
		sb.WriteString(p.paint(colorLost, p.HistoryStartText(hs)))
		return
	}
	if ns := r.GetNodeStatus(); ns != nil {
		sb.WriteString(p.paint(colorLost, NodeStatusText(ns)))
		return
	}
	f := r.GetFlow()
	sb.WriteString(sourceText(f))
	sb.WriteString(" -> ")
	if tr := TranslationText(f); tr != "" {
		sb.WriteString(tr)
	} else {
		sb.WriteString(destinationText(f))
	}
	l4 := L4Text(f)
	if icmp := MTUICMPText(f.GetMtu()); icmp != "" {
		// The ICMP error's own type and code say less than what it is about.
		l4 = icmp
	}
	if l4 != "" {
		sb.WriteByte(' ')
		sb.WriteString(l4)
	}
	sb.WriteByte(' ')
	sb.WriteString(p.verdict(f.GetVerdict()))
	if reason := ReasonText(f); reason != "" {
		sb.WriteString(" (")
		sb.WriteString(p.paint(colorReason, reason))
		sb.WriteByte(')')
	}
	if fold := FoldText(f); fold != "" {
		sb.WriteByte(' ')
		sb.WriteString(fold)
	}
	if f.GetVerdict() == flowtracev1.Verdict_VERDICT_FORWARDED {
		if rep := ReportText(f.GetReport()); rep != "" {
			sb.WriteString(" [")
			sb.WriteString(rep)
			sb.WriteByte(']')
		}
		sb.WriteByte(' ')
		writeCounts(sb, f)
	}
	if loc := f.GetDropLocation(); loc != "" {
		sb.WriteString(" at ")
		sb.WriteString(loc)
	}
	if mtu := MTUExceededText(f); mtu != "" {
		// It names the egress device and the observation device itself.
		sb.WriteByte(' ')
		sb.WriteString(mtu)
	} else if ifc := InterfaceText(flowInterface(f)); ifc != "" {
		sb.WriteString(" on ")
		sb.WriteString(ifc)
	}
	if enc := EncapsulationText(f.GetEncapsulation()); enc != "" {
		sb.WriteByte(' ')
		sb.WriteString(enc)
	}
}

// sourceText is the source endpoint with its Service, when it has one:
// "shop/backend-5d8b9c (10.244.0.20:8080) [svc shop/web]".
func sourceText(f *flowtracev1.Flow) string {
	return withService(endpointText(f.GetSource(), f.GetIp().GetSource(), srcPort(f)), f.GetSourceService())
}

func destinationText(f *flowtracev1.Flow) string {
	return withService(endpointText(f.GetDestination(), f.GetIp().GetDestination(), dstPort(f)), f.GetDestinationService())
}

func withService(ep string, svc *flowtracev1.Service) string {
	if name := ServiceText(svc); name != "" {
		return ep + " [svc " + name + "]"
	}
	return ep
}

// flowInterface is the observation device, or the input device of a drop
// seen without one (kfree_skb after the device was cleared).
func flowInterface(f *flowtracev1.Flow) *flowtracev1.Interface {
	if f.GetInterface().GetName() != "" {
		return f.GetInterface()
	}
	return f.GetInputInterface()
}

func (p *Printer) printTable(r *flowtracev1.GetFlowsResponse) error {
	if p.rows%p.every == 0 {
		if p.rows > 0 {
			if err := p.Flush(); err != nil {
				return err
			}
		}
		fmt.Fprintln(p.tw, "TIME\tSOURCE\tDESTINATION\tSERVICE\tPROTO\tVERDICT\tDETAIL\tINTERFACE")
	}
	p.rows++
	t := p.timeOf(r)
	if le := r.GetLostEvents(); le != nil {
		_, err := fmt.Fprintf(p.tw, "%s\t-\t-\t-\t-\tLOST\t%s\t-\n", t, LostText(le))
		return err
	}
	if hs := r.GetHistoryStart(); hs != nil {
		_, err := fmt.Fprintf(p.tw, "%s\t-\t-\t-\t-\tHISTORY\t%s\t-\n", t, p.HistoryStartText(hs))
		return err
	}
	if ns := r.GetNodeStatus(); ns != nil {
		_, err := fmt.Fprintf(p.tw, "%s\t-\t-\t-\t-\tNODE\t%s\t-\n", t, NodeStatusText(ns))
		return err
	}
	f := r.GetFlow()
	_, err := fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t,
		endpointText(f.GetSource(), f.GetIp().GetSource(), srcPort(f)),
		tableDestination(f), dash(tableService(f)),
		dash(L4Text(f)), p.verdict(f.GetVerdict()), dash(tableDetail(f)), dash(InterfaceText(flowInterface(f))))
	return err
}

// tableDestination shows where a translated connection went; the Service
// itself has its own column.
func tableDestination(f *flowtracev1.Flow) string {
	tr := f.GetTranslation()
	if f.GetVerdict() != flowtracev1.Verdict_VERDICT_TRANSLATED || tr.GetTranslatedIp() == "" {
		return endpointText(f.GetDestination(), f.GetIp().GetDestination(), dstPort(f))
	}
	return hostPort(tr.GetOriginalIp(), tr.GetOriginalPort()) + " ⇒ " + hostPort(tr.GetTranslatedIp(), tr.GetTranslatedPort())
}

// tableService is the destination's Service, or "from ns/name" when only the
// source has one (the backend's reply).
func tableService(f *flowtracev1.Flow) string {
	src, dst := ServiceText(f.GetSourceService()), ServiceText(f.GetDestinationService())
	switch {
	case src != "" && dst != "":
		return src + " -> " + dst
	case src != "":
		return "from " + src
	}
	return dst
}

func tableDetail(f *flowtracev1.Flow) string {
	parts := make([]string, 0, 5)
	add := func(s string) {
		if s != "" {
			parts = append(parts, s)
		}
	}
	add(ReasonText(f))
	add(FoldText(f))
	if f.GetVerdict() == flowtracev1.Verdict_VERDICT_FORWARDED {
		add(ReportText(f.GetReport()))
		add(CountsText(f))
	}
	if f.GetVerdict() == flowtracev1.Verdict_VERDICT_TRANSLATED {
		add(snatText(f.GetTranslation()))
	}
	add(MTUExceededText(f))
	add(MTUICMPText(f.GetMtu()))
	if loc := f.GetDropLocation(); loc != "" {
		add("at " + loc)
	}
	add(EncapsulationText(f.GetEncapsulation()))
	return strings.Join(parts, " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func srcPort(f *flowtracev1.Flow) uint32 { s, _ := ports(f); return s }
func dstPort(f *flowtracev1.Flow) uint32 { _, d := ports(f); return d }

func ports(f *flowtracev1.Flow) (uint32, uint32) { return l4Ports(f.GetL4()) }

func l4Ports(l4 *flowtracev1.Layer4) (uint32, uint32) {
	switch p := l4.GetProtocol().(type) {
	case *flowtracev1.Layer4_Tcp:
		return p.Tcp.GetSourcePort(), p.Tcp.GetDestinationPort()
	case *flowtracev1.Layer4_Udp:
		return p.Udp.GetSourcePort(), p.Udp.GetDestinationPort()
	case *flowtracev1.Layer4_Sctp:
		return p.Sctp.GetSourcePort(), p.Sctp.GetDestinationPort()
	}
	return 0, 0
}

// endpointText is "ns/pod (ip:port)", or "ip:port" when the pod is unknown.
func endpointText(ep *flowtracev1.Endpoint, ip string, port uint32) string {
	addr := ip
	if addr == "" {
		addr = "?"
	}
	addr = hostPort(addr, port)
	if ep.GetPodName() == "" {
		return addr
	}
	name := ep.GetPodName()
	if ns := ep.GetNamespace(); ns != "" {
		name = ns + "/" + name
	}
	return name + " (" + addr + ")"
}

// hostPort is "ip:port", "[ip6]:port", or the bare address without a port.
func hostPort(ip string, port uint32) string {
	if port == 0 {
		return ip
	}
	return net.JoinHostPort(ip, strconv.FormatUint(uint64(port), 10))
}

// ServiceText is "namespace/name", or "" when the Service is unknown.
func ServiceText(s *flowtracev1.Service) string {
	name := s.GetName()
	if name == "" {
		return ""
	}
	if ns := s.GetNamespace(); ns != "" {
		return ns + "/" + name
	}
	return name
}

// TranslationText is what a TRANSLATED flow's client addressed and where
// conntrack sent it: "10.96.0.10:80 ⇒ 10.244.0.20:8080 (shop/web)", with
// " SNAT 10.244.0.1:40000" when the source was masqueraded too. It is ""
// for other flows.
func TranslationText(f *flowtracev1.Flow) string {
	tr := f.GetTranslation()
	if f.GetVerdict() != flowtracev1.Verdict_VERDICT_TRANSLATED || tr.GetTranslatedIp() == "" {
		return ""
	}
	orig := tr.GetOriginalIp()
	if orig == "" {
		orig = f.GetIp().GetDestination()
	}
	if orig == "" {
		orig = "?"
	}
	s := hostPort(orig, tr.GetOriginalPort()) + " ⇒ " + hostPort(tr.GetTranslatedIp(), tr.GetTranslatedPort())
	if svc := ServiceText(f.GetDestinationService()); svc != "" {
		s += " (" + svc + ")"
	}
	if snat := snatText(tr); snat != "" {
		s += " " + snat
	}
	return s
}

func snatText(tr *flowtracev1.Translation) string {
	if tr.GetTranslatedSourceIp() == "" {
		return ""
	}
	return "SNAT " + hostPort(tr.GetTranslatedSourceIp(), tr.GetTranslatedSourcePort())
}

// MTUExceededText describes an MTU_EXCEEDED flow whose packet was too big
// for its egress device: "1428 > 1350 on ftvx0 (in ftv-frontend)
// icmp-sent", printed after the verdict. It is "" for other flows, ICMP
// errors included.
func MTUExceededText(f *flowtracev1.Flow) string {
	m := f.GetMtu()
	if f.GetVerdict() != flowtracev1.Verdict_VERDICT_MTU_EXCEEDED || m.GetEvent() != flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d > %d", m.GetPacketLength(), m.GetMtu())
	egress := InterfaceText(m.GetEgressInterface())
	if egress != "" {
		sb.WriteString(" on ")
		sb.WriteString(egress)
	}
	// The observation device is where the packet was seen, often the pod's
	// veth; the egress device is where it could not go.
	if in := InterfaceText(flowInterface(f)); in != "" && in != egress {
		sb.WriteString(" (in ")
		sb.WriteString(in)
		sb.WriteByte(')')
	}
	if m.GetIcmpSent() {
		sb.WriteString(" icmp-sent")
	} else {
		sb.WriteString(" no icmp")
	}
	return sb.String()
}

// MTUICMPText describes an ICMP "fragmentation needed" or ICMPv6 "packet too
// big" by the flow it is about: "icmp frag-needed mtu 1350 about 10.244.0.10
// -> 10.244.1.10 icmp". It is "" when m is not such an event.
func MTUICMPText(m *flowtracev1.MTUInfo) string {
	var sb strings.Builder
	switch m.GetEvent() {
	case flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED:
		sb.WriteString("icmp frag-needed")
	case flowtracev1.MTUEvent_MTU_EVENT_ICMPV6_PACKET_TOO_BIG:
		sb.WriteString("icmpv6 packet-too-big")
	default:
		return ""
	}
	// RFC 1191: a router predating PMTUD announces 0.
	if m.GetMtu() != 0 {
		fmt.Fprintf(&sb, " mtu %d", m.GetMtu())
	}
	if q := m.GetQuotedIp(); q.GetSource() != "" || q.GetDestination() != "" {
		s, d := l4Ports(m.GetQuotedL4())
		sb.WriteString(" about ")
		sb.WriteString(hostPort(dash(q.GetSource()), s))
		sb.WriteString(" -> ")
		sb.WriteString(hostPort(dash(q.GetDestination()), d))
		if proto := protoName(m.GetQuotedL4()); proto != "" {
			sb.WriteByte(' ')
			sb.WriteString(proto)
		}
	}
	return sb.String()
}

// protoName is the short transport name of a quoted packet.
func protoName(l4 *flowtracev1.Layer4) string {
	switch p := l4.GetProtocol().(type) {
	case *flowtracev1.Layer4_Tcp:
		return "tcp"
	case *flowtracev1.Layer4_Udp:
		return "udp"
	case *flowtracev1.Layer4_Sctp:
		return "sctp"
	case *flowtracev1.Layer4_Icmpv4:
		return "icmp"
	case *flowtracev1.Layer4_Icmpv6:
		return "icmpv6"
	case *flowtracev1.Layer4_Other:
		return "proto-" + strconv.FormatUint(uint64(p.Other), 10)
	}
	return ""
}

// vxlanPort is the IANA VXLAN port; other ports (8472 for Linux's and
// flannel's default) are worth printing.
const vxlanPort = 4789

// EncapsulationText is the VXLAN outer header: "vxlan vni 1 192.168.50.1 ->
// 192.168.50.2", with " port 8472" for a non-standard port; "" when the flow
// was not tunnelled.
func EncapsulationText(e *flowtracev1.Encapsulation) string {
	if e == nil || (e.GetOuterSource() == "" && e.GetOuterDestination() == "" && e.GetVni() == 0) {
		return ""
	}
	s := fmt.Sprintf("vxlan vni %d %s -> %s", e.GetVni(), dash(e.GetOuterSource()), dash(e.GetOuterDestination()))
	if p := e.GetPort(); p != 0 && p != vxlanPort {
		s += " port " + strconv.FormatUint(uint64(p), 10)
	}
	return s
}

// InterfaceText is the device name, qualified with its namespace when that is
// not the node's: "eth0@shop/db-0".
func InterfaceText(i *flowtracev1.Interface) string {
	name := i.GetName()
	if name == "" {
		return ""
	}
	if ns := i.GetNetns(); ns != "" && ns != "node" {
		return name + "@" + ns
	}
	return name
}

// VerdictText is the verdict without its enum prefix.
func VerdictText(v flowtracev1.Verdict) string {
	return strings.TrimPrefix(v.String(), "VERDICT_")
}

// ReasonText is the kernel's drop reason name, followed by flowtrace's own
// name when they differ (e.g. "FOO_NEW, UNKNOWN"), and by what flowtrace
// found out beyond the kernel: "NETFILTER_DROP: Service shop/ghost has no
// endpoints".
func ReasonText(f *flowtracev1.Flow) string {
	ours := ""
	if r := f.GetDropReason(); r != flowtracev1.DropReason_DROP_REASON_UNSPECIFIED {
		ours = strings.TrimPrefix(r.String(), "DROP_REASON_")
	}
	kernel := f.GetDropReasonKernel()
	var reason string
	switch {
	case kernel == "":
		reason = ours
	case ours == "" || ours == kernel:
		reason = kernel
	default:
		reason = kernel + ", " + ours
	}
	cause := CauseText(f)
	switch {
	case cause == "":
		return reason
	case reason == "":
		return cause
	}
	return reason + ": " + cause
}

// CauseText is what flowtrace knows about why a drop happened beyond the
// kernel's reason ("Service shop/ghost has no endpoints"), or "".
func CauseText(f *flowtracev1.Flow) string {
	switch f.GetDropCause() {
	case flowtracev1.DropCause_DROP_CAUSE_UNSPECIFIED:
		return ""
	case flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS:
		if svc := ServiceText(f.GetDestinationService()); svc != "" {
			return "Service " + svc + " has no endpoints"
		}
		return "Service " + hostPort(dash(f.GetIp().GetDestination()), dstPort(f)) + " has no endpoints"
	case flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED:
		return "echo reply no ping socket asked for; a raw-socket ping got its own copy"
	case flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED:
		return "multicast group nothing here joined"
	}
	return strings.TrimPrefix(f.GetDropCause().String(), "DROP_CAUSE_")
}

// ReportText names why a FORWARDED record was emitted.
func ReportText(r flowtracev1.FlowReport) string {
	switch r {
	case flowtracev1.FlowReport_FLOW_REPORT_NEW:
		return "new"
	case flowtracev1.FlowReport_FLOW_REPORT_TCP_FLAGS:
		return "tcp-flags"
	case flowtracev1.FlowReport_FLOW_REPORT_PERIODIC:
		return "periodic"
	case flowtracev1.FlowReport_FLOW_REPORT_IDLE_FLUSH:
		return "idle"
	case flowtracev1.FlowReport_FLOW_REPORT_CLOSED:
		return "closed"
	}
	return ""
}

// FoldText is a folded record's drop count and how long its storm ran:
// "x5000 over 1.2s" ("x3" without a last time), or "" for a single packet.
func FoldText(f *flowtracev1.Flow) string {
	n := f.GetEventCount()
	if n <= 1 {
		return ""
	}
	s := "x" + strconv.FormatUint(uint64(n), 10)
	if span := FoldSpan(f); span != "" {
		s += " over " + span
	}
	return s
}

// FoldSpan is how long a folded record's drops went on, from its time to
// its last_time, rounded to what a reader can use ("48ms", "1.2s"); ""
// without a span.
func FoldSpan(f *flowtracev1.Flow) string {
	if f.GetEventCount() <= 1 || f.GetLastTime() == nil || f.GetTime() == nil {
		return ""
	}
	d := f.GetLastTime().AsTime().Sub(f.GetTime().AsTime())
	switch {
	case d <= 0:
		return ""
	case d < time.Millisecond:
		d = d.Round(time.Microsecond)
	case d < 10*time.Millisecond:
		d = d.Round(10 * time.Microsecond)
	case d < time.Second:
		d = d.Round(time.Millisecond)
	default:
		d = d.Round(100 * time.Millisecond)
	}
	return d.String()
}

// CountsText is a FORWARDED report's counts, "3 pkts 162 bytes", and on a
// connection's closing report the other direction's last ones, which end
// with it: "3 pkts 162 bytes, reverse ACK|FIN 1 pkts 54 bytes".
func CountsText(f *flowtracev1.Flow) string {
	var sb strings.Builder
	writeCounts(&sb, f)
	return sb.String()
}

// writeCounts is CountsText into sb (the compact format's line).
func writeCounts(sb *strings.Builder, f *flowtracev1.Flow) {
	fmt.Fprintf(sb, "%d pkts %d bytes", f.GetPackets(), f.GetBytes())
	if n := f.GetReversePackets(); n != 0 {
		sb.WriteString(", reverse ")
		if fl := tcpFlags(f.GetReverseTcpFlags()); fl != "" {
			sb.WriteString(fl)
			sb.WriteByte(' ')
		}
		fmt.Fprintf(sb, "%d pkts %d bytes", n, f.GetReverseBytes())
	}
}

// L4Text is the protocol with TCP flags or the ICMP type: "tcp SYN|ACK",
// "icmpv4 echo-request".
func L4Text(f *flowtracev1.Flow) string {
	switch p := f.GetL4().GetProtocol().(type) {
	case *flowtracev1.Layer4_Tcp:
		if fl := tcpFlags(p.Tcp.GetFlags()); fl != "" {
			return "tcp " + fl
		}
		return "tcp"
	case *flowtracev1.Layer4_Udp:
		return "udp"
	case *flowtracev1.Layer4_Sctp:
		return "sctp"
	case *flowtracev1.Layer4_Icmpv4:
		return "icmpv4 " + icmpText(icmp4Names, p.Icmpv4.GetType(), p.Icmpv4.GetCode())
	case *flowtracev1.Layer4_Icmpv6:
		return "icmpv6 " + icmpText(icmp6Names, p.Icmpv6.GetType(), p.Icmpv6.GetCode())
	case *flowtracev1.Layer4_Other:
		return "proto-" + strconv.FormatUint(uint64(p.Other), 10)
	}
	return ""
}

func tcpFlags(fl *flowtracev1.TCPFlags) string {
	if fl == nil {
		return ""
	}
	var parts [8]string
	n := 0
	add := func(set bool, name string) {
		if set {
			parts[n] = name
			n++
		}
	}
	add(fl.GetSyn(), "SYN")
	add(fl.GetAck(), "ACK")
	add(fl.GetFin(), "FIN")
	add(fl.GetRst(), "RST")
	add(fl.GetPsh(), "PSH")
	add(fl.GetUrg(), "URG")
	add(fl.GetEce(), "ECE")
	add(fl.GetCwr(), "CWR")
	return strings.Join(parts[:n], "|")
}

var icmp4Names = map[uint32]string{
	0: "echo-reply", 3: "dest-unreachable", 5: "redirect", 8: "echo-request",
	11: "time-exceeded", 12: "parameter-problem",
}

var icmp6Names = map[uint32]string{
	1: "dest-unreachable", 2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem",
	128: "echo-request", 129: "echo-reply", 133: "router-solicitation", 134: "router-advertisement",
	135: "neighbor-solicitation", 136: "neighbor-advertisement",
}

func icmpText(names map[uint32]string, typ, code uint32) string {
	name, ok := names[typ]
	if !ok {
		return fmt.Sprintf("type %d code %d", typ, code)
	}
	if code != 0 {
		return fmt.Sprintf("%s code %d", name, code)
	}
	return name
}

// NodeStatusText describes a relayed node joining or leaving the stream.
func NodeStatusText(ns *flowtracev1.NodeStatus) string {
	state := "NODE STATUS"
	switch ns.GetState() {
	case flowtracev1.NodeState_NODE_STATE_UNAVAILABLE:
		state = "NODE UNAVAILABLE"
	case flowtracev1.NodeState_NODE_STATE_CONNECTED:
		state = "NODE CONNECTED"
	}
	s := state + ": " + ns.GetNodeName()
	if m := ns.GetMessage(); m != "" {
		s += " (" + m + ")"
	}
	return s
}

// LostText is "EVENTS LOST: 42 (kernel ring buffer, cpu 1)".
func LostText(le *flowtracev1.LostEvents) string {
	src := SourceText(le.GetSource())
	if le.Cpu != nil {
		src += ", cpu " + strconv.FormatUint(uint64(le.GetCpu()), 10)
	}
	return fmt.Sprintf("EVENTS LOST: %d (%s)", le.GetNumEventsLost(), src)
}

// SourceText names a loss stage for people.
func SourceText(s flowtracev1.LostEventsSource) string {
	switch s {
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER:
		return "kernel ring buffer"
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE:
		return "agent queue"
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED:
		return "history evicted"
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE:
		return "client too slow"
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_FOLD_TABLE:
		return "kernel drop fold table full"
	case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_DROP_HOOK_BUSY:
		return "drop hook busy (nested free)"
	}
	return "unknown stage"
}
