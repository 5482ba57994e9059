package k8s

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/flowtrace/flowtrace/pkg/identity"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func quiet() *slog.Logger            { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
func addr(s string) netip.Addr       { return netip.MustParseAddr(s) }
func ctrl(kind, name string) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{APIVersion: "v1", Kind: kind, Name: name, UID: types.UID(kind + name), Controller: &yes}}
}

func pod(ns, name, node string, owner []metav1.OwnerReference, labels map[string]string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "/" + name), Labels: labels, OwnerReferences: owner},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

// fakeClient serves the source from the fake clientset (tests only: the
// production Client uses per-group REST clients, which the integration
// tests in test/k8s run against a real API server).
type fakeClient struct {
	cs *fake.Clientset

	mu        sync.Mutex
	selectors map[string]string // resource -> field selector asked for
}

func newFakeClient(cs *fake.Clientset) *fakeClient {
	return &fakeClient{cs: cs, selectors: map[string]string{}}
}

func (f *fakeClient) ListWatch(res schema.GroupVersionResource, sel string) (cache.ListerWatcher, error) {
	f.mu.Lock()
	f.selectors[res.Resource] = sel
	f.mu.Unlock()
	switch res {
	case podsResource:
		c := f.cs.CoreV1().Pods("")
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	case servicesResource:
		c := f.cs.CoreV1().Services("")
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	case nodesResource:
		c := f.cs.CoreV1().Nodes()
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	case namespacesResource:
		c := f.cs.CoreV1().Namespaces()
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	case endpointSlicesResource:
		c := f.cs.DiscoveryV1().EndpointSlices("")
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	case replicaSetsResource:
		c := f.cs.AppsV1().ReplicaSets("")
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	case jobsResource:
		c := f.cs.BatchV1().Jobs("")
		return fakeLW(f.cs, sel, c.List, c.Watch), nil
	}
	return nil, fmt.Errorf("unexpected resource %s", res)
}

func fakeLW[L runtime.Object](cs *fake.Clientset, sel string,
	list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.ListerWatcher {
	// The fake clientset says it cannot serve watch-list requests; passing
	// it lets the reflector fall back to list+watch.
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return watchFn(ctx, o)
		},
	}, cs)
}

func start(t *testing.T, cfg Config, objs ...any) (*Source, *fake.Clientset) {
	t.Helper()
	var rt []any
	rt = append(rt, objs...)
	cs := fake.NewClientset()
	ctx := context.Background()
	for _, o := range rt {
		create(t, cs, o)
	}
	s, err := New(cfg, newFakeClient(cs), quiet())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- s.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if !s.WaitForSync(wctx) {
		t.Fatal("informers did not sync")
	}
	return s, cs
}

func create(t *testing.T, cs *fake.Clientset, o any) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch o := o.(type) {
	case *corev1.Pod:
		_, err = cs.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Service:
		_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Node:
		_, err = cs.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *appsv1.ReplicaSet:
		_, err = cs.AppsV1().ReplicaSets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *batchv1.Job:
		_, err = cs.BatchV1().Jobs(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *discoveryv1.EndpointSlice:
		_, err = cs.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	default:
		t.Fatalf("unsupported %T", o)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 3s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestWorkloadOwnerChain(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-7d9f", OwnerReferences: ctrl("Deployment", "web")}}
	bareRS := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "solo"}}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "report-2900", OwnerReferences: ctrl("CronJob", "report")}}
	s, _ := start(t, Config{NodeName: "n1"}, rs, bareRS, job,
		pod("shop", "web-7d9f-a", "n1", ctrl("ReplicaSet", "web-7d9f"), map[string]string{"app": "web"}, "10.244.1.1"),
		pod("shop", "solo-x", "n1", ctrl("ReplicaSet", "solo"), nil, "10.244.1.2"),
		// ReplicaSet not in the cache: the pod-template-hash convention still finds the Deployment.
		pod("shop", "api-5c4b-q", "n1", ctrl("ReplicaSet", "api-5c4b"), map[string]string{"pod-template-hash": "5c4b"}, "10.244.1.3"),
		pod("shop", "report-2900-z", "n1", ctrl("Job", "report-2900"), nil, "10.244.1.4"),
		pod("shop", "db-0", "n1", ctrl("StatefulSet", "db"), nil, "10.244.1.5"),
		pod("kube-system", "agent-k", "n1", ctrl("DaemonSet", "agent"), nil, "10.244.1.6"),
		pod("shop", "naked", "n1", nil, nil, "10.244.1.7"),
	)
	want := map[string]identity.Workload{
		"10.244.1.1": {Kind: "Deployment", Name: "web"},
		"10.244.1.2": {Kind: "ReplicaSet", Name: "solo"},
		"10.244.1.3": {Kind: "Deployment", Name: "api"},
		"10.244.1.4": {Kind: "CronJob", Name: "report"},
		"10.244.1.5": {Kind: "StatefulSet", Name: "db"},
		"10.244.1.6": {Kind: "DaemonSet", Name: "agent"},
		"10.244.1.7": {},
	}
	for ip, w := range want {
		p, ok := s.PodByIP(addr(ip))
		if !ok {
			t.Errorf("%s: not resolved", ip)
			continue
		}
		if p.Workload != w {
			t.Errorf("%s (%s): workload %+v, want %+v", ip, p.Key(), p.Workload, w)
		}
	}
	p, _ := s.PodByIP(addr("10.244.1.1"))
	if p.Key() != "shop/web-7d9f-a" || p.Node != "n1" || p.Labels["app"] != "web" {
		t.Errorf("pod fields: %+v", p)
	}
	if ok, detail := s.Synced(); !ok || !strings.Contains(detail, "7 pods") {
		t.Errorf("synced %v %q", ok, detail)
	}
}

func TestOwnerArrivingLateFixesWorkload(t *testing.T) {
	s, cs := start(t, Config{NodeName: "n1"},
		pod("shop", "batch-1-x", "n1", ctrl("Job", "batch-1"), nil, "10.244.2.1"))
	if p, _ := s.PodByIP(addr("10.244.2.1")); p.Workload != (identity.Workload{Kind: "Job", Name: "batch-1"}) {
		t.Fatalf("before the Job: %+v", p.Workload)
	}
	create(t, cs, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "batch-1", OwnerReferences: ctrl("CronJob", "batch")}})
	eventually(t, "CronJob workload", func() bool {
		p, _ := s.PodByIP(addr("10.244.2.1"))
		return p.Workload == identity.Workload{Kind: "CronJob", Name: "batch"}
	})
}

func TestDualStackHostNetworkAndNodes(t *testing.T) {
	hostPod := pod("kube-system", "proxy-n1", "n1", ctrl("DaemonSet", "proxy"), nil, "192.168.5.10")
	hostPod.Spec.HostNetwork = true
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "192.168.5.10"}, {Type: corev1.NodeInternalIP, Address: "fd00:5::10"}, {Type: corev1.NodeHostName, Address: "n1"},
	}}}
	s, _ := start(t, Config{NodeName: "n1"}, node, hostPod,
		pod("shop", "dual", "n1", nil, nil, "10.244.3.1", "fd00:10:244::31"),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}},
	)
	for _, ip := range []string{"10.244.3.1", "fd00:10:244::31", "::ffff:10.244.3.1"} {
		if p, ok := s.PodByIP(addr(ip)); !ok || p.Name != "dual" || len(p.IPs) != 2 {
			t.Errorf("%s: %+v %v", ip, p, ok)
		}
	}
	eventually(t, "namespace labels", func() bool {
		p, _ := s.PodByIP(addr("10.244.3.1"))
		return p.NamespaceLabels["team"] == "a"
	})
	if p, ok := s.PodByIP(addr("192.168.5.10")); ok {
		t.Errorf("host-network pod claimed the node IP: %+v", p)
	}
	for _, ip := range []string{"192.168.5.10", "fd00:5::10"} {
		if n, ok := s.NodeByIP(addr(ip)); !ok || n.Name != "n1" {
			t.Errorf("node %s: %+v %v", ip, n, ok)
		}
	}
	if hp := s.HostNetworkPods(addr("192.168.5.10")); len(hp) != 1 || hp[0].Name != "proxy-n1" || !hp[0].HostNetwork {
		t.Errorf("host-network pods: %+v", hp)
	}
}

func TestServicesAndEndpointSlices(t *testing.T) {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(p int32) *int32 { return &p }
	web := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: tcp, NodePort: 30080}}}}
	dns := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "dns"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.53", Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: udp}}}}
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"}, Spec: corev1.ServiceSpec{ClusterIP: "None"}}
	slice := func(ns, name, svc string, p int32, proto corev1.Protocol, ips ...string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: ips}},
			Ports:       []discoveryv1.EndpointPort{{Port: port(p), Protocol: &proto}}}
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.5.10"}}}}
	s, cs := start(t, Config{AllPods: true}, web, dns, headless, node,
		slice("shop", "web-abc", "web", 8080, tcp, "10.244.4.1", "10.244.4.2"),
		slice("shop", "canary-abc", "canary", 8080, tcp, "10.244.4.2"),
		slice("kube-system", "dns-abc", "dns", 53, udp, "10.244.4.53"),
	)
	if svc, ok := s.ServiceByVIPPort(addr("10.96.0.10"), 80, "tcp"); !ok || svc.Key() != "shop/web" || svc.Type != "NodePort" {
		t.Errorf("VIP:port: %+v %v", svc, ok)
	}
	if svc, ok := s.ServiceByVIPPort(addr("fd00:96::10"), 80, ""); !ok || svc.Name != "web" {
		t.Errorf("v6 VIP: %+v %v", svc, ok)
	}
	if _, ok := s.ServiceByVIPPort(addr("10.96.0.10"), 81, "TCP"); ok {
		t.Error("wrong port resolved")
	}
	if _, ok := s.ServiceByVIPPort(addr("10.96.0.53"), 53, "TCP"); ok {
		t.Error("wrong protocol resolved")
	}
	if svc, ok := s.ServiceByVIPPort(addr("192.168.5.10"), 30080, "TCP"); !ok || svc.Name != "web" {
		t.Errorf("NodePort: %+v %v", svc, ok)
	}
	if _, ok := s.ServiceByIP(addr("10.96.0.53")); !ok {
		t.Error("ServiceByIP")
	}
	names := func(ss []*identity.Service) string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Key())
		}
		return strings.Join(out, ",")
	}
	if got := names(s.ServicesByBackend(addr("10.244.4.2"), 8080, "TCP")); got != "shop/canary,shop/web" {
		t.Errorf("backend services %q", got)
	}
	if got := names(s.ServicesByBackend(addr("10.244.4.1"), 0, "")); got != "shop/web" {
		t.Errorf("any-port backend %q", got)
	}
	if got := names(s.ServicesByBackend(addr("10.244.4.1"), 9090, "TCP")); got != "" {
		t.Errorf("wrong backend port resolved: %q", got)
	}
	if got := names(s.ServicesByBackend(addr("10.244.4.53"), 53, "UDP")); got != "kube-system/dns" {
		t.Errorf("udp backend %q", got)
	}
	// Updates replace, deletes remove.
	ctx := context.Background()
	if err := cs.DiscoveryV1().EndpointSlices("shop").Delete(ctx, "canary-abc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slice delete", func() bool { return names(s.ServicesByBackend(addr("10.244.4.2"), 8080, "TCP")) == "shop/web" })
	if err := cs.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "service delete", func() bool { _, ok := s.ServiceByIP(addr("10.96.0.10")); return !ok })
	if _, ok := s.ServiceByVIPPort(addr("192.168.5.10"), 30080, "TCP"); ok {
		t.Error("NodePort of a deleted Service still resolves")
	}
}

func TestIdentityAtEventTime(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	a := pod("shop", "a", "n1", nil, nil, "10.244.5.1")
	a.CreationTimestamp = metav1.NewTime(clk.Now().Add(-time.Hour))
	s, cs := start(t, Config{NodeName: "n1", Now: clk.Now}, a)
	ctx := context.Background()
	ip := addr("10.244.5.1")
	beforeDelete := clk.Now()

	clk.Add(10 * time.Second)
	if err := cs.CoreV1().Pods("shop").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deletedAt := clk.Now()
	eventually(t, "delete seen", func() bool { return s.hist.Current() == 0 })
	clk.Add(90 * time.Second)
	if p, ok := s.PodByIP(ip); !ok || p.Name != "a" {
		t.Fatalf("within grace: %+v %v", p, ok)
	}

	clk.Add(10 * time.Second)
	b := pod("shop", "b", "n1", nil, nil, "10.244.5.1")
	b.CreationTimestamp = metav1.NewTime(deletedAt.Add(-5 * time.Second)) // created before a was gone
	create(t, cs, b)
	bSeen := clk.Now()
	eventually(t, "reused IP names the new pod", func() bool { p, ok := s.PodByIP(ip); return ok && p.Name == "b" })
	if p, _ := s.PodByIPAt(ip, beforeDelete); p.Name != "a" {
		t.Errorf("event before a's deletion named %s", p.Name)
	}
	if p, _ := s.PodByIPAt(ip, deletedAt.Add(time.Second)); p.Name != "b" {
		// b's span starts when a let go (not at b's earlier creation), and b
		// is newer, so it wins from then on.
		t.Errorf("event after a's deletion named %s", p.Name)
	}
	_ = bSeen

	// Once the grace is over a dead pod names nothing.
	if err := cs.CoreV1().Pods("shop").Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b delete seen", func() bool { return s.hist.Current() == 0 })
	clk.Add(identity.DefaultGrace + time.Second)
	if p, ok := s.PodByIP(ip); ok {
		t.Errorf("after grace: %+v", p)
	}
}

func TestFinishedPodReleasesIP(t *testing.T) {
	s, cs := start(t, Config{NodeName: "n1"}, pod("shop", "job-x", "n1", nil, nil, "10.244.6.1"))
	p := pod("shop", "job-x", "n1", nil, nil, "10.244.6.1")
	p.Status.Phase = corev1.PodSucceeded
	if _, err := cs.CoreV1().Pods("shop").UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "released", func() bool { return s.hist.Current() == 0 })
	// Still named during the grace period.
	if p, ok := s.PodByIP(addr("10.244.6.1")); !ok || p.Name != "job-x" {
		t.Errorf("finished pod within grace: %+v %v", p, ok)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := New(Config{}, newFakeClient(fake.NewClientset()), quiet()); err == nil {
		t.Error("no node name and not all pods accepted")
	}
}

func TestPodFieldSelector(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{NodeName: "n1"}, "spec.nodeName=n1"},
		{Config{NodeName: "n1", AllPods: true}, ""},
	} {
		fc := newFakeClient(fake.NewClientset())
		if _, err := New(tc.cfg, fc, quiet()); err != nil {
			t.Fatal(err)
		}
		if got := fc.selectors["pods"]; got != tc.want {
			t.Errorf("%+v: pod field selector %q, want %q", tc.cfg, got, tc.want)
		}
		if len(fc.selectors) != 7 {
			t.Errorf("%+v: watched %v, want 7 resources", tc.cfg, fc.selectors)
		}
		for res, sel := range fc.selectors {
			if res != "pods" && sel != "" {
				t.Errorf("%s watched with field selector %q", res, sel)
			}
		}
	}
}
