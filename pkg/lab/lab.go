package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// netnsDir is where `ip netns` pins named namespaces.
const netnsDir = "/run/netns"

// DefaultPrefix names the lab's namespaces and links: ft-node, ftbr0, ...
const DefaultPrefix = "ft"

// NodeName is the Kubernetes node name the identity file gives the lab.
const NodeName = "lab-node"

// TableName is the nftables table (family inet) holding the lab's policy.
const TableName = "flowtrace_lab"

// BlockedPort is the TCP port the lab's policy drops from frontend to db.
const BlockedPort = 5432

// Interface names are at most 15 characters, and the longest one is
// "<prefix>v-frontend", so the prefix gets 5.
var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,4}$`)

// ValidatePrefix reports whether p can name the lab's namespaces and links.
func ValidatePrefix(p string) error {
	if !prefixRE.MatchString(p) {
		return fmt.Errorf("lab prefix %q: want 1-5 lower-case letters or digits starting with a letter (interface names are limited to 15 characters)", p)
	}
	return nil
}

// Config chooses the lab's names and where its identity file goes.
type Config struct {
	Prefix       string // default "ft"
	IdentityFile string // written by Up when set, removed by Down

	// Extended adds, to the v0 one-node lab, what issue 3 needs: a second
	// backend pod, kube-proxy-like Services (ClusterIP, NodePort, one with
	// no endpoints) in nftables, a second node joined by an underlay veth
	// with a flannel-like VXLAN overlay and a pod of its own, and a
	// mis-sized MTU on the way between the nodes. Without it Up builds
	// exactly the v0 lab.
	Extended bool
}

func (c Config) prefix() string {
	if c.Prefix == "" {
		return DefaultPrefix
	}
	return c.Prefix
}

// Pod is one lab pod and its namespace.
type Pod struct {
	Name      string // Kubernetes pod name, e.g. frontend-6c9f7d
	Namespace string // Kubernetes namespace
	Netns     string // ip netns name
	HostVeth  string // the node side of its veth, on the bridge
	IPv4      netip.Addr
	IPv6      netip.Addr
	Labels    map[string]string
	Node      string // Kubernetes node name of the node it runs on
	NodeNetns string // the namespace holding HostVeth and the bridge

	app          string // short role: frontend, backend, db, backend2, api
	workloadKind string
	workload     string
}

// Lab is a running lab. The flat node fields describe the first node
// (the one the agent watches); Nodes lists every node, that one first.
type Lab struct {
	Node      string // Kubernetes node name
	NodeNetns string // the router namespace, <prefix>-node
	Bridge    string
	GatewayV4 netip.Addr
	GatewayV6 netip.Addr
	Pods      []Pod

	// Set by Config.Extended; otherwise Nodes holds the one node and the
	// rest is empty or zero.
	Extended bool
	Nodes    []Node
	Services []Service
	// PodMTU is the MTU of every pod's eth0 and host veth (and so of the
	// bridges); OverlayMTU the VXLAN devices'; UnderlayMTU the veth between
	// the nodes. The constants of the same names say why they disagree.
	PodMTU, OverlayMTU, UnderlayMTU int
	VNI                             int // VXLAN network identifier
	VXLANPort                       int // UDP destination port of the overlay
}

// Node is one lab node: a router namespace with a bridge for its pods and,
// in the extended lab, an underlay link and a VXLAN device.
type Node struct {
	Name      string // Kubernetes node name
	Netns     string
	Bridge    string
	PodCIDRv4 netip.Prefix
	PodCIDRv6 netip.Prefix
	GatewayV4 netip.Addr // the bridge's addresses, the pods' default gateways
	GatewayV6 netip.Addr

	// Extended lab only.
	Underlay   string     // veth to the other node (same name on both)
	UnderlayV4 netip.Addr // node address: VXLAN endpoint and NodePort address
	UnderlayV6 netip.Addr
	Overlay    string           // VXLAN device, flannel.1's role
	OverlayMAC net.HardwareAddr // its fixed MAC: the other node's FDB and neighbour entries name it
	VTEPv4     netip.Addr       // the overlay device's address, PodCIDRv4's .0 as flannel does
	VTEPv6     netip.Addr       // PodCIDRv6's first address: the other node's next hop (neighbour entry only)
	ServiceDev string           // a portless bridge the Service CIDRs route to, standing in for a default route
}

// Service is a kube-proxy-like Service of the extended lab.
type Service struct {
	Namespace  string
	Name       string
	VIPs       []netip.Addr // ClusterIPs, IPv4 then IPv6
	PortName   string
	Protocol   string // TCP
	Port       uint16 // ClusterIP port
	TargetPort uint16 // the endpoints' port
	NodePort   uint16 // 0: none
	// Endpoints are the backing pods' names; none means kube-proxy rejects
	// connections to the Service.
	Endpoints []string
}

// Key returns "namespace/name".
func (s Service) Key() string { return s.Namespace + "/" + s.Name }

// VIP returns the Service's ClusterIP of the family of like.
func (s Service) VIP(like netip.Addr) (netip.Addr, bool) {
	for _, v := range s.VIPs {
		if v.Is4() == like.Is4() {
			return v, true
		}
	}
	return netip.Addr{}, false
}

type podSpec struct {
	app, name, kind, workload string
	node                      int // index into the lab's nodes
	host                      byte
	label                     string // app label when it differs from app
}

var specs = []podSpec{
	{app: "frontend", name: "frontend-6c9f7d", kind: "Deployment", workload: "frontend", host: 10},
	{app: "backend", name: "backend-5d8b9c", kind: "Deployment", workload: "backend", host: 20},
	{app: "db", name: "db-0", kind: "StatefulSet", workload: "db", host: 30},
}

// extSpecs are the extended lab's extra pods: a second replica of the
// backend Deployment on the first node, and a pod on the second node.
var extSpecs = []podSpec{
	{app: "backend2", name: "backend-5d8b9c-2", kind: "Deployment", workload: "backend", host: 21, label: "backend"},
	{app: "api", name: "api-7b9d4c", kind: "Deployment", workload: "api", node: 1, host: 10},
}

// describe returns the lab Up would build, without touching the system.
func describe(cfg Config) *Lab {
	p := cfg.prefix()
	l := &Lab{
		Node:      NodeName,
		NodeNetns: p + "-node",
		Bridge:    p + "br0",
		GatewayV4: netip.MustParseAddr("10.244.0.1"),
		GatewayV6: netip.MustParseAddr("fd00:10:244::1"),
		Extended:  cfg.Extended,
	}
	l.Nodes = []Node{{
		Name: l.Node, Netns: l.NodeNetns, Bridge: l.Bridge,
		PodCIDRv4: netip.MustParsePrefix("10.244.0.0/24"), PodCIDRv6: netip.MustParsePrefix("fd00:10:244::/64"),
		GatewayV4: l.GatewayV4, GatewayV6: l.GatewayV6,
	}}
	all := specs
	if cfg.Extended {
		describeExtended(l, p)
		all = append(append([]podSpec{}, specs...), extSpecs...)
	}
	for _, s := range all {
		n := l.Nodes[s.node]
		label := s.label
		if label == "" {
			label = s.app
		}
		l.Pods = append(l.Pods, Pod{
			Name:         s.name,
			Namespace:    "shop",
			Netns:        p + "-" + s.app,
			HostVeth:     p + "v-" + s.app,
			IPv4:         hostAddr(n.PodCIDRv4, s.host),
			IPv6:         hostAddr(n.PodCIDRv6, s.host),
			Labels:       map[string]string{"app": label},
			Node:         n.Name,
			NodeNetns:    n.Netns,
			app:          s.app,
			workloadKind: s.kind,
			workload:     s.workload,
		})
	}
	return l
}

// hostAddr returns the address of prefix whose last byte is host. IPv6
// pods take the same decimal digits as hex (fd00:10:244::10 for .10), as
// the v0 lab always did, so the two addresses read alike.
func hostAddr(prefix netip.Prefix, host byte) netip.Addr {
	a := prefix.Masked().Addr()
	if a.Is4() {
		b := a.As4()
		b[3] = host
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	v := uint16(host/10)<<4 | uint16(host%10)
	b[14], b[15] = byte(v>>8), byte(v)
	return netip.AddrFrom16(b)
}

func (l *Lab) namespaces() []string {
	var out []string
	for _, n := range l.Nodes {
		out = append(out, n.Netns)
	}
	for _, p := range l.Pods {
		out = append(out, p.Netns)
	}
	return out
}

// Pod finds a pod by its pod name or its app label (frontend, backend, db).
func (l *Lab) Pod(name string) (Pod, bool) {
	for _, p := range l.Pods {
		if p.Name == name || p.app == name {
			return p, true
		}
	}
	return Pod{}, false
}

// run executes one command; a failure quotes the command and its output.
func run(ctx context.Context, stdin string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Up builds the lab, first removing whatever a previous lab of the same
// prefix left. On failure it removes what it built.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if err := ValidatePrefix(cfg.prefix()); err != nil {
		return nil, err
	}
	if err := Down(ctx, cfg); err != nil {
		return nil, fmt.Errorf("remove previous lab: %w", err)
	}
	l := describe(cfg)
	if err := l.build(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("build lab: %w", err), Down(ctx, cfg))
	}
	l.warmUp(ctx)
	if cfg.IdentityFile != "" {
		if err := l.writeIdentity(cfg.IdentityFile); err != nil {
			return nil, errors.Join(err, Down(ctx, cfg))
		}
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context) error {
	var steps [][]string
	for _, ns := range l.namespaces() {
		steps = append(steps, []string{"ip", "netns", "add", ns}, []string{"ip", "-n", ns, "link", "set", "lo", "up"},
			// No router advertisements exist in the lab: soliciting them
			// only makes multicast the kernel drops (ip6_mc_input), noise
			// in every drop listing. Set before the links exist so they
			// inherit it.
			[]string{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.router_solicitations=0"})
	}
	for _, n := range l.Nodes {
		steps = append(steps, nodeSteps(n)...)
	}
	for _, p := range l.Pods {
		steps = append(steps, l.podSteps(p)...)
	}
	if l.Extended {
		steps = append(steps, l.overlaySteps()...)
	}
	for _, argv := range steps {
		if _, err := run(ctx, "", argv...); err != nil {
			return err
		}
	}
	if _, err := run(ctx, l.policy(), "ip", "netns", "exec", l.NodeNetns, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("load lab policy: %w", err)
	}
	if l.Extended {
		// kube-proxy runs on every node: a client on either node reaches
		// the Services, and NodePorts answer on both nodes.
		for i, n := range l.Nodes {
			if _, err := run(ctx, l.kubeProxyRules(i), "ip", "netns", "exec", n.Netns, "nft", "-f", "-"); err != nil {
				return fmt.Errorf("load kube-proxy rules on %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

func nodeSteps(n Node) [][]string {
	inNode := func(argv ...string) []string { return append([]string{"ip", "netns", "exec", n.Netns}, argv...) }
	return [][]string{
		// Routing and bridge netfilter are per namespace: only the nodes
		// forward, and the host's settings stay untouched.
		inNode("sysctl", "-qw", "net.ipv4.ip_forward=1"),
		inNode("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"),
		inNode("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"),
		inNode("sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"),
		// No multicast snooping: nothing in the lab sends MLD queries, so
		// the bridge has nothing to learn from and simply floods multicast.
		// (A fresh lab's cold first IPv6 connection is handled by warmUp.)
		{"ip", "-n", n.Netns, "link", "add", n.Bridge, "type", "bridge", "mcast_snooping", "0"},
		{"ip", "-n", n.Netns, "addr", "add", n.GatewayV4.String() + "/24", "dev", n.Bridge},
		{"ip", "-n", n.Netns, "addr", "add", n.GatewayV6.String() + "/64", "dev", n.Bridge, "nodad"},
		{"ip", "-n", n.Netns, "link", "set", n.Bridge, "up"},
	}
}

func (l *Lab) podSteps(p Pod) [][]string {
	node := p.NodeNetns
	var gw4, gw6 netip.Addr
	var bridge string
	for _, n := range l.Nodes {
		if n.Netns == node {
			gw4, gw6, bridge = n.GatewayV4, n.GatewayV6, n.Bridge
		}
	}
	return [][]string{
		// Created inside the node namespace with the peer placed
		// straight into the pod: nothing ever exists in the host's
		// namespace.
		{"ip", "-n", node, "link", "add", p.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", p.Netns},
		{"ip", "-n", node, "link", "set", p.HostVeth, "master", bridge},
		{"ip", "-n", node, "link", "set", p.HostVeth, "up"},
		{"ip", "-n", p.Netns, "addr", "add", p.IPv4.String() + "/24", "dev", "eth0"},
		{"ip", "-n", p.Netns, "addr", "add", p.IPv6.String() + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", p.Netns, "link", "set", "eth0", "up"},
		{"ip", "-n", p.Netns, "route", "add", "default", "via", gw4.String(), "dev", "eth0"},
		{"ip", "-n", p.Netns, "-6", "route", "add", "default", "via", gw6.String(), "dev", "eth0"},
	}
}

// policy is the lab's "NetworkPolicy": db accepts nothing from frontend on
// its database port. Bridged traffic reaches the inet forward hook through
// br_netfilter, as on a Kubernetes node with a bridge CNI.
func (l *Lab) policy() string {
	fe, _ := l.Pod("frontend")
	db, _ := l.Pod("db")
	return fmt.Sprintf(`table inet %[1]s {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr %[2]s ip daddr %[3]s tcp dport %[6]d drop
		ip6 saddr %[4]s ip6 daddr %[5]s tcp dport %[6]d drop
	}
}
`, TableName, fe.IPv4, db.IPv4, fe.IPv6, db.IPv6, BlockedPort)
}

// Down removes every namespace (and with them every link) of the lab with
// that prefix, and its identity file. Absent pieces are not an error.
func Down(ctx context.Context, cfg Config) error {
	if err := ValidatePrefix(cfg.prefix()); err != nil {
		return err
	}
	var errs []error
	// Whatever Extended says, remove both nodes: a lab brought up extended
	// and taken down by a caller that does not know it must not leak.
	all := cfg
	all.Extended = true
	for _, ns := range describe(all).namespaces() {
		if _, err := os.Lstat(filepath.Join(netnsDir, ns)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if _, err := run(ctx, "", "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.IdentityFile != "" {
		if err := os.Remove(cfg.IdentityFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove identity file: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Exec runs argv inside a pod's namespace (by pod name or app label) and
// returns its combined output.
func (l *Lab) Exec(ctx context.Context, pod string, argv ...string) ([]byte, error) {
	p, ok := l.Pod(pod)
	if !ok {
		return nil, fmt.Errorf("exec in lab: no pod %q", pod)
	}
	if len(argv) == 0 {
		return nil, errors.New("exec in lab: empty command")
	}
	return run(ctx, "", append([]string{"ip", "netns", "exec", p.Netns}, argv...)...)
}

// Identity file schema, read by the agent's static identity source
// (pkg/identity, which rejects unknown fields: keep the two in step).
type identityFile struct {
	Node     string            `json:"node"`
	Pods     []identityPod     `json:"pods"`
	Services []identityService `json:"services"`
}

type identityPod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Workload  identityWorkload  `json:"workload"`
	Node      string            `json:"node"`
	IPs       []string          `json:"ips"`
}

type identityWorkload struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

type identityService struct {
	Namespace string         `json:"namespace"`
	Name      string         `json:"name"`
	VIPs      []string       `json:"vips"`
	Ports     []identityPort `json:"ports"`
	Endpoints []string       `json:"endpoints"`
}

type identityPort struct {
	Name     string `json:"name"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
}

func (l *Lab) identity() identityFile {
	f := identityFile{Node: l.Node, Services: []identityService{}}
	for _, p := range l.Pods {
		f.Pods = append(f.Pods, identityPod{
			Namespace: p.Namespace,
			Name:      p.Name,
			Labels:    p.Labels,
			Workload:  identityWorkload{Kind: p.workloadKind, Name: p.workload},
			Node:      p.Node,
			IPs:       []string{p.IPv4.String(), p.IPv6.String()},
		})
	}
	for _, s := range l.Services {
		is := identityService{
			Namespace: s.Namespace,
			Name:      s.Name,
			Ports:     []identityPort{{Name: s.PortName, Port: s.Port, Protocol: s.Protocol}},
		}
		for _, v := range s.VIPs {
			is.VIPs = append(is.VIPs, v.String())
		}
		// An explicit empty list tells flowtrace the Service has no
		// endpoints, so its rejected traffic is explained as such.
		is.Endpoints = []string{}
		for _, name := range s.Endpoints {
			if p, ok := l.Pod(name); ok {
				is.Endpoints = append(is.Endpoints,
					netip.AddrPortFrom(p.IPv4, s.TargetPort).String(), netip.AddrPortFrom(p.IPv6, s.TargetPort).String())
			}
		}
		f.Services = append(f.Services, is)
	}
	return f
}

func (l *Lab) writeIdentity(path string) error {
	b, err := json.MarshalIndent(l.identity(), "", "  ")
	if err != nil {
		return fmt.Errorf("encode identity file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write identity file: %w", err)
	}
	// Write then rename, so an agent watching the file never reads half.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write identity file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write identity file: %w", err)
	}
	return nil
}

// warmUp pings every pod from its node once, over IPv4 and IPv6, so that
// neighbour caches and bridge forwarding tables are filled before anyone
// uses the lab: a fresh lab's first IPv6 connection through a Service
// otherwise meets a cold bridge and loses its first SYN (a one-second
// retransmit). Failures are not errors: the lab's tests say what works.
func (l *Lab) warmUp(ctx context.Context) {
	for _, p := range l.Pods {
		for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
			if ip.IsValid() {
				_, _ = run(ctx, "", "ip", "netns", "exec", p.NodeNetns, "ping", "-c", "1", "-W", "1", ip.String())
			}
		}
	}
}
