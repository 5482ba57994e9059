package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/lab"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// HubbleBinEnv names the real hubble CLI for the end-to-end test; `make
// hubble-test` builds it (cached) and sets it.
const HubbleBinEnv = "FLOWTRACE_HUBBLE_BIN"

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// start runs a background process that dies with the test.
func start(t *testing.T, name string, argv ...string) *syncBuf {
	t.Helper()
	out := &syncBuf{}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("%s did not exit within 15s of SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return out
}

func goBuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func dialFrom(l *lab.Lab, pod string, to netip.Addr, port int) (net.Conn, error) {
	p, _ := l.Pod(pod)
	var c net.Conn
	err := l.Do(p.Netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to, uint16(port)).String(), 1500*time.Millisecond)
		return err
	})
	return c, err
}

// The real hubble CLI against flowtrace-hubble against a flowtrace agent on
// the lab: what a Hubble user types, and what they must see.
// flowsPerSecond finds the rate in hubble status's "Flows/s: 12.34" line.
var flowsPerSecond = regexp.MustCompile(`Flows/s:\s*([0-9.]+)`)

func TestHubbleCLI(t *testing.T) {
	testutil.RequirePrivileged(t)
	hubble := os.Getenv(HubbleBinEnv)
	if hubble == "" {
		testutil.SkipOrFail(t, HubbleBinEnv+" is not set: run `make hubble-test` to build the real hubble CLI (cached)")
	}
	if _, err := os.Stat(hubble); err != nil {
		testutil.SkipOrFail(t, fmt.Sprintf("hubble CLI %s: %v", hubble, err))
	}

	bin := t.TempDir()
	ft, fth := filepath.Join(bin, "flowtrace"), filepath.Join(bin, "flowtrace-hubble")
	goBuild(t, "../..", ft, "./cmd/flowtrace")
	goBuild(t, ".", fth, ".")

	b := make([]byte, 2)
	_, _ = rand.Read(b)
	ids := filepath.Join(t.TempDir(), "identity.json")
	cfg := lab.Config{Prefix: "h" + hex.EncodeToString(b), IdentityFile: ids, Extended: true}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	l, err := lab.Up(ctx, cfg)
	cancel()
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Down(context.Background(), cfg); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})

	sock := filepath.Join(t.TempDir(), "ft.sock")
	start(t, "agent", "ip", "netns", "exec", l.NodeNetns, ft, "agent", "--socket", sock,
		"--identity-file", ids, "--node-name", lab.NodeName, "--flow-report-interval", "1s")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	fthLog := start(t, "flowtrace-hubble", fth, "--server", sock, "--listen-address", addr, "--health-interval", "200ms")

	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, hubble, append(args, "--server", addr)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	// Ready when hubble status passes (the agent is up and the health
	// service says SERVING).
	var status string
	deadline := time.Now().Add(40 * time.Second)
	for {
		if status, err = run("status"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hubble status never succeeded: %v\n%s\nflowtrace-hubble:\n%s", err, status, fthLog.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("hubble status:\n%s", status)
	if !strings.Contains(status, "Healthcheck (via ") || !strings.Contains(status, "Ok") || !strings.Contains(status, "Max Flows") {
		t.Errorf("hubble status output:\n%s", status)
	}

	frontend, _ := l.Pod("frontend")
	db, _ := l.Pod("db")
	web, _ := l.Service("web")
	ghost, _ := l.Service("ghost")
	for _, name := range web.Endpoints {
		p, _ := l.Pod(name)
		var ln net.Listener
		if err := l.Do(p.Netns, func() error {
			var err error
			ln, err = net.Listen("tcp", netip.AddrPortFrom(p.IPv4, web.TargetPort).String())
			return err
		}); err != nil {
			t.Fatalf("listen in %s: %v", name, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("ok"))
				c.Close()
			}
		}()
	}

	// Traffic: the policy drop, a Service with no endpoints, a Service.
	if _, err := dialFrom(l, "frontend", db.IPv4, lab.BlockedPort); err == nil {
		t.Fatal("frontend reached db through the policy")
	}
	if _, err := dialFrom(l, "frontend", ghost.VIPs[0], int(ghost.Port)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial shop/ghost: %v, want connection refused", err)
	}
	vip, _ := web.VIP(frontend.IPv4)
	c, err := dialFrom(l, "frontend", vip, int(web.Port))
	if err != nil {
		t.Fatalf("dial shop/web: %v", err)
	}
	buf := make([]byte, 2)
	_, _ = c.Read(buf)
	c.Close()

	// waitOut runs a hubble command until its output satisfies ok.
	waitOut := func(t *testing.T, ok func(string) bool, args ...string) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			out, err := run(args...)
			if err == nil && ok(out) {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("hubble %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	has := func(subs ...string) func(string) bool {
		return func(s string) bool {
			for _, sub := range subs {
				if !strings.Contains(s, sub) {
					return false
				}
			}
			return true
		}
	}
	podName := func(p lab.Pod) string { return p.Namespace + "/" + p.Name }

	t.Run("status says the rate of the last minute", func(t *testing.T) {
		// The agent has seen the lab come up and the traffic above within
		// the last minute: hubble's Flows/s line carries the agent's
		// flows_rate, which is more than nothing.
		out := waitOut(t, func(s string) bool {
			m := flowsPerSecond.FindStringSubmatch(s)
			if m == nil {
				return false
			}
			r, err := strconv.ParseFloat(m[1], 64)
			return err == nil && r > 0
		}, "status")
		t.Logf("hubble status after the traffic:\n%s", out)
	})

	t.Run("observe --verdict DROPPED shows pods and the kernel reason", func(t *testing.T) {
		// --last: a new lab's IPv6 MLD reports are dropped by the pods'
		// kernels too (no listener), and can outnumber the CLI's default 20.
		out := waitOut(t, has(podName(frontend), podName(db)+":5432", "DROPPED", "kernel drop reason NETFILTER_DROP"),
			"observe", "--verdict", "DROPPED", "--last", "1000")
		t.Logf("hubble observe --verdict DROPPED:\n%s", out)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.Contains(line, "DROPPED") {
				t.Errorf("non-drop line under --verdict DROPPED: %q", line)
			}
		}
	})
	t.Run("the no-endpoints drop is Cilium's Service backend not found", func(t *testing.T) {
		out := waitOut(t, has("Service backend not found", "shop/ghost", "has no endpoints"), "observe", "--to-service", "shop/ghost")
		t.Logf("hubble observe --to-service shop/ghost:\n%s", out)
	})
	t.Run("--to-service names the Service", func(t *testing.T) {
		out := waitOut(t, has("shop/web", "TRANSLATED", "DNAT"), "observe", "--to-service", "shop/web")
		t.Logf("hubble observe --to-service shop/web:\n%s", out)
		if strings.Contains(out, "shop/ghost") || strings.Contains(out, ":5432") {
			t.Errorf("--to-service shop/web let other flows through:\n%s", out)
		}
	})
	t.Run("--pod and --namespace", func(t *testing.T) {
		out := waitOut(t, has(podName(db)), "observe", "--pod", podName(db))
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.Contains(line, podName(db)) {
				t.Errorf("--pod %s printed an unrelated flow: %q", podName(db), line)
			}
		}
		out = waitOut(t, has("shop/"), "observe", "--namespace", "shop", "--last", "1000")
		if n, _ := run("observe", "--namespace", "kube-system"); strings.TrimSpace(n) != "" {
			t.Errorf("--namespace kube-system printed flows:\n%s", n)
		}
		_ = out
	})
	t.Run("--last", func(t *testing.T) {
		out := waitOut(t, func(s string) bool { return len(strings.Split(strings.TrimSpace(s), "\n")) == 2 }, "observe", "--last", "2")
		t.Logf("hubble observe --last 2:\n%s", out)
		out = waitOut(t, func(s string) bool { return len(strings.Split(strings.TrimSpace(s), "\n")) == 1 },
			"observe", "--verdict", "DROPPED", "--last", "1")
		if !strings.Contains(out, "DROPPED") {
			t.Errorf("--verdict DROPPED --last 1:\n%s", out)
		}
	})
	t.Run("--last with a filter only flowtrace-hubble can apply", func(t *testing.T) {
		// Labels are not pushed down to the agent: the adapter selects the
		// last N itself from the agent's history.
		out := waitOut(t, func(s string) bool { return len(strings.Split(strings.TrimSpace(s), "\n")) == 3 },
			"observe", "--from-label", "app=frontend", "--last", "3")
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.Contains(line, podName(frontend)) {
				t.Errorf("--from-label app=frontend printed %q", line)
			}
		}
	})
	t.Run("-o jsonpb", func(t *testing.T) {
		out := waitOut(t, has(`"flow"`), "observe", "--verdict", "DROPPED", "--to-port", "5432", "-o", "jsonpb", "--last", "1")
		var resp struct {
			Flow struct {
				Verdict        string `json:"verdict"`
				Summary        string `json:"Summary"`
				NodeName       string `json:"node_name"`
				DropReasonDesc string `json:"drop_reason_desc"`
				EventType      struct {
					Type int `json:"type"`
				} `json:"event_type"`
				Source struct {
					Namespace string   `json:"namespace"`
					PodName   string   `json:"pod_name"`
					Labels    []string `json:"labels"`
				} `json:"source"`
				Destination struct {
					PodName string `json:"pod_name"`
				} `json:"destination"`
			} `json:"flow"`
			NodeName string `json:"node_name"`
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &resp); err != nil {
			t.Fatalf("jsonpb output: %v\n%s", err, out)
		}
		f := resp.Flow
		t.Logf("hubble observe -o jsonpb: %s", out)
		if f.Verdict != "DROPPED" || f.EventType.Type != 1 || f.Source.PodName != frontend.Name || f.Destination.PodName != db.Name ||
			f.NodeName != lab.NodeName || resp.NodeName != lab.NodeName || !strings.Contains(f.Summary, "NETFILTER_DROP") {
			t.Errorf("jsonpb flow: %+v", resp)
		}
	})
	t.Run("--follow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, hubble, "observe", "--server", addr, "--follow", "--verdict", "DROPPED", "--to-port", "5432")
		out := &syncBuf{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		time.Sleep(time.Second)
		if s := out.String(); strings.Contains(s, "DROPPED") {
			t.Fatalf("--follow printed history before any new drop:\n%s", s)
		}
		_, _ = dialFrom(l, "frontend", db.IPv4, lab.BlockedPort)
		for !strings.Contains(out.String(), "NETFILTER_DROP") {
			if ctx.Err() != nil {
				t.Fatalf("--follow never printed the new drop:\n%s", out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("hubble observe --follow:\n%s", out.String())
	})
	t.Run("list nodes", func(t *testing.T) {
		out := waitOut(t, has(lab.NodeName, "Connected"), "list", "nodes")
		t.Logf("hubble list nodes:\n%s", out)
	})
	t.Run("list namespaces", func(t *testing.T) {
		out := waitOut(t, has("shop"), "list", "namespaces")
		t.Logf("hubble list namespaces:\n%s", out)
	})

	// The same adapter in front of a flowtrace relay sees every node: a
	// second agent on the lab's second node, both behind the relay.
	t.Run("through a flowtrace relay, hubble sees all nodes", func(t *testing.T) {
		// Short paths: a subtest's TempDir is long, unix sockets are not.
		sdir, err := os.MkdirTemp("", "fth")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sdir) })
		sock2, rsock := filepath.Join(sdir, "ft2.sock"), filepath.Join(sdir, "relay.sock")
		start(t, "agent-node2", "ip", "netns", "exec", l.Nodes[1].Netns, ft, "agent", "--socket", sock2,
			"--identity-file", ids, "--node-name", lab.Node2Name, "--flow-report-interval", "1s")
		start(t, "relay", ft, "relay", "--socket", rsock, "--peer", sock, "--peer", sock2)
		raddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		start(t, "flowtrace-hubble-relay", fth, "--server", rsock, "--listen-address", raddr, "--health-interval", "200ms")
		api, _ := l.Pod("api")
		runRelay := func(args ...string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, hubble, append(args, "--server", raddr)...).CombinedOutput()
			return string(out), err
		}
		deadline := time.Now().Add(40 * time.Second)
		for {
			// A drop inside node2's pod (a closed port) is node2's to report.
			_ = exec.Command("ip", "netns", "exec", api.Netns, "nc", "-z", "-w", "1", api.IPv4.String(), "9999").Run()
			out, err := runRelay("observe", "--verdict", "DROPPED", "--last", "1000", "-o", "jsonpb")
			if err == nil && strings.Contains(out, `"node_name":"`+lab.NodeName+`"`) && strings.Contains(out, `"node_name":"`+lab.Node2Name+`"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("hubble through the relay never showed drops of both nodes (err %v):\n%.3000s", err, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
		out, err := runRelay("list", "nodes")
		if err != nil || !strings.Contains(out, lab.NodeName) || !strings.Contains(out, lab.Node2Name) {
			t.Errorf("hubble list nodes through the relay (err %v):\n%s", err, out)
		}
		t.Logf("hubble list nodes through the relay:\n%s", out)
	})
}
