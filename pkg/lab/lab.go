package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	app          string // short role: frontend, backend, db
	workloadKind string
	workload     string
}

// Lab is a running lab.
type Lab struct {
	Node      string // Kubernetes node name
	NodeNetns string // the router namespace, <prefix>-node
	Bridge    string
	GatewayV4 netip.Addr
	GatewayV6 netip.Addr
	Pods      []Pod
}

type podSpec struct {
	app, name, kind, workload string
	host                      byte
}

var specs = []podSpec{
	{"frontend", "frontend-6c9f7d", "Deployment", "frontend", 10},
	{"backend", "backend-5d8b9c", "Deployment", "backend", 20},
	{"db", "db-0", "StatefulSet", "db", 30},
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
	}
	for _, s := range specs {
		l.Pods = append(l.Pods, Pod{
			Name:         s.name,
			Namespace:    "shop",
			Netns:        p + "-" + s.app,
			HostVeth:     p + "v-" + s.app,
			IPv4:         netip.AddrFrom4([4]byte{10, 244, 0, s.host}),
			IPv6:         netip.MustParseAddr(fmt.Sprintf("fd00:10:244::%d", s.host)),
			Labels:       map[string]string{"app": s.app},
			app:          s.app,
			workloadKind: s.kind,
			workload:     s.workload,
		})
	}
	return l
}

func (l *Lab) namespaces() []string {
	out := []string{l.NodeNetns}
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
	if cfg.IdentityFile != "" {
		if err := l.writeIdentity(cfg.IdentityFile); err != nil {
			return nil, errors.Join(err, Down(ctx, cfg))
		}
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context) error {
	node := l.NodeNetns
	inNode := func(argv ...string) []string { return append([]string{"ip", "netns", "exec", node}, argv...) }
	var steps [][]string
	for _, ns := range l.namespaces() {
		steps = append(steps, []string{"ip", "netns", "add", ns}, []string{"ip", "-n", ns, "link", "set", "lo", "up"},
			// No router advertisements exist in the lab: soliciting them
			// only makes multicast the kernel drops (ip6_mc_input), noise
			// in every drop listing. Set before the links exist so they
			// inherit it.
			[]string{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.router_solicitations=0"})
	}
	steps = append(steps,
		// Routing and bridge netfilter are per namespace: only the node
		// forwards, and the host's settings stay untouched.
		inNode("sysctl", "-qw", "net.ipv4.ip_forward=1"),
		inNode("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"),
		inNode("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"),
		inNode("sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"),
		[]string{"ip", "-n", node, "link", "add", l.Bridge, "type", "bridge"},
		[]string{"ip", "-n", node, "addr", "add", l.GatewayV4.String() + "/24", "dev", l.Bridge},
		[]string{"ip", "-n", node, "addr", "add", l.GatewayV6.String() + "/64", "dev", l.Bridge, "nodad"},
		[]string{"ip", "-n", node, "link", "set", l.Bridge, "up"},
	)
	for _, p := range l.Pods {
		steps = append(steps,
			// Created inside the node namespace with the peer placed
			// straight into the pod: nothing ever exists in the host's
			// namespace.
			[]string{"ip", "-n", node, "link", "add", p.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", p.Netns},
			[]string{"ip", "-n", node, "link", "set", p.HostVeth, "master", l.Bridge},
			[]string{"ip", "-n", node, "link", "set", p.HostVeth, "up"},
			[]string{"ip", "-n", p.Netns, "addr", "add", p.IPv4.String() + "/24", "dev", "eth0"},
			[]string{"ip", "-n", p.Netns, "addr", "add", p.IPv6.String() + "/64", "dev", "eth0", "nodad"},
			[]string{"ip", "-n", p.Netns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", p.Netns, "route", "add", "default", "via", l.GatewayV4.String(), "dev", "eth0"},
			[]string{"ip", "-n", p.Netns, "-6", "route", "add", "default", "via", l.GatewayV6.String(), "dev", "eth0"},
		)
	}
	for _, argv := range steps {
		if _, err := run(ctx, "", argv...); err != nil {
			return err
		}
	}
	if _, err := run(ctx, l.policy(), inNode("nft", "-f", "-")...); err != nil {
		return fmt.Errorf("load lab policy: %w", err)
	}
	return nil
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
	for _, ns := range describe(cfg).namespaces() {
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

// Identity file schema, read by the agent's static identity source.
type identityFile struct {
	Node     string            `json:"node"`
	Pods     []identityPod     `json:"pods"`
	Services []json.RawMessage `json:"services"`
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

func (l *Lab) identity() identityFile {
	f := identityFile{Node: l.Node, Services: []json.RawMessage{}}
	for _, p := range l.Pods {
		f.Pods = append(f.Pods, identityPod{
			Namespace: p.Namespace,
			Name:      p.Name,
			Labels:    p.Labels,
			Workload:  identityWorkload{Kind: p.workloadKind, Name: p.workload},
			Node:      l.Node,
			IPs:       []string{p.IPv4.String(), p.IPv6.String()},
		})
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
