package observer

import (
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// dict interns the fields that repeat from flow to flow: the source and
// destination endpoints (namespace, pod, labels, workload, node), the
// interfaces and services, and the strings with few values (node name,
// kernel drop reason, drop location: a kernel has only so many call sites
// that free packets). A node has a few hundred pods and interfaces at
// most, while history holds tens of thousands of flows, so each held flow
// keeps a 5-byte reference instead of ~60 bytes per endpoint: ~40% of a
// typical enriched flow. Fields whose values do not repeat (addresses,
// ports, summaries) stay inline: an entry per flow would cost more than
// the bytes it replaces. Entries are reference-counted by the flows in history and
// leave with the last one, so the dictionary is bounded by what is held.
//
// It works on the marshalled bytes (protowire), not on *Flow, so it does
// not care how the flow was encoded; re-assembly appends the interned
// fields after the others, which protobuf parsers accept in any order.
type dict struct {
	fields []protowire.Number // interned top-level fields; index fits a byte
	// uuid is Flow.uuid's field number: a canonical UUID (36 characters)
	// is held as its 16 bytes, 22 fewer bytes per flow (~13% of one).
	uuid protowire.Number
	ids  map[string]uint32
	vals []dictVal
	free []uint32
	// last is each field's two most recent ids: consecutive flows mostly
	// carry the same endpoints and interface (one connection's reports, a
	// busy pod's), and comparing with a recent value costs a memeq where
	// the map costs hashing ~60 bytes and a probe, per field and flow (~6%
	// of the agent's CPU under connection churn). Two, because a
	// connection's reports alternate its ends as source and destination.
	last [maxFields][2]uint32
	// materialize appends the encoding of a lazy record's payload
	// (Observer.materialize).
	materialize func(dst, payload []byte) []byte
}

// maxFields bounds the interned fields (newDict's list).
const maxFields = 16

// maxFieldNum bounds the field numbers dict.index covers (Flow's are
// below it; a larger one is simply never interned).
const maxFieldNum = 64

type dictVal struct {
	data string
	refs uint32
}

// maxRefs bounds the references one flow stores (it fits refsMask); more
// occurrences of the interned fields (never produced by the agent) stay
// inline.
const maxRefs = 12

// refSize is one reference in a record's header: field index, id (LE).
const refSize = 5

// minInterned: smaller values stay inline, a reference would not save.
const minInterned = 2 * refSize

// A record's first byte is its number of references (at most maxRefs),
// with flagUUID set when the flow's uuid follows them, packed.
const (
	refsMask   = 0x0f
	flagLazy   = 0x40 // the body is a PublishLazy payload, not protobuf
	flagUUID   = 0x80
	uuidText   = 36
	uuidPacked = 16
)

// internedFields are the Flow fields the dictionary interns, by number.
var internedFields = func() (nums []protowire.Number) {
	fields := (&flowtracev1.Flow{}).ProtoReflect().Descriptor().Fields()
	for _, name := range []string{"source", "destination", "interface", "input_interface",
		"node_name", "drop_reason_kernel", "drop_location", "source_service", "destination_service"} {
		if fd := fields.ByName(protoreflect.Name(name)); fd != nil {
			nums = append(nums, fd.Number())
		}
	}
	if len(nums) > maxFields {
		panic("observer: more interned fields than dict.last holds")
	}
	return nums
}()

// internedIndex is internedFields' inverse: a field number below
// maxFieldNum to its position plus one (0: not interned), so that place,
// which runs for every interned or packed field of every flow, and the
// encoder do not scan the list.
var internedIndex = func() (index [maxFieldNum]uint8) {
	for i, num := range internedFields {
		if num < maxFieldNum {
			index[num] = uint8(i + 1)
		}
	}
	return index
}()

// internedField reports whether the dictionary interns field num.
func internedField(num protowire.Number) bool {
	return num >= 0 && num < maxFieldNum && internedIndex[num] != 0
}

// A flow's spans (the interned fields and the uuid) are at most maxSpans,
// so every shared message among them finds room as a reference.
var _ [maxRefs - maxSpans]struct{}

func newDict() *dict {
	d := &dict{ids: make(map[string]uint32), fields: internedFields}
	if fd := (&flowtracev1.Flow{}).ProtoReflect().Descriptor().Fields().ByName("uuid"); fd != nil {
		d.uuid = fd.Number()
	}
	return d
}

func (d *dict) fieldIndex(num protowire.Number) int {
	if num < 0 || num >= maxFieldNum {
		return -1
	}
	return int(internedIndex[num]) - 1
}

// ref returns b's id as a value of field fi, adding it when new, and
// counts one more user.
func (d *dict) ref(fi uint8, b []byte) uint32 {
	// A released id has no users (and no data): never a false match.
	last := &d.last[fi]
	for _, id := range last {
		if int(id) < len(d.vals) && d.vals[id].refs > 0 && d.vals[id].data == string(b) {
			d.vals[id].refs++
			return id
		}
	}
	if id, ok := d.ids[string(b)]; ok {
		d.vals[id].refs++
		last[0], last[1] = id, last[0]
		return id
	}
	v := dictVal{data: string(b), refs: 1}
	var id uint32
	if n := len(d.free); n > 0 {
		id = d.free[n-1]
		d.free = d.free[:n-1]
		d.vals[id] = v
	} else {
		id = uint32(len(d.vals))
		d.vals = append(d.vals, v)
	}
	d.ids[v.data] = id
	last[0], last[1] = id, last[0]
	return id
}

// refShared is ref for a shared message (sharedMsg): its id hint is taken
// when that entry still holds the message's own string, a pointer compare
// where ref compares ~60 bytes or hashes them. Otherwise it interns the
// body as ref does and makes the entry hold the message's string, so that
// the next flow's check succeeds.
func (d *dict) refShared(fi uint8, m *sharedMsg) uint32 {
	if id := m.id; int64(id) < int64(len(d.vals)) {
		if v := &d.vals[id]; v.refs > 0 && len(v.data) == len(m.body) && unsafe.StringData(v.data) == unsafe.StringData(m.body) {
			v.refs++
			return id
		}
	}
	id := d.ref(fi, unsafe.Slice(unsafe.StringData(m.body), len(m.body)))
	d.vals[id].data = m.body // the same bytes: ref found or copied them
	m.id = id
	return id
}

func (d *dict) unref(id uint32) {
	v := &d.vals[id]
	if v.refs--; v.refs == 0 {
		delete(d.ids, v.data)
		v.data = ""
		d.free = append(d.free, id)
	}
}

// span is one field occurrence left out of a record's body: data[start:end]
// is the whole field (tag, length, value), data[val:end] its payload. field
// is the interned field's index, or spanUUID. Offsets, not a slice: a
// layout holds maxRefs+1 spans, and split resets its layout per flow.
type span struct {
	start, val, end int32
	field           uint8
	shared          *sharedMsg // a shared message not in data (fieldSpan)
}

const spanUUID = 0xff

// layout is how split lays a flow out in its record. Only skip[:n], and
// uuid when hasID, are meaningful: reset clears the counts, not the arrays.
type layout struct {
	skip  [maxRefs + 1]span // fields left out of the body, in data order
	n     int               // spans in skip
	refs  int               // of them references (the other one: the uuid)
	uuid  [uuidPacked]byte
	hasID bool // uuid holds the flow's uuid, packed
}

func (l *layout) reset() { l.n, l.refs, l.hasID = 0, 0, false }

// split finds the fields of data to intern and a uuid to pack, and returns
// the size of the record that will hold data (header plus the other
// fields). Bytes that do not parse as protobuf are kept as they are.
func (d *dict) split(data []byte, l *layout) (size int) {
	l.reset()
	saved := 0
	for off := 0; off < len(data); {
		num, typ, n := protowire.ConsumeTag(data[off:])
		if n < 0 {
			l.reset()
			return 1 + len(data)
		}
		m := protowire.ConsumeFieldValue(num, typ, data[off+n:])
		if m < 0 {
			l.reset()
			return 1 + len(data)
		}
		if typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(data[off+n:])
			end := off + n + m
			saved += d.place(l, num, off, end-len(v), end, data)
		}
		off += n + m
	}
	return 1 + len(data) - saved
}

// splitSpans is split for a flow whose encoder recorded where it wrote the
// fields split looks for (flowSpans), in the order it wrote them: the same
// layout without parsing the encoding again, which was ~40% of publishing
// a flow.
func (d *dict) splitSpans(data []byte, sp *flowSpans, l *layout) (size int) {
	l.reset()
	saved := 0
	for _, f := range sp.s[:sp.n] {
		if f.shared != nil {
			// Never inline (encoder.sharedField): a reference the
			// encoding has no bytes for.
			l.skip[l.n] = span{start: f.start, val: f.val, end: f.end, field: uint8(d.fieldIndex(f.num)), shared: f.shared}
			l.n, l.refs = l.n+1, l.refs+1
			saved -= refSize
			continue
		}
		saved += d.place(l, f.num, int(f.start), int(f.val), int(f.end), data)
	}
	return 1 + len(data) - saved
}

// place decides what becomes of one length-delimited field, data[start:end]
// with value data[val:end]: a reference to an interned value, the packed
// uuid, or kept inline. It returns the bytes that saves.
func (d *dict) place(l *layout, num protowire.Number, start, val, end int, data []byte) (saved int) {
	v := data[val:end]
	sp := span{start: int32(start), val: int32(val), end: int32(end)}
	if fi := d.fieldIndex(num); fi >= 0 && l.refs < maxRefs && len(v) >= minInterned {
		sp.field = uint8(fi)
		l.skip[l.n], l.n, l.refs = sp, l.n+1, l.refs+1
		return end - start - refSize
	}
	if num == d.uuid && !l.hasID && packUUID(&l.uuid, v) {
		sp.field = spanUUID
		l.skip[l.n], l.n, l.hasID = sp, l.n+1, true
		return end - start - uuidPacked
	}
	return 0
}

// packUUID parses a canonical lower-case UUID (what the enricher makes):
// any other form stays inline, so decoding gives back the same string.
func packUUID(dst *[uuidPacked]byte, s []byte) bool {
	if len(s) != uuidText {
		return false
	}
	if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	var bad byte
	for j, i := range uuidDigits {
		hi, lo := hexVal[s[i]], hexVal[s[i+1]]
		bad |= hi | lo
		dst[j] = hi<<4 | lo&0x0f
	}
	return bad&0xf0 == 0
}

// uuidDigits are the offsets of a canonical UUID's 16 digit pairs.
var uuidDigits = [uuidPacked]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// hexVal maps a lower-case hex digit to its value, anything else to 0xff:
// a table lookup per character instead of two range checks.
var hexVal = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range "0123456789abcdef" {
		t[c] = byte(i)
	}
	return t
}()

// appendUUID appends the canonical text of a packed UUID.
func appendUUID(dst []byte, u []byte) []byte {
	const digits = "0123456789abcdef"
	for i, b := range u[:uuidPacked] {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, digits[b>>4], digits[b&0x0f])
	}
	return dst
}

// encode writes data's record into dst (len(dst) is the size split gave):
// [refs|flagUUID][refs × (field, id)][16-byte uuid] then data without the
// fields left out.
func (d *dict) encode(dst, data []byte, l *layout) {
	dst[0] = byte(l.refs)
	if l.hasID {
		dst[0] |= flagUUID
	}
	h := dst[1:]
	i := 0
	for _, sp := range l.skip[:l.n] {
		if sp.field == spanUUID {
			continue
		}
		var id uint32
		if sp.shared != nil {
			id = d.refShared(sp.field, sp.shared)
		} else {
			id = d.ref(sp.field, data[sp.val:sp.end])
		}
		h[i*refSize] = sp.field
		h[i*refSize+1], h[i*refSize+2], h[i*refSize+3], h[i*refSize+4] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
		i++
	}
	out := dst[1+l.refs*refSize:]
	if l.hasID {
		out = out[copy(out, l.uuid[:]):]
	}
	prev := int32(0)
	for _, sp := range l.skip[:l.n] {
		out = out[copy(out, data[prev:sp.start]):]
		prev = sp.end
	}
	copy(out, data[prev:])
}

func refAt(h []byte, i int) (field uint8, id uint32) {
	b := h[i*refSize:]
	return b[0], uint32(b[1]) | uint32(b[2])<<8 | uint32(b[3])<<16 | uint32(b[4])<<24
}

// decode appends the marshalled flow held in rec to dst. The fields left
// out come after the others, which protobuf parsers accept in any order.
func (d *dict) decode(dst, rec []byte) []byte {
	k := int(rec[0] & refsMask)
	h := rec[1 : 1+k*refSize]
	body := rec[1+k*refSize:]
	var uuid []byte
	if rec[0]&flagUUID != 0 {
		uuid, body = body[:uuidPacked], body[uuidPacked:]
	}
	if rec[0]&flagLazy != 0 && d.materialize != nil {
		dst = d.materialize(dst, body)
	} else {
		dst = append(dst, body...)
	}
	for i := range k {
		f, id := refAt(h, i)
		dst = protowire.AppendTag(dst, d.fields[f], protowire.BytesType)
		dst = protowire.AppendString(dst, d.vals[id].data)
	}
	if uuid != nil {
		dst = protowire.AppendTag(dst, d.uuid, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uuidText)
		dst = appendUUID(dst, uuid)
	}
	return dst
}

// release drops the references of a record leaving history.
func (d *dict) release(rec []byte) {
	k := int(rec[0] & refsMask)
	for i := range k {
		_, id := refAt(rec[1:], i)
		d.unref(id)
	}
}
