package lab

import (
	"net"
	"net/netip"
	"strconv"
)

// Node2Name is the Kubernetes node name of the extended lab's second node.
const Node2Name = "lab-node2"

// The extended lab's MTUs. The underlay between the nodes carries 1400
// bytes (a cloud or VPN network smaller than Ethernet's 1500), and the VXLAN
// devices are sized correctly for it: 1400 minus VXLAN's 50 bytes of outer
// IPv4, UDP, VXLAN and Ethernet headers, 1350, the value `ip link add type
// vxlan dev <underlay>` picks by itself. The mistake is the pods': their eth0,
// their host veths and the bridges stay at 1500, as when a CNI config
// hard-codes 1500 instead of the overlay's MTU.
//
// So a DF packet of 1428 bytes (a 1400-byte ping payload plus 8 bytes of
// ICMP and 20 of IPv4; 1448 with IPv6's 40) leaves the pod and crosses the
// bridge, and exceeds the *VXLAN device's* 1350 when the first node routes
// it toward the second: ip_forward (ip6_forward) drops it and sends ICMP
// frag-needed (ICMPv6 packet-too-big) with mtu 1350 back to the pod. It
// never reaches the underlay. 1350 minus 28 (48) bytes of headers, 1322
// (1302), is the largest ping payload that passes.
//
// The other mis-sizing, a VXLAN device larger than underlay minus 50, was
// rejected for the lab: the VXLAN driver does not set DF on the outer
// header unless told to, so the kernel fragments the outer packet and the
// DF ping passes (slowly) instead of failing; with `df set` the outer
// packet dies on the sending node with the ICMP addressed to the node
// itself, so the pod only ever sees a timeout.
//
// IPv6 needs every MTU on the path at or above 1280, or the links lose
// their IPv6 addresses; 1350 and 1400 are.
const (
	PodMTU      = 1500
	OverlayMTU  = 1350
	UnderlayMTU = 1400
)

// VXLAN parameters, as flannel's vxlan backend uses them: VNI 1 on the
// Linux kernel's legacy port 8472.
const (
	VNI       = 1
	VXLANPort = 8472
)

// Service names and ports of the extended lab.
const (
	ServicePort     = 80
	ServiceNodePort = 30080
	BackendPort     = 8080 // the web Service's targetPort, on both backends
)

// masqueradeMark is the packet mark that asks the lab's kube-proxy rules to
// masquerade, kube-proxy's 0x4000.
const masqueradeMark = 0x4000

// Cluster-wide address ranges: the Service CIDRs (ClusterIPs come from
// here) and the cluster's pod CIDRs (traffic from outside them to a
// ClusterIP is masqueraded, kube-proxy's --cluster-cidr).
var (
	serviceCIDRv4 = netip.MustParsePrefix("10.96.0.0/16")
	serviceCIDRv6 = netip.MustParsePrefix("fd00:10:96::/112")
	clusterCIDRv4 = netip.MustParsePrefix("10.244.0.0/16")
	clusterCIDRv6 = netip.MustParsePrefix("fd00:10:244::/56")
)

func describeExtended(l *Lab, p string) {
	l.PodMTU, l.OverlayMTU, l.UnderlayMTU = PodMTU, OverlayMTU, UnderlayMTU
	l.VNI, l.VXLANPort = VNI, VXLANPort

	n1 := &l.Nodes[0]
	n2 := Node{
		Name: Node2Name, Netns: p + "-node2", Bridge: p + "br1",
		PodCIDRv4: netip.MustParsePrefix("10.244.1.0/24"), PodCIDRv6: netip.MustParsePrefix("fd00:10:244:1::/64"),
		GatewayV4: netip.MustParseAddr("10.244.1.1"), GatewayV6: netip.MustParseAddr("fd00:10:244:1::1"),
	}
	for i, n := range []*Node{n1, &n2} {
		n.Underlay = p + "eth0"
		n.UnderlayV4 = netip.AddrFrom4([4]byte{192, 168, 50, byte(i + 1)})
		n.UnderlayV6 = netip.MustParseAddr("fd00:50::" + strconv.Itoa(i+1))
		n.Overlay = p + "vx0"
		// Locally administered and fixed, so each node's neighbour and FDB
		// entries for the other can be written before either exists (what
		// flannel learns from the other node's annotations).
		n.OverlayMAC = net.HardwareAddr{0x02, 0xf7, 0, 0, 0, byte(i + 1)}
		n.VTEPv4 = n.PodCIDRv4.Masked().Addr()
		n.VTEPv6 = n.PodCIDRv6.Masked().Addr()
		n.ServiceDev = p + "svc0"
	}
	l.Nodes = append(l.Nodes, n2)

	l.Services = []Service{
		{
			Namespace: "shop", Name: "web",
			VIPs:     []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::10")},
			PortName: "http", Protocol: "TCP", Port: ServicePort, TargetPort: BackendPort, NodePort: ServiceNodePort,
			Endpoints: []string{"backend-5d8b9c", "backend-5d8b9c-2"},
		},
		{
			// UDP, like a cluster DNS Service, on the same backends.
			Namespace: "shop", Name: "dns",
			VIPs:     []netip.Addr{netip.MustParseAddr("10.96.0.53"), netip.MustParseAddr("fd00:10:96::53")},
			PortName: "dns", Protocol: "UDP", Port: 53, TargetPort: BackendPort,
			Endpoints: []string{"backend-5d8b9c", "backend-5d8b9c-2"},
		},
		{
			Namespace: "shop", Name: "ghost",
			VIPs:     []netip.Addr{netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd00:10:96::20")},
			PortName: "http", Protocol: "TCP", Port: ServicePort, TargetPort: BackendPort,
		},
	}
}

// Service finds a Service by name or "namespace/name".
func (l *Lab) Service(name string) (Service, bool) {
	for _, s := range l.Services {
		if s.Name == name || s.Key() == name {
			return s, true
		}
	}
	return Service{}, false
}

// NodeByName finds a node by its Kubernetes node name or its namespace.
func (l *Lab) NodeByName(name string) (Node, bool) {
	for _, n := range l.Nodes {
		if n.Name == name || n.Netns == name {
			return n, true
		}
	}
	return Node{}, false
}

// overlaySteps wires the nodes together: the underlay veth, then on each
// node a VXLAN device with a static FDB entry and a permanent neighbour for
// the other node's VTEP, and routes to the other node's pod CIDRs through
// it, as flannel's vxlan backend programs a node (it uses no multicast and
// no learning). Also each node's route for the Service CIDRs.
func (l *Lab) overlaySteps() [][]string {
	n1, n2 := l.Nodes[0], l.Nodes[1]
	mtu := func(v int) string { return strconv.Itoa(v) }
	steps := [][]string{
		{"ip", "-n", n1.Netns, "link", "add", n1.Underlay, "type", "veth", "peer", "name", n2.Underlay, "netns", n2.Netns},
	}
	for i, n := range l.Nodes {
		peer := l.Nodes[1-i]
		steps = append(steps,
			[]string{"ip", "-n", n.Netns, "link", "set", n.Underlay, "mtu", mtu(l.UnderlayMTU), "up"},
			[]string{"ip", "-n", n.Netns, "addr", "add", n.UnderlayV4.String() + "/24", "dev", n.Underlay},
			[]string{"ip", "-n", n.Netns, "addr", "add", n.UnderlayV6.String() + "/64", "dev", n.Underlay, "nodad"},

			[]string{"ip", "-n", n.Netns, "link", "add", n.Overlay, "address", n.OverlayMAC.String(), "mtu", mtu(l.OverlayMTU),
				"type", "vxlan", "id", strconv.Itoa(l.VNI), "local", n.UnderlayV4.String(), "dev", n.Underlay,
				"dstport", strconv.Itoa(l.VXLANPort), "nolearning"},
			[]string{"ip", "-n", n.Netns, "addr", "add", n.VTEPv4.String() + "/32", "dev", n.Overlay},
			[]string{"ip", "-n", n.Netns, "link", "set", n.Overlay, "up"},
			[]string{"ip", "netns", "exec", n.Netns, "bridge", "fdb", "append", peer.OverlayMAC.String(), "dev", n.Overlay, "dst", peer.UnderlayV4.String()},
			[]string{"ip", "-n", n.Netns, "neigh", "replace", peer.VTEPv4.String(), "lladdr", peer.OverlayMAC.String(), "dev", n.Overlay, "nud", "permanent"},
			[]string{"ip", "-n", n.Netns, "neigh", "replace", peer.VTEPv6.String(), "lladdr", peer.OverlayMAC.String(), "dev", n.Overlay, "nud", "permanent"},
			[]string{"ip", "-n", n.Netns, "route", "add", peer.PodCIDRv4.String(), "via", peer.VTEPv4.String(), "dev", n.Overlay, "onlink"},
			[]string{"ip", "-n", n.Netns, "-6", "route", "add", peer.PodCIDRv6.String(), "via", peer.VTEPv6.String(), "dev", n.Overlay, "onlink"},

			// On a real node unallocated ClusterIPs follow the default
			// route (and kube-proxy drops them in forward). The lab has no
			// default route, so the Service CIDRs get a route of their
			// own into a device that leads nowhere: without one,
			// forwarding fails before the forward hook, where kube-proxy
			// rejects Services without endpoints. A bridge without ports,
			// because this kernel has no dummy driver built in.
			[]string{"ip", "-n", n.Netns, "link", "add", n.ServiceDev, "type", "bridge"},
			[]string{"ip", "-n", n.Netns, "link", "set", n.ServiceDev, "up"},
			[]string{"ip", "-n", n.Netns, "route", "add", serviceCIDRv4.String(), "dev", n.ServiceDev},
			[]string{"ip", "-n", n.Netns, "-6", "route", "add", serviceCIDRv6.String(), "dev", n.ServiceDev},
		)
	}
	return steps
}
