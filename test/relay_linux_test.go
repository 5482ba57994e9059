package test

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/lab"
	"github.com/flowtrace/flowtrace/pkg/relay"
	"github.com/flowtrace/flowtrace/pkg/testutil"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Three agents in three lab node namespaces behind one relay: --last N is
// across all nodes, the CLI works unchanged against the relay, and a node
// stopped mid-stream is reported in the stream and in status while the
// others keep streaming.
func TestRelayThreeNodes(t *testing.T) {
	type node struct {
		lab   *lab.Lab
		agent *agentProc
		name  string
	}
	var nodes []node
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		l, ids := newLab(t)
		nodes = append(nodes, node{lab: l, agent: startAgent(t, l, ids, "--node-name", name), name: name})
	}
	sock := filepath.Join(t.TempDir(), "relay.sock")
	args := []string{"relay", "--socket", sock, "--sort-window", "200ms"}
	for _, n := range nodes {
		args = append(args, "--peer", n.agent.sock)
	}
	rl := exec.Command(flowtraceBin, args...)
	var rlog testutil.Buffer
	rl.Stdout, rl.Stderr = &rlog, &rlog
	rl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := rl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rl.Process.Signal(syscall.SIGTERM)
		_ = rl.Wait()
		if t.Failed() {
			t.Logf("relay log:\n%s", rlog.String())
		}
	})
	observe := func(extra ...string) (string, error) {
		out, err := exec.Command(flowtraceBin, append([]string{"--server", sock, "observe"}, extra...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := observe("--last", "1"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay not serving after 10s:\n%s", rlog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// One policy drop on each node.
	for _, n := range nodes {
		db, _ := n.lab.Pod("db")
		_, _ = dial(n.lab, "frontend", db.IPv4, lab.BlockedPort, 300*time.Millisecond)
	}
	seen := map[string]bool{}
	deadline = time.Now().Add(15 * time.Second)
	for len(seen) < 3 && time.Now().Before(deadline) {
		out, err := observe("--verdict", "DROPPED", "--to-port", "5432", "--last", "100", "-o", "json")
		if err != nil {
			t.Fatalf("observe through the relay: %v\n%s", err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var r struct {
				Flow struct {
					NodeName string `json:"nodeName"`
				} `json:"flow"`
			}
			if json.Unmarshal([]byte(line), &r) == nil && r.Flow.NodeName != "" {
				seen[r.Flow.NodeName] = true
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(seen) != 3 {
		t.Fatalf("drops through the relay came from %v, want node-a, node-b and node-c", seen)
	}
	// --last 2 is the newest two across all nodes, not two per node.
	out, err := observe("--verdict", "DROPPED", "--to-port", "5432", "--last", "2", "-o", "json")
	if n := len(strings.Split(strings.TrimSpace(out), "\n")); err != nil || n != 2 {
		t.Errorf("--last 2 through the relay printed %d lines (err %v):\n%s", n, err, out)
	}

	// Follow, then stop node-c: the stream says so and node-a still arrives.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := flowtracev1.NewObserverServiceClient(conn).GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true,
		Allowlist: []*flowtracev1.FlowFilter{{Verdict: dropped.Verdict, DestinationPort: []uint32{lab.BlockedPort}}}})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan *flowtracev1.GetFlowsResponse, 64)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(events)
				return
			}
			events <- r
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := nodes[2].agent.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("stop node-c: %v", err)
	}
	var unavailable, fromA bool
	poke := time.NewTicker(300 * time.Millisecond)
	defer poke.Stop()
	for !(unavailable && fromA) {
		select {
		case r, ok := <-events:
			if !ok {
				t.Fatalf("relay stream ended (unavailable=%v fromA=%v)", unavailable, fromA)
			}
			if relay.IsNodeUnavailable(r) && r.GetNodeStatus().GetNodeName() == "node-c" {
				unavailable = true
			}
			if r.GetFlow().GetNodeName() == "node-a" {
				fromA = true
			}
		case <-poke.C:
			db, _ := nodes[0].lab.Pod("db")
			_, _ = dial(nodes[0].lab, "frontend", db.IPv4, lab.BlockedPort, 100*time.Millisecond)
		case <-ctx.Done():
			t.Fatalf("after stopping node-c: unavailable reported %v, node-a flows %v", unavailable, fromA)
		}
	}
	st, err := exec.Command(flowtraceBin, "--server", sock, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(st), "node-c") {
		t.Errorf("relay status does not mention node-c (err %v):\n%s", err, st)
	}
	sc := bufio.NewScanner(strings.NewReader(string(st)))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "node-c") {
			t.Logf("status: %s", sc.Text())
		}
	}
}
