package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/flowtrace/flowtrace/pkg/lab"
)

// Ports the workloads use between the frontend and backend pods.
const (
	portIperf  = 5201
	portUDP    = 9000
	portRR     = 9001
	portChurn  = 9002
	portStorm1 = 9999  // the single-flow drop storm; the bench's nft rule drops it
	portStormN = 10000 // first of stormFlows ports the many-flow storm spreads over
	stormFlows = 1000
	portRSS    = 20000 // first destination port of the held-flows phase
)

// bed is the testbed: the flowtrace lab (a CNI-bridge-like node with pods)
// plus the bench's own drop rules, iperf3 server and sockets.
type bed struct {
	lab      *lab.Lab
	cfg      lab.Config
	dir      string
	client   lab.Pod
	server   lab.Pod
	veths    []string // host veths on the node, where tracers attach
	iperf    *exec.Cmd
	stormTbl string
}

func newBed(ctx context.Context, extended bool) (b *bed, err error) {
	var r [2]byte
	_, _ = rand.Read(r[:])
	// "fb" + 3 hex-ish letters: unique per run, and within the lab's
	// five-character prefix limit (interface names are at most 15).
	prefix := fmt.Sprintf("fb%03x", (int(r[0])<<8|int(r[1]))&0xfff)
	dir, err := os.MkdirTemp("", "ftbench-")
	if err != nil {
		return nil, fmt.Errorf("bench dir: %w", err)
	}
	cfg := lab.Config{Prefix: prefix, IdentityFile: filepath.Join(dir, "identity.json"), Extended: extended}
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	b = &bed{lab: l, cfg: cfg, dir: dir, stormTbl: "ftbench"}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	var ok1, ok2 bool
	b.client, ok1 = l.Pod("frontend")
	b.server, ok2 = l.Pod("backend")
	if !ok1 || !ok2 {
		return nil, errors.New("testbed: lab has no frontend or backend pod")
	}
	for _, p := range l.Pods {
		if p.NodeNetns == l.NodeNetns {
			b.veths = append(b.veths, p.HostVeth)
		}
	}
	// Churn opens tens of thousands of connections: give the client every
	// ephemeral port (its closes are RSTs, so none linger in TIME_WAIT).
	if _, err := b.exec(ctx, b.client.Netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"); err != nil {
		return nil, err
	}
	rules := fmt.Sprintf(`table inet %[1]s {
	counter storm1 {}
	counter stormn {}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip daddr %[2]s udp dport %[3]d counter name storm1 drop
		ip daddr %[2]s udp dport %[4]d-%[5]d counter name stormn drop
	}
}
`, b.stormTbl, b.server.IPv4, portStorm1, portStormN, portStormN+stormFlows-1)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.NodeNetns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testbed: load storm rules: %w: %s", err, out)
	}
	b.iperf = exec.Command("ip", "netns", "exec", b.server.Netns, "iperf3", "-s", "-p", strconv.Itoa(portIperf))
	if err := b.iperf.Start(); err != nil {
		return nil, fmt.Errorf("testbed: start iperf3 server: %w", err)
	}
	return b, nil
}

func (b *bed) exec(ctx context.Context, netns string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s (in %s): %w: %s", strings.Join(argv, " "), netns, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

var packetsRE = regexp.MustCompile(`packets (\d+)`)

// stormCounter reads the packets an nft storm rule dropped: the kernel's
// own count of the storm.
func (b *bed) stormCounter(ctx context.Context, name string) (uint64, error) {
	out, err := b.exec(ctx, b.lab.NodeNetns, "nft", "list", "counter", "inet", b.stormTbl, name)
	if err != nil {
		return 0, err
	}
	m := packetsRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("nft counter %s: no packet count in %q", name, out)
	}
	return strconv.ParseUint(string(m[1]), 10, 64)
}

func (b *bed) serverAddr(port int) netip.AddrPort {
	return netip.AddrPortFrom(b.server.IPv4, uint16(port))
}

func (b *bed) Close() error {
	var errs []error
	if b.iperf != nil && b.iperf.Process != nil {
		_ = b.iperf.Process.Kill()
		_ = b.iperf.Wait()
	}
	errs = append(errs, lab.Down(context.Background(), b.cfg))
	errs = append(errs, os.RemoveAll(b.dir))
	return errors.Join(errs...)
}
