package convert

import (
	"net/netip"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// PushDown is the part of a Hubble request's filters that flowtrace's own
// filters can apply at the agent. Hubble's filters are always applied again,
// with Hubble's code, on the converted flows: the pushed-down filters only
// cut what the agent streams.
type PushDown struct {
	// Allow is a superset of the Hubble whitelist: each Hubble filter keeps
	// only the fields that translate exactly (a filter with none matches all).
	Allow []*flowtracev1.FlowFilter
	// Deny holds only the Hubble blacklist filters that translate exactly
	// (a subset, so the agent never withholds a flow Hubble would send).
	Deny []*flowtracev1.FlowFilter
	// Exact: the native filters select exactly the flows the Hubble filters
	// select, so the agent can also apply number/first for the request.
	Exact bool
}

// Filters splits a Hubble whitelist and blacklist into what the agent can
// apply. Values the native API would reject are never pushed down.
func Filters(whitelist, blacklist []*flowpb.FlowFilter) PushDown {
	p := PushDown{Exact: true}
	for _, hf := range whitelist {
		nf, exact := filter(hf)
		p.Allow = append(p.Allow, nf)
		p.Exact = p.Exact && exact
	}
	for _, hf := range blacklist {
		nf, exact := filter(hf)
		if !exact {
			p.Exact = false
			continue
		}
		p.Deny = append(p.Deny, nf)
	}
	return p
}

// filter translates one Hubble filter; exact reports whether every field
// it sets was translated with the same meaning.
func filter(hf *flowpb.FlowFilter) (*flowtracev1.FlowFilter, bool) {
	nf := &flowtracev1.FlowFilter{}
	if hf == nil {
		return nf, true
	}
	exact := true
	hf.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		ok := false
		switch fd.Name() {
		case "verdict":
			nf.Verdict, ok = verdicts(hf.GetVerdict())
		case "source_pod":
			nf.SourcePod, ok = names(hf.GetSourcePod())
		case "destination_pod":
			nf.DestinationPod, ok = names(hf.GetDestinationPod())
		case "source_service":
			nf.SourceService, ok = names(hf.GetSourceService())
		case "destination_service":
			nf.DestinationService, ok = names(hf.GetDestinationService())
		case "source_ip":
			nf.SourceIp, ok = ips(hf.GetSourceIp())
		case "destination_ip":
			nf.DestinationIp, ok = ips(hf.GetDestinationIp())
		case "source_port":
			nf.SourcePort, ok = portList(hf.GetSourcePort())
		case "destination_port":
			nf.DestinationPort, ok = portList(hf.GetDestinationPort())
		case "protocol":
			nf.Protocol, ok = protocols(hf.GetProtocol())
		}
		exact = exact && ok
		return true
	})
	return nf, exact
}

// verdicts maps Hubble verdicts to the native ones they come from (see
// Flow): DROPPED is DROPPED or MTU_EXCEEDED, FORWARDED and TRANSLATED are
// themselves. A verdict flowtrace never produces cannot be expressed.
func verdicts(in []flowpb.Verdict) ([]flowtracev1.Verdict, bool) {
	var out []flowtracev1.Verdict
	for _, v := range in {
		switch v {
		case flowpb.Verdict_DROPPED:
			out = append(out, flowtracev1.Verdict_VERDICT_DROPPED, flowtracev1.Verdict_VERDICT_MTU_EXCEEDED)
		case flowpb.Verdict_FORWARDED:
			out = append(out, flowtracev1.Verdict_VERDICT_FORWARDED)
		case flowpb.Verdict_TRANSLATED:
			out = append(out, flowtracev1.Verdict_VERDICT_TRANSLATED)
		default:
			return nil, false
		}
	}
	return out, true
}

// names passes "namespace/name-prefix", "namespace/" and bare prefixes,
// which Hubble and flowtrace read the same way.
func names(in []string) ([]string, bool) {
	for _, v := range in {
		ns, name, found := strings.Cut(v, "/")
		if v == "" || strings.TrimSpace(v) != v || (found && (ns == "" || strings.Contains(name, "/"))) {
			return nil, false
		}
	}
	return append([]string(nil), in...), true
}

func ips(in []string) ([]string, bool) {
	for _, v := range in {
		if _, err := netip.ParseAddr(v); err == nil {
			continue
		}
		if _, err := netip.ParsePrefix(v); err == nil {
			continue
		}
		return nil, false
	}
	return append([]string(nil), in...), true
}

func portList(in []string) ([]uint32, bool) {
	out := make([]uint32, 0, len(in))
	for _, v := range in {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return nil, false
		}
		out = append(out, uint32(n))
	}
	return out, true
}

func protocols(in []string) ([]string, bool) {
	var out []string
	for _, v := range in {
		switch p := strings.ToLower(v); p {
		case "tcp", "udp", "sctp", "icmpv4", "icmpv6":
			out = append(out, p)
		case "icmp":
			out = append(out, "icmpv4", "icmpv6")
		default:
			return nil, false
		}
	}
	return out, true
}
