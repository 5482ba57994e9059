// Package kallsyms turns kernel text addresses into "symbol+offset", the way
// pwru and perf name the place a packet was freed.
package kallsyms

import (
	"bufio"
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
	return Parse(f)
}

type sym struct {
	addr uint64
	name string
}

// Parse reads kallsyms text ("addr type name [module]"), keeping text symbols.
func Parse(r io.Reader) (*Table, error) {
	var syms []sym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	nonzero := false
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 3 || (f[1] != "t" && f[1] != "T") {
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			continue
		}
		if addr != 0 {
			nonzero = true
		}
		syms = append(syms, sym{addr, f[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	if len(syms) == 0 || !nonzero {
		return nil, fmt.Errorf("kallsyms has no usable text symbols (addresses hidden by kptr_restrict?)")
	}
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	t := &Table{addrs: make([]uint64, len(syms)), ends: make([]uint32, len(syms))}
	var b strings.Builder
	for i, s := range syms {
		t.addrs[i] = s.addr
		b.WriteString(s.name)
		t.ends[i] = uint32(b.Len())
	}
	t.names = b.String()
	return t, nil
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
	// Aliases share an address; prefer the last one sorted stably, which
	// in kallsyms order is the function proper rather than a __pfx_ stub.
	start := uint32(0)
	if i > 0 {
		start = t.ends[i-1]
	}
	name := t.names[start:t.ends[i]]
	if off := addr - t.addrs[i]; off != 0 {
		return fmt.Sprintf("%s+0x%x", name, off)
	}
	return name
}

// Len is the number of symbols held.
func (t *Table) Len() int { return len(t.addrs) }
