//go:build linux

package lab

import (
	"encoding/json"
	"net/netip"
	"strings"
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

func TestDescribeExtended(t *testing.T) {
	base := describe(Config{Prefix: "abcde"})
	if base.Extended || len(base.Nodes) != 1 || len(base.Pods) != 3 || len(base.Services) != 0 || base.OverlayMTU != 0 {
		t.Fatalf("v0 lab changed: %+v", base)
	}
	l := describe(Config{Prefix: "abcde", Extended: true})
	if len(l.Nodes) != 2 || l.Nodes[1].Name != Node2Name || l.Nodes[1].Netns != "abcde-node2" {
		t.Fatalf("nodes = %+v", l.Nodes)
	}
	// The v0 part is untouched: same pods, same order, same addresses.
	for i, p := range base.Pods {
		if q := l.Pods[i]; q.Name != p.Name || q.IPv4 != p.IPv4 || q.IPv6 != p.IPv6 || q.HostVeth != p.HostVeth {
			t.Errorf("pod %d: %+v, v0 %+v", i, q, p)
		}
	}
	names := map[string]map[string]bool{} // netns -> interface names
	add := func(ns, dev string) {
		if len(dev) > 15 {
			t.Errorf("interface %q longer than IFNAMSIZ-1", dev)
		}
		if names[ns] == nil {
			names[ns] = map[string]bool{}
		}
		if names[ns][dev] {
			t.Errorf("interface %q twice in %s", dev, ns)
		}
		names[ns][dev] = true
	}
	for _, n := range l.Nodes {
		for _, dev := range []string{n.Bridge, n.Underlay, n.Overlay, n.ServiceDev} {
			add(n.Netns, dev)
		}
	}
	for _, p := range l.Pods {
		add(p.NodeNetns, p.HostVeth)
		n, ok := l.NodeByName(p.Node)
		if !ok || n.Netns != p.NodeNetns || !n.PodCIDRv4.Contains(p.IPv4) || !n.PodCIDRv6.Contains(p.IPv6) {
			t.Errorf("pod %s not in its node's pod CIDRs: %+v", p.Name, p)
		}
	}
	api, ok := l.Pod("api")
	if !ok || api.Node != Node2Name || api.IPv4.String() != "10.244.1.10" || api.IPv6.String() != "fd00:10:244:1::10" {
		t.Errorf("api pod = %+v", api)
	}
	if be2, ok := l.Pod("backend-5d8b9c-2"); !ok || be2.Labels["app"] != "backend" || be2.workload != "backend" {
		t.Errorf("second backend = %+v", be2)
	}
	web, ok := l.Service("shop/web")
	if !ok || len(web.Endpoints) != 2 || web.NodePort != ServiceNodePort {
		t.Errorf("web = %+v", web)
	}
	for _, name := range web.Endpoints {
		if _, ok := l.Pod(name); !ok {
			t.Errorf("web endpoint %s is no pod", name)
		}
	}
	if v, ok := web.VIP(netip.MustParseAddr("::1")); !ok || v.String() != "fd00:10:96::10" {
		t.Errorf("web IPv6 VIP = %v", v)
	}
	// The MTU scenario: a DF 1400-byte ping fits the pods and the bridge
	// but not the overlay, and the overlay is sized for the underlay.
	if !(l.PodMTU >= 1400+48 && l.OverlayMTU < 1400+28 && l.OverlayMTU == l.UnderlayMTU-50 && l.OverlayMTU >= 1280) {
		t.Errorf("MTUs pod %d overlay %d underlay %d", l.PodMTU, l.OverlayMTU, l.UnderlayMTU)
	}
}

func TestExtendedIdentity(t *testing.T) {
	b, err := json.Marshal(describe(Config{Extended: true}).identity())
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Pods []struct {
			Name, Node string
		}
		Services []map[string]any
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	nodes := map[string]string{}
	for _, p := range got.Pods {
		nodes[p.Name] = p.Node
	}
	if len(nodes) != 5 || nodes["api-7b9d4c"] != "lab-node2" || nodes["backend-5d8b9c-2"] != "lab-node" || nodes["frontend-6c9f7d"] != "lab-node" {
		t.Errorf("pods and nodes: %v", nodes)
	}
	sb, _ := json.Marshal(got.Services)
	want := `[{"endpoints":["10.244.0.20:8080","[fd00:10:244::20]:8080","10.244.0.21:8080","[fd00:10:244::21]:8080"],` +
		`"name":"web","namespace":"shop","ports":[{"name":"http","port":80,"protocol":"TCP"}],"vips":["10.96.0.10","fd00:10:96::10"]},` +
		`{"endpoints":["10.244.0.20:8080","[fd00:10:244::20]:8080","10.244.0.21:8080","[fd00:10:244::21]:8080"],` +
		`"name":"dns","namespace":"shop","ports":[{"name":"dns","port":53,"protocol":"UDP"}],"vips":["10.96.0.53","fd00:10:96::53"]},` +
		`{"endpoints":[],"name":"ghost","namespace":"shop","ports":[{"name":"http","port":80,"protocol":"TCP"}],"vips":["10.96.0.20","fd00:10:96::20"]}]`
	if string(sb) != want {
		t.Errorf("services\n got %s\nwant %s", sb, want)
	}
}

func TestKubeProxyRules(t *testing.T) {
	l := describe(Config{Extended: true})
	r0, r1 := l.kubeProxyRules(0), l.kubeProxyRules(1)
	web, _ := l.Service("web")
	for _, want := range []string{
		"table ip kube-proxy {", "table ip6 kube-proxy {",
		"10.96.0.10 . tcp . 80 : goto " + web.serviceChain(),
		"fd00:10:96::10 . tcp . 80 : goto " + web.serviceChain(),
		"10.96.0.20 . tcp . 80 : goto reject-chain",
		"fd00:10:96::20 . tcp . 80 : goto reject-chain",
		"tcp . 30080 : goto " + web.externalChain(),
		"numgen random mod 2 vmap { 0 : goto " + web.endpointChain(netip.MustParseAddr("10.244.0.20")) +
			", 1 : goto " + web.endpointChain(netip.MustParseAddr("10.244.0.21")) + " }",
		"dnat to 10.244.0.20:8080", "dnat to 10.244.0.21:8080",
		"dnat to [fd00:10:244::20]:8080", "dnat to [fd00:10:244::21]:8080",
		"ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
		"ip saddr 10.244.0.20 jump mark-for-masquerade",
		"elements = { 192.168.50.1 }", "elements = { fd00:50::1 }",
		"masquerade fully-random",
	} {
		if !strings.Contains(r0, want) {
			t.Errorf("node 1 rules lack %q", want)
		}
	}
	// Each node answers NodePorts on its own address only.
	if !strings.Contains(r1, "elements = { 192.168.50.2 }") || strings.Contains(r1, "192.168.50.1") {
		t.Error("node 2 rules do not use node 2's address for NodePorts")
	}
	// Chain names must be nft identifiers: no colons from IPv6 addresses.
	for _, line := range strings.Split(r0, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "chain" && strings.Contains(f[1], ":") {
			t.Errorf("chain name %q", f[1])
		}
	}
	if chainHash("a") == chainHash("b") || len(chainHash("a")) != 8 {
		t.Error("chainHash")
	}
}
