package cli

import (
	"bytes"
	"testing"
)

// Every kind of bad command line must be a usage error (exit status 2).
func TestBadCommandLinesAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"status", "extra"},
		{"version", "extra"},
		{"observe", "--bogus"},
		{"agent", "--attach-mode", "xdp"},
		{"agent", "--flow-report-interval", "1ms"},
		{"agent", "--flow-first-report-delay", "-1ms"},
		{"agent", "--flow-first-report-delay", "2s"}, // over a quarter of the 5s report interval
		{"agent", "--log-level", "loud"},
		{"agent", "--include", "["},
		{"agent", "--exclude", "veth[", "--include", "eth*"},
		{"agent", "--identity-grace", "-1s"},
		{"lab", "up", "extra"},
		{"lab", "up", "--prefix", "Bad_Prefix"},
	} {
		root := NewRootCmd("test")
		root.SetArgs(args)
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		err := root.Execute()
		if err == nil || !IsUsageError(err) {
			t.Errorf("%v: err = %v, want a usage error", args, err)
		}
	}
}
