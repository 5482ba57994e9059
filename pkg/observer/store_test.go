package observer

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// record is a recognisable payload for seq: its bytes say which flow it is,
// so an overwrite by a neighbour shows.
func record(seq uint64, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(seq*31 + uint64(i))
	}
	if size > 0 {
		b[0] = 0 // field number 0: not protobuf, so stored as is
	}
	return b
}

// checkStore verifies that every held flow still has its own bytes.
func checkStore(t *testing.T, s *store, sizes map[uint64]int) {
	t.Helper()
	for seq := s.next - uint64(s.n); seq < s.next; seq++ {
		if got, want := s.appendFlow(nil, s.at(seq)), record(seq, sizes[seq]); !bytes.Equal(got, want) {
			t.Fatalf("seq %d: bytes overwritten (held %d, next %d)", seq, s.n, s.next)
		}
	}
}

// TestStoreRandom: random sizes through a small arena; the count bound,
// byte bound and wrap must never let one flow's bytes overwrite another's,
// and the pages touched must stay near the bytes held.
func TestStoreRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name          string
		flows, arena  int
		minSz, maxSz  int
		wantFullCount bool
	}{
		{"count bound", 64, 64 * 2048 * 16, 100, 300, true},
		{"count bound, sizes vary widely", 64, 64 * 2048 * 16, 1, 2000, true},
		{"byte bound", 64, 4096, 100, 300, false},
		{"mixed with empty", 32, 32 * 200, 0, 400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := store{idx: make([]meta, tc.flows), arena: make([]byte, tc.arena), dict: newDict()}
			sizes := map[uint64]int{}
			var evicted int
			for i := 0; i < 20000; i++ {
				size := tc.minSz + rng.IntN(tc.maxSz-tc.minSz+1)
				seq := s.next
				sizes[seq] = size
				before := s.n
				ev, ok := s.add(int64(i), int64(i), record(seq, size), nil, false)
				if !ok {
					t.Fatalf("add %d bytes refused", size)
				}
				evicted += ev
				if s.n != before+1-ev {
					t.Fatalf("held %d after add with %d evicted, was %d", s.n, ev, before)
				}
				if s.n > tc.flows {
					t.Fatalf("held %d > %d flows", s.n, tc.flows)
				}
				if i%97 == 0 {
					checkStore(t, &s, sizes)
				}
				if i < 10000 && rng.IntN(500) == 0 { // age eviction of a few
					for k := rng.IntN(s.n + 1); k > 0; k-- {
						s.dropOldest()
						evicted++
					}
				}
			}
			checkStore(t, &s, sizes)
			if got := uint64(s.n + evicted); got != s.next {
				t.Errorf("held %d + evicted %d != added %d", s.n, evicted, s.next)
			}
			if tc.wantFullCount && s.n != tc.flows {
				t.Errorf("held %d flows, want the count bound %d", s.n, tc.flows)
			}
			// The wrap starts over as soon as there is room at the front:
			// the high-water mark stays near the count bound's bytes,
			// however long the arena is and however many flows went
			// through.
			if limit := tc.flows*(1+tc.maxSz)*5/4 + 2*tc.maxSz; int(s.high) > limit || int(s.high) > tc.arena {
				t.Errorf("high-water %d bytes, want <= %d", s.high, min(limit, tc.arena))
			}
		})
	}
}

// TestStoreExtent: at the count bound, with sizes that wander around a
// mean (the agent's mix of flow and drop records), the arena's pages
// touched stay those of the most bytes ever held, plus a little slack,
// however many flows go through; and the high-water mark covers every byte
// written, so release hands them all back.
func TestStoreExtent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const flows = 4096
	s := store{idx: make([]meta, flows), arena: make([]byte, flows*2048), dict: newDict()}
	sizes := map[uint64]int{}
	var held, maxHeld, extent int
	for i := 0; i < 300000; i++ {
		size := []int{120, 120, 180}[rng.IntN(3)] + rng.IntN(8)
		if s.n == flows {
			old := s.next - uint64(s.n)
			held -= int(s.at(old).size)
			delete(sizes, old)
		}
		seq := s.next
		sizes[seq] = size
		if _, ok := s.add(int64(i), int64(i), record(seq, size), nil, false); !ok {
			t.Fatal("add refused")
		}
		m := s.at(seq)
		held += int(m.size)
		maxHeld = max(maxHeld, held)
		// Every held flow's end: flows moved up by the store count too.
		if i%64 == 0 {
			for q := s.next - uint64(s.n); q < s.next; q++ {
				extent = max(extent, int(s.at(q).off+s.at(q).size))
			}
		}
		extent = max(extent, int(m.off+m.size))
		if i%4999 == 0 {
			checkStore(t, &s, sizes)
		}
	}
	checkStore(t, &s, sizes)
	t.Logf("most bytes held %d, arena extent %d (%.3fx), high-water %d", maxHeld, extent, float64(extent)/float64(maxHeld), s.high)
	if limit := maxHeld + maxHeld/16 + 8<<10; extent > limit {
		t.Errorf("arena extent %d bytes for at most %d held, want <= %d", extent, maxHeld, limit)
	}
	if int(s.high) < extent {
		t.Errorf("high-water %d below the %d bytes written", s.high, extent)
	}
}

func TestStoreTooLarge(t *testing.T) {
	s := store{idx: make([]meta, 4), arena: make([]byte, 100), dict: newDict()}
	// A record is the flow plus a one-byte header.
	if _, ok := s.add(1, 1, make([]byte, 100), nil, false); ok {
		t.Fatal("a flow larger than the arena was accepted")
	}
	if _, ok := s.add(1, 1, make([]byte, 99), nil, false); !ok || s.n != 1 {
		t.Fatalf("a flow filling the arena was refused (held %d)", s.n)
	}
	ev, ok := s.add(2, 2, make([]byte, 10), nil, false)
	if !ok || ev != 1 || s.n != 1 {
		t.Fatalf("next flow: ok %v evicted %d held %d, want the full one evicted", ok, ev, s.n)
	}
}

// TestStoreRelease: the default arena (an anonymous mapping) is
// released when empty and written again afterwards.
func TestStoreRelease(t *testing.T) {
	s := newStore(8)
	for i := range 8 {
		s.add(int64(i), int64(i), record(uint64(i), 100), nil, false)
	}
	for s.n > 0 {
		s.dropOldest()
	}
	s.release()
	if s.high != 0 {
		t.Fatalf("high-water %d after release", s.high)
	}
	s.add(9, 9, record(s.next, 100), nil, false)
	checkStore(t, &s, map[uint64]int{s.next - 1: 100})
	unmapArena(s.arena)
}
