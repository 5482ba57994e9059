package attach

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Mode is how programs are attached to an interface.
type Mode string

const (
	ModeTCX    Mode = "tcx"    // bpf_link based tc attach, kernel 6.6+
	ModeClsact Mode = "clsact" // clsact qdisc + cls_bpf filter, any kernel
)

// Legacy filters carry a fixed name prefix, priority and handle so that a
// restarted agent (or CleanupStale) recognises its own filters after a
// kill -9 and never touches anybody else's (Cilium, Calico...).
const (
	FilterNamePrefix  = "flowtrace_"
	IngressFilterName = FilterNamePrefix + "ingress"
	EgressFilterName  = FilterNamePrefix + "egress"
	// 0x4654 is "FT"; other tc users use small priorities (Cilium: 1).
	FilterPriority uint16 = 0x4654
	FilterHandle   uint32 = 0x4654
)

// Attachment describes one attached interface.
type Attachment struct {
	Ifindex int
	Name    string
	Mode    Mode
}

type attached struct {
	Attachment
	links      []link.Link // TCX; must stay referenced or they detach on GC
	addedQdisc bool        // clsact: we created the qdisc, so we may remove it
}

// Attacher attaches program pairs to interfaces of the calling thread's
// network namespace and remembers what it did.
type Attacher struct {
	log   *slog.Logger
	force Mode

	mu   sync.Mutex
	tcx  *bool // nil until the first attach tells us whether TCX works
	byIf map[int]*attached
}

// New returns an Attacher. forceMode "" picks TCX when the kernel supports
// it and clsact otherwise.
func New(log *slog.Logger, forceMode Mode) *Attacher {
	return &Attacher{log: log, force: forceMode, byIf: map[int]*attached{}}
}

// Attach hooks ingress and egress onto the interface. Attaching an
// interface again replaces what was there. It returns the mode used.
func (a *Attacher) Attach(ifindex int, ifname string, ingress, egress *ebpf.Program) (Mode, error) {
	if ingress == nil || egress == nil {
		return "", fmt.Errorf("attach on %s: both ingress and egress programs are required", ifname)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.byIf[ifindex]; ok {
		if err := a.detachLocked(old); err != nil {
			return "", fmt.Errorf("reattach on %s: %w", ifname, err)
		}
	}

	switch a.force {
	case ModeClsact:
		return a.attachClsactLocked(ifindex, ifname, ingress, egress)
	case ModeTCX:
		return a.attachTCXLocked(ifindex, ifname, ingress, egress)
	case "":
	default:
		return "", fmt.Errorf("attach on %s: unknown mode %q", ifname, a.force)
	}
	if a.tcx == nil || *a.tcx {
		mode, err := a.attachTCXLocked(ifindex, ifname, ingress, egress)
		if err == nil {
			ok := true
			a.tcx = &ok
			return mode, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return "", err
		}
		no := false
		a.tcx = &no
		a.log.Info("TCX not supported by this kernel, using clsact", "err", err)
	}
	return a.attachClsactLocked(ifindex, ifname, ingress, egress)
}

func (a *Attacher) attachTCXLocked(ifindex int, ifname string, ingress, egress *ebpf.Program) (Mode, error) {
	at := &attached{Attachment: Attachment{Ifindex: ifindex, Name: ifname, Mode: ModeTCX}}
	for _, h := range []struct {
		dir  string
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{{"ingress", ingress, ebpf.AttachTCXIngress}, {"egress", egress, ebpf.AttachTCXEgress}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.typ})
		if err != nil {
			for _, l := range at.links {
				_ = l.Close()
			}
			return "", fmt.Errorf("attach tcx %s on %s: %w", h.dir, ifname, err)
		}
		at.links = append(at.links, l)
	}
	a.byIf[ifindex] = at
	a.log.Debug("attached", "ifname", ifname, "ifindex", ifindex, "mode", ModeTCX)
	return ModeTCX, nil
}

func clsactQdisc(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

func ourFilter(ifindex int, parent uint32, name string, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    parent,
			Handle:    FilterHandle,
			Priority:  FilterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}

func (a *Attacher) attachClsactLocked(ifindex int, ifname string, ingress, egress *ebpf.Program) (Mode, error) {
	at := &attached{Attachment: Attachment{Ifindex: ifindex, Name: ifname, Mode: ModeClsact}}
	err := netlink.QdiscAdd(clsactQdisc(ifindex))
	switch {
	case err == nil:
		at.addedQdisc = true
	case errors.Is(err, unix.EEXIST):
		// Somebody (maybe our previous run) already has one: share it.
	default:
		return "", fmt.Errorf("add clsact qdisc on %s: %w", ifname, err)
	}
	for _, h := range []struct {
		parent uint32
		name   string
		prog   *ebpf.Program
	}{{netlink.HANDLE_MIN_INGRESS, IngressFilterName, ingress}, {netlink.HANDLE_MIN_EGRESS, EgressFilterName, egress}} {
		// Replace, not add: a filter left by a killed agent sits at the
		// same priority/handle and is taken over instead of failing.
		if err := netlink.FilterReplace(ourFilter(ifindex, h.parent, h.name, h.prog.FD())); err != nil {
			err = fmt.Errorf("add bpf filter %s on %s: %w", h.name, ifname, err)
			return "", errors.Join(err, a.detachLocked(at))
		}
	}
	a.byIf[ifindex] = at
	a.log.Debug("attached", "ifname", ifname, "ifindex", ifindex, "mode", ModeClsact, "added_qdisc", at.addedQdisc)
	return ModeClsact, nil
}

// Detach removes what Attach put on the interface. An interface that is
// already gone (pod deleted) is not an error: the kernel removed it all.
func (a *Attacher) Detach(ifindex int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.byIf[ifindex]
	if !ok {
		return nil
	}
	return a.detachLocked(at)
}

func (a *Attacher) detachLocked(at *attached) error {
	delete(a.byIf, at.Ifindex)
	var errs []error
	for _, l := range at.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close tcx link on %s: %w", at.Name, err))
		}
	}
	if at.Mode == ModeClsact {
		if err := removeOurFilters(at.Ifindex, at.addedQdisc); err != nil {
			errs = append(errs, fmt.Errorf("detach clsact on %s: %w", at.Name, err))
		}
	}
	return errors.Join(errs...)
}

// gone reports errors meaning the interface or qdisc no longer exists.
func gone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) ||
		errors.Is(err, unix.EINVAL)
}

// removeOurFilters deletes flowtrace filters from both clsact hooks and,
// when we created the qdisc, the qdisc itself once no filter of anybody
// remains on it.
func removeOurFilters(ifindex int, ownQdisc bool) error {
	_, err := cleanLink(ifindex, ownQdisc, false)
	return err
}

// cleanLink removes flowtrace filters from one interface and returns how
// many it removed. The clsact qdisc goes only when no filter remains and
// either we created it (ownQdisc) or, for stale cleanup, we just removed
// filters from it: an empty qdisc we never touched belongs to someone else.
func cleanLink(ifindex int, ownQdisc, stale bool) (int, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		if gone(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	removed, remaining := 0, 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := netlink.FilterList(l, parent)
		if err != nil {
			if gone(err) {
				// No clsact qdisc: nothing of ours can be there.
				return removed, nil
			}
			return removed, fmt.Errorf("list filters: %w", err)
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || !strings.HasPrefix(bf.Name, FilterNamePrefix) {
				remaining++
				continue
			}
			if err := netlink.FilterDel(f); err != nil && !gone(err) {
				return removed, fmt.Errorf("delete filter %s: %w", bf.Name, err)
			}
			removed++
		}
	}
	if remaining == 0 && (ownQdisc || (stale && removed > 0)) {
		if err := netlink.QdiscDel(clsactQdisc(ifindex)); err != nil && !gone(err) {
			return removed, fmt.Errorf("delete clsact qdisc: %w", err)
		}
	}
	return removed, nil
}

// Attached lists the interfaces currently attached.
func (a *Attacher) Attached() []Attachment {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Attachment, 0, len(a.byIf))
	for _, at := range a.byIf {
		out = append(out, at.Attachment)
	}
	return out
}

// Close detaches from every interface.
func (a *Attacher) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, at := range a.byIf {
		errs = append(errs, a.detachLocked(at))
	}
	return errors.Join(errs...)
}

// CleanupStale removes flowtrace's clsact filters from every interface of
// the calling thread's namespace. TCX links die with the process that
// held them, but cls_bpf filters survive a kill -9 and would keep running
// an orphaned program. A clsact qdisc left empty by this is removed too:
// nobody else uses it any more. Run it before attaching, never while
// another agent instance is attached in clsact mode in this namespace. It returns how many filters it removed.
func CleanupStale(log *slog.Logger) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	total := 0
	var errs []error
	for _, l := range links {
		n, err := cleanLink(l.Attrs().Index, false, true)
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("clean %s: %w", l.Attrs().Name, err))
			continue
		}
		if n > 0 {
			log.Info("removed stale flowtrace tc filters", "ifname", l.Attrs().Name, "filters", n)
		}
	}
	return total, errors.Join(errs...)
}
