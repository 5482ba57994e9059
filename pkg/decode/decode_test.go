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

func putCTTuple(b []byte, ver uint8, src, dst netip.Addr, sport, dport uint16) {
	if ver == 4 {
		s4, d4 := src.As4(), dst.As4()
		copy(b[0:4], s4[:])
		copy(b[16:20], d4[:])
	} else {
		s, d := src.As16(), dst.As16()
		copy(b[0:16], s[:])
		copy(b[16:32], d[:])
	}
	binary.LittleEndian.PutUint16(b[32:], sport)
	binary.LittleEndian.PutUint16(b[34:], dport)
}

func flowImage() []byte {
	b := make([]byte, 192)
	b[0], b[1] = 1, 3
	binary.LittleEndian.PutUint16(b[2:], 192)
	binary.LittleEndian.PutUint32(b[4:], 3)
	binary.LittleEndian.PutUint64(b[8:], 123456789)
	putTuple(b[16:64], 4, netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.4.5.6"),
		40000, 443, 0x0800, 7, 6, 0x12, 0, 0, 0)
	binary.LittleEndian.PutUint64(b[64:], 10)
	binary.LittleEndian.PutUint64(b[72:], 1500)
	binary.LittleEndian.PutUint32(b[80:], 42)
	binary.LittleEndian.PutUint32(b[84:], 4026531840)
	binary.LittleEndian.PutUint32(b[88:], 74)
	b[92], b[93], b[94] = 2, 2, 0x11 // egress, TCP flags; the reverse's FIN,ACK
	// ct at 96: DNAT'd connection seen in the reply direction.
	putCTTuple(b[96:], 4, netip.MustParseAddr("10.4.5.6"), netip.MustParseAddr("10.96.0.10"), 443, 80)
	b[132], b[133] = 0x01|0x02|0x04|0x10, 4
	// encap at 136: VXLAN over IPv6.
	putCTTuple(b[136:], 6, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 0, 0)
	binary.LittleEndian.PutUint32(b[168:], 42)
	binary.LittleEndian.PutUint16(b[172:], 4789)
	b[174] = 6
	binary.LittleEndian.PutUint64(b[176:], 2)   // reverse packets
	binary.LittleEndian.PutUint64(b[184:], 120) // reverse bytes
	return b
}

func dropImage() []byte {
	b := make([]byte, 152)
	b[0], b[1] = 2, 3
	binary.LittleEndian.PutUint16(b[2:], 152)
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
	// ct at 112 with stray bytes but no KNOWN flag: must decode as zero.
	b[112], b[148] = 0xaa, 0x04
	return b
}

func xlateImage() []byte {
	b := make([]byte, 152)
	b[0], b[1] = 3, 3
	binary.LittleEndian.PutUint16(b[2:], 152)
	binary.LittleEndian.PutUint64(b[8:], 7)
	putTuple(b[16:64], 6, netip.MustParseAddr("fd00:10::5"), netip.MustParseAddr("fd00:20::7"),
		40000, 8080, 0x86dd, 0, 6, 0x02, 0, 0, 0)
	putCTTuple(b[64:], 6, netip.MustParseAddr("fd00:10::5"), netip.MustParseAddr("fd00:96::10"), 40000, 80)
	b[100], b[101] = 0x01|0x04|0x08|0x10, 6
	putCTTuple(b[104:], 6, netip.MustParseAddr("fd00:20::1"), netip.MustParseAddr("fd00:20::7"), 61000, 8080)
	binary.LittleEndian.PutUint32(b[140:], 9)
	binary.LittleEndian.PutUint32(b[144:], 4026532001)
	b[148] = 2
	return b
}

func mtuImage() []byte {
	b := make([]byte, 128)
	b[0], b[1] = 4, 3
	binary.LittleEndian.PutUint16(b[2:], 128)
	binary.LittleEndian.PutUint64(b[8:], 8)
	putTuple(b[16:64], 4, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.1"),
		0, 0, 0x0800, 0, 1, 0, 3, 4, 0)
	putCTTuple(b[64:], 4, netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.2.2"), 5000, 6000)
	b[100], b[101], b[102], b[103] = 17, 4, 2, 2
	binary.LittleEndian.PutUint32(b[104:], 1428)
	binary.LittleEndian.PutUint32(b[108:], 1400)
	binary.LittleEndian.PutUint32(b[112:], 3)
	binary.LittleEndian.PutUint32(b[116:], 0)
	binary.LittleEndian.PutUint32(b[120:], 4026532002)
	return b
}

func TestDecodeTranslated(t *testing.T) {
	var ev Event
	if err := Decode(xlateImage(), &ev); err != nil {
		t.Fatal(err)
	}
	want := Event{
		Kind: KindTranslated, TimeNs: 7, Ifindex: 9, Netns: 4026532001, Direction: DirEgress,
		EtherType: 0x86dd, IPVersion: 6, Src: netip.MustParseAddr("fd00:10::5"), Dst: netip.MustParseAddr("fd00:20::7"),
		SrcPort: 40000, DstPort: 8080, Proto: 6, TCPFlags: TCPSyn,
		CT: Conntrack{Flags: CTKnown | CTDNAT | CTSNAT | CTViaNfct, IPVersion: 6,
			OrigSrc: netip.MustParseAddr("fd00:10::5"), OrigDst: netip.MustParseAddr("fd00:96::10"), OrigSrcPort: 40000, OrigDstPort: 80},
		XlatSrc: netip.MustParseAddr("fd00:20::1"), XlatDst: netip.MustParseAddr("fd00:20::7"), XlatSrcPort: 61000, XlatDstPort: 8080,
	}
	if ev != want {
		t.Fatalf("got  %+v\nwant %+v", ev, want)
	}
}

func TestDecodeMTU(t *testing.T) {
	var ev Event
	if err := Decode(mtuImage(), &ev); err != nil {
		t.Fatal(err)
	}
	want := Event{
		Kind: KindMTU, TimeNs: 8, Ifindex: 3, Netns: 4026532002, Direction: DirEgress,
		EtherType: 0x0800, IPVersion: 4, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.1.1"),
		Proto: 1, ICMPType: 3, ICMPCode: 4, PktLen: 1428,
		MTUKind: MTUICMPFragNeeded, MTU: 1400,
		Embedded: Embedded{IPVersion: 4, Proto: 17, Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("10.0.2.2"), SrcPort: 5000, DstPort: 6000},
	}
	if ev != want {
		t.Fatalf("got  %+v\nwant %+v", ev, want)
	}
	if ev.MTUKind.String() != "icmp_frag_needed" || KindMTU.String() != "mtu" || KindTranslated.String() != "translated" {
		t.Fatalf("names: %v %v %v", ev.MTUKind, KindMTU, KindTranslated)
	}
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
		RevPackets: 2, RevBytes: 120, RevTCPFlags: TCPFin | TCPAck,
		CT: Conntrack{Flags: CTKnown | CTReply | CTDNAT | CTViaNfct, IPVersion: 4,
			OrigSrc: netip.MustParseAddr("10.4.5.6"), OrigDst: netip.MustParseAddr("10.96.0.10"), OrigSrcPort: 443, OrigDstPort: 80},
		Encap: Encap{IPVersion: 6, Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), DstPort: 4789, VNI: 42},
	}
	if ev != want {
		t.Fatalf("got  %+v\nwant %+v", ev, want)
	}
}

// RecordKind names a record's kind from its header alone, and refuses a
// record shorter than one.
func TestRecordKind(t *testing.T) {
	if k, ok := RecordKind(dropImage()); !ok || k != KindDrop {
		t.Errorf("drop record: %v, %v", k, ok)
	}
	if _, ok := RecordKind(dropImage()[:HdrSize-1]); ok {
		t.Error("a record shorter than a header has a kind")
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
		{"bad version", mut(func(b []byte) []byte { b[1] = 1; return b }), ErrVersion},
		{"version 2 (no reverse counts)", mut(func(b []byte) []byte { b[1], b[2] = 2, 176; return b[:176] }), ErrVersion},
		{"unknown kind", mut(func(b []byte) []byte { b[0] = 9; return b }), ErrKind},
		{"kind zero", mut(func(b []byte) []byte { b[0] = 0; return b }), ErrKind},
		{"truncated record", flowImage()[:191], ErrLength},
		{"v1 flow size", mut(func(b []byte) []byte { b[2] = 96; return b[:96] }), ErrLength},
		{"len field too small", mut(func(b []byte) []byte { b[2] = 64; return b }), ErrLength},
		{"drop len on flow", mut(func(b []byte) []byte { b[2] = 152; return b }), ErrLength},
		{"flow kind with drop image", func() []byte { b := dropImage(); b[0] = 1; return b }(), ErrLength},
		{"mtu kind with xlate image", func() []byte { b := xlateImage(); b[0] = 4; return b }(), ErrLength},
		{"truncated mtu", mtuImage()[:127], ErrLength},
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
	f, d, x, m := flowImage(), dropImage(), xlateImage(), mtuImage()
	var ev Event
	n := testing.AllocsPerRun(1000, func() {
		_ = Decode(f, &ev)
		_ = Decode(d, &ev)
		_ = Decode(x, &ev)
		_ = Decode(m, &ev)
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
	f.Add(xlateImage())
	f.Add(mtuImage())
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
			if len(b) < 176 {
				t.Fatalf("accepted short flow event (%d bytes)", len(b))
			}
		case KindDrop:
			if len(b) < 152 {
				t.Fatalf("accepted short drop event (%d bytes)", len(b))
			}
		case KindTranslated:
			if len(b) < 152 {
				t.Fatalf("accepted short translated event (%d bytes)", len(b))
			}
		case KindMTU:
			if len(b) < 128 {
				t.Fatalf("accepted short mtu event (%d bytes)", len(b))
			}
		default:
			t.Fatalf("accepted unknown kind %d", ev.Kind)
		}
		if ev.IPVersion != 4 && ev.IPVersion != 6 && (ev.Src.IsValid() || ev.Dst.IsValid()) {
			t.Fatalf("addresses for ip version %d", ev.IPVersion)
		}
		if !ev.CT.Flags.Has(CTKnown) && ev.CT != (Conntrack{}) {
			t.Fatalf("conntrack without KNOWN flag: %+v", ev.CT)
		}
	})
}
