// Package kallsyms turns kernel text addresses into "symbol+offset", the way
// pwru and perf name the place a packet was freed.
package kallsyms

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Table is a sorted, compact copy of the kernel's text symbols: all names
// live in one string, so ~120k symbols cost a few MB and no per-symbol
// allocation.
type Table struct {
	addrs []uint64
	ends  []uint32 // ends[i] is the end of name i in names
	names string
}

// Load reads /proc/kallsyms. Without privileges the kernel shows zero
// addresses; Load then returns an error and callers print raw addresses.
func Load() (*Table, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("open kallsyms: %w", err)
	}
	defer f.Close()
	// Sized for a distribution kernel (~65k text symbols and ~1.5 MB of
	// names once the __pfx_ stubs are left out), so the buffers are not
	// regrown (and copied) a dozen times.
	t, err := parse(f, 1<<16, 2<<20)
	if err != nil {
		return nil, err
	}
	t.moveOffHeap()
	return t, nil
}

var pfx = []byte("__pfx_")

type sym struct {
	addr       uint64
	start, end uint32 // the name in the parse buffer
}

// Parse reads kallsyms text ("addr type name [module]"), keeping text symbols.
// It works on the scanner's bytes and copies only the names it keeps: the
// kernel lists ~200k symbols, and a string and field slice per line made
// loading cost ~45 MB of garbage at every agent start.
func Parse(r io.Reader) (*Table, error) { return parse(r, 0, 0) }

// parse is Parse with capacity hints for the symbols and their names.
func parse(r io.Reader, symHint, nameHint int) (*Table, error) {
	syms := make([]sym, 0, symHint)
	buf := make([]byte, 0, nameHint) // names of kept symbols, in file order
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	nonzero := false
	for sc.Scan() {
		line := sc.Bytes()
		addrField, rest := field(line)
		typ, rest := field(rest)
		name, _ := field(rest)
		if len(name) == 0 || len(typ) != 1 || (typ[0] != 't' && typ[0] != 'T') {
			continue
		}
		// Kernels built with function padding (x86 call depth tracking,
		// CFI) name the 16 padding bytes before every function
		// __pfx_<function>: nearly half of all text symbols and ~1.5 MB of
		// names. No drop happens in padding, and a return address just
		// past a function's last call then reads as that function+off
		// rather than as the next function's stub, so they are left out.
		if bytes.HasPrefix(name, pfx) {
			continue
		}
		addr, ok := parseHex(addrField)
		if !ok {
			continue
		}
		if addr != 0 {
			nonzero = true
		}
		start := uint32(len(buf))
		buf = append(buf, name...)
		syms = append(syms, sym{addr, start, uint32(len(buf))})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	if len(syms) == 0 || !nonzero {
		return nil, fmt.Errorf("kallsyms has no usable text symbols (addresses hidden by kptr_restrict?)")
	}
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	t := &Table{addrs: make([]uint64, len(syms)), ends: make([]uint32, len(syms))}
	var names strings.Builder
	names.Grow(len(buf))
	for i, s := range syms {
		t.addrs[i] = s.addr
		names.Write(buf[s.start:s.end])
		t.ends[i] = uint32(names.Len())
	}
	t.names = names.String()
	return t, nil
}

// field returns the first space- or tab-separated field of b and the rest.
func field(b []byte) (f, rest []byte) {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	j := i
	for j < len(b) && b[j] != ' ' && b[j] != '\t' {
		j++
	}
	return b[i:j], b[j:]
}

// parseHex parses a kallsyms address (hex without 0x, at most 16 digits).
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(c)
	}
	return v, true
}

// Resolve returns "symbol+0xoff" for addr, or "0x<addr>" when addr is below
// every symbol. A nil table resolves to the raw address.
func (t *Table) Resolve(addr uint64) string {
	if addr == 0 {
		return ""
	}
	if t == nil {
		return fmt.Sprintf("0x%x", addr)
	}
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > addr }) - 1
	if i < 0 {
		return fmt.Sprintf("0x%x", addr)
	}
	// Aliases share an address; prefer the last one sorted stably (the
	// last one kallsyms lists).
	name := t.name(i)
	if off := addr - t.addrs[i]; off != 0 {
		b := make([]byte, 0, len(name)+19)
		b = append(append(b, name...), "+0x"...)
		return string(strconv.AppendUint(b, off, 16))
	}
	// A copy: names may live in memory unmapped with the table.
	return strings.Clone(name)
}

// name is symbol i's name, in the table's memory.
func (t *Table) name(i int) string {
	start := uint32(0)
	if i > 0 {
		start = t.ends[i-1]
	}
	return t.names[start:t.ends[i]]
}

// Len is the number of symbols held.
func (t *Table) Len() int { return len(t.addrs) }
