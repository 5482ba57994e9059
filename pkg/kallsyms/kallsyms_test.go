package kallsyms

import (
	"os"
	"runtime"
	"strings"
	"testing"
)

const sample = `ffffffff81000000 T _stext
ffffffff81001000 t __pfx_nf_hook_slow
ffffffff81001010 T nf_hook_slow
ffffffff81001200 D some_data
ffffffff81002000 T tcp_v4_rcv	[tcp]
`

func TestResolve(t *testing.T) {
	tab, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[uint64]string{
		0xffffffff81001010: "nf_hook_slow",
		0xffffffff81001008: "_stext+0x1008", // __pfx_ stubs are not kept
		0xffffffff8100109c: "nf_hook_slow+0x8c",
		0xffffffff81001300: "nf_hook_slow+0x2f0", // data symbols are skipped
		0xffffffff81002004: "tcp_v4_rcv+0x4",
		0xffffffff80000000: "0xffffffff80000000",
		0:                  "",
	}
	for addr, want := range cases {
		if got := tab.Resolve(addr); got != want {
			t.Errorf("Resolve(%#x) = %q, want %q", addr, got, want)
		}
	}
	var nilTab *Table
	if got := nilTab.Resolve(0x10); got != "0x10" {
		t.Errorf("nil table: %q", got)
	}
}

func TestHiddenAddresses(t *testing.T) {
	if _, err := Parse(strings.NewReader("0000000000000000 T foo\n0000000000000000 T bar\n")); err == nil {
		t.Fatal("zeroed kallsyms accepted")
	}
}

func TestRunningKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: kallsyms addresses are hidden; checking only that Load fails cleanly")
		if _, err := Load(); err == nil {
			t.Log("kallsyms readable without root on this machine")
		}
		return
	}
	tab, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() < 1000 {
		t.Fatalf("only %d symbols", tab.Len())
	}
	for i := range tab.Len() {
		if name := tab.name(i); strings.HasPrefix(name, "__pfx_") {
			t.Fatalf("symbol %d is a padding stub: %s", i, name)
		}
	}
}

// TestOffHeapSameAnswers: the table Load moves into its own mapping resolves
// like the one Parse keeps on the heap, and survives a GC of everything else.
func TestOffHeapSameAnswers(t *testing.T) {
	heap, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	moved, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	moved.moveOffHeap()
	runtime.GC()
	for _, addr := range []uint64{0xffffffff81000000, 0xffffffff81000005, 0xffffffff81001010, 0xffffffff81001300, 0xffffffff81002010, 0x10} {
		if got, want := moved.Resolve(addr), heap.Resolve(addr); got != want {
			t.Errorf("Resolve(%#x) = %q off the heap, %q on it", addr, got, want)
		}
	}
	runtime.KeepAlive(moved)
}
