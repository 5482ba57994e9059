package filters

import (
	"fmt"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Label selectors use the Kubernetes syntax on Endpoint.labels ("key=value"):
//
//	app=web  app==web  tier!=db  app in (a,b)  app notin (a,b)  canary  !canary
//
// Requirements separated by commas (outside parentheses) must all hold. As
// in Kubernetes, != and notin also match an endpoint without the key.

type labelOp uint8

const (
	opExists labelOp = iota
	opNotExists
	opIn // = and == are "in" a one-value set
	opNotIn
)

type requirement struct {
	key    string
	op     labelOp
	values []string
}

// selector is one compiled label selector: every requirement must hold.
type selector []requirement

// CheckLabelSelector reports whether s is a valid selector, so the CLI can
// report mistakes before dialing.
func CheckLabelSelector(s string) error {
	_, err := parseLabelSelector(s)
	return err
}

// parseLabelSelector compiles a Kubernetes-style label selector.
func parseLabelSelector(s string) (selector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%q is not a label selector: it is empty", s)
	}
	parts, err := splitTopLevel(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a label selector: %w", s, err)
	}
	sel := make(selector, 0, len(parts))
	for _, p := range parts {
		r, err := parseRequirement(strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("%q is not a label selector: %w", s, err)
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// splitTopLevel splits on commas that are not inside parentheses.
func splitTopLevel(s string) ([]string, error) {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
			if depth > 1 {
				return nil, fmt.Errorf("nested parentheses")
			}
		case ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced parentheses")
			}
		case ',':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced parentheses")
	}
	return append(parts, s[start:]), nil
}

func parseRequirement(r string) (requirement, error) {
	if r == "" {
		return requirement{}, fmt.Errorf("empty requirement")
	}
	if rest, ok := strings.CutPrefix(r, "!"); ok {
		key := strings.TrimSpace(rest)
		if err := checkLabelKey(key); err != nil {
			return requirement{}, err
		}
		return requirement{key: key, op: opNotExists}, nil
	}
	if i := strings.IndexByte(r, '('); i >= 0 {
		if !strings.HasSuffix(r, ")") {
			return requirement{}, fmt.Errorf("%q: want \"key in (v1,v2)\"", r)
		}
		head := strings.Fields(r[:i])
		if len(head) != 2 || (head[1] != "in" && head[1] != "notin") {
			return requirement{}, fmt.Errorf("%q: want \"key in (v1,v2)\" or \"key notin (v1,v2)\"", r)
		}
		if err := checkLabelKey(head[0]); err != nil {
			return requirement{}, err
		}
		var vals []string
		for _, v := range strings.Split(r[i+1:len(r)-1], ",") {
			v = strings.TrimSpace(v)
			if err := checkLabelValue(v); err != nil {
				return requirement{}, err
			}
			vals = append(vals, v)
		}
		op := opIn
		if head[1] == "notin" {
			op = opNotIn
		}
		return requirement{key: head[0], op: op, values: vals}, nil
	}
	for _, sep := range []struct {
		s  string
		op labelOp
	}{{"!=", opNotIn}, {"==", opIn}, {"=", opIn}} {
		if k, v, ok := strings.Cut(r, sep.s); ok {
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if err := checkLabelKey(k); err != nil {
				return requirement{}, err
			}
			if err := checkLabelValue(v); err != nil {
				return requirement{}, err
			}
			return requirement{key: k, op: sep.op, values: []string{v}}, nil
		}
	}
	if err := checkLabelKey(r); err != nil {
		return requirement{}, err
	}
	return requirement{key: r, op: opExists}, nil
}

func checkLabelKey(k string) error {
	if k == "" || len(k) > 317 {
		return fmt.Errorf("%q is not a label key", k)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != '/' {
			return fmt.Errorf("%q is not a label key", k)
		}
	}
	return nil
}

func checkLabelValue(v string) error {
	if len(v) > 63 {
		return fmt.Errorf("%q is not a label value (at most 63 characters)", v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("%q is not a label value", v)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// lookup finds key in "k=v" labels without allocating.
func lookup(labels []string, key string) (string, bool) {
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}

func (s selector) match(labels []string) bool {
	for _, r := range s {
		v, ok := lookup(labels, r.key)
		switch r.op {
		case opExists:
			if !ok {
				return false
			}
		case opNotExists:
			if ok {
				return false
			}
		case opIn:
			if !ok || !containsString(r.values, v) {
				return false
			}
		case opNotIn:
			if ok && containsString(r.values, v) {
				return false
			}
		}
	}
	return true
}

func containsString(vals []string, v string) bool {
	for _, x := range vals {
		if x == v {
			return true
		}
	}
	return false
}

func buildLabels(values []string, get endpointGetter) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	sels := make([]selector, 0, len(values))
	for _, v := range values {
		s, err := parseLabelSelector(v)
		if err != nil {
			return nil, err
		}
		sels = append(sels, s)
	}
	return func(f *flowtracev1.Flow) bool {
		ep := get(f)
		if ep == nil {
			return false
		}
		labels := ep.GetLabels()
		for _, s := range sels {
			if s.match(labels) {
				return true
			}
		}
		return false
	}, nil
}
