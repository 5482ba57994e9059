package enrich

import (
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// PMTU tells whether a too-big packet was answered: an MTU_EXCEEDED flow is
// held for a short wait, and an ICMP frag-needed / packet-too-big quoting the
// same flow, seen going back toward the sender within it, marks it
// icmp_sent. Path MTU discovery depends on that ICMP getting through, so a
// too-big packet without one is the classic black hole.
//
// It is used by the event pipeline's single goroutine; not safe for
// concurrent use.
type PMTU struct {
	wait    time.Duration
	max     int
	pending []pendingMTU
}

type pendingMTU struct {
	f        *flowtracev1.Flow
	key      flowKey
	deadline time.Time
}

type flowKey struct {
	src, dst, proto string
	sport, dport    uint32
}

// NewPMTU holds MTU_EXCEEDED flows for wait (at most max of them; a storm
// releases the oldest early, unanswered).
func NewPMTU(wait time.Duration, max int) *PMTU {
	return &PMTU{wait: wait, max: max}
}

// Add takes the next flow and returns the flows to publish now, in order.
func (p *PMTU) Add(f *flowtracev1.Flow, now time.Time) []*flowtracev1.Flow {
	m := f.GetMtu()
	switch m.GetEvent() {
	case flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED:
		var out []*flowtracev1.Flow
		if len(p.pending) >= p.max {
			out = append(out, p.pending[0].f)
			p.pending = p.pending[1:]
		}
		p.pending = append(p.pending, pendingMTU{f: f, key: keyOf(f.GetIp(), f.GetL4()), deadline: now.Add(p.wait)})
		return out
	case flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED, flowtracev1.MTUEvent_MTU_EVENT_ICMPV6_PACKET_TOO_BIG:
		k := keyOf(m.GetQuotedIp(), m.GetQuotedL4())
		for i, pm := range p.pending {
			if pm.key == k {
				pm.f.Mtu.IcmpSent = true
				p.pending = append(p.pending[:i], p.pending[i+1:]...)
				return []*flowtracev1.Flow{pm.f, f}
			}
		}
	}
	return []*flowtracev1.Flow{f}
}

// Expire returns the held flows whose wait is over, unanswered.
func (p *PMTU) Expire(now time.Time) []*flowtracev1.Flow {
	var out []*flowtracev1.Flow
	for len(p.pending) > 0 && !now.Before(p.pending[0].deadline) {
		out = append(out, p.pending[0].f)
		p.pending = p.pending[1:]
	}
	return out
}

// Pending is the number of flows held.
func (p *PMTU) Pending() int { return len(p.pending) }

// Next is when Expire has the oldest held flow to release; ok is false
// when nothing is held. Flows are held in the order they came, each for the
// same wait, so the oldest's deadline is the earliest.
func (p *PMTU) Next() (deadline time.Time, ok bool) {
	if len(p.pending) == 0 {
		return time.Time{}, false
	}
	return p.pending[0].deadline, true
}

func keyOf(ip *flowtracev1.IP, l4 *flowtracev1.Layer4) flowKey {
	k := flowKey{src: ip.GetSource(), dst: ip.GetDestination()}
	switch {
	case l4.GetTcp() != nil:
		k.proto, k.sport, k.dport = "tcp", l4.GetTcp().GetSourcePort(), l4.GetTcp().GetDestinationPort()
	case l4.GetUdp() != nil:
		k.proto, k.sport, k.dport = "udp", l4.GetUdp().GetSourcePort(), l4.GetUdp().GetDestinationPort()
	case l4.GetSctp() != nil:
		k.proto, k.sport, k.dport = "sctp", l4.GetSctp().GetSourcePort(), l4.GetSctp().GetDestinationPort()
	case l4.GetIcmpv4() != nil:
		k.proto = "icmpv4"
	case l4.GetIcmpv6() != nil:
		k.proto = "icmpv6"
	}
	return k
}
