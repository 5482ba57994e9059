//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
)

// TestVerifierTail: a load refused on an older kernel (5.10 refuses the
// kfuncs) is logged at warn with the end of the verifier's log, the lines
// that say why, not its whole program listing (~300 KB, one such line per
// agent start); the whole log stays in the error for tests and debug.
func TestVerifierTail(t *testing.T) {
	log := make([]string, 0, 10001)
	for i := range 10000 {
		log = append(log, fmt.Sprintf("%d: (bf) r6 = r1", i))
	}
	log = append(log, "calling kernel function bpf_cast_to_kern_ctx is not allowed")
	err := fmt.Errorf("field FtTcIngress: %w", &ebpf.VerifierError{Cause: errors.New("invalid argument"), Log: log})

	short := verifierTail(err).Error()
	if len(short) > 1024 {
		t.Errorf("warning is %d bytes, want under 1 KB: %.200s...", len(short), short)
	}
	for _, want := range []string{"field FtTcIngress: ", "invalid argument", "bpf_cast_to_kern_ctx is not allowed"} {
		if !strings.Contains(short, want) {
			t.Errorf("warning %q lacks %q", short, want)
		}
	}
	if full := verifierDetail(err).Error(); !strings.Contains(full, "0: (bf) r6 = r1") {
		t.Errorf("the detail lost the start of the log (%d bytes)", len(full))
	}
	// A refusal wrapped on its way up keeps what the kernel said for
	// errors.Is (attachDrops falls back to raw_tp on EPERM).
	eperm := fmt.Errorf("load ft_kfree_btf: %w", &ebpf.VerifierError{Cause: syscall.EPERM, Log: log})
	if !errors.Is(eperm, syscall.EPERM) || !strings.HasPrefix(verifierTail(eperm).Error(), "load ft_kfree_btf: ") {
		t.Errorf("wrapped EPERM refusal: Is %v, tail %q", errors.Is(eperm, syscall.EPERM), verifierTail(eperm))
	}
	if plain := errors.New("no such file"); verifierTail(plain) != plain {
		t.Errorf("an error that is not the verifier's changed: %v", verifierTail(plain))
	}
}
