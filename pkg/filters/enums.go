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
