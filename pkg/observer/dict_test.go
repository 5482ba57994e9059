package observer

import (
	"strconv"
	"testing"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/proto"
)

// TestDictRoundTrip: flows with interned endpoints and interfaces come back
// equal to what was published, the dictionary holds each distinct value
// once, and it empties as the flows that use it leave.
func TestDictRoundTrip(t *testing.T) {
	s := store{idx: make([]meta, 50), arena: make([]byte, 50*1024), dict: newDict()}
	want := map[uint64]*flowtracev1.Flow{}
	var raw int
	for i := range 400 {
		f := realisticFlow(i)
		f.Source.PodName = "frontend-" + strconv.Itoa(i%7) // 7 distinct sources
		if i%5 == 0 {
			f.Destination = nil // absent field: nothing to intern
		}
		if i%11 == 0 {
			f.InputInterface = &flowtracev1.Interface{Name: "eth" + strconv.Itoa(i%3), Index: 2}
		}
		data, err := proto.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		raw += len(data)
		want[s.next] = f
		if _, ok := s.add(int64(i), int64(i), data, nil, false); !ok {
			t.Fatal("add refused")
		}
	}
	for seq := s.next - uint64(s.n); seq < s.next; seq++ {
		got := &flowtracev1.Flow{}
		if err := proto.Unmarshal(s.appendFlow(nil, s.at(seq)), got); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		if !proto.Equal(got, want[seq]) {
			t.Fatalf("seq %d: got %v\nwant %v", seq, got, want[seq])
		}
	}
	// 7 sources, 1 destination, 1 interface, up to 3 input interfaces.
	if n := len(s.dict.ids); n > 12 {
		t.Errorf("dictionary holds %d values, want <= 12", n)
	}
	// 50 flows held, about 40% of each in the dictionary.
	if limit := raw / 400 * 50 * 3 / 4; int(s.high) > limit {
		t.Errorf("arena high-water %d bytes, want <= %d", s.high, limit)
	}
	for s.n > 0 {
		s.dropOldest()
	}
	if len(s.dict.ids) != 0 {
		t.Errorf("dictionary keeps %d values with no flow held", len(s.dict.ids))
	}
}

// TestDictSaves: a typical enriched flow's record is well under its
// marshalled size once its endpoints are references.
func TestDictSaves(t *testing.T) {
	d := newDict()
	data, err := proto.Marshal(realisticFlow(1))
	if err != nil {
		t.Fatal(err)
	}
	var l layout
	size := d.split(data, &l)
	if l.refs != 3 || !l.hasID || size > len(data)*3/4 {
		t.Errorf("%d fields interned (uuid packed: %v), record %d bytes for a %d-byte flow", l.refs, l.hasID, size, len(data))
	}
}

// TestDictUUID: a canonical uuid is held as 16 bytes and comes back as the
// same string; any other form is kept as it is.
func TestDictUUID(t *testing.T) {
	for _, tc := range []struct {
		uuid   string
		packed bool
	}{
		{"6f1c2a4e-8d3b-4c5a-9e7f-0123456789ab", true},
		{"00000000-0000-0000-0000-000000000000", true},
		{"6F1C2A4E-8D3B-4C5A-9E7F-0123456789AB", false}, // upper case
		{"6f1c2a4e-8d3b-4c5a-9e7f-0123456789a", false},  // short
		{"6f1c2a4e-8d3b-4c5a-9e7f-0123456789abc", false},
		{"6f1c2a4e+8d3b-4c5a-9e7f-0123456789ab", false},
		{"6f1c2a4e-8d3b-4c5a-9e7f-0123456789ag", false},
		{"6f1c2a4e-8d3b-4c5a-9e7f-x123456789ab", false},
		{"6f1c2a4e8-d3b-4c5a-9e7f-0123456789ab", false},
		{"not a uuid", false},
		{"", false},
	} {
		s := store{idx: make([]meta, 4), arena: make([]byte, 4096), dict: newDict()}
		f := realisticFlow(1)
		f.Uuid = tc.uuid
		data, err := proto.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		var l layout
		size := s.dict.split(data, &l)
		if l.hasID != tc.packed {
			t.Errorf("%q: packed %v, want %v", tc.uuid, l.hasID, tc.packed)
		}
		if _, ok := s.add(1, 1, data, nil, false); !ok {
			t.Fatal("add refused")
		}
		if tc.packed {
			inline := f.Uuid
			f.Uuid = ""
			without, _ := proto.Marshal(f)
			f.Uuid = inline
			if got, want := size, s.dict.split(without, &l)+uuidPacked; got != want {
				t.Errorf("%q: record %d bytes, want %d (the uuid in 16)", tc.uuid, got, want)
			}
		}
		got := &flowtracev1.Flow{}
		if err := proto.Unmarshal(s.appendFlow(nil, s.at(0)), got); err != nil {
			t.Fatalf("%q: %v", tc.uuid, err)
		}
		if !proto.Equal(got, f) {
			t.Errorf("%q: came back as %q", tc.uuid, got.GetUuid())
		}
	}
}

// TestDictDropFields: a drop's kernel reason and location, a long node
// name and the services are held once for all the flows that share them.
func TestDictDropFields(t *testing.T) {
	s := store{idx: make([]meta, 64), arena: make([]byte, 64*1024), dict: newDict()}
	drop := func(i int) *flowtracev1.Flow {
		f := realisticFlow(i)
		f.NodeName = "ip-10-0-12-34.eu-west-1.compute.internal"
		f.Verdict = flowtracev1.Verdict_VERDICT_DROPPED
		f.DropReasonKernel = []string{"NETFILTER_DROP", "NO_SOCKET"}[i%2]
		f.DropLocation = []string{"nf_hook_slow+0x9c", "__udp4_lib_rcv+0x5a2"}[i%2]
		f.DestinationService = &flowtracev1.Service{Namespace: "shop", Name: "db", PortName: "postgres", Port: 5432}
		return f
	}
	var raw int
	for i := range 64 {
		data, err := proto.Marshal(drop(i))
		if err != nil {
			t.Fatal(err)
		}
		raw += len(data)
		if _, ok := s.add(int64(i), int64(i), data, nil, false); !ok {
			t.Fatal("add refused")
		}
	}
	for seq := uint64(0); seq < 64; seq++ {
		got := &flowtracev1.Flow{}
		if err := proto.Unmarshal(s.appendFlow(nil, s.at(seq)), got); err != nil {
			t.Fatal(err)
		}
		if want := drop(int(seq)); !proto.Equal(got, want) {
			t.Fatalf("seq %d: got %v\nwant %v", seq, got, want)
		}
	}
	// source, destination, interface, node, NETFILTER_DROP, 2 locations,
	// service; NO_SOCKET is too short for a reference to save anything.
	if n := len(s.dict.ids); n != 8 {
		t.Errorf("dictionary holds %d values, want 8", n)
	}
	if per := int(s.high) / 64; per > raw/64/2 {
		t.Errorf("%d bytes a record for %d-byte flows", per, raw/64)
	}
}

// TestDictLastIDReuse: the per-field memo of the last ids never answers
// for a value it no longer holds: once a value's last user leaves, its id
// may be reused for another value, and the first value comes back with an
// id of its own that decodes to it.
func TestDictLastIDReuse(t *testing.T) {
	d := newDict()
	a, b := []byte("endpoint-a-0123456789"), []byte("endpoint-b-0123456789")
	ida := d.ref(0, a)
	if again := d.ref(0, a); again != ida || d.vals[ida].refs != 2 {
		t.Fatalf("second ref of the same value: id %d refs %d, want id %d refs 2", again, d.vals[ida].refs, ida)
	}
	d.unref(ida)
	d.unref(ida) // a leaves; its id is free, and still field 0's memo
	idb := d.ref(1, b)
	if idb != ida {
		t.Fatalf("freed id %d not reused (got %d): the test no longer covers reuse", ida, idb)
	}
	ida2 := d.ref(0, a) // field 0's memo points at b's value now
	if ida2 == idb || d.vals[ida2].data != string(a) || d.vals[idb].data != string(b) {
		t.Fatalf("a came back as id %d (%q), b is id %d (%q)", ida2, d.vals[ida2].data, idb, d.vals[idb].data)
	}
	if d.vals[idb].refs != 1 || d.vals[ida2].refs != 1 {
		t.Errorf("refs: b %d, a %d, want 1 each", d.vals[idb].refs, d.vals[ida2].refs)
	}
}
