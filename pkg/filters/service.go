package filters

import (
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type serviceGetter func(*flowtracev1.Flow) *flowtracev1.Service

// buildService matches the Service the enricher attached to one end of the
// flow, with the same "namespace/name-prefix" syntax as pods.
func buildService(values []string, get serviceGetter) (predicate, error) {
	return buildNamePatterns("service", values, func(f *flowtracev1.Flow) (string, string) {
		s := get(f)
		return s.GetNamespace(), s.GetName()
	})
}
