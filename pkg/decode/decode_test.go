package decode

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// The images below use literal offsets taken from bpf/ft_event.h rather than
// the package constants, so a wrong constant fails here.

func putTuple(b []byte, ver uint8, src, dst netip.Addr, sport, dport, ethertype, vlan uint16, proto, flags, itype, icode, status uint8) {
	s, d := src.As16(), dst.As16()
	if ver == 4 {
		s4, d4 := src.As4(), dst.As4()
		copy(b[0:4], s4[:])
		copy(b[16:20], d4[:])
	} else {
		copy(b[0:16], s[:])
		copy(b[16:32], d[:])
	}
	binary.LittleEndian.PutUint16(b[32:], sport)
	binary.LittleEndian.PutUint16(b[34:], dport)
	binary.LittleEndian.PutUint16(b[36:], ethertype)
	binary.LittleEndian.PutUint16(b[38:], vlan)
	b[40], b[41], b[42], b[43], b[44], b[45] = ver, proto, flags, itype, icode, status
}

func flowImage() []byte {
	b := make([]byte, 96)
	b[0], b[1] = 1, 1
	binary.LittleEndian.PutUint16(b[2:], 96)
	binary.LittleEndian.PutUint32(b[4:], 3)
	binary.LittleEndian.PutUint64(b[8:], 123456789)
	putTuple(b[16:64], 4, netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.4.5.6"),
		40000, 443, 0x0800, 7, 6, 0x12, 0, 0, 0)
	binary.LittleEndian.PutUint64(b[64:], 10)
	binary.LittleEndian.PutUint64(b[72:], 1500)
	binary.LittleEndian.PutUint32(b[80:], 42)
	binary.LittleEndian.PutUint32(b[84:], 4026531840)
	binary.LittleEndian.PutUint32(b[88:], 74)
	b[92], b[93] = 2, 2
	return b
}

func dropImage() []byte {
	b := make([]byte, 112)
	b[0], b[1] = 2, 1
	binary.LittleEndian.PutUint16(b[2:], 112)
	binary.LittleEndian.PutUint32(b[4:], 1)
	binary.LittleEndian.PutUint64(b[8:], 99)
	putTuple(b[16:64], 6, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"),
		5353, 9, 0x86dd, 0, 17, 0, 0, 0, 0)
	binary.LittleEndian.PutUint64(b[64:], 0xffffffff81234567)
	binary.LittleEndian.PutUint64(b[72:], 98)
	binary.LittleEndian.PutUint64(b[80:], 99)
	binary.LittleEndian.PutUint32(b[88:], 3)
	binary.LittleEndian.PutUint32(b[92:], 1)
	binary.LittleEndian.PutUint32(b[96:], 5)
	binary.LittleEndian.PutUint32(b[100:], 4026532000)
	binary.LittleEndian.PutUint32(b[104:], 61)
	binary.LittleEndian.PutUint32(b[108:], 1)
	return b
}

func TestDecodeFlow(t *testing.T) {
	var ev Event
	if err := Decode(flowImage(), &ev); err != nil {
		t.Fatal(err)
	}
	want := Event{
		Kind: KindFlow, CPU: 3, TimeNs: 123456789, Ifindex: 42, Netns: 4026531840,
		Direction: DirEgress, EtherType: 0x0800, IPVersion: 4,
		Src: netip.MustParseAddr("10.1.2.3"), Dst: netip.MustParseAddr("10.4.5.6"),
		SrcPort: 40000, DstPort: 443, Proto: 6, TCPFlags: TCPSyn | TCPAck, VLAN: 7, PktLen: 74,
		Packets: 10, Bytes: 1500, FlowReason: ReasonTCPFlags,
	}
	if ev != want {
		t.Fatalf("got  %+v\nwant %+v", ev, want)
	}
}

func TestDecodeDrop(t *testing.T) {
	var ev Event
	if err := Decode(dropImage(), &ev); err != nil {
		t.Fatal(err)
	}
	want := Event{
		Kind: KindDrop, CPU: 1, TimeNs: 99, Ifindex: 1, Netns: 4026532000,
		EtherType: 0x86dd, IPVersion: 6,
		Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"),
		SrcPort: 5353, DstPort: 9, Proto: 17, PktLen: 61,
		DropReason: 3, Location: 0xffffffff81234567, SkbIif: 5, Count: 1, FirstNs: 98, LastNs: 99,
	}
	if ev != want {
		t.Fatalf("got  %+v\nwant %+v", ev, want)
	}
}

func TestDecodeResetsReusedEvent(t *testing.T) {
	var ev Event
	if err := Decode(dropImage(), &ev); err != nil {
		t.Fatal(err)
	}
	if err := Decode(flowImage(), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.DropReason != 0 || ev.Location != 0 || ev.Count != 0 {
		t.Fatalf("drop fields leaked into flow event: %+v", ev)
	}
}

func TestDecodeErrors(t *testing.T) {
	mut := func(f func([]byte) []byte) []byte { return f(flowImage()) }
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"header only", flowImage()[:15], ErrShort},
		{"bad version", mut(func(b []byte) []byte { b[1] = 2; return b }), ErrVersion},
		{"unknown kind", mut(func(b []byte) []byte { b[0] = 9; return b }), ErrKind},
		{"kind zero", mut(func(b []byte) []byte { b[0] = 0; return b }), ErrKind},
		{"truncated record", flowImage()[:95], ErrLength},
		{"len field too small", mut(func(b []byte) []byte { b[2] = 64; return b }), ErrLength},
		{"drop len on flow", mut(func(b []byte) []byte { b[2] = 112; return b }), ErrLength},
		{"flow kind with drop image", func() []byte { b := dropImage(); b[0] = 1; return b }(), ErrLength},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ev Event
			err := Decode(c.b, &ev)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if ev != (Event{}) {
				t.Fatalf("event not zero after error: %+v", ev)
			}
		})
	}
}

func TestDecodeAllocs(t *testing.T) {
	f, d := flowImage(), dropImage()
	var ev Event
	n := testing.AllocsPerRun(1000, func() {
		_ = Decode(f, &ev)
		_ = Decode(d, &ev)
	})
	if n != 0 {
		t.Fatalf("Decode allocates %v times per run", n)
	}
}

func BenchmarkDecode(b *testing.B) {
	f := flowImage()
	var ev Event
	b.ReportAllocs()
	for b.Loop() {
		if err := Decode(f, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(flowImage())
	f.Add(dropImage())
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev Event
		err := Decode(b, &ev)
		if len(b) < 16 && err == nil {
			t.Fatalf("accepted %d-byte input", len(b))
		}
		if err != nil {
			return
		}
		switch ev.Kind {
		case KindFlow:
			if len(b) < 96 {
				t.Fatalf("accepted short flow event (%d bytes)", len(b))
			}
		case KindDrop:
			if len(b) < 112 {
				t.Fatalf("accepted short drop event (%d bytes)", len(b))
			}
		default:
			t.Fatalf("accepted unknown kind %d", ev.Kind)
		}
		if ev.IPVersion != 4 && ev.IPVersion != 6 && (ev.Src.IsValid() || ev.Dst.IsValid()) {
			t.Fatalf("addresses for ip version %d", ev.IPVersion)
		}
	})
}
