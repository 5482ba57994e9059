package filters

import (
	"fmt"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Matcher decides whether a flow passes a request's filters.
type Matcher interface {
	Match(f *flowtracev1.Flow) bool
}

// predicate is one compiled field of a filter.
type predicate func(f *flowtracev1.Flow) bool

// filter is one compiled FlowFilter: all predicates must hold.
type filter []predicate

func (fl filter) match(f *flowtracev1.Flow) bool {
	for _, p := range fl {
		if !p(f) {
			return false
		}
	}
	return true
}

type matcher struct {
	allow []filter
	deny  []filter
}

// Match implements Matcher.
func (m *matcher) Match(f *flowtracev1.Flow) bool {
	if f == nil {
		return false
	}
	if len(m.allow) > 0 && !anyMatch(m.allow, f) {
		return false
	}
	return !anyMatch(m.deny, f)
}

func anyMatch(fs []filter, f *flowtracev1.Flow) bool {
	for _, fl := range fs {
		if fl.match(f) {
			return true
		}
	}
	return false
}

// MatchAll returns a Matcher that passes every non-nil flow.
func MatchAll() Matcher { return &matcher{} }

// Build compiles the allow and deny lists. Errors name the list, the index,
// the field and the bad value, e.g.
// `allowlist[0].source_ip: "10.0.0.300" is not an IP address or CIDR`.
func Build(allow, deny []*flowtracev1.FlowFilter) (Matcher, error) {
	m := &matcher{}
	var err error
	if m.allow, err = buildList("allowlist", allow); err != nil {
		return nil, err
	}
	if m.deny, err = buildList("denylist", deny); err != nil {
		return nil, err
	}
	return m, nil
}

func buildList(name string, in []*flowtracev1.FlowFilter) ([]filter, error) {
	out := make([]filter, 0, len(in))
	for i, ff := range in {
		fl, err := buildFilter(ff)
		if err != nil {
			return nil, fmt.Errorf("%s[%d].%w", name, i, err)
		}
		// An all-empty filter matches everything, which is what an empty
		// FlowFilter means in Hubble too; keep it so "allow everything" and
		// "deny everything" stay expressible.
		out = append(out, fl)
	}
	return out, nil
}

// fieldBuilder compiles one repeated field; nil predicate means "field empty".
type fieldBuilder struct {
	name  string
	build func(ff *flowtracev1.FlowFilter) (predicate, error)
}

var fieldBuilders = [...]fieldBuilder{
	{"verdict", buildVerdict},
	{"drop_reason", buildDropReason},
	{"drop_cause", buildDropCause},
	{"source_pod", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildPod(ff.GetSourcePod(), (*flowtracev1.Flow).GetSource)
	}},
	{"destination_pod", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildPod(ff.GetDestinationPod(), (*flowtracev1.Flow).GetDestination)
	}},
	{"source_ip", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildIP(ff.GetSourceIp(), (*flowtracev1.IP).GetSource)
	}},
	{"destination_ip", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildIP(ff.GetDestinationIp(), (*flowtracev1.IP).GetDestination)
	}},
	{"source_port", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildPort(ff.GetSourcePort(), true)
	}},
	{"destination_port", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildPort(ff.GetDestinationPort(), false)
	}},
	{"protocol", buildProtocol},
	{"interface", buildInterface},
	{"source_namespace", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildNamespace(ff.GetSourceNamespace(), (*flowtracev1.Flow).GetSource)
	}},
	{"destination_namespace", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildNamespace(ff.GetDestinationNamespace(), (*flowtracev1.Flow).GetDestination)
	}},
	{"source_service", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildService(ff.GetSourceService(), (*flowtracev1.Flow).GetSourceService)
	}},
	{"destination_service", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildService(ff.GetDestinationService(), (*flowtracev1.Flow).GetDestinationService)
	}},
	{"uuid", buildUUID},
	{"source_label", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildLabels(ff.GetSourceLabel(), (*flowtracev1.Flow).GetSource)
	}},
	{"destination_label", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildLabels(ff.GetDestinationLabel(), (*flowtracev1.Flow).GetDestination)
	}},
	{"source_workload", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildWorkload(ff.GetSourceWorkload(), (*flowtracev1.Flow).GetSource)
	}},
	{"destination_workload", func(ff *flowtracev1.FlowFilter) (predicate, error) {
		return buildWorkload(ff.GetDestinationWorkload(), (*flowtracev1.Flow).GetDestination)
	}},
	{"node_name", buildNode},
	{"tcp_flags", buildTCPFlags},
	{"traffic_direction", buildTrafficDirection},
	{"observation_point", buildObservationPoint},
	{"ip_version", buildIPVersion},
	{"reply", buildReply},
}

func buildFilter(ff *flowtracev1.FlowFilter) (filter, error) {
	var fl filter
	if ff == nil {
		return fl, nil
	}
	for _, fb := range fieldBuilders {
		p, err := fb.build(ff)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fb.name, err)
		}
		if p != nil {
			fl = append(fl, p)
		}
	}
	return fl, nil
}
