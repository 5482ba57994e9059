package filters

import (
	"fmt"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func buildVerdict(ff *flowtracev1.FlowFilter) (predicate, error) {
	return buildEnumMask(enumInts(ff.GetVerdict()), flowtracev1.Verdict_name, "verdict", false,
		func(f *flowtracev1.Flow) int32 { return int32(f.GetVerdict()) })
}

// buildDropCause matches flowtrace's explanation of a drop; UNSPECIFIED
// is a valid value: the drops flowtrace has no explanation for.
func buildDropCause(ff *flowtracev1.FlowFilter) (predicate, error) {
	return buildEnumMask(enumInts(ff.GetDropCause()), flowtracev1.DropCause_name, "drop cause", true,
		func(f *flowtracev1.Flow) int32 { return int32(f.GetDropCause()) })
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
