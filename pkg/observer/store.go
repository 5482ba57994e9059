package observer

// History storage.
//
// Flows are held as their marshalled bytes, back to back, in one byte arena
// used as a ring, plus a fixed index ring of small pointer-free records
// (offset, length, times) addressed by sequence number. Nothing in it is a
// Go pointer, and both are mapped outside the Go heap (arena_unix.go):
//
//   - the garbage collector neither scans history nor counts it toward its
//     heap goal, so history costs its bytes once instead of up to twice
//     (GOGC=100 lets the heap grow to twice what is live before collecting);
//   - no per-flow allocation or slice header survives Publish;
//   - arena pages become resident only once written, and writing wraps to
//     the start of the arena as soon as the oldest flow has left room
//     there, so the pages touched stay close to the bytes actually held
//     (replaying the bench's flow sizes: high-water = bytes held).
//     When the flows written since the wrap catch up with the oldest ones
//     (the bytes held grew), room is made rather than anything evicted: a
//     short newer run moves up behind the older one, otherwise the older
//     run moves up by a 64th of the bytes held (room).
//
// Each record is the flow's bytes with its endpoints and interfaces replaced
// by references into a dictionary (dict.go), or, for a lazy flow
// (PublishLazy), its payload and those references.
//
// The arena reserves arenaBytesPerFlow per flow of MaxFlows (address space,
// not memory). When flows are so large on average that the arena fills
// before MaxFlows are held, the oldest leave early, counted as evicted like
// any other flow that leaves history.

// arenaBytesPerFlow is the address space reserved per flow of MaxFlows.
// Enriched flows marshal to 150–600 bytes; 2 KiB leaves room for pods with
// many labels before history holds fewer than MaxFlows flows.
const arenaBytesPerFlow = 2048

// maxArena keeps offsets in uint32.
const maxArena = 1<<32 - 1<<16

// meta locates one held flow and keeps its times decoded, so that eviction
// and since/until never unmarshal.
type meta struct {
	off, size uint32
	added     int64 // wall clock at Publish, unix ns: age bound
	flowTime  int64 // flow time, unix ns (0 when unset): since/until
}

// store is the ring of held flows: seqs next-n .. next-1, seq s at
// idx[s%len(idx)]. Its methods are called with Observer.mu held.
type store struct {
	idx []meta
	// idxMem backs idx when it is mapped outside the heap (nil otherwise).
	idxMem []byte
	next   uint64
	n      int

	arena []byte
	// head is where the next flow's bytes go. While wrapped, the held bytes
	// are the upper run [tail, wrapEnd) then the lower run [0, head), whose
	// flows are seqs wrapSeq..next-1; otherwise [tail, head). tail is the
	// oldest flow's offset.
	head    uint32
	wrapped bool
	wrapEnd uint32
	wrapSeq uint64
	// high is the arena's high-water mark: pages below it may be resident.
	high uint32

	dict *dict
}

func newStore(maxFlows int) store {
	size := uint64(maxFlows) * arenaBytesPerFlow
	if size > maxArena {
		size = maxArena
	}
	idx, idxMem := mapIndex(maxFlows)
	return store{idx: idx, idxMem: idxMem, arena: mapArena(int(size)), dict: newDict()}
}

func (s *store) at(seq uint64) *meta { return &s.idx[seq%uint64(len(s.idx))] }

func (s *store) oldest() *meta { return s.at(s.next - uint64(s.n)) }

// dropOldest forgets the oldest flow; its bytes become free.
func (s *store) dropOldest() {
	s.dict.release(s.record(s.oldest()))
	s.n--
	if s.n == 0 {
		s.head, s.wrapped = 0, false
		return
	}
	if s.wrapped && s.next-uint64(s.n) >= s.wrapSeq {
		// The upper run is gone: what is left is [0, head).
		s.wrapped = false
	}
}

// unwrap moves the lower run up behind the upper run, so that flows can
// be added without evicting: [tail, wrapEnd+head) afterwards.
func (s *store) unwrap() {
	copy(s.arena[s.wrapEnd:s.wrapEnd+s.head], s.arena[:s.head])
	for seq := max(s.wrapSeq, s.next-uint64(s.n)); seq < s.next; seq++ {
		s.at(seq).off += s.wrapEnd
	}
	s.head += s.wrapEnd
	s.wrapped = false
	s.high = max(s.high, s.head)
}

// shiftUpper moves the upper run up by d bytes, opening d bytes between
// the lower run's end and the oldest flow.
func (s *store) shiftUpper(d uint32) {
	tail := s.oldest().off
	copy(s.arena[tail+d:s.wrapEnd+d], s.arena[tail:s.wrapEnd])
	for seq := s.next - uint64(s.n); seq < s.wrapSeq; seq++ {
		s.at(seq).off += d
	}
	s.wrapEnd += d
	s.high = max(s.high, s.wrapEnd)
}

// growStep is how much room the arena gains when the flows written since
// the wrap catch up with the oldest ones: a 64th of the bytes held (at
// least a page), so that the pages touched stay within ~2% of the most
// bytes ever held while the catch-ups, each a copy of up to all the bytes
// held, stay rare.
func (s *store) growStep(size uint32) uint32 {
	held := s.wrapEnd - s.oldest().off + s.head
	return max(size, held/64, 4096)
}

// room makes space for size bytes, evicting the oldest flows when the
// arena (or the index) is full, and returns where to write them. evicted
// counts the flows that had to leave. ok is false when size can never fit.
func (s *store) room(size uint32) (off uint32, evicted int, ok bool) {
	if uint64(size) > uint64(len(s.arena)) {
		return 0, 0, false
	}
	if s.n == len(s.idx) {
		s.dropOldest()
		evicted++
	}
	if size == 0 {
		// Nothing to place (an empty Flow): any offset will do, and
		// wrapping for it would break the runs' order.
		return s.head, evicted, true
	}
	for {
		if s.n == 0 {
			s.head, s.wrapped = 0, false
			return 0, evicted, true
		}
		tail := s.oldest().off
		if s.wrapped {
			if s.head+size <= tail {
				return s.head, evicted, true
			}
			// The newer flows caught up with the oldest: the bytes held
			// grew (larger flows replacing smaller ones, or fewer than
			// MaxFlows held), so the arena must grow, by about what is
			// missing. Moving the newer run up behind the older one
			// grows it by that whole run and, wrapping again at once,
			// twice in a row doubled the pages touched at the count
			// bound; so that is done only for a short run, and the
			// older run moves up by a step otherwise.
			step := s.growStep(size)
			if s.head <= step && uint64(s.wrapEnd)+uint64(s.head)+uint64(size) <= uint64(len(s.arena)) {
				s.unwrap()
				continue
			}
			if uint64(s.wrapEnd)+uint64(step) <= uint64(len(s.arena)) {
				s.shiftUpper(step)
				continue
			}
			if uint64(s.wrapEnd)+uint64(s.head)+uint64(size) <= uint64(len(s.arena)) {
				s.unwrap()
				continue
			}
		} else {
			// Wrap as early as the start has room: the pages in use then
			// stay those of the bytes held, not of the whole arena.
			if tail >= size {
				s.wrapped, s.wrapEnd, s.wrapSeq = true, s.head, s.next
				s.head = 0
				return 0, evicted, true
			}
			if uint64(s.head)+uint64(size) <= uint64(len(s.arena)) {
				return s.head, evicted, true
			}
		}
		s.dropOldest()
		evicted++
	}
}

// add appends a flow's bytes and returns how many older flows it evicted,
// or ok false when data can never fit (larger than the arena). sp, when not
// nil, is where the encoder wrote the fields the dictionary looks for.
func (s *store) add(added, flowTime int64, data []byte, sp *flowSpans, lazy bool) (evicted int, ok bool) {
	var l layout
	var n int
	if sp != nil {
		n = s.dict.splitSpans(data, sp, &l)
	} else {
		n = s.dict.split(data, &l)
	}
	size := uint32(n)
	if uint64(n) != uint64(size) {
		return 0, false
	}
	off, evicted, ok := s.room(size)
	if !ok {
		return evicted, false
	}
	s.dict.encode(s.arena[off:off+size], data, &l)
	if lazy {
		s.arena[off] |= flagLazy
	}
	s.head = off + size
	s.high = max(s.high, s.head)
	*s.at(s.next) = meta{off: off, size: size, added: added, flowTime: flowTime}
	s.next++
	s.n++
	return evicted, true
}

// record returns the held flow's record; valid until the lock is released.
func (s *store) record(m *meta) []byte { return s.arena[m.off : m.off+m.size] }

// appendFlow appends the held flow's marshalled bytes to dst.
func (s *store) appendFlow(dst []byte, m *meta) []byte { return s.dict.decode(dst, s.record(m)) }

// release hands the arena's pages back to the kernel once history is empty
// (age eviction emptied it), so an idle agent does not keep the memory of
// a past burst.
func (s *store) release() {
	if s.n != 0 || s.high == 0 {
		return
	}
	releaseArena(s.arena[:s.high])
	s.high = 0
}
