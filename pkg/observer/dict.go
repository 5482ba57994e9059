package observer

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// dict interns the sub-messages that repeat from flow to flow: the source
// and destination endpoints (namespace, pod, labels, workload, node) and
// the interfaces. A node has a few hundred pods and interfaces at most,
// while history holds tens of thousands of flows, so each held flow keeps
// a 5-byte reference instead of ~60 bytes per endpoint: ~40% of a typical
// enriched flow. Entries are reference-counted by the flows in history and
// leave with the last one, so the dictionary is bounded by what is held.
//
// It works on the marshalled bytes (protowire), not on *Flow, so it does
// not care how the flow was encoded; re-assembly appends the interned
// fields after the others, which protobuf parsers accept in any order.
type dict struct {
	fields []protowire.Number // interned top-level fields; index fits a byte
	ids    map[string]uint32
	vals   []dictVal
	free   []uint32
}

type dictVal struct {
	data string
	refs uint32
}

// maxRefs bounds the references one flow stores; more occurrences of the
// interned fields (never produced by the agent) stay inline.
const maxRefs = 8

// refSize is one reference in a record's header: field index, id (LE).
const refSize = 5

// minInterned: smaller values stay inline, a reference would not save.
const minInterned = 2 * refSize

func newDict() *dict {
	d := &dict{ids: make(map[string]uint32)}
	fields := (&flowtracev1.Flow{}).ProtoReflect().Descriptor().Fields()
	for _, name := range []string{"source", "destination", "interface", "input_interface"} {
		if fd := fields.ByName(protoreflect.Name(name)); fd != nil {
			d.fields = append(d.fields, fd.Number())
		}
	}
	return d
}

func (d *dict) fieldIndex(num protowire.Number) int {
	for i, f := range d.fields {
		if f == num {
			return i
		}
	}
	return -1
}

// ref returns b's id, adding it when new, and counts one more user.
func (d *dict) ref(b []byte) uint32 {
	if id, ok := d.ids[string(b)]; ok {
		d.vals[id].refs++
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

// span is one interned field occurrence in a marshalled flow: data[start:end]
// is the whole field (tag, length, value), value its payload.
type span struct {
	start, end int
	field      uint8
	value      []byte
}

// split finds the fields of data to intern. It returns how many and the
// size of the record that will hold data (header plus the other fields).
// Bytes that do not parse as protobuf are kept as they are (k = 0).
func (d *dict) split(data []byte, spans *[maxRefs]span) (k, size int) {
	saved := 0
	for off := 0; off < len(data); {
		num, typ, n := protowire.ConsumeTag(data[off:])
		if n < 0 {
			return 0, 1 + len(data)
		}
		m := protowire.ConsumeFieldValue(num, typ, data[off+n:])
		if m < 0 {
			return 0, 1 + len(data)
		}
		if typ == protowire.BytesType && k < maxRefs {
			if fi := d.fieldIndex(num); fi >= 0 {
				v, _ := protowire.ConsumeBytes(data[off+n:])
				if len(v) >= minInterned {
					spans[k] = span{start: off, end: off + n + m, field: uint8(fi), value: v}
					k++
					saved += n + m
				}
			}
		}
		off += n + m
	}
	return k, 1 + k*refSize + len(data) - saved
}

// encode writes data's record into dst (len(dst) is the size split gave):
// [k][k × (field, id)] then data without the interned fields.
func (d *dict) encode(dst, data []byte, spans []span) {
	dst[0] = byte(len(spans))
	h := dst[1:]
	for i, sp := range spans {
		id := d.ref(sp.value)
		h[i*refSize] = sp.field
		h[i*refSize+1], h[i*refSize+2], h[i*refSize+3], h[i*refSize+4] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
	}
	out := dst[1+len(spans)*refSize:]
	prev := 0
	for _, sp := range spans {
		out = out[copy(out, data[prev:sp.start]):]
		prev = sp.end
	}
	copy(out, data[prev:])
}

func refAt(h []byte, i int) (field uint8, id uint32) {
	b := h[i*refSize:]
	return b[0], uint32(b[1]) | uint32(b[2])<<8 | uint32(b[3])<<16 | uint32(b[4])<<24
}

// decode appends the marshalled flow held in rec to dst.
func (d *dict) decode(dst, rec []byte) []byte {
	k := int(rec[0])
	h := rec[1 : 1+k*refSize]
	dst = append(dst, rec[1+k*refSize:]...)
	for i := range k {
		f, id := refAt(h, i)
		dst = protowire.AppendTag(dst, d.fields[f], protowire.BytesType)
		dst = protowire.AppendString(dst, d.vals[id].data)
	}
	return dst
}

// release drops the references of a record leaving history.
func (d *dict) release(rec []byte) {
	k := int(rec[0])
	for i := range k {
		_, id := refAt(rec[1:], i)
		d.unref(id)
	}
}
