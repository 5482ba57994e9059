// Package nstest builds throwaway network namespaces and veth pairs for
// privileged tests. Every namespace it creates is removed in t.Cleanup and
// has no route out, so test traffic never leaves the machine.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
)

// Name returns a unique short name: prefix + 4 random hex characters.
func Name(prefix string) string {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Run runs argv and fails the test with its output if it fails.
func Run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// NewNetns creates a named namespace (/run/netns/NAME) with lo up and
// deletes it when the test ends.
func NewNetns(t testing.TB) string {
	t.Helper()
	name := Name("ftt")
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Veth creates a veth pair: nameA with addrA (CIDR) in nsA and nameB with
// addrB in nsB, both up. Deleting either namespace removes the pair.
func Veth(t testing.TB, nsA, nameA, addrA, nsB, nameB, addrB string) {
	t.Helper()
	Run(t, "ip", "-n", nsA, "link", "add", nameA, "type", "veth", "peer", "name", nameB, "netns", nsB)
	Run(t, "ip", "-n", nsA, "addr", "add", addrA, "dev", nameA)
	Run(t, "ip", "-n", nsB, "addr", "add", addrB, "dev", nameB)
	Run(t, "ip", "-n", nsA, "link", "set", nameA, "up")
	Run(t, "ip", "-n", nsB, "link", "set", nameB, "up")
}
