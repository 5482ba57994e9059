//go:build linux

package integration

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/pkg/identity/k8s"
	"github.com/flowtrace/flowtrace/test/k8s/k8stest"
)

// TestRegisterLab checks the lab's path to Kubernetes names: identities
// registered with k8stest.Register come back from the Kubernetes source
// with their workloads.
func TestRegisterLab(t *testing.T) {
	c := k8stest.Start(t)
	ctx := context.Background()
	ns := "ftt-lab-" + suffix()
	pods := []identity.Pod{
		{Namespace: ns, Name: "frontend-6c9f7d", Labels: map[string]string{"app": "frontend"},
			Workload: identity.Workload{Kind: "Deployment", Name: "frontend"},
			IPs:      []netip.Addr{netip.MustParseAddr("10.244.0.10"), netip.MustParseAddr("fd00:10:244::10")}},
		{Namespace: ns, Name: "report-1-x", Workload: identity.Workload{Kind: "CronJob", Name: "report"},
			IPs: []netip.Addr{netip.MustParseAddr("10.244.0.20")}},
		{Namespace: ns, Name: "db-0", Workload: identity.Workload{Kind: "StatefulSet", Name: "db"},
			IPs: []netip.Addr{netip.MustParseAddr("10.244.0.30")}},
	}
	svcs := []identity.Service{{Namespace: ns, Name: "web", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []identity.ServicePort{{Name: "http", Port: 80}}}}
	if err := k8stest.Register(ctx, c.Client, "lab-node", []netip.Addr{netip.MustParseAddr("192.168.1.5")}, pods, svcs); err != nil {
		t.Fatal(err)
	}
	// Registering again is harmless (the lab may re-run it).
	if err := k8stest.Register(ctx, c.Client, "lab-node", nil, pods, svcs); err != nil {
		t.Fatalf("second Register: %v", err)
	}

	// The agent's own client (per-group REST clients), not the clientset
	// the lab registers with.
	kc, err := k8s.NewClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	src, err := k8s.New(k8s.Config{NodeName: "lab-node"}, kc, quiet())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	syncCtx, syncCancel := context.WithTimeout(ctx, 10*time.Second)
	defer syncCancel()
	if !src.WaitForSync(syncCtx) {
		t.Fatal("not synced")
	}
	want := map[string]identity.Workload{
		"10.244.0.10":     {Kind: "Deployment", Name: "frontend"},
		"fd00:10:244::10": {Kind: "Deployment", Name: "frontend"},
		"10.244.0.20":     {Kind: "CronJob", Name: "report"},
		"10.244.0.30":     {Kind: "StatefulSet", Name: "db"},
	}
	for ip, w := range want {
		resolves(t, "lab pod "+ip, within, func() bool {
			p, ok := src.PodByIP(netip.MustParseAddr(ip))
			return ok && p.Workload == w && p.Node == "lab-node"
		})
	}
	resolves(t, "lab service", within, func() bool {
		s, ok := src.ServiceByVIPPort(netip.MustParseAddr("10.96.0.10"), 80, "TCP")
		return ok && s.Key() == ns+"/web"
	})
	resolves(t, "lab node", within, func() bool {
		n, ok := src.NodeByIP(netip.MustParseAddr("192.168.1.5"))
		return ok && n.Name == "lab-node"
	})
}
