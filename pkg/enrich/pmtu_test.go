package enrich

import (
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func tooBig(id, src, dst string, dport uint32) *flowtracev1.Flow {
	return &flowtracev1.Flow{Uuid: id, Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
		Ip:  &flowtracev1.IP{Source: src, Destination: dst},
		L4:  &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: 1000, DestinationPort: dport}}},
		Mtu: &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED}}
}

func icmp(id, src, dst string, dport uint32) *flowtracev1.Flow {
	return &flowtracev1.Flow{Uuid: id, Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
		Ip: &flowtracev1.IP{Source: "10.244.0.1", Destination: src},
		Mtu: &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED,
			QuotedIp: &flowtracev1.IP{Source: src, Destination: dst},
			QuotedL4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: 1000, DestinationPort: dport}}}}}
}

func uuids(fs []*flowtracev1.Flow) (out []string) {
	for _, f := range fs {
		out = append(out, f.Uuid)
	}
	return out
}

func TestPMTUCorrelation(t *testing.T) {
	p := NewPMTU(500*time.Millisecond, 2)
	t0 := time.Unix(1000, 0)
	if _, ok := p.Next(); ok {
		t.Fatal("Next with nothing held")
	}
	other := &flowtracev1.Flow{Uuid: "plain"}
	if got := uuids(p.Add(other, t0)); len(got) != 1 || got[0] != "plain" {
		t.Fatalf("plain flow held: %v", got)
	}
	a, b := tooBig("a", "10.0.0.1", "10.0.1.1", 53), tooBig("b", "10.0.0.2", "10.0.1.1", 53)
	if got := p.Add(a, t0); len(got) != 0 {
		t.Fatalf("MTU_EXCEEDED published before its wait: %v", uuids(got))
	}
	p.Add(b, t0.Add(10*time.Millisecond))
	if d, ok := p.Next(); !ok || !d.Equal(t0.Add(500*time.Millisecond)) {
		t.Fatalf("Next = %v, %v; want a's deadline", d, ok)
	}
	// The ICMP answering b releases b (answered) then itself; a waits on.
	got := p.Add(icmp("ib", "10.0.0.2", "10.0.1.1", 53), t0.Add(20*time.Millisecond))
	if g := uuids(got); len(g) != 2 || g[0] != "b" || g[1] != "ib" || !b.Mtu.IcmpSent {
		t.Fatalf("answered: %v, icmp_sent %v", g, b.Mtu.IcmpSent)
	}
	// An ICMP about a different flow (port 54) answers nothing.
	if g := uuids(p.Add(icmp("ix", "10.0.0.1", "10.0.1.1", 54), t0.Add(30*time.Millisecond))); len(g) != 1 || g[0] != "ix" {
		t.Fatalf("unrelated icmp: %v", g)
	}
	if g := p.Expire(t0.Add(499 * time.Millisecond)); len(g) != 0 {
		t.Fatalf("expired early: %v", uuids(g))
	}
	if g := uuids(p.Expire(t0.Add(500 * time.Millisecond))); len(g) != 1 || g[0] != "a" || a.Mtu.IcmpSent {
		t.Fatalf("expiry: %v, icmp_sent %v", g, a.Mtu.IcmpSent)
	}
	if _, ok := p.Next(); ok {
		t.Fatal("Next after everything held was released")
	}
	// A storm beyond max releases the oldest early, unanswered.
	p.Add(tooBig("c", "10.0.0.3", "x", 1), t0)
	p.Add(tooBig("d", "10.0.0.4", "x", 1), t0)
	if g := uuids(p.Add(tooBig("e", "10.0.0.5", "x", 1), t0)); len(g) != 1 || g[0] != "c" {
		t.Fatalf("overflow: %v", g)
	}
	if p.Pending() != 2 {
		t.Fatalf("pending %d", p.Pending())
	}
}
