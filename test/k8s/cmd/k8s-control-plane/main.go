//go:build linux

// Command k8s-control-plane runs a local etcd + kube-apiserver on loopback
// (no kubelet, no controllers) and optionally registers the lab's pods and
// Services from an identity file, so the demo shows names coming from
// Kubernetes:
//
//	go run ./test/k8s/cmd/k8s-control-plane -register /run/flowtrace/lab-identity.json \
//	    -kubeconfig /run/flowtrace/lab-kubeconfig &
//	flowtrace agent --kubernetes --kubeconfig /run/flowtrace/lab-kubeconfig --node-name lab-node
//
// It runs until interrupted, then stops both processes.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/test/k8s/k8stest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-control-plane:", err)
		os.Exit(1)
	}
}

func run() error {
	register := flag.String("register", "", "identity file (the static File format) whose pods and Services to create")
	kubeconfig := flag.String("kubeconfig", "", "write an admin kubeconfig here (default: print its path)")
	dir := flag.String("dir", "", "state directory (default: a new temporary directory, removed at exit)")
	nodeIPs := flag.String("node-ips", "", "comma-separated InternalIPs of the registered node")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bins, err := k8stest.Ensure(ctx, os.Stderr)
	if err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "flowtrace-k8s-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	c, err := k8stest.Launch(bins, *dir)
	if err != nil {
		return err
	}
	defer c.Stop()
	kc := c.Kubeconfig
	if *kubeconfig != "" {
		data, err := os.ReadFile(c.Kubeconfig)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*kubeconfig, data, 0o600); err != nil {
			return fmt.Errorf("write kubeconfig: %w", err)
		}
		kc = *kubeconfig
	}
	if *register != "" {
		var doc struct {
			Node     string             `json:"node"`
			Pods     []identity.Pod     `json:"pods"`
			Services []identity.Service `json:"services"`
		}
		data, err := os.ReadFile(*register)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("identity file %s: %w", *register, err)
		}
		var ips []netip.Addr
		for _, s := range strings.Split(*nodeIPs, ",") {
			if s = strings.TrimSpace(s); s != "" {
				ip, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("-node-ips: %w", err)
				}
				ips = append(ips, ip)
			}
		}
		if err := k8stest.Register(ctx, c.Client, doc.Node, ips, doc.Pods, doc.Services); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "registered %d pods and %d services (node %q)\n", len(doc.Pods), len(doc.Services), doc.Node)
	}
	fmt.Printf("kubeconfig=%s\nserver=%s\n", kc, c.URL)
	<-ctx.Done()
	return nil
}
