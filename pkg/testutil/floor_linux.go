//go:build linux

package testutil

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Floor programs are the practical lower bound of an in-kernel hook on a
// machine: a tc program and a kfree_skb program that only bump a per-CPU
// counter. flowtrace's per-packet and per-drop costs are quoted against
// them, measured on the same machine at the same time (the bench, and the
// cost tests in pkg/datapath).

// CountingProgram returns instructions that add one to counter[0] and
// return ret.
func CountingProgram(counter *ebpf.Map, ret int32) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, ret).WithSymbol("out"),
		asm.Return(),
	}
}

// NewCounter makes the per-CPU counter the floor programs bump.
func NewCounter() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "ftb_count", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create floor counter: %w", err)
	}
	return m, nil
}

// AttachFloorDrop loads the counting program on the kfree_skb tracepoint
// and attaches it: tp_btf, like flowtrace's drop hook, or raw_tp where the
// kernel refuses that.
func AttachFloorDrop(counter *ebpf.Map) (*ebpf.Program, link.Link, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ftb_floor_drop", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
		AttachTo: "kfree_skb", Instructions: CountingProgram(counter, 0), License: "GPL"})
	if err == nil {
		l, aerr := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		if aerr == nil {
			return prog, l, nil
		}
		prog.Close()
		err = aerr
	}
	btfErr := err
	prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ftb_floor_drop", Type: ebpf.RawTracepoint,
		Instructions: CountingProgram(counter, 0), License: "GPL"})
	if err != nil {
		return nil, nil, fmt.Errorf("load floor kfree_skb program: tp_btf: %w; raw_tp: %w", btfErr, err)
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "kfree_skb", Program: prog})
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("attach floor kfree_skb program: %w", err), prog.Close())
	}
	return prog, l, nil
}

// NewFloorTC loads the counting tc program. It returns TC_ACT_UNSPEC (-1):
// it observes only, like flowtrace's programs.
func NewFloorTC(counter *ebpf.Map) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ftb_floor_tc", Type: ebpf.SchedCLS,
		Instructions: CountingProgram(counter, -1), License: "GPL"})
	if err != nil {
		return nil, fmt.Errorf("load floor tc program: %w", err)
	}
	return prog, nil
}
