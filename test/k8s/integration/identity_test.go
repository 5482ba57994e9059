//go:build linux

// Package integration runs the Kubernetes identity source and the deploy/
// manifests against a real etcd + kube-apiserver (test/k8s/k8stest): a fake
// clientset assigns no ClusterIPs, validates nothing and does not watch
// like the real server.
package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/pkg/identity/k8s"
	"github.com/flowtrace/flowtrace/test/k8s/k8stest"
)

// within is how fast an object created in the API server must resolve.
const within = time.Second

func suffix() string {
	b := make([]byte, 3)
	rand.Read(b) //nolint:errcheck // never fails on Linux
	return hex.EncodeToString(b)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// resolves polls cond and returns how long it took to hold; it fails the
// test if that is longer than limit.
func resolves(t *testing.T, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not resolved within %s", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d := time.Since(start)
	t.Logf("%s resolved in %s", what, d.Round(time.Millisecond))
	return d
}

// must unwraps an API call's result. It panics on error (a test failure
// with the caller's line in the trace) because Go cannot pass a call's two
// results and a *testing.T together.
func must[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprintf("API call failed: %v", err))
	}
	return v
}

func setPodIPs(t *testing.T, cs kubernetes.Interface, p *corev1.Pod, ips ...string) *corev1.Pod {
	t.Helper()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ips[0]
	p.Status.PodIPs = nil
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return must(cs.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}))
}

func TestKubernetesIdentities(t *testing.T) {
	c := k8stest.Start(t)
	cs := c.Client
	ctx := context.Background()
	sfx := suffix()
	nsName, nodeName := "ftt-"+sfx, "ftt-node-"+sfx
	nodeIP, nodeIP6 := "192.168.77.10", "fd00:77::10"

	must(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName, Labels: map[string]string{"team": "shop"}}}, metav1.CreateOptions{}))
	node := must(cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}))
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}, {Type: corev1.NodeInternalIP, Address: nodeIP6}}
	must(cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}))

	// The agent's way in: a kubeconfig file (in a pod: in-cluster config).
	client, err := k8s.NewClient(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	src, err := k8s.New(k8s.Config{NodeName: nodeName}, client, quiet())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("source did not stop within 10s")
		}
	})
	syncCtx, syncCancel := context.WithTimeout(ctx, 10*time.Second)
	defer syncCancel()
	if !src.WaitForSync(syncCtx) {
		_, detail := src.Synced()
		t.Fatalf("not synced: %s", detail)
	}
	if ok, detail := src.Synced(); !ok {
		t.Fatalf("Synced() = false after WaitForSync: %s", detail)
	}

	t.Run("node", func(t *testing.T) {
		for _, ip := range []string{nodeIP, nodeIP6} {
			resolves(t, "node "+ip, within, func() bool {
				n, ok := src.NodeByIP(netip.MustParseAddr(ip))
				return ok && n.Name == nodeName
			})
		}
	})

	// Deployment -> ReplicaSet -> Pod, with the owner UIDs the server gave.
	labels := map[string]string{"app": "web"}
	dep := must(cs.AppsV1().Deployments(nsName).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels),
		},
	}, metav1.CreateOptions{}))
	yes := true
	rs := must(cs.AppsV1().ReplicaSets(nsName).Create(ctx, &appsv1.ReplicaSet{
		// Not named <deployment>-<hash>: only the real owner chain can find
		// the Deployment.
		ObjectMeta: metav1.ObjectMeta{Name: "frontend-rs", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: &yes}}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: podTemplate(labels)},
	}, metav1.CreateOptions{}))
	webPod := must(cs.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "frontend-rs-x1", Labels: labels, OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}}},
		Spec: podSpec(nodeName),
	}, metav1.CreateOptions{}))
	webCreated := time.Now()
	podIP, podIP6 := "10.244.77.10", "fd00:10:244::77:10"

	t.Run("pod with status IPs and Deployment owner", func(t *testing.T) {
		webPod = setPodIPs(t, cs, webPod, podIP, podIP6)
		for _, ip := range []string{podIP, podIP6} {
			resolves(t, "pod "+ip, within, func() bool {
				p, ok := src.PodByIP(netip.MustParseAddr(ip))
				return ok && p.Key() == nsName+"/frontend-rs-x1" && p.Workload == identity.Workload{Kind: "Deployment", Name: "web"} &&
					p.Node == nodeName && p.Labels["app"] == "web" && p.NamespaceLabels["team"] == "shop"
			})
		}
	})

	t.Run("pods of other nodes are not watched", func(t *testing.T) {
		other := must(cs.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere"}, Spec: podSpec("other-node")}, metav1.CreateOptions{}))
		setPodIPs(t, cs, other, "10.244.99.1")
		// A marker pod on this node, created after, proves the watch has
		// delivered later events while the other node's pod stayed unseen.
		marker := must(cs.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "marker"}, Spec: podSpec(nodeName)}, metav1.CreateOptions{}))
		setPodIPs(t, cs, marker, "10.244.77.99")
		resolves(t, "marker pod", within, func() bool { _, ok := src.PodByIP(netip.MustParseAddr("10.244.77.99")); return ok })
		if p, ok := src.PodByIP(netip.MustParseAddr("10.244.99.1")); ok {
			t.Errorf("pod on another node resolved: %+v", p)
		}
	})

	t.Run("host-network pod names the node, not a pod", func(t *testing.T) {
		spec := podSpec(nodeName)
		spec.HostNetwork = true
		hp := must(cs.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostnet"}, Spec: spec}, metav1.CreateOptions{}))
		setPodIPs(t, cs, hp, nodeIP)
		resolves(t, "host-network pod", within, func() bool { return len(src.HostNetworkPods(netip.MustParseAddr(nodeIP))) == 1 })
		if p, ok := src.PodByIP(netip.MustParseAddr(nodeIP)); ok {
			t.Errorf("node IP resolved to pod %s", p.Key())
		}
	})

	var svc *corev1.Service
	t.Run("service with server-assigned ClusterIP", func(t *testing.T) {
		svc = must(cs.CoreV1().Services(nsName).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr8080()}}},
		}, metav1.CreateOptions{}))
		vip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !netip.MustParsePrefix("10.96.0.0/16").Contains(vip) {
			t.Fatalf("server assigned ClusterIP %q (%v), want one in 10.96.0.0/16", svc.Spec.ClusterIP, err)
		}
		resolves(t, "VIP "+vip.String()+":80", within, func() bool {
			s, ok := src.ServiceByVIPPort(vip, 80, "TCP")
			return ok && s.Key() == nsName+"/web"
		})
		if _, ok := src.ServiceByVIPPort(vip, 443, "TCP"); ok {
			t.Error("VIP with a port the Service does not have resolved")
		}
	})

	t.Run("endpointslice backend", func(t *testing.T) {
		port, proto := int32(8080), corev1.ProtocolTCP
		must(cs.DiscoveryV1().EndpointSlices(nsName).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-x", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{podIP}, NodeName: &nodeName}},
			Ports:       []discoveryv1.EndpointPort{{Name: strPtr("http"), Port: &port, Protocol: &proto}},
		}, metav1.CreateOptions{}))
		resolves(t, "backend "+podIP+":8080", within, func() bool {
			ss := src.ServicesByBackend(netip.MustParseAddr(podIP), 8080, "TCP")
			return len(ss) == 1 && ss[0].Key() == nsName+"/web" && len(ss[0].VIPs) > 0
		})
	})

	t.Run("deleted pod keeps its IP within grace; reused IP names the new pod", func(t *testing.T) {
		ip := netip.MustParseAddr(podIP)
		// No kubelet confirms a graceful deletion here, so delete the way the
		// kubelet finishes one: with a zero grace period.
		zero := int64(0)
		if err := cs.CoreV1().Pods(nsName).Delete(ctx, webPod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		deleted := time.Now()
		// The source has seen the delete once the IP no longer names the pod
		// after the grace period (a live pod would still name it then).
		resolves(t, "delete observed", within, func() bool {
			_, ok := src.PodByIPAt(ip, time.Now().Add(identity.DefaultGrace+time.Second))
			return !ok
		})
		p, ok := src.PodByIPAt(ip, time.Now())
		if !ok || p.Name != webPod.Name {
			t.Fatalf("drop to a just-deleted pod named %+v, %v; want %s", p, ok, webPod.Name)
		}
		db := must(cs.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "db-0", OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: "00000000-0000-0000-0000-000000000001", Controller: &yes}}},
			Spec: podSpec(nodeName),
		}, metav1.CreateOptions{}))
		setPodIPs(t, cs, db, podIP)
		resolves(t, "reused IP", within, func() bool {
			p, ok := src.PodByIP(ip)
			return ok && p.Name == "db-0" && p.Workload == identity.Workload{Kind: "StatefulSet", Name: "db"}
		})
		// An event from before the deletion is still named with the old pod
		// (creation timestamps have one-second resolution: stay after it).
		before := webCreated.Add(deleted.Sub(webCreated) / 2)
		if p, _ := src.PodByIPAt(ip, before); p == nil || p.Name != webPod.Name {
			t.Errorf("event before the delete named %+v, want %s", p, webPod.Name)
		}
	})
}

func podTemplate(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec("")}
}

func podSpec(node string) corev1.PodSpec {
	return corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/pause:1"}}}
}

func strPtr(s string) *string { return &s }

func intstr8080() intstr.IntOrString { return intstr.FromInt32(8080) }
