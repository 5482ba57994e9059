package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// floor is the practical lower bound of an in-kernel hook on this machine:
// a tc program and a kfree_skb program that only bump a per-CPU counter.
// flowtrace's per-packet and per-drop ns are quoted against it, measured in
// the same round.
type floor struct {
	counter *ebpf.Map
	tc      *ebpf.Program
	drop    *ebpf.Program
	links   []link.Link
}

// countingProgram returns instructions that add one to counter[0] and
// return ret.
func countingProgram(counter *ebpf.Map, ret int32) asm.Instructions {
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

// newFloor loads the floor programs and attaches the kfree_skb one (tp_btf,
// like flowtrace's, raw_tp if the kernel refuses). The tc program is
// attached per interface by attachTC.
func newFloor() (*floor, error) {
	f := &floor{}
	var err error
	f.counter, err = ebpf.NewMap(&ebpf.MapSpec{Name: "ftb_count", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create floor counter: %w", err)
	}
	// TC_ACT_UNSPEC (-1): observe only, like flowtrace's programs.
	f.tc, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ftb_floor_tc", Type: ebpf.SchedCLS,
		Instructions: countingProgram(f.counter, -1), License: "GPL"})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("load floor tc program: %w", err), f.Close())
	}
	f.drop, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ftb_floor_drop", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
		AttachTo: "kfree_skb", Instructions: countingProgram(f.counter, 0), License: "GPL"})
	if err == nil {
		var l link.Link
		if l, err = link.AttachTracing(link.TracingOptions{Program: f.drop, AttachType: ebpf.AttachTraceRawTp}); err == nil {
			f.links = append(f.links, l)
		}
	}
	if err != nil {
		if f.drop != nil {
			f.drop.Close()
		}
		f.drop, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ftb_floor_drop", Type: ebpf.RawTracepoint,
			Instructions: countingProgram(f.counter, 0), License: "GPL"})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("load floor kfree_skb program: %w", err), f.Close())
		}
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "kfree_skb", Program: f.drop})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("attach floor kfree_skb program: %w", err), f.Close())
		}
		f.links = append(f.links, l)
	}
	return f, nil
}

// attachTC attaches the tc program at ingress and egress of each named
// interface. It must run on a thread inside the interfaces' namespace.
func (f *floor) attachTC(ifnames []string) error {
	for _, name := range ifnames {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("floor: find %s: %w", name, err)
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: f.tc, Attach: at})
			if err != nil {
				return fmt.Errorf("floor: attach tcx %s on %s: %w", at, name, err)
			}
			f.links = append(f.links, l)
		}
	}
	return nil
}

func (f *floor) programs() *progSet {
	m := map[string][]*ebpf.Program{"tc": {f.tc}}
	if f.drop != nil {
		m["drop"] = []*ebpf.Program{f.drop}
	}
	return ownedPrograms(m)
}

func (f *floor) Close() error {
	var errs []error
	for i := len(f.links) - 1; i >= 0; i-- {
		errs = append(errs, f.links[i].Close())
	}
	for _, c := range []interface{ Close() error }{f.tc, f.drop, f.counter} {
		switch v := c.(type) {
		case *ebpf.Program:
			if v != nil {
				errs = append(errs, v.Close())
			}
		case *ebpf.Map:
			if v != nil {
				errs = append(errs, v.Close())
			}
		}
	}
	return errors.Join(errs...)
}
