package dropreason

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf/btf"
)

// BTF kinds whose records carry data after the 12-byte common header, and
// how much (see the kernel's Documentation/bpf/btf.rst). Keep in sync with
// include/uapi/linux/btf.h.
const (
	kindInt       = 1
	kindArray     = 3
	kindStruct    = 4
	kindUnion     = 5
	kindEnum      = 6
	kindFuncProto = 13
	kindVar       = 14
	kindDatasec   = 15
	kindDeclTag   = 17
	kindEnum64    = 19
	kindMax       = 19
)

// scanEnums walks raw BTF (as in /sys/kernel/btf/vmlinux) and returns the
// enums whose name want accepts. It reads only the fixed-size type records
// and the names of the enums it keeps: decoding the whole kernel BTF through
// btf.Spec.All() inflated ~150k types and allocated ~45 MB at every agent
// start, for a handful of enums.
func scanEnums(raw []byte, want func(name string) bool) ([]*btf.Enum, error) {
	if len(raw) < 24 {
		return nil, errors.New("btf: short header")
	}
	var bo binary.ByteOrder
	switch {
	case raw[0] == 0x9f && raw[1] == 0xeb:
		bo = binary.LittleEndian
	case raw[0] == 0xeb && raw[1] == 0x9f:
		bo = binary.BigEndian
	default:
		return nil, errors.New("btf: bad magic")
	}
	hdrLen := uint64(bo.Uint32(raw[4:]))
	typeOff, typeLen := uint64(bo.Uint32(raw[8:])), uint64(bo.Uint32(raw[12:]))
	strOff, strLen := uint64(bo.Uint32(raw[16:])), uint64(bo.Uint32(raw[20:]))
	if hdrLen+typeOff+typeLen > uint64(len(raw)) || hdrLen+strOff+strLen > uint64(len(raw)) {
		return nil, errors.New("btf: sections out of bounds")
	}
	types := raw[hdrLen+typeOff : hdrLen+typeOff+typeLen]
	strs := raw[hdrLen+strOff : hdrLen+strOff+strLen]
	name := func(off uint32) (string, error) {
		if uint64(off) >= uint64(len(strs)) {
			return "", fmt.Errorf("btf: string offset %d out of bounds", off)
		}
		s := strs[off:]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		return string(s), nil
	}
	nameIs := func(off uint32, ok func(string) bool) bool {
		// Compare without allocating: most enums are not wanted.
		if uint64(off) >= uint64(len(strs)) {
			return false
		}
		s := strs[off:]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		return ok(unsafeString(s))
	}

	var out []*btf.Enum
	for p := 0; p < len(types); {
		if len(types)-p < 12 {
			return nil, errors.New("btf: truncated type record")
		}
		nameOff := bo.Uint32(types[p:])
		info := bo.Uint32(types[p+4:])
		size := bo.Uint32(types[p+8:])
		kind := info >> 24 & 0x1f
		vlen := int(info & 0xffff)
		signed := info>>31 != 0
		p += 12
		var extra int
		switch kind {
		case kindInt, kindVar, kindDeclTag:
			extra = 4
		case kindArray:
			extra = 12
		case kindStruct, kindUnion, kindDatasec:
			extra = 12 * vlen
		case kindEnum, kindFuncProto:
			extra = 8 * vlen
		case kindEnum64:
			extra = 12 * vlen
		default:
			if kind == 0 || kind > kindMax {
				return nil, fmt.Errorf("btf: unknown kind %d", kind)
			}
		}
		if len(types)-p < extra {
			return nil, errors.New("btf: truncated type data")
		}
		if (kind == kindEnum || kind == kindEnum64) && nameOff != 0 && nameIs(nameOff, want) {
			e := &btf.Enum{Size: size, Signed: signed, Values: make([]btf.EnumValue, 0, vlen)}
			var err error
			if e.Name, err = name(nameOff); err != nil {
				return nil, err
			}
			for i := range vlen {
				var v btf.EnumValue
				var off uint32
				if kind == kindEnum {
					rec := types[p+8*i:]
					off = bo.Uint32(rec)
					if signed {
						v.Value = uint64(int64(int32(bo.Uint32(rec[4:]))))
					} else {
						v.Value = uint64(bo.Uint32(rec[4:]))
					}
				} else {
					rec := types[p+12*i:]
					off = bo.Uint32(rec)
					v.Value = uint64(bo.Uint32(rec[8:]))<<32 | uint64(bo.Uint32(rec[4:]))
				}
				if v.Name, err = name(off); err != nil {
					return nil, err
				}
				e.Values = append(e.Values, v)
			}
			out = append(out, e)
		}
		p += extra
	}
	return out, nil
}

// isReasonEnum accepts enum skb_drop_reason and the subsystems' own reason
// enums (enum ovs_drop_reason, enum mac80211_drop_reason, ...).
func isReasonEnum(name string) bool { return strings.HasSuffix(name, "drop_reason") }

// unsafeString views b as a string for a comparison that does not outlive
// b; it never escapes (the scan copies the names it keeps).
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
