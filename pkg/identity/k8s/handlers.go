package k8s

import (
	"maps"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flowtrace/flowtrace/pkg/identity"
)

func (s *Source) onPod(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	uid := string(p.UID)
	var strs []string
	for _, ip := range p.Status.PodIPs {
		strs = append(strs, ip.IP)
	}
	if len(strs) == 0 && p.Status.PodIP != "" {
		strs = []string{p.Status.PodIP}
	}
	ips := parseIPs(strs...)
	s.mu.RLock()
	nsLabels := s.nsLabels[p.Namespace]
	s.mu.RUnlock()
	id := &identity.Pod{
		Namespace:       p.Namespace,
		Name:            p.Name,
		Labels:          maps.Clone(p.Labels),
		Workload:        s.workloadOf(p),
		Node:            p.Spec.NodeName,
		IPs:             ips,
		HostNetwork:     p.Spec.HostNetwork,
		NamespaceLabels: nsLabels,
	}
	id.CacheLabels()
	if p.Spec.HostNetwork {
		s.mu.Lock()
		s.hostPods[uid] = id
		s.mu.Unlock()
		return
	}
	// A finished pod's sandbox is gone and its IP free for reuse, although
	// its status still lists it: release it like a deleted pod.
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		s.hist.Release(uid, time.Time{})
		return
	}
	s.hist.Set(uid, id, ips, p.CreationTimestamp.Time)
}

func (s *Source) onPodDelete(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	s.mu.Lock()
	delete(s.hostPods, string(p.UID))
	s.mu.Unlock()
	s.hist.Release(string(p.UID), time.Time{})
}

// workloadOf follows the controller chain to the object a person deployed.
// ReplicaSets and Jobs come from metadata-only caches; when one is not
// (yet) cached, the pod-template-hash naming convention still recovers the
// Deployment, and onOwner fixes the pod once the owner arrives.
func (s *Source) workloadOf(p *corev1.Pod) identity.Workload {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return identity.Workload{}
	}
	switch ref.Kind {
	case "ReplicaSet":
		if rs, ok := cachedAs[*appsv1.ReplicaSet](s.rsStore, p.Namespace, ref.Name); ok {
			if up := metav1.GetControllerOf(rs); up != nil {
				return identity.Workload{Kind: up.Kind, Name: up.Name}
			}
			return identity.Workload{Kind: "ReplicaSet", Name: ref.Name}
		}
		if h := p.Labels["pod-template-hash"]; h != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+h); ok && d != "" {
				return identity.Workload{Kind: "Deployment", Name: d}
			}
		}
	case "Job":
		if j, ok := cachedAs[*batchv1.Job](s.jobStore, p.Namespace, ref.Name); ok {
			if up := metav1.GetControllerOf(j); up != nil {
				return identity.Workload{Kind: up.Kind, Name: up.Name}
			}
		}
	}
	return identity.Workload{Kind: ref.Kind, Name: ref.Name}
}

// cachedAs reads namespace/name from an informer's store.
func cachedAs[T any](store cache.Indexer, ns, name string) (T, bool) {
	var zero T
	obj, ok, err := store.GetByKey(ns + "/" + name)
	if err != nil || !ok {
		return zero, false
	}
	t, ok := obj.(T)
	return t, ok
}

// onOwner re-resolves the workload of the pods a ReplicaSet or Job controls.
func (s *Source) onOwner(obj any) {
	var key string
	switch o := obj.(type) {
	case *appsv1.ReplicaSet:
		key = o.Namespace + "/ReplicaSet/" + o.Name
	case *batchv1.Job:
		key = o.Namespace + "/Job/" + o.Name
	default:
		return
	}
	pods, err := s.pods.GetIndexer().ByIndex(ownerIndex, key)
	if err != nil {
		return
	}
	for _, p := range pods {
		s.onPod(p)
	}
}

func (s *Source) onNamespace(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	s.mu.Lock()
	old, had := s.nsLabels[ns.Name]
	same := had && maps.Equal(old, ns.Labels)
	if !same {
		s.nsLabels[ns.Name] = maps.Clone(ns.Labels)
	}
	s.mu.Unlock()
	if !same {
		s.refreshNamespace(ns.Name)
	}
}

func (s *Source) onNamespaceDelete(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	s.mu.Lock()
	delete(s.nsLabels, ns.Name)
	s.mu.Unlock()
}

func (s *Source) refreshNamespace(ns string) {
	pods, err := s.pods.GetIndexer().ByIndex("namespace", ns)
	if err != nil {
		return
	}
	for _, p := range pods {
		s.onPod(p)
	}
}

func (s *Source) onService(obj any) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	vipStrs := append([]string{}, svc.Spec.ClusterIPs...)
	if len(vipStrs) == 0 {
		vipStrs = append(vipStrs, svc.Spec.ClusterIP) // "None" (headless) fails to parse: no VIP
	}
	vipStrs = append(vipStrs, svc.Spec.ExternalIPs...)
	for _, in := range svc.Status.LoadBalancer.Ingress {
		vipStrs = append(vipStrs, in.IP)
	}
	id := &identity.Service{
		Namespace: svc.Namespace,
		Name:      svc.Name,
		VIPs:      parseIPs(vipStrs...),
		Type:      string(svc.Spec.Type),
	}
	for _, p := range svc.Spec.Ports {
		id.Ports = append(id.Ports, identity.ServicePort{
			Name: p.Name, Port: uint16(p.Port), Protocol: normProto(string(p.Protocol)), NodePort: uint16(p.NodePort),
		})
	}
	key := id.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeServiceLocked(key)
	s.svcs[key] = id
	for _, ip := range id.VIPs {
		s.vips[ip] = id
	}
	for _, p := range id.Ports {
		if p.NodePort != 0 {
			s.nodePorts[portKey{p.NodePort, p.Protocol}] = id
		}
	}
}

func (s *Source) onServiceDelete(obj any) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	s.mu.Lock()
	s.removeServiceLocked(svc.Namespace + "/" + svc.Name)
	s.mu.Unlock()
}

func (s *Source) removeServiceLocked(key string) {
	old, ok := s.svcs[key]
	if !ok {
		return
	}
	delete(s.svcs, key)
	for _, ip := range old.VIPs {
		if s.vips[ip] == old {
			delete(s.vips, ip)
		}
	}
	for _, p := range old.Ports {
		k := portKey{p.NodePort, p.Protocol}
		if p.NodePort != 0 && s.nodePorts[k] == old {
			delete(s.nodePorts, k)
		}
	}
}

func (s *Source) onSlice(obj any) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	key := es.Namespace + "/" + es.Name
	svcName := es.Labels[discoveryv1.LabelServiceName]
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeSliceLocked(key)
	if svcName == "" {
		return // not managed for a Service: nothing to name
	}
	info := sliceInfo{svc: es.Namespace + "/" + svcName}
	for _, ep := range es.Endpoints {
		for _, ip := range parseIPs(ep.Addresses...) {
			for _, p := range es.Ports {
				if p.Port == nil {
					continue // "all ports": only the any-port index knows it
				}
				proto := "TCP"
				if p.Protocol != nil {
					proto = normProto(string(*p.Protocol))
				}
				info.backends = append(info.backends, backendKey{ip, uint16(*p.Port), proto})
			}
			info.backends = append(info.backends, backendKey{ip: ip}) // any port
		}
	}
	for _, b := range info.backends {
		m := s.backendIndexLocked(b, true)
		m[info.svc]++
	}
	s.slices[key] = info
}

func (s *Source) onSliceDelete(obj any) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	s.mu.Lock()
	s.removeSliceLocked(es.Namespace + "/" + es.Name)
	s.mu.Unlock()
}

func (s *Source) removeSliceLocked(key string) {
	old, ok := s.slices[key]
	if !ok {
		return
	}
	delete(s.slices, key)
	for _, b := range old.backends {
		m := s.backendIndexLocked(b, false)
		if m == nil {
			continue
		}
		if m[old.svc]--; m[old.svc] <= 0 {
			delete(m, old.svc)
		}
		if len(m) == 0 {
			if b.port == 0 && b.proto == "" {
				delete(s.backendAny, b.ip)
			} else {
				delete(s.backends, b)
			}
		}
	}
}

// backendIndexLocked returns the service-key counts for b; a zero port and
// empty proto mean the any-port index.
func (s *Source) backendIndexLocked(b backendKey, create bool) map[string]int {
	if b.port == 0 && b.proto == "" {
		m := s.backendAny[b.ip]
		if m == nil && create {
			m = map[string]int{}
			s.backendAny[b.ip] = m
		}
		return m
	}
	m := s.backends[b]
	if m == nil && create {
		m = map[string]int{}
		s.backends[b] = m
	}
	return m
}

func (s *Source) onNode(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	var strs []string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			strs = append(strs, a.Address)
		}
	}
	id := &identity.Node{Name: n.Name, IPs: parseIPs(strs...), Labels: maps.Clone(n.Labels)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeNodeLocked(n.Name)
	s.nodes[n.Name] = id
	for _, ip := range id.IPs {
		s.nodeIPs[ip] = id
	}
}

func (s *Source) onNodeDelete(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	s.mu.Lock()
	s.removeNodeLocked(n.Name)
	s.mu.Unlock()
}

func (s *Source) removeNodeLocked(name string) {
	old, ok := s.nodes[name]
	if !ok {
		return
	}
	delete(s.nodes, name)
	for _, ip := range old.IPs {
		if s.nodeIPs[ip] == old {
			delete(s.nodeIPs, ip)
		}
	}
}

var _ interface {
	identity.Source
	identity.TimedGetter
	identity.ServiceGetter
	identity.NodeGetter
} = (*Source)(nil)
