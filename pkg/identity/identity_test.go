package identity

import (
	"strings"
	"testing"
)

// A cached label list answers like a computed one, and a Pod built without
// CacheLabels still computes its list.
func TestLabelListCached(t *testing.T) {
	p := &Pod{Labels: map[string]string{"tier": "web", "app": "frontend"}}
	want := "app=frontend,tier=web"
	if got := strings.Join(p.LabelList(), ","); got != want {
		t.Fatalf("uncached: %q", got)
	}
	p.CacheLabels()
	first, second := p.LabelList(), p.LabelList()
	if got := strings.Join(first, ","); got != want {
		t.Fatalf("cached: %q", got)
	}
	if &first[0] != &second[0] {
		t.Error("LabelList recomputed after CacheLabels")
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = p.LabelList() }); allocs != 0 {
		t.Errorf("cached LabelList allocates %.0f times", allocs)
	}
	empty := (&Pod{}).CacheLabels()
	if l := empty.LabelList(); len(l) != 0 {
		t.Errorf("no labels: %v", l)
	}
}
