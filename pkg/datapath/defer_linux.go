package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// deferInitProgram sets a CPU's first-report queue up (bpf/ft_defer.h).
const deferInitProgram = "ft_defer_init"

// ft_flow_val.defer bits (FT_DEFER_* in bpf/ft_defer.h).
const deferQueued = 1

// deferSlots is FT_DEFER_SLOTS: new entries a CPU's queue holds.
const deferSlots = 1024

// startDefer loads ft_defer_init with the core maps and runs it for every
// CPU's queue, which then holds new entries' first reports for
// cfg.FirstReportDelay. tc was loaded with the queue (deferOn) but leaves a
// queue alone until this sets its delay, so an error here only means new
// flows are reported at their first packet.
func (d *Datapath) startDefer(spec *ebpf.CollectionSpec) error {
	if !d.deferOn {
		return nil
	}
	coll, err := d.loadAlone(spec, deferInitProgram)
	if err != nil {
		return verifierDetail(err)
	}
	ncpu := int(d.objs.FtDefer.MaxEntries())
	// struct ft_defer_init_arg, padded to a minimal Ethernet frame (the
	// test run wants at least a header's worth of packet).
	arg := make([]byte, 64)
	binary.NativeEndian.PutUint64(arg[8:], uint64(d.cfg.FirstReportDelay.Nanoseconds()))
	var errs []error
	for cpu := range ncpu {
		binary.NativeEndian.PutUint32(arg[0:], uint32(cpu))
		ret, err := coll.Programs[deferInitProgram].Run(&ebpf.RunOptions{Data: arg})
		if err == nil && ret != 0 {
			err = fmt.Errorf("step %d failed", ret)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("CPU %d's queue: %w", cpu, err))
		}
	}
	if len(errs) == ncpu {
		coll.Close()
		return errors.Join(errs...)
	}
	// Queues that did not start report at once; the others hold.
	if len(errs) > 0 {
		d.log.Warn("some CPUs report new flows at their first packet", "error", errors.Join(errs...))
	}
	d.deferColl = coll
	d.features.FirstReportDelay = d.cfg.FirstReportDelay
	return nil
}
