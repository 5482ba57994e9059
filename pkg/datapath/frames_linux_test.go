//go:build linux

package datapath

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Hand-built frames for BPF_PROG_TEST_RUN. Checksums are left zero: the tc
// programs never validate them.

var (
	macA = []byte{0x02, 0, 0, 0, 0, 0xa}
	macB = []byte{0x02, 0, 0, 0, 0, 0xb}
)

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func eth(ethertype uint16) []byte { return cat(macB, macA, be16(ethertype)) }

func vlanTag(vid, inner uint16) []byte { return cat(be16(vid), be16(inner)) }

func ipv4(proto uint8, src, dst string, fragOff uint16, opts []byte, payload []byte) []byte {
	ihl := 5 + len(opts)/4
	h := make([]byte, 20)
	h[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(h[2:], uint16(ihl*4+len(payload)))
	binary.BigEndian.PutUint16(h[6:], fragOff)
	h[8] = 64
	h[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return cat(h, opts, payload)
}

func ipv6(nh uint8, src, dst string, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = nh
	h[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return cat(h, payload)
}

// ext6 builds an IPv6 extension header of (hdrExtLen+1)*8 bytes.
func ext6(nh uint8, hdrExtLen uint8) []byte {
	b := make([]byte, (int(hdrExtLen)+1)*8)
	b[0], b[1] = nh, hdrExtLen
	return b
}

func frag6(nh uint8, offset8 uint16, more bool) []byte {
	b := make([]byte, 8)
	b[0] = nh
	v := offset8 << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	return b
}

func tcp(sport, dport uint16, flags uint8) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = 5 << 4
	h[13] = flags
	return h
}

func udp(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return cat(h, payload)
}

func sctp(sport, dport uint16) []byte {
	h := make([]byte, 12)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	return h
}

func icmpEcho(typ uint8) []byte { return []byte{typ, 0, 0, 0, 0x12, 0x34, 0, 1} }

func waitMs(n int) { time.Sleep(time.Duration(n) * time.Millisecond) }
