// Package identity names the ends of a flow: which pod (namespace, name,
// labels, workload, node) an IP address belongs to.
//
// Sources (a static file today; Kubernetes and the CNI cache later) sit
// behind the small Source interface, and a Chain combines them in a fixed
// precedence: the first source that knows an address wins. The enricher only
// ever sees the Getter interface, so its tests pass fakes.
package identity

import (
	"context"
	"net/netip"
	"sort"
	"strings"
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
}

// LabelList returns the labels as sorted "key=value" strings.
func (p *Pod) LabelList() []string {
	out := make([]string, 0, len(p.Labels))
	for k, v := range p.Labels {
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
}

// Service is a Kubernetes-like Service with a virtual IP.
type Service struct {
	Namespace string        `json:"namespace"`
	Name      string        `json:"name"`
	VIPs      []netip.Addr  `json:"vips"`
	Ports     []ServicePort `json:"ports,omitempty"`
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

// Getter resolves addresses. Implementations must be safe for concurrent use
// and must not block: they are called on the event path.
type Getter interface {
	PodByIP(ip netip.Addr) (*Pod, bool)
	ServiceByIP(ip netip.Addr) (*Service, bool)
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

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/ \t\n")
}
