package dropreason

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// A kernel that inserted a reason before NETFILTER_DROP shifts its number;
// the table must follow the names, not the numbers.
func TestFromEnumFollowsNamesNotNumbers(t *testing.T) {
	e := &btf.Enum{Name: "skb_drop_reason", Size: 4, Values: []btf.EnumValue{
		{Name: "SKB_NOT_DROPPED_YET", Value: 0},
		{Name: "SKB_CONSUMED", Value: 1},
		{Name: "SKB_DROP_REASON_NOT_SPECIFIED", Value: 2},
		{Name: "SKB_DROP_REASON_NO_SOCKET", Value: 3},
		{Name: "SKB_DROP_REASON_SOMETHING_NEW", Value: 4},
		{Name: "SKB_DROP_REASON_NETFILTER_DROP", Value: 5},
		{Name: "SKB_DROP_REASON_MAX", Value: 6},
		{Name: "SKB_DROP_REASON_SUBSYS_MASK", Value: 0xffff0000},
	}}
	tab := FromEnum(e)
	cases := []struct {
		code   uint32
		kernel string
		stable flowtracev1.DropReason
	}{
		{3, "NO_SOCKET", flowtracev1.DropReason_DROP_REASON_NO_SOCKET},
		{5, "NETFILTER_DROP", flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP},
		{4, "SOMETHING_NEW", flowtracev1.DropReason_DROP_REASON_UNKNOWN},
		{2, "NOT_SPECIFIED", flowtracev1.DropReason_DROP_REASON_NOT_SPECIFIED},
		{99, "UNKNOWN(99)", flowtracev1.DropReason_DROP_REASON_UNKNOWN},
		{3<<16 | 7, "SUBSYS_3(7)", flowtracev1.DropReason_DROP_REASON_UNKNOWN},
	}
	for _, c := range cases {
		r := tab.Lookup(c.code)
		if r.Kernel != c.kernel || r.Stable != c.stable || r.Code != c.code {
			t.Errorf("Lookup(%d) = %+v, want kernel %s stable %s", c.code, r, c.kernel, c.stable)
		}
	}
	if tab.Len() != 4 {
		t.Errorf("Len = %d, want 4 (markers and frees excluded)", tab.Len())
	}
	nd, cons, ok := tab.FreeValues()
	if !ok || nd != 0 || cons != 1 {
		t.Errorf("FreeValues = %d %d %v", nd, cons, ok)
	}
}

func TestRunningKernel(t *testing.T) {
	tab, err := FromKernel()
	if err != nil {
		t.Fatalf("FromKernel: %v", err)
	}
	// What the kernel names, straight from BTF, independent of the table.
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	kernel := map[string]bool{}
	var e *btf.Enum
	if err := spec.TypeByName(enumName, &e); err == nil {
		for _, v := range e.Values {
			kernel[v.Name] = true
		}
	}
	if len(kernel) == 0 {
		// Before 5.17: an empty table that still answers, never an error.
		if tab.HasReasons() || tab.Len() != 0 {
			t.Fatalf("kernel without drop reasons: HasReasons %v, Len %d", tab.HasReasons(), tab.Len())
		}
		if r := tab.Lookup(0); r.Kernel != "UNKNOWN" || r.Stable != flowtracev1.DropReason_DROP_REASON_UNKNOWN {
			t.Fatalf("Lookup on a kernel without reasons = %+v", r)
		}
		if _, _, ok := tab.FreeValues(); ok {
			t.Fatal("FreeValues ok without reasons")
		}
		return
	}
	if !tab.HasReasons() || tab.Len() < 50 {
		t.Fatalf("only %d drop reasons on this kernel", tab.Len())
	}
	// Every name flowtrace's users rely on in the lab must resolve to its
	// stable value wherever the running kernel has it (PKT_TOO_BIG is 6.4+).
	for _, want := range []flowtracev1.DropReason{
		flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP,
		flowtracev1.DropReason_DROP_REASON_NO_SOCKET,
		flowtracev1.DropReason_DROP_REASON_PKT_TOO_BIG,
	} {
		kname := strings.TrimPrefix(want.String(), stablePrefix)
		found := false
		for _, r := range tab.byCode {
			if r.Stable == want {
				found = true
				if r.Kernel != kname {
					t.Errorf("%s mapped from kernel name %s", want, r.Kernel)
				}
			}
		}
		if found != kernel[kernelPrefix+kname] {
			t.Errorf("%s: in table %v, in kernel BTF %v", want, found, kernel[kernelPrefix+kname])
		}
	}
	_, _, ok := tab.FreeValues()
	if want := kernel["SKB_NOT_DROPPED_YET"] && kernel["SKB_CONSUMED"]; ok != want {
		t.Errorf("FreeValues ok = %v, kernel has both = %v", ok, want)
	}
}

func TestParse(t *testing.T) {
	for _, in := range []string{"NETFILTER_DROP", "netfilter_drop", "DROP_REASON_NETFILTER_DROP", "SKB_DROP_REASON_NETFILTER_DROP", " Netfilter_Drop "} {
		got, err := Parse(in)
		if err != nil || got != flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP {
			t.Errorf("Parse(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "nope", "UNSPECIFIED", "DROP_REASON_UNSPECIFIED"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestEmptyTable(t *testing.T) {
	tab := Empty()
	if tab.HasReasons() || tab.Len() != 0 {
		t.Fatalf("empty table: HasReasons %v Len %d", tab.HasReasons(), tab.Len())
	}
	if r := tab.Lookup(0); r.Kernel != "UNKNOWN" || r.Code != 0 || r.Stable != flowtracev1.DropReason_DROP_REASON_UNKNOWN {
		t.Fatalf("Lookup(0) = %+v", r)
	}
	if _, _, ok := tab.FreeValues(); ok {
		t.Fatal("FreeValues ok on an empty table")
	}
}
