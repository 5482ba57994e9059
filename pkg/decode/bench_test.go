package decode_test

import (
	"encoding/binary"
	"testing"

	"github.com/flowtrace/flowtrace/pkg/decode"
)

// benchFlow and benchDrop are byte images of one ring buffer record each,
// built from the ABI offsets so they follow any layout change.
func benchFlow() []byte {
	b := make([]byte, decode.FlowSize)
	b[decode.OffHdrType] = byte(decode.KindFlow)
	b[decode.OffHdrVersion] = decode.Version
	binary.LittleEndian.PutUint16(b[decode.OffHdrLen:], decode.FlowSize)
	binary.LittleEndian.PutUint64(b[decode.OffHdrTsNs:], 123456789)
	benchTuple(b[decode.OffFlowTuple:], decode.TCPSyn|decode.TCPAck)
	binary.LittleEndian.PutUint64(b[decode.OffFlowPackets:], 10)
	binary.LittleEndian.PutUint64(b[decode.OffFlowBytes:], 15000)
	binary.LittleEndian.PutUint32(b[decode.OffFlowIfindex:], 4)
	binary.LittleEndian.PutUint32(b[decode.OffFlowNetns:], 4026531840)
	b[decode.OffFlowDir] = byte(decode.DirIngress)
	b[decode.OffFlowReason] = byte(decode.ReasonNew)
	return b
}

func benchDrop() []byte {
	b := make([]byte, decode.DropSize)
	b[decode.OffHdrType] = byte(decode.KindDrop)
	b[decode.OffHdrVersion] = decode.Version
	binary.LittleEndian.PutUint16(b[decode.OffHdrLen:], decode.DropSize)
	binary.LittleEndian.PutUint64(b[decode.OffHdrTsNs:], 123456789)
	benchTuple(b[decode.OffDropTuple:], 0)
	binary.LittleEndian.PutUint64(b[decode.OffDropLocation:], 0xffffffff81000000)
	binary.LittleEndian.PutUint32(b[decode.OffDropReason:], 6)
	binary.LittleEndian.PutUint32(b[decode.OffDropCount:], 1)
	return b
}

func benchTuple(t []byte, flags uint8) {
	copy(t[decode.OffTupleSaddr:], []byte{10, 244, 0, 10})
	copy(t[decode.OffTupleDaddr:], []byte{10, 244, 0, 20})
	binary.LittleEndian.PutUint16(t[decode.OffTupleSport:], 40000)
	binary.LittleEndian.PutUint16(t[decode.OffTupleDport:], 5432)
	binary.LittleEndian.PutUint16(t[decode.OffTupleEtherType:], 0x0800)
	t[decode.OffTupleIPVersion] = 4
	t[decode.OffTupleProto] = 6
	t[decode.OffTupleTCPFlags] = flags
}

// TestDecodeZeroAllocs holds the hot-path promise: decoding a record into a
// reused Event allocates nothing.
func TestDecodeZeroAllocs(t *testing.T) {
	for name, rec := range map[string][]byte{"flow": benchFlow(), "drop": benchDrop()} {
		var ev decode.Event
		allocs := testing.AllocsPerRun(1000, func() {
			if err := decode.Decode(rec, &ev); err != nil {
				t.Fatalf("decode %s: %v", name, err)
			}
		})
		if allocs != 0 {
			t.Errorf("decode %s: %.1f allocations per event, want 0", name, allocs)
		}
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	for _, c := range []struct {
		name string
		rec  []byte
	}{{"flow", benchFlow()}, {"drop", benchDrop()}} {
		b.Run(c.name, func(b *testing.B) {
			var ev decode.Event
			b.ReportAllocs()
			for b.Loop() {
				if err := decode.Decode(c.rec, &ev); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
