package filters

import (
	"fmt"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func buildVerdict(ff *flowtracev1.FlowFilter) (predicate, error) {
	vs := ff.GetVerdict()
	if len(vs) == 0 {
		return nil, nil
	}
	// Verdicts are a handful of small numbers: a bitmask avoids a loop per flow.
	var mask uint64
	for _, v := range vs {
		if _, ok := flowtracev1.Verdict_name[int32(v)]; !ok || v == flowtracev1.Verdict_VERDICT_UNSPECIFIED || v >= 64 {
			return nil, fmt.Errorf("%d is not a known verdict", int32(v))
		}
		mask |= 1 << uint(v)
	}
	return func(f *flowtracev1.Flow) bool {
		v := f.GetVerdict()
		return v >= 0 && v < 64 && mask&(1<<uint(v)) != 0
	}, nil
}

// buildDropCause matches flowtrace's explanation of a drop; UNSPECIFIED
// is a valid value: the drops flowtrace has no explanation for.
func buildDropCause(ff *flowtracev1.FlowFilter) (predicate, error) {
	cs := ff.GetDropCause()
	if len(cs) == 0 {
		return nil, nil
	}
	var mask uint64
	for _, c := range cs {
		if _, ok := flowtracev1.DropCause_name[int32(c)]; !ok || c >= 64 {
			return nil, fmt.Errorf("%d is not a known drop cause", int32(c))
		}
		mask |= 1 << uint(c)
	}
	return func(f *flowtracev1.Flow) bool {
		c := f.GetDropCause()
		return c >= 0 && c < 64 && mask&(1<<uint(c)) != 0
	}, nil
}

func buildDropReason(ff *flowtracev1.FlowFilter) (predicate, error) {
	rs := ff.GetDropReason()
	if len(rs) == 0 {
		return nil, nil
	}
	set := make(map[flowtracev1.DropReason]struct{}, len(rs))
	for _, r := range rs {
		if _, ok := flowtracev1.DropReason_name[int32(r)]; !ok || r == flowtracev1.DropReason_DROP_REASON_UNSPECIFIED {
			return nil, fmt.Errorf("%d is not a known drop reason", int32(r))
		}
		set[r] = struct{}{}
	}
	return func(f *flowtracev1.Flow) bool {
		_, ok := set[f.GetDropReason()]
		return ok
	}, nil
}
