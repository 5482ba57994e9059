package filters

import (
	"fmt"
	"slices"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// ports returns the flow's transport ports, ok=false when it has none.
func ports(f *flowtracev1.Flow) (src, dst uint32, ok bool) {
	switch p := f.GetL4().GetProtocol().(type) {
	case *flowtracev1.Layer4_Tcp:
		return p.Tcp.GetSourcePort(), p.Tcp.GetDestinationPort(), true
	case *flowtracev1.Layer4_Udp:
		return p.Udp.GetSourcePort(), p.Udp.GetDestinationPort(), true
	case *flowtracev1.Layer4_Sctp:
		return p.Sctp.GetSourcePort(), p.Sctp.GetDestinationPort(), true
	}
	return 0, 0, false
}

func buildPort(values []uint32, source bool) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	for _, v := range values {
		if v == 0 || v > 65535 {
			return nil, fmt.Errorf("%d is not a port (1-65535)", v)
		}
	}
	pick := func(f *flowtracev1.Flow) (uint32, bool) {
		s, d, ok := ports(f)
		if source {
			return s, ok
		}
		return d, ok
	}
	if len(values) > smallPortList {
		// A long list (a client following a range of ports) is a bit set:
		// 8 KB, one load per flow instead of a scan of every port.
		set := new([65536 / 64]uint64)
		for _, v := range values {
			set[v/64] |= 1 << (v % 64)
		}
		return func(f *flowtracev1.Flow) bool {
			p, ok := pick(f)
			return ok && p < 65536 && set[p/64]&(1<<(p%64)) != 0
		}, nil
	}
	vals := append([]uint32(nil), values...)
	return func(f *flowtracev1.Flow) bool {
		p, ok := pick(f)
		return ok && slices.Contains(vals, p)
	}, nil
}

// smallPortList: up to this many ports, a scan is as fast as the bit set.
const smallPortList = 8

type protoKind uint8

const (
	protoNone protoKind = iota
	protoTCP
	protoUDP
	protoSCTP
	protoICMPv4
	protoICMPv6
)

// protocolNames are the values FlowFilter.protocol accepts.
var protocolNames = map[string]protoKind{
	"tcp":    protoTCP,
	"udp":    protoUDP,
	"sctp":   protoSCTP,
	"icmpv4": protoICMPv4,
	"icmpv6": protoICMPv6,
}

// protoICMPAny is "icmp": ICMP of either IP version, as printed flows say
// ("icmp frag-needed").
const protoICMPAny = "icmp"

// Protocols lists the accepted protocol names, for help and error texts.
func Protocols() []string { return []string{"tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6"} }

func kindOf(f *flowtracev1.Flow) protoKind {
	switch f.GetL4().GetProtocol().(type) {
	case *flowtracev1.Layer4_Tcp:
		return protoTCP
	case *flowtracev1.Layer4_Udp:
		return protoUDP
	case *flowtracev1.Layer4_Sctp:
		return protoSCTP
	case *flowtracev1.Layer4_Icmpv4:
		return protoICMPv4
	case *flowtracev1.Layer4_Icmpv6:
		return protoICMPv6
	}
	return protoNone
}

func buildProtocol(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetProtocol()
	if len(vs) == 0 {
		return nil, nil
	}
	var mask uint8
	for _, v := range vs {
		if strings.ToLower(v) == protoICMPAny {
			mask |= 1<<protoICMPv4 | 1<<protoICMPv6
			continue
		}
		k, ok := protocolNames[strings.ToLower(v)]
		if !ok {
			return nil, fmt.Errorf("%q is not a protocol (want one of %s)", v, strings.Join(Protocols(), ", "))
		}
		mask |= 1 << k
	}
	return func(f *flowtracev1.Flow) bool {
		k := kindOf(f)
		return k != protoNone && mask&(1<<k) != 0
	}, nil
}

// ifacePattern is an interface name or "prefix*", and, written as
// "name@netns" the way flows print a pod's own device ("eth0@ft-backend"),
// the namespace it must be in.
type ifacePattern struct {
	name   string
	prefix bool
	netns  string // "" for any
}

func (p ifacePattern) matchIface(i *flowtracev1.Interface) bool {
	return p.match(i.GetName()) && (p.netns == "" || i.GetNetns() == p.netns)
}

func (p ifacePattern) match(name string) bool {
	if name == "" {
		return false
	}
	if p.prefix {
		return strings.HasPrefix(name, p.name)
	}
	return name == p.name
}

func buildInterface(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetInterface()
	if len(vs) == 0 {
		return nil, nil
	}
	pats := make([]ifacePattern, 0, len(vs))
	for _, v := range vs {
		dev, netns, scoped := strings.Cut(v, "@")
		name, prefix := strings.CutSuffix(dev, "*")
		// Linux device names are at most 15 bytes and contain no '/', blanks or '*'.
		if (name == "" && !prefix) || len(name) > 15 || strings.ContainsAny(name, "/*: \t") || scoped && netns == "" {
			return nil, fmt.Errorf("%q is not an interface name, \"prefix*\" or \"name@netns\"", v)
		}
		pats = append(pats, ifacePattern{name: name, prefix: prefix, netns: netns})
	}
	return func(f *flowtracev1.Flow) bool {
		for _, p := range pats {
			if p.matchIface(f.GetInterface()) || p.matchIface(f.GetInputInterface()) {
				return true
			}
		}
		return false
	}, nil
}
