package dropreason

import (
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
	if tab.Len() < 50 {
		t.Fatalf("only %d drop reasons on this kernel", tab.Len())
	}
	// Every name flowtrace's users rely on in the lab must resolve to its
	// stable value on the running kernel.
	for _, want := range []flowtracev1.DropReason{
		flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP,
		flowtracev1.DropReason_DROP_REASON_NO_SOCKET,
		flowtracev1.DropReason_DROP_REASON_PKT_TOO_BIG,
	} {
		found := false
		for _, r := range tab.byCode {
			if r.Stable == want {
				found = true
				if "DROP_REASON_"+r.Kernel != want.String() {
					t.Errorf("%s mapped from kernel name %s", want, r.Kernel)
				}
			}
		}
		if !found {
			t.Errorf("%s not found in the running kernel's reasons", want)
		}
	}
	if _, _, ok := tab.FreeValues(); !ok {
		t.Error("SKB_NOT_DROPPED_YET / SKB_CONSUMED not found")
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
