package lab

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// KubeProxyTable is the name of the nftables tables (one of family ip, one
// of family ip6, as kube-proxy's nftables mode keeps them) holding the
// extended lab's Services.
const KubeProxyTable = "kube-proxy"

// nftFamily is what differs between the ip and ip6 tables.
type nftFamily struct {
	table       string // nft family: ip, ip6
	kw          string // address match keyword: ip, ip6
	addrType    string
	serviceCIDR netip.Prefix
	clusterCIDR netip.Prefix
	is4         bool
}

var nftFamilies = []nftFamily{
	{"ip", "ip", "ipv4_addr", serviceCIDRv4, clusterCIDRv4, true},
	{"ip6", "ip6", "ipv6_addr", serviceCIDRv6, clusterCIDRv6, false},
}

// chainHash is the short, stable tag kube-proxy puts in per-Service and
// per-endpoint chain names so that they stay unique after truncation and
// readable at once: the first 8 base32 characters of a SHA-256.
func chainHash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return base32.StdEncoding.EncodeToString(h[:])[:8]
}

// servicePortName is kube-proxy's "namespace/name/protocol/portname".
func (s Service) servicePortName() string {
	return s.Namespace + "/" + s.Name + "/" + strings.ToLower(s.Protocol) + "/" + s.PortName
}

func (s Service) serviceChain() string {
	return "service-" + chainHash(s.servicePortName()) + "-" + s.servicePortName()
}

func (s Service) externalChain() string {
	return "external-" + chainHash(s.servicePortName()) + "-" + s.servicePortName()
}

// endpointChain names the per-endpoint DNAT chain. nft identifiers cannot
// hold ':', so an IPv6 endpoint's colons become dots.
func (s Service) endpointChain(ep netip.Addr) string {
	ap := strings.ReplaceAll(ep.String(), ":", ".") + "/" + fmt.Sprint(s.TargetPort)
	return "endpoint-" + chainHash(s.servicePortName(), ap) + "-" + s.servicePortName() + "__" + ap
}

// kubeProxyRules renders node i's Services as kube-proxy's nftables mode
// programs them, per family:
//
//	nat-prerouting / nat-output → services: a verdict map from
//	  ClusterIP . protocol . port to the Service's chain, and from
//	  protocol . port on the node's own addresses (NodePorts) to its
//	  external chain;
//	service-<hash>-ns/name/proto/port: marks traffic from outside the
//	  cluster CIDR for masquerade, then picks an endpoint with
//	  `numgen random mod N` (KUBE-SVC-* and its --probability rules);
//	endpoint-<hash>-...__ip/port: marks hairpin traffic (a backend reaching
//	  itself through the Service) for masquerade and DNATs (KUBE-SEP-*);
//	external-<hash>-...: NodePort traffic is always masqueraded;
//	nat-postrouting → masquerading: masquerades marked packets;
//	filter-input / filter-forward / filter-output at priority -110: new
//	  connections to a Service without endpoints go to reject-chain (TCP
//	  reset or ICMP port unreachable: ECONNREFUSED at the client); to a
//	  ClusterIP on a port it does not serve are rejected the same way; to
//	  an unallocated ClusterIP dropped.
func (l *Lab) kubeProxyRules(node int) string {
	var b strings.Builder
	for _, f := range nftFamilies {
		l.kubeProxyTable(&b, f, l.Nodes[node])
	}
	return b.String()
}

func (l *Lab) kubeProxyTable(b *strings.Builder, f nftFamily, n Node) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format+"\n", args...) }
	nodeIP := n.UnderlayV4
	if !f.is4 {
		nodeIP = n.UnderlayV6
	}

	var clusterIPs, svcIPs, noEP, nodePorts, noEPNodePorts []string
	for _, s := range l.Services {
		vip, ok := s.VIP(nodeIP)
		if !ok {
			continue
		}
		proto := strings.ToLower(s.Protocol)
		clusterIPs = append(clusterIPs, vip.String())
		key := fmt.Sprintf("%s . %s . %d", vip, proto, s.Port)
		if len(s.Endpoints) == 0 {
			noEP = append(noEP, key+" : goto reject-chain")
			if s.NodePort != 0 {
				noEPNodePorts = append(noEPNodePorts, fmt.Sprintf("%s . %d : goto reject-chain", proto, s.NodePort))
			}
			continue
		}
		svcIPs = append(svcIPs, key+" : goto "+s.serviceChain())
		if s.NodePort != 0 {
			nodePorts = append(nodePorts, fmt.Sprintf("%s . %d : goto %s", proto, s.NodePort, s.externalChain()))
		}
	}
	elements := func(e []string) string {
		if len(e) == 0 {
			return ""
		}
		return "; elements = { " + strings.Join(e, ", ") + " }"
	}

	w("table %s %s {", f.table, KubeProxyTable)
	w("\tcomment \"flowtrace lab: rules in the shape of kube-proxy's nftables mode\"")
	w("\tset cluster-ips { type %s%s; }", f.addrType, elements(clusterIPs))
	w("\tset nodeport-ips { type %s%s; }", f.addrType, elements([]string{nodeIP.String()}))
	w("\tmap service-ips { type %s . inet_proto . inet_service : verdict%s; }", f.addrType, elements(svcIPs))
	w("\tmap service-nodeports { type inet_proto . inet_service : verdict%s; }", elements(nodePorts))
	w("\tmap no-endpoint-services { type %s . inet_proto . inet_service : verdict%s; }", f.addrType, elements(noEP))
	w("\tmap no-endpoint-nodeports { type inet_proto . inet_service : verdict%s; }", elements(noEPNodePorts))

	// Filter chains run before NAT's at the same hook (-110 < -100), and
	// after prerouting's DNAT at forward: a Service with endpoints has been
	// translated by then, so only endpoint-less ones match.
	w("\tchain filter-input { type filter hook input priority -110; policy accept;")
	w("\t\tct state new jump nodeport-endpoints-check")
	w("\t\tct state new jump service-endpoints-check")
	w("\t}")
	w("\tchain filter-forward { type filter hook forward priority -110; policy accept;")
	w("\t\tct state new jump service-endpoints-check")
	w("\t\tct state new jump cluster-ips-check")
	w("\t}")
	w("\tchain filter-output { type filter hook output priority -110; policy accept;")
	w("\t\tct state new jump service-endpoints-check")
	w("\t}")
	w("\tchain filter-output-post-dnat { type filter hook output priority -90; policy accept;")
	w("\t\tct state new jump cluster-ips-check")
	w("\t}")
	w("\tchain service-endpoints-check {")
	w("\t\t%s daddr . meta l4proto . th dport vmap @no-endpoint-services", f.kw)
	w("\t}")
	w("\tchain nodeport-endpoints-check {")
	w("\t\t%s daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports", f.kw)
	w("\t}")
	w("\tchain cluster-ips-check {")
	w("\t\t%s daddr @cluster-ips goto reject-chain comment \"ClusterIP port without a Service port\"", f.kw)
	w("\t\t%s daddr %s drop comment \"unallocated ClusterIP\"", f.kw, f.serviceCIDR)
	w("\t}")
	// kube-proxy's reject-chain is a bare `reject`: ICMP port unreachable.
	// TCP gets a reset here instead. In the lab the whole path runs in one
	// softirq, so the ICMPv6 error reaches the client while connect() still
	// holds its socket lock; TCP then keeps it only as a soft error
	// (TcpExtLockDroppedIcmps) and retransmits the SYN a second later. A
	// reset is queued to the socket's backlog instead and refuses the
	// connection at once, in both families. Other protocols keep the ICMP.
	w("\tchain reject-chain {")
	w("\t\tmeta l4proto tcp reject with tcp reset")
	w("\t\treject")
	w("\t}")

	w("\tchain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }")
	w("\tchain nat-output { type nat hook output priority -100; policy accept; jump services; }")
	w("\tchain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }")
	w("\tchain mark-for-masquerade { meta mark set meta mark | 0x%x; }", masqueradeMark)
	w("\tchain masquerading {")
	w("\t\tmeta mark & 0x%x == 0 return", masqueradeMark)
	// Clear the mark so a packet that is masqueraded here is not marked
	// again should it loop through another hook.
	w("\t\tmeta mark set meta mark ^ 0x%x", masqueradeMark)
	w("\t\tmasquerade fully-random")
	w("\t}")
	w("\tchain services {")
	w("\t\t%s daddr . meta l4proto . th dport vmap @service-ips", f.kw)
	w("\t\t%s daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports", f.kw)
	w("\t}")

	podByName := map[string]Pod{}
	for _, p := range l.Pods {
		podByName[p.Name] = p
	}
	for _, s := range l.Services {
		vip, ok := s.VIP(nodeIP)
		if !ok || len(s.Endpoints) == 0 {
			continue
		}
		proto := strings.ToLower(s.Protocol)
		var eps []netip.Addr
		for _, name := range s.Endpoints {
			p := podByName[name]
			if f.is4 {
				eps = append(eps, p.IPv4)
			} else {
				eps = append(eps, p.IPv6)
			}
		}
		w("\tchain %s {", s.serviceChain())
		w("\t\t%s daddr %s %s dport %d %s saddr != %s jump mark-for-masquerade", f.kw, vip, proto, s.Port, f.kw, f.clusterCIDR)
		if len(eps) == 1 {
			w("\t\tgoto %s", s.endpointChain(eps[0]))
			w("\t}")
		} else {
			var arms []string
			for i, ep := range eps {
				arms = append(arms, fmt.Sprintf("%d : goto %s", i, s.endpointChain(ep)))
			}
			w("\t\tnumgen random mod %d vmap { %s }", len(eps), strings.Join(arms, ", "))
			w("\t}")
		}
		if s.NodePort != 0 {
			w("\tchain %s {", s.externalChain())
			w("\t\tjump mark-for-masquerade")
			w("\t\tgoto %s", s.serviceChain())
			w("\t}")
		}
		for _, ep := range eps {
			w("\tchain %s {", s.endpointChain(ep))
			w("\t\t%s saddr %s jump mark-for-masquerade", f.kw, ep)
			w("\t\tmeta l4proto %s dnat to %s", proto, netip.AddrPortFrom(ep, s.TargetPort))
			w("\t}")
		}
	}
	w("}")
}
