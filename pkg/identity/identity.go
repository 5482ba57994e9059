// Package identity names the ends of a flow: which pod (namespace, name,
// labels, workload, node) an IP address belongs to, which Service a VIP or a
// backend IP:port belongs to, and which node owns an address.
//
// Sources sit behind the small Source interface; the optional interfaces
// (TimedGetter, ServiceGetter, NodeGetter, IfaceGetter) are implemented by
// the sources that know more. A Chain combines sources in a fixed precedence:
// the first source that knows an address wins, and a source that does not
// implement an optional interface is asked through the plain Getter.
//
// Precedence the agent uses (most authoritative first):
//
//  1. Kubernetes API (package identity/k8s): cluster-wide, labels, workload
//     owner chain, Services, EndpointSlices, nodes, identity at event time.
//  2. CNI cache (CNICache): node-local, works without API access, names
//     namespace/pod and host veths but knows no labels or workloads.
//  3. Static file (File): for hosts and labs without Kubernetes.
//
// An unsynced source is still asked: partial knowledge beats none, and its
// status says it is not synced. The enricher only ever sees these
// interfaces, so its tests pass fakes.
package identity

import (
	"context"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Workload is the controller that owns a pod.
type Workload struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Pod is what flowtrace knows about a pod.
type Pod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	Workload  Workload          `json:"workload"`
	Node      string            `json:"node,omitempty"`
	IPs       []netip.Addr      `json:"ips"`
	// HostNetwork pods share their node's addresses; sources never let them
	// claim an IP in PodByIP (every host-network pod on the node would), so
	// such an address names the node instead (NodeGetter).
	HostNetwork bool `json:"hostNetwork,omitempty"`
	// NamespaceLabels are the labels of the pod's namespace, when known.
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`

	labelList []string // LabelList, once CacheLabels ran
}

// LabelList returns the labels as sorted "key=value" strings. The slice is
// shared once CacheLabels ran: callers must not modify it.
func (p *Pod) LabelList() []string {
	if p.labelList != nil {
		return p.labelList
	}
	return labelList(p.Labels)
}

// CacheLabels computes LabelList once, so naming both ends of every event
// does not sort labels again. Sources call it on a Pod they built, before
// sharing it; Labels must not change afterwards (sources replace a Pod).
func (p *Pod) CacheLabels() *Pod {
	p.labelList = labelList(p.Labels)
	return p
}

func labelList(labels map[string]string) []string {
	out := make([]string, 0, len(labels))
	for k, v := range labels {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string `json:"name,omitempty"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol,omitempty"` // TCP (default), UDP, SCTP
	NodePort uint16 `json:"nodePort,omitempty"`
}

// Service is a Kubernetes-like Service with a virtual IP.
type Service struct {
	Namespace string        `json:"namespace"`
	Name      string        `json:"name"`
	VIPs      []netip.Addr  `json:"vips"`
	Ports     []ServicePort `json:"ports,omitempty"`
	Type      string        `json:"type,omitempty"` // ClusterIP, NodePort, LoadBalancer, ExternalName
	// Endpoints are the backends (pod IP:targetPort). nil means unknown; an
	// empty list means the Service has none, so kube-proxy rejects its
	// traffic.
	Endpoints *[]netip.AddrPort `json:"endpoints,omitempty"`
}

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// NoEndpoints reports whether the Service is known to have no endpoints.
func (s *Service) NoEndpoints() bool { return s.Endpoints != nil && len(*s.Endpoints) == 0 }

// PortName names the Service port number, "" when it has no name or the
// Service does not expose it.
func (s *Service) PortName(port uint16) string {
	for _, p := range s.Ports {
		if p.Port == port {
			return p.Name
		}
	}
	return ""
}

// HasPort reports whether the Service exposes port/proto on its VIPs. An
// empty proto means TCP, like in Kubernetes.
func (s *Service) HasPort(port uint16, proto string) bool {
	proto = normProto(proto)
	for _, p := range s.Ports {
		if p.Port == port && normProto(p.Protocol) == proto {
			return true
		}
	}
	return false
}

func normProto(p string) string {
	if p == "" {
		return "TCP"
	}
	return strings.ToUpper(p)
}

// Node is a cluster node and its addresses.
type Node struct {
	Name   string            `json:"name"`
	IPs    []netip.Addr      `json:"ips"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Getter resolves addresses. Implementations must be safe for concurrent use
// and must not block: they are called on the event path.
type Getter interface {
	PodByIP(ip netip.Addr) (*Pod, bool)
	ServiceByIP(ip netip.Addr) (*Service, bool)
}

// TimedGetter names an address as it was at event time t: a pod deleted
// shortly before t still names its IP (for a grace period), and a pod that
// took the IP after t does not name an earlier event. A zero t means now.
type TimedGetter interface {
	PodByIPAt(ip netip.Addr, t time.Time) (*Pod, bool)
}

// ServiceGetter resolves Services by frontend and by backend.
type ServiceGetter interface {
	// ServiceByVIPPort returns the Service whose VIP (ClusterIP, external or
	// load-balancer IP) and port/proto match, or, for a node address, the
	// Service with that NodePort.
	ServiceByVIPPort(ip netip.Addr, port uint16, proto string) (*Service, bool)
	// ServicesByBackend returns the Services whose EndpointSlices list
	// ip:port/proto as an endpoint (after DNAT, a flow only shows the
	// backend). Port 0 matches any port. Sorted by namespace/name.
	ServicesByBackend(ip netip.Addr, port uint16, proto string) []*Service
}

// NodeGetter names node addresses.
type NodeGetter interface {
	NodeByIP(ip netip.Addr) (*Node, bool)
}

// IfaceGetter names the pod behind a host-side interface (the host end of a
// pod's veth).
type IfaceGetter interface {
	PodByHostIface(name string) (*Pod, bool)
}

// Source is a Getter with a lifecycle and a status.
type Source interface {
	Getter
	// Name identifies the source in status output, e.g. "file:/etc/flowtrace/identity.json".
	Name() string
	// Synced reports whether the source has loaded its data, and a detail
	// (e.g. the last load error) for status output.
	Synced() (bool, string)
	// Run keeps the source up to date until ctx is done.
	Run(ctx context.Context) error
}

// Chain asks sources in order; the first that knows an address wins.
type Chain []Source

// PodByIP implements Getter.
func (c Chain) PodByIP(ip netip.Addr) (*Pod, bool) {
	ip = ip.Unmap()
	for _, s := range c {
		if p, ok := s.PodByIP(ip); ok {
			return p, true
		}
	}
	return nil, false
}

// ServiceByIP implements Getter.
func (c Chain) ServiceByIP(ip netip.Addr) (*Service, bool) {
	ip = ip.Unmap()
	for _, s := range c {
		if svc, ok := s.ServiceByIP(ip); ok {
			return svc, true
		}
	}
	return nil, false
}

// PodByIPAt implements TimedGetter; sources without history answer with
// their current knowledge.
func (c Chain) PodByIPAt(ip netip.Addr, t time.Time) (*Pod, bool) {
	ip = ip.Unmap()
	for _, s := range c {
		var (
			p  *Pod
			ok bool
		)
		if tg, isTimed := s.(TimedGetter); isTimed {
			p, ok = tg.PodByIPAt(ip, t)
		} else {
			p, ok = s.PodByIP(ip)
		}
		if ok {
			return p, true
		}
	}
	return nil, false
}

// ServiceByVIPPort implements ServiceGetter; sources without port knowledge
// answer by VIP, if the Service they know has that port.
func (c Chain) ServiceByVIPPort(ip netip.Addr, port uint16, proto string) (*Service, bool) {
	ip = ip.Unmap()
	for _, s := range c {
		if sg, ok := s.(ServiceGetter); ok {
			if svc, ok := sg.ServiceByVIPPort(ip, port, proto); ok {
				return svc, true
			}
			continue
		}
		if svc, ok := s.ServiceByIP(ip); ok && (len(svc.Ports) == 0 || svc.HasPort(port, proto)) {
			return svc, true
		}
	}
	return nil, false
}

// ServicesByBackend implements ServiceGetter: the first source with an
// answer wins.
func (c Chain) ServicesByBackend(ip netip.Addr, port uint16, proto string) []*Service {
	ip = ip.Unmap()
	for _, s := range c {
		if sg, ok := s.(ServiceGetter); ok {
			if out := sg.ServicesByBackend(ip, port, proto); len(out) > 0 {
				return out
			}
		}
	}
	return nil
}

// NodeByIP implements NodeGetter.
func (c Chain) NodeByIP(ip netip.Addr) (*Node, bool) {
	ip = ip.Unmap()
	for _, s := range c {
		if ng, ok := s.(NodeGetter); ok {
			if n, ok := ng.NodeByIP(ip); ok {
				return n, true
			}
		}
	}
	return nil, false
}

// PodByHostIface implements IfaceGetter.
func (c Chain) PodByHostIface(name string) (*Pod, bool) {
	for _, s := range c {
		if ig, ok := s.(IfaceGetter); ok {
			if p, ok := ig.PodByHostIface(name); ok {
				return p, true
			}
		}
	}
	return nil, false
}

// Synced reports each source's status, in precedence order.
func (c Chain) Synced() []SourceStatus {
	out := make([]SourceStatus, 0, len(c))
	for _, s := range c {
		ok, detail := s.Synced()
		out = append(out, SourceStatus{Name: s.Name(), Synced: ok, Detail: detail})
	}
	return out
}

// SourceStatus is one source's line in the agent's status.
type SourceStatus struct {
	Name   string
	Synced bool
	Detail string
}

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/ \t\n")
}
