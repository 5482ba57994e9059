package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/flowtrace/flowtrace/pkg/testutil"
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

// newFloor loads the floor programs (pkg/testutil, shared with the cost
// tests) and attaches the kfree_skb one (tp_btf, like flowtrace's, raw_tp
// if the kernel refuses). The tc program is attached per interface by
// attachTC.
func newFloor() (*floor, error) {
	f := &floor{}
	var err error
	if f.counter, err = testutil.NewCounter(); err != nil {
		return nil, err
	}
	if f.tc, err = testutil.NewFloorTC(f.counter); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	drop, l, err := testutil.AttachFloorDrop(f.counter)
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	f.drop, f.links = drop, append(f.links, l)
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
