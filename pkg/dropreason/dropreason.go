// Package dropreason names the kernel's packet drop reasons.
//
// The numeric values of enum skb_drop_reason change between kernel versions
// (reasons are inserted in the middle of the enum), so a hard-coded table is
// wrong on most kernels. Names are read from the running kernel's BTF and
// matched by name to flowtrace's stable DropReason enum, which keeps its
// numbers forever; the kernel's own name travels beside it.
package dropreason

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/cilium/ebpf/btf"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

const (
	enumName     = "skb_drop_reason"
	kernelPrefix = "SKB_DROP_REASON_"
	stablePrefix = "DROP_REASON_"
	// subsysShift mirrors SKB_DROP_REASON_SUBSYS_SHIFT: reasons of subsystems
	// (mac80211, openvswitch, ...) carry their subsystem in the upper bits and
	// are declared in the subsystem's own enum.
	subsysShift = 16
)

// Reason is one kernel drop reason resolved for the running kernel.
type Reason struct {
	Code   uint32                 // the kernel's numeric value
	Kernel string                 // the kernel's name without SKB_DROP_REASON_, e.g. "NETFILTER_DROP"
	Stable flowtracev1.DropReason // flowtrace's stable reason; DROP_REASON_UNKNOWN if none matches
}

// Table maps the running kernel's drop reason values to names.
type Table struct {
	byCode     map[uint32]Reason
	notDropped uint32
	consumed   uint32
	hasFree    bool // both notDropped and consumed were found
	none       bool // the kernel has no drop reasons at all
}

// ErrNoDropReasons means the kernel's BTF has no enum skb_drop_reason
// (kernels before 5.17): drops are still reported, without a reason.
var ErrNoDropReasons = errors.New("kernel BTF has no enum skb_drop_reason (kernel older than 5.17?)")

// FromKernel reads the running kernel's BTF. A kernel without drop reasons
// (before 5.17) gets an empty table, not an error: its drops are reported
// with reason UNKNOWN (see HasReasons).
//
// /sys/kernel/btf/vmlinux is scanned for the reason enums only (scanEnums);
// a kernel without it falls back to cilium/ebpf's search for a vmlinux ELF.
func FromKernel() (*Table, error) {
	raw, err := os.ReadFile(kernelBTFPath)
	if errors.Is(err, fs.ErrNotExist) {
		return fromKernelSpec()
	}
	if err != nil {
		return nil, fmt.Errorf("read kernel BTF: %w", err)
	}
	enums, err := scanEnums(raw, isReasonEnum)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", kernelBTFPath, err)
	}
	t, err := fromEnums(enums)
	if errors.Is(err, ErrNoDropReasons) {
		return Empty(), nil
	}
	return t, err
}

const kernelBTFPath = "/sys/kernel/btf/vmlinux"

func fromKernelSpec() (*Table, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	t, err := FromSpec(spec)
	if errors.Is(err, ErrNoDropReasons) {
		return Empty(), nil
	}
	return t, err
}

// Empty is the table of a kernel without drop reasons.
func Empty() *Table {
	return &Table{byCode: map[uint32]Reason{}, none: true}
}

// HasReasons is false for a kernel without enum skb_drop_reason.
func (t *Table) HasReasons() bool { return !t.none }

// FromSpec builds a table from a BTF spec holding enum skb_drop_reason.
// It decodes every type of spec to find the subsystems' enums: FromKernel
// avoids that for the running kernel.
func FromSpec(spec *btf.Spec) (*Table, error) {
	var enums []*btf.Enum
	for typ, err := range spec.All() {
		if err != nil {
			return nil, fmt.Errorf("read BTF types: %w", err)
		}
		if e, ok := typ.(*btf.Enum); ok && isReasonEnum(e.Name) {
			enums = append(enums, e)
		}
	}
	return fromEnums(enums)
}

// fromEnums builds a table from enum skb_drop_reason and the subsystems'
// reason enums among enums.
func fromEnums(enums []*btf.Enum) (*Table, error) {
	var main *btf.Enum
	for _, e := range enums {
		if e.Name == enumName {
			main = e
			break
		}
	}
	if main == nil {
		return nil, ErrNoDropReasons
	}
	t := FromEnum(main)
	for _, e := range enums {
		if e != main {
			t.addSubsystem(e)
		}
	}
	return t, nil
}

// FromEnum builds a table from enum skb_drop_reason alone.
func FromEnum(e *btf.Enum) *Table {
	t := &Table{byCode: make(map[uint32]Reason, len(e.Values))}
	var haveND, haveC bool
	for _, v := range e.Values {
		code := uint32(v.Value)
		switch v.Name {
		case "SKB_NOT_DROPPED_YET":
			t.notDropped, haveND = code, true
			continue
		case "SKB_CONSUMED":
			t.consumed, haveC = code, true
			continue
		}
		name, ok := strings.CutPrefix(v.Name, kernelPrefix)
		if !ok || name == "MAX" || strings.HasPrefix(name, "SUBSYS_") {
			continue // markers, not reasons
		}
		t.byCode[code] = Reason{Code: code, Kernel: name, Stable: stableByName(name)}
	}
	t.hasFree = haveND && haveC
	return t
}

// addSubsystem adds the reasons a subsystem declares in its own enum (e.g.
// enum ovs_drop_reason), whose values carry the subsystem id in the upper
// 16 bits.
func (t *Table) addSubsystem(e *btf.Enum) {
	for _, v := range e.Values {
		code := uint32(v.Value)
		if code>>subsysShift == 0 {
			continue
		}
		if _, dup := t.byCode[code]; dup {
			continue
		}
		t.byCode[code] = Reason{Code: code, Kernel: v.Name, Stable: flowtracev1.DropReason_DROP_REASON_UNKNOWN}
	}
}

func stableByName(kernelName string) flowtracev1.DropReason {
	if v, ok := flowtracev1.DropReason_value[stablePrefix+kernelName]; ok {
		return flowtracev1.DropReason(v)
	}
	return flowtracev1.DropReason_DROP_REASON_UNKNOWN
}

// Lookup resolves a kernel value. A value this kernel does not name (which
// should not happen on the kernel the table came from) is reported as
// UNKNOWN with its number, never as some other reason.
func (t *Table) Lookup(code uint32) Reason {
	if r, ok := t.byCode[code]; ok {
		return r
	}
	if t.none {
		// The kernel passed no reason at all: there is no number to show.
		return Reason{Code: code, Kernel: "UNKNOWN", Stable: flowtracev1.DropReason_DROP_REASON_UNKNOWN}
	}
	name := fmt.Sprintf("UNKNOWN(%d)", code)
	if sub := code >> subsysShift; sub != 0 {
		name = fmt.Sprintf("SUBSYS_%d(%d)", sub, code&(1<<subsysShift-1))
	}
	return Reason{Code: code, Kernel: name, Stable: flowtracev1.DropReason_DROP_REASON_UNKNOWN}
}

// Len is the number of reasons the kernel names.
func (t *Table) Len() int { return len(t.byCode) }

// FreeValues returns the values of SKB_NOT_DROPPED_YET and SKB_CONSUMED, the
// frees that are not drops; ok is false when the kernel lacks them.
func (t *Table) FreeValues() (notDropped, consumed uint32, ok bool) {
	return t.notDropped, t.consumed, t.hasFree
}

// Parse turns a user's reason name ("NETFILTER_DROP", "netfilter_drop",
// "DROP_REASON_NETFILTER_DROP") into the stable enum.
func Parse(s string) (flowtracev1.DropReason, error) {
	n := strings.ToUpper(strings.TrimSpace(s))
	n = strings.TrimPrefix(n, kernelPrefix)
	n = strings.TrimPrefix(n, stablePrefix)
	if v, ok := flowtracev1.DropReason_value[stablePrefix+n]; ok && v != 0 {
		return flowtracev1.DropReason(v), nil
	}
	return 0, fmt.Errorf("unknown drop reason %q (examples: NETFILTER_DROP, NO_SOCKET, PKT_TOO_BIG; see `flowtrace observe --help`)", s)
}
