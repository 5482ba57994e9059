//go:build linux

// Command k8s-binaries builds etcd and kube-apiserver for the integration
// tests into the cache (see test/k8s/k8stest) and prints their paths. CI
// runs it in the background early so the cold build overlaps other work.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/flowtrace/flowtrace/test/k8s/k8stest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-binaries:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	b, err := k8stest.Ensure(ctx, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Printf("etcd=%s\nkube-apiserver=%s\n", b.Etcd, b.KubeAPIServer)
	fmt.Fprintf(os.Stderr, "ready in %s\n", time.Since(start).Round(time.Second))
	return nil
}
