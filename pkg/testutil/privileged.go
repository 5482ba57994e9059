// Package testutil holds helpers shared by flowtrace's tests.
package testutil

import (
	"os"
	"testing"
)

// RequireEnv is the environment variable CI sets so that a privileged test
// which cannot run is a failure instead of a skip.
const RequireEnv = "FLOWTRACE_REQUIRE_PRIVILEGED"

// Required reports whether privileged tests must run (CI).
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// RequirePrivileged skips t when the process is not root, unless
// FLOWTRACE_REQUIRE_PRIVILEGED=1, in which case it fails: CI runs as root
// and must never skip the tests that load BPF or build network namespaces.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	SkipOrFail(t, "needs root (BPF, netns, attach)")
}

// SkipOrFail skips with reason, or fails when privileged tests are required.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s, and %s=1 forbids skipping", reason, RequireEnv)
	}
	t.Skip(reason)
}

// InVMEnv is set by the kernel matrix's guest /init.
const InVMEnv = "FLOWTRACE_IN_VM"

// SkipInKernelMatrix skips a test that does not depend on the kernel and
// cannot run inside the kernel matrix's minimal guests (no Go toolchain, no
// Kubernetes binaries). It runs everywhere else, CI's native run included.
func SkipInKernelMatrix(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(InVMEnv) == "1" {
		t.Skip("kernel matrix guest: " + reason)
	}
}
