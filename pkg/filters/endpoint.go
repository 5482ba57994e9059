package filters

import (
	"fmt"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type endpointGetter func(*flowtracev1.Flow) *flowtracev1.Endpoint

// nameGetter returns the namespace and name of one end of a flow (a pod or a
// Service); empty strings when unknown. It must not allocate.
type nameGetter func(*flowtracev1.Flow) (namespace, name string)

// namePattern is one compiled "namespace/name-prefix" value. Pods and
// Services share the syntax, so they share the parser and the matcher.
type namePattern struct {
	namespace string // "" with anyNS
	anyNS     bool
	prefix    string
}

func (p namePattern) match(ns, name string) bool {
	if p.anyNS {
		return name != "" && strings.HasPrefix(name, p.prefix)
	}
	if ns == "" || ns != p.namespace {
		return false
	}
	// "namespace/" matches every object of the namespace, name known or not.
	return p.prefix == "" || strings.HasPrefix(name, p.prefix)
}

// parseNamePatterns parses "namespace/name-prefix", "namespace/" and bare
// name prefixes; kind ("pod", "service") names the object in errors.
func parseNamePatterns(kind string, values []string) ([]namePattern, error) {
	pats := make([]namePattern, 0, len(values))
	for _, v := range values {
		bad := fmt.Errorf("%q is not a %s: want \"namespace/name\", \"namespace/\" or a %s-name prefix", v, kind, kind)
		if v == "" || strings.TrimSpace(v) != v {
			return nil, bad
		}
		ns, name, found := strings.Cut(v, "/")
		switch {
		case !found:
			pats = append(pats, namePattern{anyNS: true, prefix: v})
		case ns == "" || strings.Contains(name, "/"):
			return nil, bad
		default:
			pats = append(pats, namePattern{namespace: ns, prefix: name})
		}
	}
	return pats, nil
}

func buildNamePatterns(kind string, values []string, get nameGetter) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	pats, err := parseNamePatterns(kind, values)
	if err != nil {
		return nil, err
	}
	return func(f *flowtracev1.Flow) bool {
		ns, name := get(f)
		for _, p := range pats {
			if p.match(ns, name) {
				return true
			}
		}
		return false
	}, nil
}

func buildPod(values []string, get endpointGetter) (predicate, error) {
	return buildNamePatterns("pod", values, func(f *flowtracev1.Flow) (string, string) {
		ep := get(f)
		return ep.GetNamespace(), ep.GetPodName()
	})
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
