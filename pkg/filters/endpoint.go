package filters

import (
	"fmt"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type endpointGetter func(*flowtracev1.Flow) *flowtracev1.Endpoint

type podPattern struct {
	namespace string // "" with anyNS
	anyNS     bool
	prefix    string
}

func (p podPattern) match(ep *flowtracev1.Endpoint) bool {
	if ep == nil {
		return false
	}
	if p.anyNS {
		return ep.GetPodName() != "" && strings.HasPrefix(ep.GetPodName(), p.prefix)
	}
	if ep.GetNamespace() != p.namespace {
		return false
	}
	// "namespace/" matches every endpoint of the namespace, pod name known or not.
	return p.prefix == "" || strings.HasPrefix(ep.GetPodName(), p.prefix)
}

func buildPod(values []string, get endpointGetter) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	pats := make([]podPattern, 0, len(values))
	for _, v := range values {
		if v == "" || strings.TrimSpace(v) != v {
			return nil, fmt.Errorf("%q is not a pod: want \"namespace/name\", \"namespace/\" or a pod-name prefix", v)
		}
		ns, name, found := strings.Cut(v, "/")
		switch {
		case !found:
			pats = append(pats, podPattern{anyNS: true, prefix: v})
		case ns == "" || strings.Contains(name, "/"):
			return nil, fmt.Errorf("%q is not a pod: want \"namespace/name\", \"namespace/\" or a pod-name prefix", v)
		default:
			pats = append(pats, podPattern{namespace: ns, prefix: name})
		}
	}
	return func(f *flowtracev1.Flow) bool {
		ep := get(f)
		for _, p := range pats {
			if p.match(ep) {
				return true
			}
		}
		return false
	}, nil
}

func buildNamespace(values []string, get endpointGetter) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	for _, v := range values {
		if v == "" || strings.ContainsAny(v, "/ \t") {
			return nil, fmt.Errorf("%q is not a namespace name", v)
		}
	}
	vals := append([]string(nil), values...)
	return func(f *flowtracev1.Flow) bool {
		ns := get(f).GetNamespace()
		if ns == "" {
			return false
		}
		for _, v := range vals {
			if v == ns {
				return true
			}
		}
		return false
	}, nil
}
