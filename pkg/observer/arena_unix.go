//go:build unix

package observer

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapArena reserves size bytes of anonymous memory outside the Go heap.
// Pages cost memory only once written; MAP_NORESERVE keeps the reservation
// from counting against overcommit. If the mapping fails the arena falls
// back to the Go heap, which works, only less frugally.
func mapArena(size int) []byte {
	if size == 0 {
		return nil
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return make([]byte, size)
	}
	return b
}

// unmapArena returns the arena's address space; b must come from mapArena
// and no longer be used.
func unmapArena(b []byte) { _ = unix.Munmap(b) }

// releaseArena drops the pages of b (a prefix of the arena), which read as
// zeros afterwards; the mapping stays.
func releaseArena(b []byte) { _ = unix.Madvise(b, unix.MADV_DONTNEED) }

// mapIndex returns n zeroed metas in anonymous memory (pointer-free, so
// the GC need not see them), or on the heap if mapping fails. The second
// result backs the slice and goes to unmapArena with the store.
func mapIndex(n int) ([]meta, []byte) {
	size := n * int(unsafe.Sizeof(meta{}))
	if size == 0 {
		return make([]meta, n), nil
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return make([]meta, n), nil
	}
	return unsafe.Slice((*meta)(unsafe.Pointer(&b[0])), n), b
}
