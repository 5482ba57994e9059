package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/flowtrace/flowtrace/pkg/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Tracer names. "cmd" is whatever --tracer-cmd runs.
const (
	tracerNone      = "none"
	tracerFloor     = "floor"
	tracerFlowtrace = "flowtrace"
	tracerTcpdump   = "tcpdump"
	tracerCmd       = "cmd"
)

// running is one started tracer.
type running struct {
	name  string
	cmd   *exec.Cmd
	progs *progSet
	fl    *floor
	agent *agentConn
	out   *testutil.Buffer
	// exited is closed when cmd has exited, with waitErr its Wait's error.
	exited  chan struct{}
	waitErr error
	// readyCPU is the tracer's CPU seconds when it became ready: a start-up
	// cost, not a cost per event.
	readyCPU float64
}

type tracerConfig struct {
	flowtraceBin string
	tracerCmd    string
	maxFlows     int
	// gomaxprocs, when > 0, is the agent's GOMAXPROCS: what the Go runtime
	// derives from a CPU limit (deploy/daemonset.yaml sets 1 core).
	gomaxprocs int
	// agentArgs are appended to the agent's command line (--agent-args),
	// e.g. its hidden --cpu-profile flag, to profile it under a workload;
	// "{run}" in them becomes run, which names this agent's run.
	agentArgs []string
	run       string
	log       *slog.Logger
}

func startTracer(ctx context.Context, name string, b *bed, tc tracerConfig) (*running, error) {
	r := &running{name: name, out: &testutil.Buffer{}}
	switch name {
	case tracerNone:
		return r, nil
	case tracerFloor:
		fl, err := newFloor()
		if err != nil {
			return nil, err
		}
		if err := b.lab.Do(b.lab.NodeNetns, func() error { return fl.attachTC(b.veths) }); err != nil {
			return nil, errors.Join(err, fl.Close())
		}
		r.fl, r.progs = fl, fl.programs()
		return r, nil
	case tracerFlowtrace:
		sock := filepath.Join(b.dir, "agent.sock")
		args := []string{"netns", "exec", b.lab.NodeNetns, tc.flowtraceBin, "agent", "--socket", sock,
			"--identity-file", b.cfg.IdentityFile, "--include", b.cfg.Prefix + "v-*", "--log-level", "warn",
			"--max-flows", strconv.Itoa(tc.maxFlows)}
		for _, a := range tc.agentArgs {
			args = append(args, strings.ReplaceAll(a, "{run}", tc.run))
		}
		r.cmd = exec.Command("ip", args...)
		if tc.gomaxprocs > 0 {
			r.cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(tc.gomaxprocs))
		}
	case tracerTcpdump:
		// The baseline: tcpdump on the client pod's host veth,
		// capturing whole packets to nowhere.
		r.cmd = exec.Command("ip", "netns", "exec", b.lab.NodeNetns, "tcpdump", "-i", b.client.HostVeth, "-nn", "-s", "0", "-B", "8192", "-w", "/dev/null")
	case tracerCmd:
		r.cmd = exec.Command("ip", "netns", "exec", b.lab.NodeNetns, "sh", "-c", tc.tracerCmd)
		r.cmd.Env = append(os.Environ(), "FTBENCH_IFACES="+strings.Join(b.veths, ","), "FTBENCH_NODE_NETNS="+b.lab.NodeNetns,
			"FTBENCH_IDENTITY_FILE="+b.cfg.IdentityFile,
			"FTBENCH_CLIENT_VETH="+b.client.HostVeth)
	default:
		return nil, fmt.Errorf("unknown tracer %q", name)
	}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start tracer %s: %w", name, err)
	}
	r.exited = make(chan struct{})
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.exited)
	}()
	if err := r.waitReady(ctx, b); err != nil {
		return nil, errors.Join(err, r.stop())
	}
	r.readyCPU, _ = r.usage()
	ids, err := progIDsTree(r.cmd.Process.Pid)
	if err != nil {
		return nil, errors.Join(err, r.stop())
	}
	r.progs, _ = openPrograms(ids)
	return r, nil
}

func (r *running) waitReady(ctx context.Context, b *bed) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := r.check(); err != nil {
			return fmt.Errorf("at start: %w", err)
		}
		switch r.name {
		case tracerFlowtrace:
			if r.agent == nil {
				if a, err := dialAgent(filepath.Join(b.dir, "agent.sock")); err == nil {
					r.agent = a
				}
			}
			if r.agent != nil {
				if st, err := r.agent.status(ctx); err == nil && len(st.GetInterfaces()) >= len(b.veths) {
					return nil
				}
			}
		case tracerTcpdump:
			if strings.Contains(r.out.String(), "listening on") {
				return nil
			}
		default:
			// An arbitrary command has no readiness signal: give it two
			// seconds to attach.
			time.Sleep(2 * time.Second)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("tracer %s not ready after 30s: %s", r.name, excerpt(r.out.String()))
}

// check fails when the tracer's process has exited: a tracer that dies
// during a workload would otherwise look cheap.
func (r *running) check() error {
	if r.exited == nil {
		return nil
	}
	select {
	case <-r.exited:
		return fmt.Errorf("tracer %s exited (%v): %s", r.name, r.waitErr, excerpt(r.out.String()))
	default:
		return nil
	}
}

// excerpt is the end of a process's output, and its start when the output is
// long: a Go panic's cause is in its first lines.
func excerpt(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 2400 {
		s = s[:1200] + "\n...\n" + s[len(s)-1200:]
	}
	return s
}

// pids is the tracer process and its descendants ("ip netns exec" execs in
// place; a --tracer-cmd shell may fork).
func (r *running) pids() []int {
	if r.cmd == nil || r.cmd.Process == nil {
		return nil
	}
	return descendants(r.cmd.Process.Pid)
}

func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", out[i]))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

func progIDsTree(pid int) ([]ebpf.ProgramID, error) {
	var all []ebpf.ProgramID
	for _, p := range descendants(pid) {
		ids, err := progIDs(p)
		if err != nil {
			continue
		}
		all = append(all, ids...)
	}
	return all, nil
}

// usage is the tracer's CPU seconds so far and peak RSS.
func (r *running) usage() (cpu, rssMB float64) {
	for _, p := range r.pids() {
		if c, err := cpuSeconds(p); err == nil {
			cpu += c
		}
		if m, err := peakRSSMB(p); err == nil && m > rssMB {
			rssMB = m
		}
	}
	return cpu, rssMB
}

func (r *running) stop() error {
	var errs []error
	if r.agent != nil {
		errs = append(errs, r.agent.Close())
	}
	r.progs.Close()
	if r.fl != nil {
		errs = append(errs, r.fl.Close())
	}
	if r.cmd != nil && r.cmd.Process != nil {
		pgid := r.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGINT)
		select {
		case <-r.exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-r.exited
			errs = append(errs, fmt.Errorf("tracer %s ignored SIGINT for 5s: killed", r.name))
		}
	}
	return errors.Join(errs...)
}

// agentConn is the bench's client of the flowtrace agent.
type agentConn struct {
	sock string // the agent's unix socket, which a storm's follower process dials too
	conn *grpc.ClientConn
	api  flowtracev1.ObserverServiceClient
}

func dialAgent(sock string) (*agentConn, error) {
	if _, err := os.Stat(sock); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial agent: %w", err)
	}
	return &agentConn{sock: sock, conn: conn, api: flowtracev1.NewObserverServiceClient(conn)}, nil
}

func (a *agentConn) status(ctx context.Context) (*flowtracev1.ServerStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return a.api.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
}

func (a *agentConn) Close() error { return a.conn.Close() }

// lostTotal sums every loss the agent counts: ring buffer, queues, history.
func lostTotal(st *flowtracev1.ServerStatusResponse, sources ...flowtracev1.LostEventsSource) uint64 {
	var n uint64
	for _, l := range st.GetLostEvents() {
		for _, s := range sources {
			if l.GetSource() == s {
				n += l.GetCount()
			}
		}
	}
	return n
}
