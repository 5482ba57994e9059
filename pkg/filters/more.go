package filters

import (
	"fmt"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func buildUUID(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetUuid()
	if len(vs) == 0 {
		return nil, nil
	}
	for _, v := range vs {
		if v == "" || strings.TrimSpace(v) != v {
			return nil, fmt.Errorf("%q is not a flow uuid", v)
		}
	}
	vals := append([]string(nil), vs...)
	return func(f *flowtracev1.Flow) bool { return containsString(vals, f.GetUuid()) }, nil
}

type workloadPattern struct {
	kind string // lower case; "" = any kind
	name string // "" = any name of kind
}

// buildWorkload matches "kind/name", "kind/" or a bare "name" (any kind);
// kinds compare case-insensitively (Deployment, deployment).
func buildWorkload(values []string, get endpointGetter) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	pats := make([]workloadPattern, 0, len(values))
	for _, v := range values {
		bad := fmt.Errorf("%q is not a workload: want \"kind/name\", \"kind/\" or \"name\"", v)
		if v == "" || strings.ContainsAny(v, " \t") {
			return nil, bad
		}
		kind, name, found := strings.Cut(v, "/")
		switch {
		case !found:
			pats = append(pats, workloadPattern{name: v})
		case kind == "" || strings.Contains(name, "/"):
			return nil, bad
		default:
			pats = append(pats, workloadPattern{kind: strings.ToLower(kind), name: name})
		}
	}
	return func(f *flowtracev1.Flow) bool {
		w := get(f).GetWorkload()
		if w == nil || w.GetName() == "" {
			return false
		}
		for _, p := range pats {
			if p.kind != "" && !strings.EqualFold(p.kind, w.GetKind()) {
				continue
			}
			if p.name == "" || p.name == w.GetName() {
				return true
			}
		}
		return false
	}, nil
}

func buildNode(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetNodeName()
	if len(vs) == 0 {
		return nil, nil
	}
	pats := make([]ifacePattern, 0, len(vs))
	for _, v := range vs {
		name, prefix := strings.CutSuffix(v, "*")
		if (name == "" && !prefix) || strings.ContainsAny(name, "/*: \t") {
			return nil, fmt.Errorf("%q is not a node name or \"prefix*\"", v)
		}
		pats = append(pats, ifacePattern{name: name, prefix: prefix})
	}
	return func(f *flowtracev1.Flow) bool {
		n := f.GetNodeName()
		for _, p := range pats {
			if p.match(n) {
				return true
			}
		}
		return false
	}, nil
}

// tcpBits packs TCPFlags into a byte, in the order of the proto fields.
func tcpBits(fl *flowtracev1.TCPFlags) uint8 {
	var b uint8
	for i, set := range [...]bool{fl.GetFin(), fl.GetSyn(), fl.GetRst(), fl.GetPsh(), fl.GetAck(), fl.GetUrg(), fl.GetEce(), fl.GetCwr()} {
		if set {
			b |= 1 << i
		}
	}
	return b
}

// TCPFlagNames are the names ParseTCPFlags accepts.
func TCPFlagNames() []string { return []string{"SYN", "ACK", "FIN", "RST", "PSH", "URG", "ECE", "CWR"} }

// ParseTCPFlags parses "SYN", "SYN,ACK" or "syn|ack" (case-insensitive).
func ParseTCPFlags(s string) (*flowtracev1.TCPFlags, error) {
	fl := &flowtracev1.TCPFlags{}
	any := false
	for _, name := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '|' || r == ' ' }) {
		any = true
		switch strings.ToUpper(name) {
		case "SYN":
			fl.Syn = true
		case "ACK":
			fl.Ack = true
		case "FIN":
			fl.Fin = true
		case "RST":
			fl.Rst = true
		case "PSH":
			fl.Psh = true
		case "URG":
			fl.Urg = true
		case "ECE":
			fl.Ece = true
		case "CWR":
			fl.Cwr = true
		default:
			return nil, fmt.Errorf("%q is not a TCP flag (want %s)", name, strings.Join(TCPFlagNames(), ", "))
		}
	}
	if !any {
		return nil, fmt.Errorf("%q names no TCP flag (want e.g. SYN or SYN,ACK)", s)
	}
	return fl, nil
}

func buildTCPFlags(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetTcpFlags()
	if len(vs) == 0 {
		return nil, nil
	}
	wants := make([]uint8, 0, len(vs))
	for _, v := range vs {
		b := tcpBits(v)
		if b == 0 {
			return nil, fmt.Errorf("%v sets no flag", v)
		}
		wants = append(wants, b)
	}
	return func(f *flowtracev1.Flow) bool {
		t, ok := f.GetL4().GetProtocol().(*flowtracev1.Layer4_Tcp)
		if !ok {
			return false
		}
		// A closing report also carries the other direction's last flags
		// (its FIN is not a report of its own): each set is matched on its
		// own, never their union, so SYN,ACK still means one packet's.
		own, rev := tcpBits(t.Tcp.GetFlags()), uint8(0)
		if r := f.GetReverseTcpFlags(); r != nil {
			rev = tcpBits(r)
		}
		for _, w := range wants {
			if own&w == w || rev&w == w {
				return true
			}
		}
		return false
	}, nil
}

// buildEnumMask compiles a repeated enum field into a bitmask test; what
// names the enum in errors. UNSPECIFIED is refused unless unspecifiedOK:
// mostly it would match flows that do not say, which nobody means.
func buildEnumMask(vals []int32, names map[int32]string, what string, unspecifiedOK bool, get func(*flowtracev1.Flow) int32) (predicate, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	var mask uint64
	for _, v := range vals {
		if _, ok := names[v]; !ok || v < 0 || v == 0 && !unspecifiedOK || v >= 64 {
			return nil, fmt.Errorf("%d is not a known %s", v, what)
		}
		mask |= 1 << uint(v)
	}
	return func(f *flowtracev1.Flow) bool {
		v := get(f)
		return v >= 0 && v < 64 && mask&(1<<uint(v)) != 0
	}, nil
}

func enumInts[E ~int32](vs []E) []int32 {
	out := make([]int32, len(vs))
	for i, v := range vs {
		out[i] = int32(v)
	}
	return out
}

func buildTrafficDirection(ff *flowtracev1.FlowFilter) (predicate, error) {
	return buildEnumMask(enumInts(ff.GetTrafficDirection()), flowtracev1.TrafficDirection_name, "traffic direction", false,
		func(f *flowtracev1.Flow) int32 { return int32(f.GetTrafficDirection()) })
}

func buildObservationPoint(ff *flowtracev1.FlowFilter) (predicate, error) {
	return buildEnumMask(enumInts(ff.GetObservationPoint()), flowtracev1.ObservationPoint_name, "observation point", false,
		func(f *flowtracev1.Flow) int32 { return int32(f.GetObservationPoint()) })
}

func buildIPVersion(ff *flowtracev1.FlowFilter) (predicate, error) {
	return buildEnumMask(enumInts(ff.GetIpVersion()), flowtracev1.IPVersion_name, "IP version", false,
		func(f *flowtracev1.Flow) int32 { return int32(f.GetIp().GetIpVersion()) })
}

func buildReply(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetReply()
	if len(vs) == 0 {
		return nil, nil
	}
	var wantTrue, wantFalse bool
	for _, v := range vs {
		if v {
			wantTrue = true
		} else {
			wantFalse = true
		}
	}
	return func(f *flowtracev1.Flow) bool {
		if f.GetIsReply() {
			return wantTrue
		}
		return wantFalse
	}, nil
}
