// Package k8s is the Kubernetes identity source: client-go shared informers
// on Pods (this node's, or all), Services, EndpointSlices, Nodes,
// Namespaces, and the ReplicaSets and Jobs needed to resolve a pod's owner
// chain to its workload. It implements identity.Source and the optional
// identity.TimedGetter, identity.ServiceGetter and identity.NodeGetter.
//
// Every informer event updates small indexes under a lock, so lookups on the
// event path are map reads. Pod IPs go through an identity.History, so an
// event is named with the pod that held the IP when it happened, and a
// deleted pod keeps naming its IP for the grace period unless a newer pod
// takes it.
package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	"github.com/flowtrace/flowtrace/pkg/identity"
)

// Config configures the source.
type Config struct {
	// NodeName is this node. Pods are watched with the field selector
	// spec.nodeName=NodeName, so a DaemonSet on a 5000-node cluster does not
	// cache every pod everywhere. Required unless AllPods.
	NodeName string
	// AllPods watches every pod: remote peers get names too, at the cost of
	// memory and API load proportional to the cluster.
	AllPods bool
	// Grace is how long a deleted pod keeps naming its IPs
	// (identity.DefaultGrace if zero).
	Grace time.Duration
	// Resync is the informers' resync period (0: none; watches are enough).
	Resync time.Duration
	// Now is the clock, for tests.
	Now func() time.Time
}

// ownerIndex indexes pods by "namespace/Kind/name" of their controller, so
// a ReplicaSet or Job that shows up after its pods can fix their workload.
const ownerIndex = "flowtrace-owner"

// Source is the Kubernetes identity source.
type Source struct {
	cfg  Config
	log  *slog.Logger
	hist *identity.History

	informers []cache.SharedIndexInformer
	pods      cache.SharedIndexInformer
	synced    []namedSync
	// Metadata-only caches of ReplicaSets and Jobs, read by key.
	rsStore  cache.Indexer
	jobStore cache.Indexer

	mu         sync.RWMutex
	nsLabels   map[string]map[string]string
	hostPods   map[string]*identity.Pod // uid -> host-network pod
	podIPs     map[string]int           // uid -> number of IPs (status)
	svcs       map[string]*identity.Service
	vips       map[netip.Addr]*identity.Service
	nodePorts  map[portKey]*identity.Service
	slices     map[string]sliceInfo // slice namespace/name -> contribution
	backends   map[backendKey]map[string]int
	backendAny map[netip.Addr]map[string]int
	nodes      map[string]*identity.Node
	nodeIPs    map[netip.Addr]*identity.Node
	watchErr   string
}

type namedSync struct {
	name string
	fn   cache.InformerSynced
}

type portKey struct {
	port  uint16
	proto string
}

type backendKey struct {
	ip    netip.Addr
	port  uint16
	proto string
}

type sliceInfo struct {
	svc      string // namespace/name of the owning Service
	backends []backendKey
}

// New builds the informers; Run starts them. The client is passed in so
// unit tests can serve it from the fake clientset; the agent and the
// integration tests use NewClient's REST clients against an API server.
func New(cfg Config, client Client, log *slog.Logger) (*Source, error) {
	if !cfg.AllPods && cfg.NodeName == "" {
		return nil, fmt.Errorf("kubernetes identity: node name is required unless all pods are watched")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Source{
		cfg:        cfg,
		log:        log,
		hist:       identity.NewHistory(cfg.Grace, cfg.Now),
		nsLabels:   map[string]map[string]string{},
		hostPods:   map[string]*identity.Pod{},
		podIPs:     map[string]int{},
		svcs:       map[string]*identity.Service{},
		vips:       map[netip.Addr]*identity.Service{},
		nodePorts:  map[portKey]*identity.Service{},
		slices:     map[string]sliceInfo{},
		backends:   map[backendKey]map[string]int{},
		backendAny: map[netip.Addr]map[string]int{},
		nodes:      map[string]*identity.Node{},
		nodeIPs:    map[netip.Addr]*identity.Node{},
	}
	podSel := ""
	if !cfg.AllPods {
		podSel = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	}
	informer := func(res schema.GroupVersionResource, sel string, example runtime.Object, idx cache.Indexers) (cache.SharedIndexInformer, error) {
		lw, err := client.ListWatch(res, sel)
		if err != nil {
			return nil, fmt.Errorf("%s list/watch: %w", res.Resource, err)
		}
		inf := cache.NewSharedIndexInformer(lw, example, cfg.Resync, idx)
		s.informers = append(s.informers, inf)
		return inf, nil
	}
	var err error
	// Pods are indexed by namespace (namespace label changes) and by
	// controller (owners arriving after their pods).
	if s.pods, err = informer(podsResource, podSel, &corev1.Pod{},
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, ownerIndex: podOwnerIndex}); err != nil {
		return nil, err
	}
	svcs, err := informer(servicesResource, "", &corev1.Service{}, cache.Indexers{})
	if err != nil {
		return nil, err
	}
	slices, err := informer(endpointSlicesResource, "", &discoveryv1.EndpointSlice{}, cache.Indexers{})
	if err != nil {
		return nil, err
	}
	nodes, err := informer(nodesResource, "", &corev1.Node{}, cache.Indexers{})
	if err != nil {
		return nil, err
	}
	nss, err := informer(namespacesResource, "", &corev1.Namespace{}, cache.Indexers{})
	if err != nil {
		return nil, err
	}
	rss, err := informer(replicaSetsResource, "", &appsv1.ReplicaSet{}, cache.Indexers{})
	if err != nil {
		return nil, err
	}
	jobs, err := informer(jobsResource, "", &batchv1.Job{}, cache.Indexers{})
	if err != nil {
		return nil, err
	}
	s.rsStore, s.jobStore = rss.GetIndexer(), jobs.GetIndexer()
	type reg struct {
		name string
		inf  cache.SharedIndexInformer
		tf   cache.TransformFunc
		h    cache.ResourceEventHandler
	}
	regs := []reg{
		{"pods", s.pods, stripManagedFields, handler(s.onPod, s.onPodDelete)},
		{"services", svcs, stripManagedFields, handler(s.onService, s.onServiceDelete)},
		{"endpointslices", slices, stripManagedFields, handler(s.onSlice, s.onSliceDelete)},
		{"nodes", nodes, stripNode, handler(s.onNode, s.onNodeDelete)},
		{"namespaces", nss, stripManagedFields, handler(s.onNamespace, s.onNamespaceDelete)},
		{"replicasets", rss, metadataOnly, handler(s.onOwner, s.onOwner)},
		{"jobs", jobs, metadataOnly, handler(s.onOwner, s.onOwner)},
	}
	for _, r := range regs {
		if err := r.inf.SetTransform(r.tf); err != nil {
			return nil, fmt.Errorf("%s informer transform: %w", r.name, err)
		}
		name := r.name
		if err := r.inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			s.mu.Lock()
			s.watchErr = fmt.Sprintf("%s watch: %v", name, err)
			s.mu.Unlock()
			s.log.Warn("kubernetes watch failed; retrying", "resource", name, "error", err)
		}); err != nil {
			return nil, fmt.Errorf("%s watch error handler: %w", r.name, err)
		}
		reg, err := r.inf.AddEventHandler(r.h)
		if err != nil {
			return nil, fmt.Errorf("%s event handler: %w", r.name, err)
		}
		// The registration's HasSynced, not the informer's: it turns true
		// only once our handler has processed the initial list, i.e. once
		// the indexes lookups read are populated.
		s.synced = append(s.synced, namedSync{r.name, reg.HasSynced})
	}
	return s, nil
}

// handler adapts upsert/delete funcs; tombstones are unwrapped here.
func handler(upsert, del func(obj any)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, obj any) { upsert(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			del(obj)
		},
	}
}

// stripManagedFields keeps cached objects small: managed fields are often
// the largest part of an object and flowtrace never reads them.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// stripNode drops node images and conditions: large, and unused.
func stripNode(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status.Images = nil
		n.Status.Conditions = nil
	}
	return obj, nil
}

// metadataOnly keeps only what the owner chain needs of ReplicaSets and
// Jobs: their specs hold full pod templates.
func metadataOnly(obj any) (any, error) {
	meta := func(m metav1.ObjectMeta) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID,
			ResourceVersion: m.ResourceVersion, OwnerReferences: m.OwnerReferences}
	}
	switch o := obj.(type) {
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{ObjectMeta: meta(o.ObjectMeta)}, nil
	case *batchv1.Job:
		return &batchv1.Job{ObjectMeta: meta(o.ObjectMeta)}, nil
	}
	return obj, nil
}

func podOwnerIndex(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	if ref := metav1.GetControllerOf(p); ref != nil {
		return []string{p.Namespace + "/" + ref.Kind + "/" + ref.Name}, nil
	}
	return nil, nil
}

// Name implements identity.Source.
func (s *Source) Name() string {
	if s.cfg.AllPods {
		return "kubernetes:all-pods"
	}
	return "kubernetes:node=" + s.cfg.NodeName
}

// Synced implements identity.Source: true once every informer has listed.
func (s *Source) Synced() (bool, string) {
	var waiting []string
	for _, n := range s.synced {
		if !n.fn() {
			waiting = append(waiting, n.name)
		}
	}
	s.mu.RLock()
	detail := fmt.Sprintf("%d pods (%d host-network), %d services, %d endpointslices, %d nodes",
		s.hist.Current(), len(s.hostPods), len(s.svcs), len(s.slices), len(s.nodes))
	werr := s.watchErr
	s.mu.RUnlock()
	if len(waiting) > 0 {
		detail = "waiting for " + strings.Join(waiting, ", ") + "; " + detail
	}
	if werr != "" {
		detail += "; last error: " + werr
	}
	return len(waiting) == 0, detail
}

// Run starts the informers and keeps them running until ctx is done.
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, inf := range s.informers {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	prune := time.NewTicker(s.hist.Grace() / 4)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			// The informers stop with ctx; wait for their goroutines.
			wg.Wait()
			return nil
		case <-prune.C:
			s.hist.Prune()
		}
	}
}

// WaitForSync blocks until every informer has listed or ctx is done.
func (s *Source) WaitForSync(ctx context.Context) bool {
	fns := make([]cache.InformerSynced, len(s.synced))
	for i, n := range s.synced {
		fns[i] = n.fn
	}
	return cache.WaitForCacheSync(ctx.Done(), fns...)
}

// PodByIP implements identity.Getter.
func (s *Source) PodByIP(ip netip.Addr) (*identity.Pod, bool) { return s.hist.At(ip, time.Time{}) }

// PodByIPAt implements identity.TimedGetter.
func (s *Source) PodByIPAt(ip netip.Addr, t time.Time) (*identity.Pod, bool) {
	return s.hist.At(ip, t)
}

// ServiceByIP implements identity.Getter.
func (s *Source) ServiceByIP(ip netip.Addr) (*identity.Service, bool) {
	s.mu.RLock()
	svc, ok := s.vips[ip.Unmap()]
	s.mu.RUnlock()
	return svc, ok
}

// ServiceByVIPPort implements identity.ServiceGetter.
func (s *Source) ServiceByVIPPort(ip netip.Addr, port uint16, proto string) (*identity.Service, bool) {
	ip = ip.Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if svc, ok := s.vips[ip]; ok && svc.HasPort(port, proto) {
		return svc, true
	}
	if _, isNode := s.nodeIPs[ip]; isNode {
		svc, ok := s.nodePorts[portKey{port, normProto(proto)}]
		return svc, ok
	}
	return nil, false
}

// ServicesByBackend implements identity.ServiceGetter.
func (s *Source) ServicesByBackend(ip netip.Addr, port uint16, proto string) []*identity.Service {
	ip = ip.Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var keys map[string]int
	if port == 0 {
		keys = s.backendAny[ip]
	} else {
		keys = s.backends[backendKey{ip, port, normProto(proto)}]
	}
	if len(keys) == 0 {
		return nil
	}
	out := make([]*identity.Service, 0, len(keys))
	for k := range keys {
		if svc, ok := s.svcs[k]; ok {
			out = append(out, svc)
			continue
		}
		// The slice arrived before its Service: name it anyway.
		ns, name, _ := strings.Cut(k, "/")
		out = append(out, &identity.Service{Namespace: ns, Name: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// NodeByIP implements identity.NodeGetter.
func (s *Source) NodeByIP(ip netip.Addr) (*identity.Node, bool) {
	s.mu.RLock()
	n, ok := s.nodeIPs[ip.Unmap()]
	s.mu.RUnlock()
	return n, ok
}

// HostNetworkPods returns the host-network pods that use ip (their node's
// address), sorted by namespace/name. They never answer PodByIP.
func (s *Source) HostNetworkPods(ip netip.Addr) []*identity.Pod {
	ip = ip.Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*identity.Pod
	for _, p := range s.hostPods {
		for _, a := range p.IPs {
			if a == ip {
				out = append(out, p)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

func normProto(p string) string {
	if p == "" {
		return "TCP"
	}
	return strings.ToUpper(p)
}

func parseIPs(ss ...string) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, v := range ss {
		a, err := netip.ParseAddr(v)
		if err != nil {
			continue
		}
		a = a.Unmap()
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
