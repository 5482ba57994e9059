//go:build linux

// Command ftvm-probe runs inside a matrix VM and prints one line saying
// which flowtrace datapath features are live on the running kernel:
//
//	FTVM-FEATURES kernel=6.1.0-56-cloud-amd64 tc=clsact drop_hook=tp_btf ...
//
// It loads the real datapath and attaches it the way the agent does, so the
// line reports what flowtrace itself ends up using, not a guess from the
// kernel version. Run it in a throwaway network namespace: it creates a veth
// pair there to attach to.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/attach"
	"github.com/flowtrace/flowtrace/pkg/datapath"
)

// field is one key=value of the result line; values never contain spaces.
type field struct{ key, val string }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	object := flag.String("object", "", "also load each program of this BPF object on its own and report prog_<name>=ok|load_fail|attach_fail, with verifier logs on stderr")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fields, err := run(ctx, log)
	if *object != "" {
		fields = append(fields, programReport(*object)...)
	}
	var b strings.Builder
	b.WriteString("FTVM-FEATURES")
	for _, f := range fields {
		fmt.Fprintf(&b, " %s=%s", f.key, f.val)
	}
	fmt.Println(b.String())
	if err != nil {
		fmt.Fprintln(os.Stderr, "ftvm-probe:", err)
		os.Exit(1)
	}
}

// run collects every feature; a failing probe is recorded as "error" and
// returned, but the remaining probes still run so one line tells it all.
func run(ctx context.Context, log *slog.Logger) ([]field, error) {
	var fields []field
	var errs []error
	add := func(k, v string) { fields = append(fields, field{k, v}) }

	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	add("kernel", unix.ByteSliceToString(uts.Release[:]))

	f, tcMode, err := datapathFeatures(ctx, log)
	if err != nil {
		errs = append(errs, err)
	}
	// What the datapath made live on this kernel (its Features), then the
	// raw kernel facts behind it.
	add("tc", tcMode)
	add("drop_hook", f.DropHook)
	add("reasons_live", yesNo(f.DropReasons))
	add("skb_access", f.SkbAccess)
	add("ct_nfct", yesNo(f.ConntrackNfct))
	add("ct_lookup", yesNo(f.ConntrackLookup))
	add("mtu_check", yesNo(f.MTUCheck))
	add("flow_cache", yesNo(f.FlowCache))
	add("drop_memo", yesNo(f.DropMemo))

	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		return fields, errors.Join(append(errs, fmt.Errorf("load kernel btf: %w", err))...)
	}
	n, reasons := dropReasons(kspec)
	add("drop_reasons", fmt.Sprint(n))
	// SKB_NOT_DROPPED_YET and SKB_CONSUMED mark normal frees the datapath
	// must ignore; older kernels lack them (kfree_skb then only sees drops).
	for _, r := range []string{"SKB_NOT_DROPPED_YET", "SKB_CONSUMED", "NETFILTER_DROP", "NO_SOCKET", "PKT_TOO_BIG"} {
		add("reason_"+strings.ToLower(strings.TrimPrefix(r, "SKB_")), yesNo(reasons[r]))
	}

	// kfuncs: bpf_skb_ct_lookup lives in nf_conntrack, which is a module on
	// Debian kernels, so its BTF is the module's, not vmlinux's.
	add("kfunc_cast_to_kern_ctx", yesNo(hasFunc(kspec, "bpf_cast_to_kern_ctx")))
	add("kfunc_rdonly_cast", yesNo(hasFunc(kspec, "bpf_rdonly_cast")))
	ct := hasFunc(kspec, "bpf_skb_ct_lookup")
	if !ct {
		if mspec, err := btf.LoadKernelModuleSpec("nf_conntrack"); err == nil {
			ct = hasFunc(mspec, "bpf_skb_ct_lookup")
		}
	}
	add("kfunc_skb_ct_lookup", yesNo(ct))

	mtu := "yes"
	if err := features.HaveProgramHelper(ebpf.SchedCLS, asm.FnCheckMtu); err != nil {
		mtu = "no"
		if !errors.Is(err, ebpf.ErrNotSupported) {
			mtu = "error"
			errs = append(errs, fmt.Errorf("probe bpf_check_mtu: %w", err))
		}
	}
	add("check_mtu", mtu)
	return fields, errors.Join(errs...)
}

// datapathFeatures loads flowtrace's datapath and attaches it to a
// veth, returning the live drop hook and tc attach mode.
func datapathFeatures(ctx context.Context, log *slog.Logger) (f datapath.Features, tcMode string, err error) {
	d, err := datapath.Load(datapath.Config{}, log)
	if err != nil {
		return datapath.Features{DropHook: "error", SkbAccess: "error"}, "error", fmt.Errorf("load datapath: %w", err)
	}
	defer d.Close()
	f = d.Features()

	// A veth pair, not a dummy: veth is what the agent attaches to on a node
	// and exists on every kernel flowtrace supports (dummy may be missing).
	const name = "ftprobe0"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "ftprobe1"}
	if err := netlink.LinkAdd(veth); err != nil {
		return f, "error", fmt.Errorf("add veth %s: %w", name, err)
	}
	lnk, err := netlink.LinkByName(name)
	if err != nil {
		return f, "error", fmt.Errorf("find %s: %w", name, err)
	}
	defer netlink.LinkDel(lnk)
	if err := netlink.LinkSetUp(lnk); err != nil {
		return f, "error", fmt.Errorf("set %s up: %w", name, err)
	}
	a := attach.New(log, "")
	defer a.Close()
	mode, err := a.Attach(lnk.Attrs().Index, name, d.Ingress(), d.Egress())
	if err != nil {
		return f, "error", fmt.Errorf("attach on %s: %w", name, err)
	}
	return f, string(mode), ctx.Err()
}

// dropReasons returns the size of enum skb_drop_reason and which names it
// has (without the SKB_DROP_REASON_ prefix); kernels before 5.17 have none.
func dropReasons(spec *btf.Spec) (int, map[string]bool) {
	names := map[string]bool{}
	var enum *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &enum); err != nil {
		return 0, names
	}
	for _, v := range enum.Values {
		names[strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")] = true // SKB_CONSUMED etc. keep their name
	}
	return len(enum.Values), names
}

func hasFunc(spec *btf.Spec, name string) bool {
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// programReport loads every program of the object alone (fresh maps, default
// constants) and attaches the tracing ones, so a kernel that refuses one
// program shows exactly which one and why, even when the datapath's own load
// stops at the first error.
func programReport(path string) []field {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm-probe: load %s: %v\n", path, err)
		return []field{{"progs", "error"}}
	}
	var fields []field
	for _, name := range slices.Sorted(maps.Keys(spec.Programs)) {
		one := spec.Copy()
		for n := range one.Programs {
			if n != name {
				delete(one.Programs, n)
			}
		}
		status := "ok"
		coll, err := ebpf.NewCollection(one)
		if err != nil {
			status = "load_fail"
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				// The verifier's last lines carry the reason; the rest is trace.
				fmt.Fprintf(os.Stderr, "ftvm-probe: %s: %v\n%s\n", name, ve.Cause, strings.Join(tail(ve.Log, 12), "\n"))
			} else {
				fmt.Fprintf(os.Stderr, "ftvm-probe: %s: %v\n", name, err)
			}
		} else {
			if err := attachTracing(spec.Programs[name], coll.Programs[name]); err != nil {
				status = "attach_fail"
				fmt.Fprintf(os.Stderr, "ftvm-probe: attach %s: %v\n", name, err)
			}
			coll.Close()
		}
		fields = append(fields, field{"prog_" + name, status})
	}
	return fields
}

// attachTracing attaches tp_btf and raw_tp programs once and detaches them;
// raw_tp argument counts are only checked at attach time. tc programs are
// attached by datapathFeatures, and programs without a tracepoint not at all.
func attachTracing(ps *ebpf.ProgramSpec, p *ebpf.Program) error {
	var l link.Link
	var err error
	switch {
	case ps.Type == ebpf.Tracing && ps.AttachType == ebpf.AttachTraceRawTp:
		l, err = link.AttachTracing(link.TracingOptions{Program: p, AttachType: ebpf.AttachTraceRawTp})
	case ps.Type == ebpf.RawTracepoint:
		_, tp, _ := strings.Cut(ps.SectionName, "/")
		if tp == "" {
			// A bare SEC("raw_tp") (ft_fc_flush, ft_drop_flush) is only
			// ever run by BPF_PROG_TEST_RUN: it has nothing to attach to.
			return nil
		}
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp, Program: p})
	default:
		return nil
	}
	if err != nil {
		return err
	}
	return l.Close()
}

func tail(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}
