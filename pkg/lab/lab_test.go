//go:build linux

package lab

import (
	"encoding/json"
	"testing"
)

func TestValidatePrefix(t *testing.T) {
	for p, ok := range map[string]bool{"ft": true, "a": true, "lab12": true, "lab123": false, "": false, "Ft": false, "1ab": false, "f-t": false} {
		if err := ValidatePrefix(p); (err == nil) != ok {
			t.Errorf("ValidatePrefix(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

func TestDescribeNames(t *testing.T) {
	l := describe(Config{Prefix: "abcde"})
	if l.NodeNetns != "abcde-node" || l.Bridge != "abcdebr0" {
		t.Errorf("node names: %s %s", l.NodeNetns, l.Bridge)
	}
	for _, p := range l.Pods {
		if len(p.HostVeth) > 15 {
			t.Errorf("host veth %q longer than IFNAMSIZ-1", p.HostVeth)
		}
	}
	if p, ok := l.Pod("db"); !ok || p.Name != "db-0" || p.HostVeth != "abcdev-db" || p.IPv6.String() != "fd00:10:244::30" {
		t.Errorf("db pod = %+v", p)
	}
	if _, ok := l.Pod("frontend-6c9f7d"); !ok {
		t.Error("pod lookup by pod name failed")
	}
}

func TestIdentityShape(t *testing.T) {
	b, err := json.Marshal(describe(Config{}).identity())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"node": "lab-node",
		"pods": []any{
			map[string]any{"namespace": "shop", "name": "frontend-6c9f7d", "labels": map[string]any{"app": "frontend"},
				"workload": map[string]any{"kind": "Deployment", "name": "frontend"}, "node": "lab-node",
				"ips": []any{"10.244.0.10", "fd00:10:244::10"}},
			map[string]any{"namespace": "shop", "name": "backend-5d8b9c", "labels": map[string]any{"app": "backend"},
				"workload": map[string]any{"kind": "Deployment", "name": "backend"}, "node": "lab-node",
				"ips": []any{"10.244.0.20", "fd00:10:244::20"}},
			map[string]any{"namespace": "shop", "name": "db-0", "labels": map[string]any{"app": "db"},
				"workload": map[string]any{"kind": "StatefulSet", "name": "db"}, "node": "lab-node",
				"ips": []any{"10.244.0.30", "fd00:10:244::30"}},
		},
		"services": []any{},
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("identity file\n got %s\nwant %s", gb, wb)
	}
}
