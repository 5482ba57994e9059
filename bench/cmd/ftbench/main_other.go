//go:build !linux

// Command ftbench measures flowtrace's cost; it needs Linux (namespaces,
// BPF). See bench/README.md.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ftbench: Linux only (network namespaces and BPF)")
	os.Exit(1)
}
