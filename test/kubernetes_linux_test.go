package test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/lab"
	"github.com/flowtrace/flowtrace/pkg/testutil"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// The lab's pods registered in a real kube-apiserver name the flows, with
// their workloads: no identity file involved. The control plane runs inside
// the lab's node namespace, where the agent reaches it on loopback.
func TestKubernetesNamesLabFlows(t *testing.T) {
	testutil.SkipInKernelMatrix(t, "the control plane is built with Go and is the same on every kernel")
	l, ids := newLab(t)
	bin := filepath.Join(t.TempDir(), "k8s-control-plane")
	if out, err := exec.Command("go", "build", "-o", bin, "../test/k8s/cmd/k8s-control-plane").CombinedOutput(); err != nil {
		testutil.SkipOrFail(t, "cannot build the control plane harness: "+err.Error()+"\n"+string(out))
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute) // a cold build of kube-apiserver
	defer cancel()
	cp := exec.CommandContext(ctx, "ip", "netns", "exec", l.NodeNetns, bin, "-register", ids, "-kubeconfig", kubeconfig,
		"-node-ips", l.GatewayV4.String())
	cp.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cp.Cancel = func() error { return cp.Process.Signal(syscall.SIGTERM) }
	stdout, _ := cp.StdoutPipe()
	var stderr testutil.Buffer
	cp.Stderr = &stderr
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Process.Signal(syscall.SIGTERM); _ = cp.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "kubeconfig=") {
				ready <- true
			}
		}
		ready <- false
	}()
	if !<-ready {
		testutil.SkipOrFail(t, "control plane did not start (make k8s-binaries builds etcd and kube-apiserver):\n"+stderr.String())
	}

	// An identity file that names nobody: every name must come from the API.
	empty := filepath.Join(t.TempDir(), "empty.json")
	if err := os.WriteFile(empty, []byte(`{"pods": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, l, empty, "--kubernetes", "--kubeconfig", kubeconfig)
	st, err := a.status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("identity sources: %v", st.IdentitySources)

	frontend, db := ip4(t, l, "frontend"), ip4(t, l, "db")
	deadline := time.Now().Add(20 * time.Second)
	var got *flowtracev1.Flow
	for got == nil && time.Now().Before(deadline) {
		_, _ = dial(l, "frontend", db.IPv4, lab.BlockedPort, 300*time.Millisecond)
		for _, f := range a.flows(t, dropped) {
			if f.Source.GetPodName() == frontend.Name && f.Destination.GetPodName() == db.Name {
				got = f
			}
		}
	}
	if got == nil {
		t.Fatalf("no drop named from the API server within 20s; status %v", st.IdentitySources)
	}
	if w := got.Source.GetWorkload(); w.GetKind() != "Deployment" || w.GetName() != "frontend" {
		t.Errorf("frontend's workload %v, want Deployment frontend (owner chain through the ReplicaSet)", w)
	}
	if w := got.Destination.GetWorkload(); w.GetKind() != "StatefulSet" || w.GetName() != "db" {
		t.Errorf("db's workload %v, want StatefulSet db", w)
	}
	if got.Source.GetNodeName() != "lab-node" || !strings.Contains(strings.Join(got.Source.GetLabels(), ","), "app=frontend") {
		t.Errorf("frontend endpoint %v", got.Source)
	}
	out, err := exec.Command(flowtraceBin, "observe", "--server", a.sock, "--verdict", "DROPPED", "-o", "json").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"kind":"Deployment"`) {
		t.Errorf("observe -o json lacks the Deployment: %v\n%s", err, out)
	}
}
