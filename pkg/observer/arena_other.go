//go:build !unix

package observer

// Without mmap the arena lives on the Go heap.
func mapArena(size int) []byte { return make([]byte, size) }

func unmapArena([]byte) {}

func releaseArena([]byte) {}

func mapIndex(n int) ([]meta, []byte) { return make([]meta, n), nil }
