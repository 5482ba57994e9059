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
		if _, ok := s.add(int64(i), int64(i), data); !ok {
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
	var spans [maxRefs]span
	k, size := d.split(data, &spans)
	if k != 3 || size > len(data)*3/4 {
		t.Errorf("%d fields interned, record %d bytes for a %d-byte flow", k, size, len(data))
	}
}
