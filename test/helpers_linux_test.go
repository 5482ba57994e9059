package test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/lab"
	"github.com/flowtrace/flowtrace/pkg/testutil"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// flowtraceBin is the binary under test, built once by TestMain.
var flowtraceBin string

func TestMain(m *testing.M) {
	// Inside the kernel matrix's VMs there is no Go toolchain: the harness
	// ships a prebuilt static binary and says where.
	if bin := os.Getenv("FLOWTRACE_BIN"); bin != "" {
		flowtraceBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "flowtrace-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	flowtraceBin = filepath.Join(dir, "flowtrace")
	build := exec.Command("go", "build", "-o", flowtraceBin, "../cmd/flowtrace")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build flowtrace:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newLab brings up the single-node lab with a unique prefix and tears it
// down after t.
func newLab(t *testing.T) (*lab.Lab, string) {
	t.Helper()
	return upLab(t, false)
}

// newExtendedLab brings up the two-node lab with Services and the overlay.
func newExtendedLab(t *testing.T) (*lab.Lab, string) {
	t.Helper()
	return upLab(t, true)
}

func upLab(t *testing.T, extended bool) (*lab.Lab, string) {
	t.Helper()
	testutil.RequirePrivileged(t)
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	prefix := "e" + hex.EncodeToString(b)
	ids := filepath.Join(t.TempDir(), "identity.json")
	cfg := lab.Config{Prefix: prefix, IdentityFile: ids, Extended: extended}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Down(context.Background(), cfg); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l, ids
}

// agentProc is a flowtrace agent running in the lab's node namespace.
type agentProc struct {
	cmd  *exec.Cmd
	sock string
	log  *testutil.Buffer
	done chan error
}

const agentStartWait = time.Minute

func startAgent(t *testing.T, l *lab.Lab, ids string, args ...string) *agentProc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ft.sock")
	argv := append([]string{"netns", "exec", l.NodeNetns, flowtraceBin, "agent", "--socket", sock,
		"--identity-file", ids, "--node-name", "lab-node", "--log-level", "debug"}, args...)
	a := &agentProc{cmd: exec.Command("ip", argv...), sock: sock, log: &testutil.Buffer{}, done: make(chan error, 1)}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	// The agent must not outlive the test binary.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		a.stop(t, syscall.SIGTERM)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
	// Start is mostly BPF verification, which takes seconds under the
	// kernel matrix's emulated CPUs (5.10 also retries without the paths
	// it lacks); an agent that fails exits, which ends the wait at once.
	deadline := time.Now().Add(agentStartWait)
	for {
		if _, err := a.status(); err == nil {
			return a
		}
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("agent exited during start: %v\n%s", err, a.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after %v\n%s", agentStartWait, a.log.String())
		}
	}
}

// stop signals the agent and waits for it; stopping twice is harmless.
func (a *agentProc) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if a.cmd.ProcessState != nil {
		return nil
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case err := <-a.done:
		a.done <- err
		return err
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		t.Errorf("agent did not exit within 15s of %v", sig)
		return errors.New("timeout")
	}
}

func (a *agentProc) client(ctx context.Context) (flowtracev1.ObserverServiceClient, func(), error) {
	conn, err := client.Dial(ctx, a.sock)
	if err != nil {
		return nil, nil, err
	}
	return flowtracev1.NewObserverServiceClient(conn), func() { conn.Close() }, nil
}

func (a *agentProc) status() (*flowtracev1.ServerStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, closeFn, err := a.client(ctx)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	return c.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
}

// flows returns the held flows matching the allowlist.
func (a *agentProc) flows(t *testing.T, allow ...*flowtracev1.FlowFilter) []*flowtracev1.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, closeFn, err := a.client(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	defer closeFn()
	stream, err := c.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Allowlist: allow})
	if err != nil {
		t.Fatalf("GetFlows: %v", err)
	}
	var out []*flowtracev1.Flow
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("GetFlows recv: %v", err)
		}
		if f := resp.GetFlow(); f != nil {
			out = append(out, f)
		}
	}
}

// waitFlows polls until cond holds on the matching flows.
func (a *agentProc) waitFlows(t *testing.T, what string, cond func([]*flowtracev1.Flow) bool, allow ...*flowtracev1.FlowFilter) []*flowtracev1.Flow {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		fs := a.flows(t, allow...)
		if cond(fs) {
			return fs
		}
		if time.Now().After(deadline) {
			for _, f := range fs {
				t.Logf("flow: %v", f)
			}
			t.Fatalf("%s: not seen within 15s (%d matching flows)", what, len(fs))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dial connects from a pod to ip:port inside the lab.
func dial(l *lab.Lab, from string, to netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	p, ok := l.Pod(from)
	if !ok {
		return nil, fmt.Errorf("no pod %s", from)
	}
	var c net.Conn
	err := l.Do(p.Netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to, uint16(port)).String(), timeout)
		return err
	})
	return c, err
}

// listen starts a TCP server in a pod; handle runs per connection.
func listen(t *testing.T, l *lab.Lab, pod string, port int, handle func(net.Conn)) {
	t.Helper()
	p, _ := l.Pod(pod)
	var ln net.Listener
	err := l.Do(p.Netns, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(p.IPv4, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", pod, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
}

// tcState lists flowtrace's (or anyone's) tc attachments in a namespace:
// TCX programs, clsact qdiscs and bpf filters, one line each.
func tcState(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	var out []string
	err := l.Do(l.NodeNetns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, lk := range links {
			idx := lk.Attrs().Index
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
				if err == nil && len(res.Programs) > 0 {
					out = append(out, fmt.Sprintf("%s: %d tcx programs (%v)", lk.Attrs().Name, len(res.Programs), at))
				}
			}
			qds, err := netlink.QdiscList(lk)
			if err != nil {
				return err
			}
			for _, q := range qds {
				if q.Type() == "clsact" {
					out = append(out, lk.Attrs().Name+": clsact qdisc")
				}
			}
			for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
				fs, err := netlink.FilterList(lk, parent)
				if err != nil {
					continue
				}
				for _, f := range fs {
					if bf, ok := f.(*netlink.BpfFilter); ok {
						out = append(out, fmt.Sprintf("%s: bpf filter %q", lk.Attrs().Name, bf.Name))
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list tc state: %v", err)
	}
	return out
}

func countLines(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

func hasLine(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// kernel is what the running kernel offers the datapath, found out directly
// (a TCX attach, kernel BTF), so the e2e tests assert what the agent must
// pick on this kernel rather than what one kernel happens to do.
type kernel struct {
	tcx     bool // TCX attach (6.6+); otherwise clsact
	reasons bool // enum skb_drop_reason (5.17+); otherwise drops carry no reason
}

var kernelProbe struct {
	sync.Once
	k   kernel
	err error
}

func probeKernel(t *testing.T, l *lab.Lab) kernel {
	t.Helper()
	kernelProbe.Do(func() {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			kernelProbe.err = fmt.Errorf("load kernel btf: %w", err)
			return
		}
		var e *btf.Enum
		kernelProbe.k.reasons = spec.TypeByName("skb_drop_reason", &e) == nil
		// Before 5.11 BPF memory is charged to RLIMIT_MEMLOCK, not memcg.
		if err := rlimit.RemoveMemlock(); err != nil {
			kernelProbe.err = fmt.Errorf("remove memlock rlimit: %w", err)
			return
		}
		// A pass-through program on the lab node's loopback, detached at once.
		kernelProbe.err = l.Do(l.NodeNetns, func() error {
			p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
			if err != nil {
				return fmt.Errorf("load probe program: %w", err)
			}
			defer p.Close()
			lk, err := link.AttachTCX(link.TCXOptions{Interface: 1, Program: p, Attach: ebpf.AttachTCXIngress})
			if errors.Is(err, ebpf.ErrNotSupported) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("probe tcx: %w", err)
			}
			kernelProbe.k.tcx = true
			return lk.Close()
		})
	})
	if kernelProbe.err != nil {
		t.Fatal(kernelProbe.err)
	}
	return kernelProbe.k
}

// tcMode is the attach mode the agent's auto mode must pick here.
func (k kernel) tcMode() string {
	if k.tcx {
		return "tcx"
	}
	return "clsact"
}

// dropIs: f is a drop with the kernel reason want, or, on a kernel without
// drop reasons, a drop whose reason is UNKNOWN (all such a kernel can say).
func (k kernel) dropIs(f *flowtracev1.Flow, want flowtracev1.DropReason) bool {
	if f.Verdict != flowtracev1.Verdict_VERDICT_DROPPED {
		return false
	}
	if k.reasons {
		return f.DropReason == want
	}
	return f.DropReason == flowtracev1.DropReason_DROP_REASON_UNKNOWN && f.DropReasonKernel == "UNKNOWN"
}

// reasonName is the kernel reason name the CLI must print for want.
func (k kernel) reasonName(want flowtracev1.DropReason) string {
	if k.reasons {
		return strings.TrimPrefix(want.String(), "DROP_REASON_")
	}
	return "UNKNOWN"
}
