//go:build unix

package kallsyms

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// moveOffHeap copies the table (~2 MB for a distribution kernel, held for
// the agent's lifetime, pointer-free) into an anonymous mapping. On the Go
// heap it counted toward the GC's goal, which GOGC=100 sets at twice the
// live heap: as much again in RSS for memory that is never garbage. The
// mapping goes when the table does. On failure the table stays as it is.
func (t *Table) moveOffHeap() {
	n := len(t.addrs)
	size := n*8 + n*4 + len(t.names)
	if n == 0 || size == 0 {
		return
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return
	}
	// The mapping is page-aligned: addrs (8-byte), then ends (4-byte).
	addrs := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n)
	ends := unsafe.Slice((*uint32)(unsafe.Pointer(&b[n*8])), n)
	copy(addrs, t.addrs)
	copy(ends, t.ends)
	nb := b[n*12:]
	copy(nb, t.names)
	t.addrs, t.ends = addrs, ends
	if len(nb) > 0 {
		t.names = unsafe.String(&nb[0], len(nb))
	}
	runtime.AddCleanup(t, func(b []byte) { _ = unix.Munmap(b) }, b)
}
