package dropreason

import (
	"maps"
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// scanEnums must step over every kind of record to find the enums behind
// them, and read both enum layouts.
func TestScanEnumsBuiltBTF(t *testing.T) {
	u32 := &btf.Int{Name: "u32", Size: 4}
	types := []btf.Type{
		u32,
		&btf.Struct{Name: "sk_buff", Size: 8, Members: []btf.Member{{Name: "a", Type: u32}, {Name: "b", Type: u32, Offset: 32}}},
		&btf.Array{Index: u32, Type: u32, Nelems: 4},
		&btf.Enum{Name: "other_enum", Size: 4, Values: []btf.EnumValue{{Name: "X", Value: 1}}},
		&btf.Func{Name: "f", Type: &btf.FuncProto{Return: u32, Params: []btf.FuncParam{{Name: "x", Type: u32}, {Name: "y", Type: u32}}}, Linkage: btf.GlobalFunc},
		&btf.Enum{Name: "skb_drop_reason", Size: 4, Values: []btf.EnumValue{
			{Name: "SKB_NOT_DROPPED_YET", Value: 0}, {Name: "SKB_CONSUMED", Value: 1},
			{Name: "SKB_DROP_REASON_NO_SOCKET", Value: 2}, {Name: "SKB_DROP_REASON_NETFILTER_DROP", Value: 3},
		}},
		&btf.Var{Name: "v", Type: u32, Linkage: btf.GlobalVar},
		&btf.Enum{Name: "ovs_drop_reason", Size: 8, Values: []btf.EnumValue{
			{Name: "OVS_DROP_LAST_ACTION", Value: 3 << 16}, {Name: "OVS_DROP_BIG", Value: 3<<16 | 1 | 1<<40},
		}},
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	enums, err := scanEnums(raw, isReasonEnum)
	if err != nil {
		t.Fatalf("scanEnums: %v", err)
	}
	if len(enums) != 2 || enums[0].Name != "skb_drop_reason" || enums[1].Name != "ovs_drop_reason" {
		t.Fatalf("enums = %v", enums)
	}
	if !reflect.DeepEqual(enums[0].Values, types[5].(*btf.Enum).Values) || !reflect.DeepEqual(enums[1].Values, types[7].(*btf.Enum).Values) {
		t.Errorf("values = %v / %v", enums[0].Values, enums[1].Values)
	}
	tab, err := fromEnums(enums)
	if err != nil {
		t.Fatal(err)
	}
	if r := tab.Lookup(3 << 16); r.Kernel != "OVS_DROP_LAST_ACTION" {
		t.Errorf("subsystem reason = %+v", r)
	}
	if _, err := scanEnums(raw[:len(raw)-3], isReasonEnum); err == nil {
		t.Error("truncated BTF accepted")
	}
}

// The scan of the running kernel's BTF finds exactly what decoding all of
// it with cilium/ebpf finds (a kernel without /sys/kernel/btf/vmlinux takes
// the decoding path on both sides).
func TestScanEnumsMatchesSpec(t *testing.T) {
	fast, err := FromKernel()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	full, err := FromSpec(spec)
	if err != nil {
		if !fast.none {
			t.Fatalf("FromSpec: %v, FromKernel found %d reasons", err, fast.Len())
		}
		return
	}
	if !maps.Equal(fast.byCode, full.byCode) || fast.notDropped != full.notDropped || fast.consumed != full.consumed || fast.hasFree != full.hasFree {
		t.Errorf("scan: %d reasons, full decode: %d", fast.Len(), full.Len())
	}
}
