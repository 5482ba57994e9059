package printer

import (
	"fmt"
	"strings"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Time formats for Options.TimeFormat.
var timeFormats = map[string]string{
	"stampmilli":   time.StampMilli,
	"rfc3339":      time.RFC3339,
	"rfc3339milli": "2006-01-02T15:04:05.000Z07:00",
	"rfc3339nano":  time.RFC3339Nano,
	"unix":         "unix",
}

// TimeFormats lists the accepted time format names.
func TimeFormats() []string {
	return []string{"StampMilli", "RFC3339", "RFC3339Milli", "RFC3339Nano", "unix"}
}

// ParseTimeFormat returns the layout for a time format name ("" is
// StampMilli), or "unix" for seconds.nanoseconds since the epoch.
func ParseTimeFormat(name string) (string, error) {
	if name == "" {
		return time.StampMilli, nil
	}
	if l, ok := timeFormats[strings.ToLower(name)]; ok {
		return l, nil
	}
	return "", fmt.Errorf("unknown time format %q (want one of %s)", name, strings.Join(TimeFormats(), ", "))
}

// ANSI colours; all codes have the same length, so table columns stay aligned.
const (
	colorReset  = "\x1b[0m"
	colorRed    = "\x1b[31m"
	colorGreen  = "\x1b[32m"
	colorYellow = "\x1b[33m"
	colorBlue   = "\x1b[34m"
	colorCyan   = "\x1b[36m"
	colorReason = colorYellow
	colorLost   = colorRed
)

func (p *Printer) paint(color, s string) string {
	if !p.color || s == "" {
		return s
	}
	return color + s + colorReset
}

func (p *Printer) verdict(v flowtracev1.Verdict) string {
	c := colorBlue
	switch v {
	case flowtracev1.Verdict_VERDICT_FORWARDED:
		c = colorGreen
	case flowtracev1.Verdict_VERDICT_DROPPED:
		c = colorRed
	case flowtracev1.Verdict_VERDICT_TRANSLATED:
		c = colorCyan
	case flowtracev1.Verdict_VERDICT_MTU_EXCEEDED:
		c = colorYellow
	}
	return p.paint(c, VerdictText(v))
}

// HistoryStartText says that a request reached past the history held:
// "HISTORY STARTS AT Nov 23 15:31:47.123: 1234 older flows were evicted (you asked from Nov 23 15:01:47.000)".
func (p *Printer) HistoryStartText(hs *flowtracev1.HistoryStart) string {
	var sb strings.Builder
	sb.WriteString("HISTORY STARTS AT ")
	if t := hs.GetOldestFlowTime(); t != nil {
		sb.WriteString(p.FormatTime(t.AsTime()))
	} else {
		sb.WriteString("(no flows held)")
	}
	fmt.Fprintf(&sb, ": %d older flows were evicted", hs.GetEvictedFlows())
	if s := hs.GetRequestedSince(); s != nil {
		fmt.Fprintf(&sb, " (you asked from %s)", p.FormatTime(s.AsTime()))
	}
	return sb.String()
}

// dict writes Hubble-style "KEY: value" blocks, separated by a line of
// dashes; optional keys appear only when set.
func (p *Printer) dict(r *flowtracev1.GetFlowsResponse) {
	sb := &p.sb
	if p.rows > 0 {
		sb.WriteString("------------\n")
	}
	p.rows++
	kv := func(k, v string) {
		// "?" is what the one-line formats show for an unknown end; a
		// block simply leaves the key out (e.g. under a field mask).
		if v == "" || v == "?" {
			return
		}
		fmt.Fprintf(sb, "%11s: %s\n", k, v)
	}
	kv("TIMESTAMP", p.timeOf(r))
	kv("NODE", r.GetNodeName())
	if le := r.GetLostEvents(); le != nil {
		kv("EVENTS LOST", p.paint(colorLost, strings.TrimPrefix(LostText(le), "EVENTS LOST: ")))
		return
	}
	if hs := r.GetHistoryStart(); hs != nil {
		kv("HISTORY", p.paint(colorLost, p.HistoryStartText(hs)))
		return
	}
	if ns := r.GetNodeStatus(); ns != nil {
		kv("NODE STATUS", p.paint(colorLost, NodeStatusText(ns)))
		return
	}
	f := r.GetFlow()
	kv("UUID", f.GetUuid())
	kv("SOURCE", sourceText(f))
	if tr := TranslationText(f); tr != "" {
		kv("DESTINATION", tr)
	} else {
		kv("DESTINATION", destinationText(f))
	}
	kv("PROTOCOL", L4Text(f))
	kv("VERDICT", p.verdict(f.GetVerdict()))
	kv("DROP REASON", p.paint(colorReason, ReasonText(f)))
	kv("DROPS", FoldText(f))
	if f.GetVerdict() == flowtracev1.Verdict_VERDICT_FORWARDED {
		kv("REPORT", ReportText(f.GetReport()))
		kv("TRAFFIC", CountsText(f))
		if f.GetIsReply() {
			kv("REPLY", "true")
		}
	}
	kv("LOCATION", f.GetDropLocation())
	kv("MTU", MTUExceededText(f)+MTUICMPText(f.GetMtu()))
	kv("INTERFACE", InterfaceText(flowInterface(f)))
	if d := f.GetTrafficDirection(); d != flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_UNSPECIFIED {
		kv("DIRECTION", strings.ToLower(strings.TrimPrefix(d.String(), "TRAFFIC_DIRECTION_")))
	}
	kv("TUNNEL", EncapsulationText(f.GetEncapsulation()))
	kv("SUMMARY", f.GetSummary())
}
