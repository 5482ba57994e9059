// Package hubblefilter applies Hubble FlowFilters to Hubble flows with
// Hubble's semantics: a flow passes when it matches any whitelist filter
// (or there is none) and no blacklist filter; a filter matches when every
// field it sets matches; a field matches when any of its values does.
//
// Cilium's own filter package is not imported: it links Cilium's identity
// cache and Kubernetes client, which do not build against the Kubernetes
// libraries flowtrace itself uses. The fields a flowtrace flow can never
// carry (DNS names, HTTP, identities other than 0, ...) are accepted and
// match nothing, as they would on a Hubble server that saw no such flow;
// CEL expressions are rejected.
package hubblefilter

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Func is one compiled condition.
type Func func(*flowpb.Flow) bool

// Filter is one compiled FlowFilter: all conditions must hold.
type Filter []Func

func (f Filter) match(fl *flowpb.Flow) bool {
	for _, fn := range f {
		if !fn(fl) {
			return false
		}
	}
	return true
}

// Matcher is a compiled whitelist and blacklist.
type Matcher struct{ allow, deny []Filter }

// Match reports whether fl passes.
func (m *Matcher) Match(fl *flowpb.Flow) bool {
	if len(m.allow) > 0 && !slices.ContainsFunc(m.allow, func(f Filter) bool { return f.match(fl) }) {
		return false
	}
	return !slices.ContainsFunc(m.deny, func(f Filter) bool { return f.match(fl) })
}

// Build compiles a whitelist and a blacklist.
func Build(whitelist, blacklist []*flowpb.FlowFilter) (*Matcher, error) {
	m := &Matcher{}
	for i, ff := range whitelist {
		f, err := build(ff)
		if err != nil {
			return nil, fmt.Errorf("whitelist[%d]: %w", i, err)
		}
		m.allow = append(m.allow, f)
	}
	for i, ff := range blacklist {
		f, err := build(ff)
		if err != nil {
			return nil, fmt.Errorf("blacklist[%d]: %w", i, err)
		}
		m.deny = append(m.deny, f)
	}
	return m, nil
}

func never(*flowpb.Flow) bool { return false }

func build(ff *flowpb.FlowFilter) (Filter, error) {
	var out Filter
	var err error
	add := func(fn Func, e error) {
		if e != nil && err == nil {
			err = e
		}
		if fn != nil {
			out = append(out, fn)
		}
	}
	ff.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		name := string(fd.Name())
		switch name {
		case "uuid":
			add(strIn(ff.GetUuid(), (*flowpb.Flow).GetUuid), nil)
		case "source_ip":
			add(ipIn(name, ff.GetSourceIp(), func(f *flowpb.Flow) string { return f.GetIP().GetSource() }))
		case "destination_ip":
			add(ipIn(name, ff.GetDestinationIp(), func(f *flowpb.Flow) string { return f.GetIP().GetDestination() }))
		case "source_ip_xlated":
			add(ipIn(name, ff.GetSourceIpXlated(), func(f *flowpb.Flow) string { return f.GetIP().GetSourceXlated() }))
		case "source_pod":
			add(namespaced(name, ff.GetSourcePod(), func(f *flowpb.Flow) (string, string) {
				return f.GetSource().GetNamespace(), f.GetSource().GetPodName()
			}))
		case "destination_pod":
			add(namespaced(name, ff.GetDestinationPod(), func(f *flowpb.Flow) (string, string) {
				return f.GetDestination().GetNamespace(), f.GetDestination().GetPodName()
			}))
		case "source_service":
			add(namespaced(name, ff.GetSourceService(), func(f *flowpb.Flow) (string, string) {
				return f.GetSourceService().GetNamespace(), f.GetSourceService().GetName()
			}))
		case "destination_service":
			add(namespaced(name, ff.GetDestinationService(), func(f *flowpb.Flow) (string, string) {
				return f.GetDestinationService().GetNamespace(), f.GetDestinationService().GetName()
			}))
		case "source_label":
			add(labels(name, ff.GetSourceLabel(), func(f *flowpb.Flow) []string { return f.GetSource().GetLabels() }))
		case "destination_label":
			add(labels(name, ff.GetDestinationLabel(), func(f *flowpb.Flow) []string { return f.GetDestination().GetLabels() }))
		case "source_workload":
			add(workloads(ff.GetSourceWorkload(), (*flowpb.Flow).GetSource), nil)
		case "destination_workload":
			add(workloads(ff.GetDestinationWorkload(), (*flowpb.Flow).GetDestination), nil)
		case "source_identity":
			add(identities(ff.GetSourceIdentity(), (*flowpb.Flow).GetSource), nil)
		case "destination_identity":
			add(identities(ff.GetDestinationIdentity(), (*flowpb.Flow).GetDestination), nil)
		case "traffic_direction":
			dirs := ff.GetTrafficDirection()
			add(func(f *flowpb.Flow) bool { return slices.Contains(dirs, f.GetTrafficDirection()) }, nil)
		case "verdict":
			vs := ff.GetVerdict()
			add(func(f *flowpb.Flow) bool { return slices.Contains(vs, f.GetVerdict()) }, nil)
		case "drop_reason_desc":
			rs := ff.GetDropReasonDesc()
			add(func(f *flowpb.Flow) bool {
				return f.GetVerdict() == flowpb.Verdict_DROPPED && slices.Contains(rs, f.GetDropReasonDesc())
			}, nil)
		case "interface":
			ifs := ff.GetInterface()
			add(func(f *flowpb.Flow) bool {
				i := f.GetInterface()
				return i != nil && slices.ContainsFunc(ifs, func(w *flowpb.NetworkInterface) bool {
					return (w.GetIndex() == 0 || w.GetIndex() == i.GetIndex()) && (w.GetName() == "" || w.GetName() == i.GetName())
				})
			}, nil)
		case "event_type":
			ets := ff.GetEventType()
			add(func(f *flowpb.Flow) bool {
				et := f.GetEventType()
				return et != nil && slices.ContainsFunc(ets, func(w *flowpb.EventTypeFilter) bool {
					return w.GetType() == et.GetType() && (!w.GetMatchSubType() || w.GetSubType() == et.GetSubType())
				})
			}, nil)
		case "protocol":
			add(protocols(ff.GetProtocol()))
		case "source_port":
			add(ports(name, ff.GetSourcePort(), true))
		case "destination_port":
			add(ports(name, ff.GetDestinationPort(), false))
		case "reply":
			rs := ff.GetReply()
			add(func(f *flowpb.Flow) bool {
				// As Hubble: a drop of unknown direction counts as not a reply.
				if f.GetIsReply() == nil && f.GetVerdict() != flowpb.Verdict_DROPPED {
					return false
				}
				return slices.Contains(rs, f.GetIsReply().GetValue())
			}, nil)
		case "node_name":
			add(nodeNames(ff.GetNodeName()))
		case "ip_version":
			vs := ff.GetIpVersion()
			add(func(f *flowpb.Flow) bool { return f.GetIP() != nil && slices.Contains(vs, f.GetIP().GetIpVersion()) }, nil)
		case "tcp_flags":
			add(tcpFlags(ff.GetTcpFlags()), nil)
		case "experimental":
			if len(ff.GetExperimental().GetCelExpression()) > 0 {
				add(nil, errors.New("experimental.cel_expression: CEL filters are not supported by flowtrace-hubble"))
			}
		default:
			// DNS, HTTP, FQDN, cluster names, node labels, trace IDs,
			// encryption: no flowtrace flow carries them, so nothing matches.
			add(never, nil)
		}
		return err == nil
	})
	return out, err
}

func strIn(vals []string, get func(*flowpb.Flow) string) Func {
	return func(f *flowpb.Flow) bool { return slices.Contains(vals, get(f)) }
}

func ipIn(field string, vals []string, get func(*flowpb.Flow) string) (Func, error) {
	var addrs []netip.Addr
	var nets []netip.Prefix
	for _, v := range vals {
		if strings.Contains(v, "/") {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return nil, fmt.Errorf("%s: invalid CIDR %q: %w", field, v, err)
			}
			nets = append(nets, p)
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("%s: invalid IP address %q: %w", field, v, err)
		}
		addrs = append(addrs, a)
	}
	return func(f *flowpb.Flow) bool {
		a, err := netip.ParseAddr(get(f))
		if err != nil {
			return false
		}
		return slices.Contains(addrs, a) || slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(a) })
	}, nil
}

// namespaced matches "namespace/name-prefix", "namespace/" and, without a
// slash, a name prefix in any namespace — Hubble's pod and service syntax.
func namespaced(field string, vals []string, get func(*flowpb.Flow) (string, string)) (Func, error) {
	type pat struct{ ns, prefix string }
	var pats []pat
	for _, v := range vals {
		if v == "" {
			return nil, fmt.Errorf("%s: name must not be empty", field)
		}
		ns, name, found := strings.Cut(v, "/")
		if !found {
			ns, name = "", v
		}
		pats = append(pats, pat{ns, name})
	}
	return func(f *flowpb.Flow) bool {
		ns, name := get(f)
		if ns == "" && name == "" {
			return false
		}
		return slices.ContainsFunc(pats, func(p pat) bool {
			return (p.prefix == "" || strings.HasPrefix(name, p.prefix)) && (p.ns == "" || p.ns == ns)
		})
	}, nil
}

// labelReq is one requirement of a label selector: key, key=value,
// key!=value or !key. A key without a source ("app") matches any source.
type labelReq struct {
	key, value   string
	op           string // "exists", "!exists", "=", "!="
	sourcePrefix string // "k8s:" etc., "" for any
}

func parseKey(k string) (source, key string) {
	if s, rest, ok := strings.Cut(k, ":"); ok && !strings.Contains(s, "=") {
		if s == "any" {
			return "", rest
		}
		return s + ":", rest
	}
	return "", k
}

func parseSelector(sel string) ([]labelReq, error) {
	var reqs []labelReq
	for _, part := range strings.Split(sel, ",") {
		part = strings.TrimSpace(part)
		var r labelReq
		switch {
		case part == "":
			return nil, fmt.Errorf("empty requirement in %q", sel)
		case strings.HasPrefix(part, "!"):
			r.op, r.key = "!exists", strings.TrimSpace(part[1:])
		case strings.Contains(part, "!="):
			k, v, _ := strings.Cut(part, "!=")
			r.op, r.key, r.value = "!=", strings.TrimSpace(k), strings.TrimSpace(v)
		case strings.Contains(part, "="):
			k, v, _ := strings.Cut(strings.Replace(part, "==", "=", 1), "=")
			r.op, r.key, r.value = "=", strings.TrimSpace(k), strings.TrimSpace(v)
		default:
			if strings.ContainsAny(part, " ()") {
				return nil, fmt.Errorf("unsupported label selector %q (use key, !key, key=value or key!=value)", sel)
			}
			r.op, r.key = "exists", part
		}
		r.sourcePrefix, r.key = parseKey(r.key)
		if r.key == "" {
			return nil, fmt.Errorf("empty key in %q", sel)
		}
		reqs = append(reqs, r)
	}
	return reqs, nil
}

func labels(field string, sels []string, get func(*flowpb.Flow) []string) (Func, error) {
	var all [][]labelReq
	for _, s := range sels {
		r, err := parseSelector(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		all = append(all, r)
	}
	return func(f *flowpb.Flow) bool {
		ls := get(f)
		return slices.ContainsFunc(all, func(reqs []labelReq) bool {
			for _, r := range reqs {
				found, value := false, ""
				for _, l := range ls {
					src, kv := parseKey(l)
					k, v, _ := strings.Cut(kv, "=")
					if k == r.key && (r.sourcePrefix == "" || r.sourcePrefix == src) {
						found, value = true, v
						break
					}
				}
				ok := false
				switch r.op {
				case "exists":
					ok = found
				case "!exists":
					ok = !found
				case "=":
					ok = found && value == r.value
				case "!=":
					ok = !found || value != r.value
				}
				if !ok {
					return false
				}
			}
			return true
		})
	}, nil
}

func workloads(ws []*flowpb.Workload, get func(*flowpb.Flow) *flowpb.Endpoint) Func {
	return func(f *flowpb.Flow) bool {
		return slices.ContainsFunc(get(f).GetWorkloads(), func(w *flowpb.Workload) bool {
			return slices.ContainsFunc(ws, func(want *flowpb.Workload) bool {
				return (want.GetName() == "" || want.GetName() == w.GetName()) && (want.GetKind() == "" || want.GetKind() == w.GetKind())
			})
		})
	}
}

func identities(ids []uint32, get func(*flowpb.Flow) *flowpb.Endpoint) Func {
	return func(f *flowpb.Flow) bool { return get(f) != nil && slices.Contains(ids, get(f).GetIdentity()) }
}

func protocols(vals []string) (Func, error) {
	var want []string
	for _, v := range vals {
		p := strings.ToLower(v)
		switch p {
		case "icmp", "icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp", "dns", "http", "kafka":
			want = append(want, p)
		default:
			return nil, fmt.Errorf("protocol: unknown protocol %q", v)
		}
	}
	return func(f *flowpb.Flow) bool {
		l4 := f.GetL4()
		return slices.ContainsFunc(want, func(p string) bool {
			switch p {
			case "icmp":
				return l4.GetICMPv4() != nil || l4.GetICMPv6() != nil
			case "icmpv4":
				return l4.GetICMPv4() != nil
			case "icmpv6":
				return l4.GetICMPv6() != nil
			case "tcp":
				return l4.GetTCP() != nil
			case "udp":
				return l4.GetUDP() != nil
			case "sctp":
				return l4.GetSCTP() != nil
			}
			return false // L7 and VRRP/IGMP: flowtrace has no such flows
		})
	}, nil
}

func ports(field string, vals []string, source bool) (Func, error) {
	var want []uint32
	for _, v := range vals {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%s: invalid port %q: %w", field, v, err)
		}
		want = append(want, uint32(n))
	}
	return func(f *flowpb.Flow) bool {
		var s, d uint32
		switch l4 := f.GetL4(); {
		case l4.GetTCP() != nil:
			s, d = l4.GetTCP().GetSourcePort(), l4.GetTCP().GetDestinationPort()
		case l4.GetUDP() != nil:
			s, d = l4.GetUDP().GetSourcePort(), l4.GetUDP().GetDestinationPort()
		case l4.GetSCTP() != nil:
			s, d = l4.GetSCTP().GetSourcePort(), l4.GetSCTP().GetDestinationPort()
		default:
			return false
		}
		if source {
			return slices.Contains(want, s)
		}
		return slices.Contains(want, d)
	}, nil
}

// nodeNames matches Hubble's node patterns: "node", "cluster/node", with
// "*" matching within a name. Flows of a single cluster carry no cluster
// part, so a pattern's cluster part is matched against nothing.
func nodeNames(pats []string) (Func, error) {
	var res []*regexp.Regexp
	for _, p := range pats {
		if p == "" {
			return nil, errors.New("node_name: empty pattern")
		}
		if _, node, ok := strings.Cut(p, "/"); ok {
			p = node
		}
		q := regexp.QuoteMeta(p)
		q = strings.ReplaceAll(q, `\*`, `[^/]*`)
		re, err := regexp.Compile("^" + q + "$")
		if err != nil {
			return nil, fmt.Errorf("node_name: %q: %w", p, err)
		}
		res = append(res, re)
	}
	return func(f *flowpb.Flow) bool {
		n := f.GetNodeName()
		if _, node, ok := strings.Cut(n, "/"); ok {
			n = node
		}
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(n) })
	}, nil
}

// tcpFlags: a flow matches a flags value when it has every flag set there.
func tcpFlags(want []*flowpb.TCPFlags) Func {
	return func(f *flowpb.Flow) bool {
		got := f.GetL4().GetTCP().GetFlags()
		if got == nil {
			return false
		}
		return slices.ContainsFunc(want, func(w *flowpb.TCPFlags) bool {
			return !(w.FIN && !got.FIN || w.SYN && !got.SYN || w.RST && !got.RST || w.PSH && !got.PSH ||
				w.ACK && !got.ACK || w.URG && !got.URG || w.ECE && !got.ECE || w.CWR && !got.CWR || w.NS && !got.NS)
		})
	}
}
