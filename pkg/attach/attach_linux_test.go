package attach

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/netnsutil"
	"github.com/flowtrace/flowtrace/pkg/netnsutil/nstest"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// passProg is a tc program that returns TC_ACT_UNSPEC (-1), like the real
// datapath, so traffic flows whatever the attach mode.
func passProg(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load test program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program has no ID")
	}
	return id
}

type pair struct {
	nsA, nsB string
	ifindex  int
}

// vethPair builds two namespaces joined by a veth; the side in nsA is "vA".
func vethPair(t *testing.T) pair {
	t.Helper()
	p := pair{nsA: nstest.NewNetns(t), nsB: nstest.NewNetns(t)}
	nstest.Veth(t, p.nsA, "vA", "10.97.0.1/30", p.nsB, "vB", "10.97.0.2/30")
	if err := netnsutil.Do(p.nsA, func() error {
		l, err := netlink.LinkByName("vA")
		if err != nil {
			return err
		}
		p.ifindex = l.Attrs().Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

func ping(p pair) error {
	out, err := exec.Command("ip", "netns", "exec", p.nsA, "ping", "-c", "1", "-W", "2", "10.97.0.2").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping: %v: %s", err, out)
	}
	return nil
}

// state is what the kernel reports as attached on one interface.
type state struct {
	tcxIngress, tcxEgress []ebpf.ProgramID
	clsact                bool
	filters               map[string]ebpf.ProgramID // by filter name, both hooks
}

func inspect(ifindex int) (state, error) {
	s := state{filters: map[string]ebpf.ProgramID{}}
	for _, q := range []struct {
		typ ebpf.AttachType
		dst *[]ebpf.ProgramID
	}{{ebpf.AttachTCXIngress, &s.tcxIngress}, {ebpf.AttachTCXEgress, &s.tcxEgress}} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: q.typ})
		if errors.Is(err, unix.EINVAL) {
			continue // kernels before 6.6 know no TCX attach type: nothing attached there
		}
		if err != nil {
			return s, fmt.Errorf("query tcx: %w", err)
		}
		for _, p := range res.Programs {
			*q.dst = append(*q.dst, p.ID)
		}
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return s, err
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return s, err
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			s.clsact = true
		}
	}
	if !s.clsact {
		return s, nil
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := netlink.FilterList(l, parent)
		if err != nil {
			return s, err
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok {
				s.filters[bf.Name] = ebpf.ProgramID(bf.Id)
			}
		}
	}
	return s, nil
}

// tcxProbe remembers whether the running kernel has TCX (6.6+).
var tcxProbe struct {
	sync.Once
	ok bool
}

// hasTCX attaches a program to a throwaway namespace's loopback, once.
func hasTCX(t *testing.T) bool {
	t.Helper()
	tcxProbe.Do(func() {
		ns := nstest.NewNetns(t)
		inNs(t, ns, func() error {
			p := passProg(t)
			l, err := link.AttachTCX(link.TCXOptions{Interface: 1, Program: p, Attach: ebpf.AttachTCXIngress})
			if errors.Is(err, ebpf.ErrNotSupported) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("probe tcx: %w", err)
			}
			tcxProbe.ok = true
			return l.Close()
		})
	})
	return tcxProbe.ok
}

// modes are the attach modes the running kernel supports.
func modes(t *testing.T) []Mode {
	if hasTCX(t) {
		return []Mode{ModeTCX, ModeClsact}
	}
	return []Mode{ModeClsact}
}

func inNs(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := netnsutil.Do(ns, fn); err != nil {
		t.Fatal(err)
	}
}

func TestAttachDetach(t *testing.T) {
	testutil.RequirePrivileged(t)
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable bpf stats: %v", err)
	}
	defer stats.Close()

	for _, force := range append([]Mode{""}, modes(t)...) {
		name := string(force)
		if name == "" {
			name = "auto"
		}
		t.Run(name, func(t *testing.T) {
			p := vethPair(t)
			ing, eg := passProg(t), passProg(t)
			ingID, egID := progID(t, ing), progID(t, eg)
			a := New(slog.New(slog.DiscardHandler), force)
			wantMode := force
			if wantMode == "" {
				wantMode = ModeClsact // auto picks TCX where the kernel has it (6.6+)
				if hasTCX(t) {
					wantMode = ModeTCX
				}
			}

			inNs(t, p.nsA, func() error {
				mode, err := a.Attach(p.ifindex, "vA", ing, eg)
				if err != nil {
					return err
				}
				if mode != wantMode {
					return fmt.Errorf("mode = %s, want %s", mode, wantMode)
				}
				s, err := inspect(p.ifindex)
				if err != nil {
					return err
				}
				switch mode {
				case ModeTCX:
					if !slices.Contains(s.tcxIngress, ingID) || !slices.Contains(s.tcxEgress, egID) {
						return fmt.Errorf("tcx programs not attached: %+v", s)
					}
					if s.clsact {
						return errors.New("tcx mode added a clsact qdisc")
					}
				case ModeClsact:
					if s.filters[IngressFilterName] != ingID || s.filters[EgressFilterName] != egID {
						return fmt.Errorf("clsact filters not attached: %+v", s)
					}
					if len(s.tcxIngress)+len(s.tcxEgress) != 0 {
						return fmt.Errorf("clsact mode left tcx programs: %+v", s)
					}
				}
				return nil
			})
			if got := a.Attached(); len(got) != 1 || got[0] != (Attachment{p.ifindex, "vA", wantMode}) {
				t.Errorf("Attached() = %+v", got)
			}

			if err := ping(p); err != nil {
				t.Fatalf("traffic blocked while attached: %v", err)
			}
			for _, prog := range []*ebpf.Program{ing, eg} {
				st, err := prog.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if st.RunCount == 0 {
					t.Errorf("program never ran during ping: not in the datapath")
				}
			}

			inNs(t, p.nsA, func() error {
				if err := a.Detach(p.ifindex); err != nil {
					return err
				}
				s, err := inspect(p.ifindex)
				if err != nil {
					return err
				}
				if len(s.tcxIngress)+len(s.tcxEgress) != 0 || s.clsact || len(s.filters) != 0 {
					return fmt.Errorf("detach left state behind: %+v", s)
				}
				return nil
			})
			if len(a.Attached()) != 0 {
				t.Errorf("Attached() after detach = %+v", a.Attached())
			}
			if err := ping(p); err != nil {
				t.Fatalf("traffic after detach: %v", err)
			}
		})
	}
}

func TestReattachAndClose(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, mode := range modes(t) {
		t.Run(string(mode), func(t *testing.T) {
			p := vethPair(t)
			ing, eg := passProg(t), passProg(t)
			a := New(slog.New(slog.DiscardHandler), mode)
			inNs(t, p.nsA, func() error {
				for range 2 {
					if _, err := a.Attach(p.ifindex, "vA", ing, eg); err != nil {
						return err
					}
				}
				s, err := inspect(p.ifindex)
				if err != nil {
					return err
				}
				if n := len(s.tcxIngress) + len(s.tcxEgress) + len(s.filters); n != 2 {
					return fmt.Errorf("attaching twice gave %d hooks, want 2: %+v", n, s)
				}
				if err := a.Close(); err != nil {
					return err
				}
				s, err = inspect(p.ifindex)
				if err != nil {
					return err
				}
				if len(s.tcxIngress)+len(s.tcxEgress) != 0 || s.clsact || len(s.filters) != 0 {
					return fmt.Errorf("close left state behind: %+v", s)
				}
				return nil
			})
		})
	}
}

func TestDetachVanishedLink(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, mode := range modes(t) {
		t.Run(string(mode), func(t *testing.T) {
			p := vethPair(t)
			ing, eg := passProg(t), passProg(t)
			a := New(slog.New(slog.DiscardHandler), mode)
			inNs(t, p.nsA, func() error {
				if _, err := a.Attach(p.ifindex, "vA", ing, eg); err != nil {
					return err
				}
				l, err := netlink.LinkByIndex(p.ifindex)
				if err != nil {
					return err
				}
				if err := netlink.LinkDel(l); err != nil {
					return err
				}
				if err := a.Detach(p.ifindex); err != nil {
					return fmt.Errorf("detach after link vanished: %w", err)
				}
				return nil
			})
		})
	}
}

func TestCleanupStale(t *testing.T) {
	testutil.RequirePrivileged(t)
	log := slog.New(slog.DiscardHandler)

	t.Run("keeps foreign filter", func(t *testing.T) {
		p := vethPair(t)
		ing, eg, foreign := passProg(t), passProg(t), passProg(t)
		foreignID := progID(t, foreign)
		inNs(t, p.nsA, func() error {
			// Another tc user (think Cilium) was there first.
			if err := netlink.QdiscAdd(clsactQdisc(p.ifindex)); err != nil {
				return fmt.Errorf("add foreign qdisc: %w", err)
			}
			f := &netlink.BpfFilter{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: p.ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
					Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
				Fd: foreign.FD(), Name: "cil_from_container", DirectAction: true,
			}
			if err := netlink.FilterAdd(f); err != nil {
				return fmt.Errorf("add foreign filter: %w", err)
			}
			// The agent attaches, then is killed: its memory is gone, the
			// filters are not.
			if _, err := New(log, ModeClsact).Attach(p.ifindex, "vA", ing, eg); err != nil {
				return err
			}
			n, err := CleanupStale(log)
			if err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("CleanupStale removed %d filters, want 2", n)
			}
			s, err := inspect(p.ifindex)
			if err != nil {
				return err
			}
			if _, ok := s.filters[IngressFilterName]; ok {
				return fmt.Errorf("stale ingress filter survived: %+v", s)
			}
			if _, ok := s.filters[EgressFilterName]; ok {
				return fmt.Errorf("stale egress filter survived: %+v", s)
			}
			if !s.clsact || s.filters["cil_from_container"] != foreignID {
				return fmt.Errorf("foreign qdisc/filter damaged: %+v", s)
			}
			// Nothing left of ours: a second run is a no-op.
			if n, err := CleanupStale(log); err != nil || n != 0 {
				return fmt.Errorf("second CleanupStale = %d, %v", n, err)
			}
			return nil
		})
		if err := ping(p); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("removes qdisc it emptied", func(t *testing.T) {
		p := vethPair(t)
		ing, eg := passProg(t), passProg(t)
		inNs(t, p.nsA, func() error {
			if _, err := New(log, ModeClsact).Attach(p.ifindex, "vA", ing, eg); err != nil {
				return err
			}
			if n, err := CleanupStale(log); err != nil || n != 2 {
				return fmt.Errorf("CleanupStale = %d, %v; want 2", n, err)
			}
			s, err := inspect(p.ifindex)
			if err != nil {
				return err
			}
			if s.clsact || len(s.filters) != 0 {
				return fmt.Errorf("stale cleanup left state: %+v", s)
			}
			return nil
		})
	})

	t.Run("restart takes over stale filters", func(t *testing.T) {
		p := vethPair(t)
		ing, eg := passProg(t), passProg(t)
		ing2, eg2 := passProg(t), passProg(t)
		inNs(t, p.nsA, func() error {
			if _, err := New(log, ModeClsact).Attach(p.ifindex, "vA", ing, eg); err != nil {
				return err
			}
			// A restarted agent that skipped CleanupStale replaces, not stacks.
			if _, err := New(log, ModeClsact).Attach(p.ifindex, "vA", ing2, eg2); err != nil {
				return err
			}
			s, err := inspect(p.ifindex)
			if err != nil {
				return err
			}
			if len(s.filters) != 2 || s.filters[IngressFilterName] != progID(t, ing2) {
				return fmt.Errorf("filters after restart: %+v", s)
			}
			return nil
		})
	})
}

// TestForcedTCXWithoutTCX: on a kernel without TCX, forcing it fails with
// ErrNotSupported and leaves nothing behind; auto mode falls back (above).
func TestForcedTCXWithoutTCX(t *testing.T) {
	testutil.RequirePrivileged(t)
	if hasTCX(t) {
		// Nothing to refuse here; the forced-TCX subtests above ran instead.
		return
	}
	p := vethPair(t)
	a := New(slog.New(slog.DiscardHandler), ModeTCX)
	inNs(t, p.nsA, func() error {
		if _, err := a.Attach(p.ifindex, "vA", passProg(t), passProg(t)); !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("forced tcx on a kernel without it: %v, want ErrNotSupported", err)
		}
		s, err := inspect(p.ifindex)
		if err != nil {
			return err
		}
		if s.clsact || len(s.filters) != 0 || len(a.Attached()) != 0 {
			return fmt.Errorf("failed forced tcx left state: %+v %+v", s, a.Attached())
		}
		return nil
	})
}
