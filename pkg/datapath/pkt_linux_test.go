//go:build linux

package datapath

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"

	"github.com/flowtrace/flowtrace/pkg/decode"
)

// BPF_PROG_TEST_RUN tests of the issue-3 parsing: ICMP PMTU errors with
// their quoted headers, VXLAN inner flows, and the feature fallbacks.

func icmpFragNeeded(mtu uint16, quoted []byte) []byte {
	h := []byte{3, 4, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(h[6:], mtu)
	return cat(h, quoted)
}

func icmp6PacketTooBig(mtu uint32, quoted []byte) []byte {
	h := []byte{2, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[4:], mtu)
	return cat(h, quoted)
}

// quote cuts an IP packet after its header plus 8 bytes, the minimum an
// ICMPv4 error must carry; the total length field keeps the original size.
func quote(pkt []byte, hdrLen int) []byte { return pkt[:hdrLen+8] }

func vxlanHdr(vni uint32, valid bool) []byte {
	h := make([]byte, 8)
	if valid {
		h[0] = 0x08
	}
	h[4], h[5], h[6] = byte(vni>>16), byte(vni>>8), byte(vni)
	return h
}

func eventsOf(evs []decode.Event, k decode.Kind) []decode.Event {
	var out []decode.Event
	for _, ev := range evs {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

func TestICMPPMTUErrors(t *testing.T) {
	orig4 := ipv4(17, "10.0.0.1", "10.0.9.9", 0x4000, nil, udp(5000, 6000, make([]byte, 1400)))
	orig4tcp := ipv4(6, "10.0.0.1", "10.0.9.9", 0x4000, nil, cat(tcp(41000, 443, decode.TCPAck), make([]byte, 1380)))
	orig6 := ipv6(6, "fd00::1", "fd00:9::9", cat(tcp(42000, 8443, decode.TCPAck), make([]byte, 1400)))
	cases := []struct {
		name  string
		frame []byte
		want  *decode.Event // MTU event fields checked; nil: no MTU event
	}{
		{"frag needed, udp quoted", cat(eth(0x0800), ipv4(1, "10.0.0.254", "10.0.0.1", 0, nil, icmpFragNeeded(1400, quote(orig4, 20)))),
			&decode.Event{MTUKind: decode.MTUICMPFragNeeded, MTU: 1400, PktLen: 1428,
				Embedded: decode.Embedded{IPVersion: 4, Proto: 17, Src: a("10.0.0.1"), Dst: a("10.0.9.9"), SrcPort: 5000, DstPort: 6000}}},
		// Only 8 bytes of TCP are quoted: the ports must still come out.
		{"frag needed, tcp quoted short", cat(eth(0x0800), ipv4(1, "10.0.0.254", "10.0.0.1", 0, nil, icmpFragNeeded(1280, quote(orig4tcp, 20)))),
			&decode.Event{MTUKind: decode.MTUICMPFragNeeded, MTU: 1280, PktLen: 1420,
				Embedded: decode.Embedded{IPVersion: 4, Proto: 6, Src: a("10.0.0.1"), Dst: a("10.0.9.9"), SrcPort: 41000, DstPort: 443}}},
		{"icmpv6 packet too big", cat(eth(0x86dd), ipv6(58, "fd00::fe", "fd00::1", icmp6PacketTooBig(1280, orig6[:40+64]))),
			&decode.Event{MTUKind: decode.MTUICMPv6PacketTooBig, MTU: 1280, PktLen: 1460,
				Embedded: decode.Embedded{IPVersion: 6, Proto: 6, Src: a("fd00::1"), Dst: a("fd00:9::9"), SrcPort: 42000, DstPort: 8443}}},
		{"port unreachable is not pmtu", cat(eth(0x0800), ipv4(1, "10.0.0.254", "10.0.0.1", 0, nil,
			cat([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quote(orig4, 20)))), nil},
		{"echo is not pmtu", cat(eth(0x0800), ipv4(1, "10.0.0.254", "10.0.0.1", 0, nil, icmpEcho(8))), nil},
		{"icmpv6 echo is not pmtu", cat(eth(0x86dd), ipv6(58, "fd00::fe", "fd00::1", icmpEcho(128))), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := load(t, Config{})
			for _, dir := range []decode.Direction{decode.DirIngress, decode.DirEgress} {
				p := d.Ingress()
				if dir == decode.DirEgress {
					p = d.Egress()
				}
				run(t, p, c.frame)
				evs := drain(t, d)
				if n := len(eventsOf(evs, decode.KindFlow)); n != 1 {
					t.Fatalf("%v: %d flow events, want 1: %+v", dir, n, evs)
				}
				mtus := eventsOf(evs, decode.KindMTU)
				if c.want == nil {
					if len(mtus) != 0 {
						t.Fatalf("%v: unexpected MTU events %+v", dir, mtus)
					}
					continue
				}
				if len(mtus) != 1 {
					t.Fatalf("%v: %d MTU events, want 1: %+v", dir, len(mtus), evs)
				}
				ev := mtus[0]
				if ev.MTUKind != c.want.MTUKind || ev.MTU != c.want.MTU || ev.PktLen != c.want.PktLen ||
					ev.Embedded != c.want.Embedded || ev.Direction != dir || ev.Ifindex != 1 ||
					ev.EgressIfindex != 0 || ev.Netns != selfNetns(t) || ev.Proto == 0 {
					t.Fatalf("%v: got %+v\nwant %+v", dir, ev, *c.want)
				}
				// Run again: the flow is aggregated, but every ICMP error is reported.
				run(t, p, c.frame)
				if got := eventsOf(drain(t, d), decode.KindMTU); len(got) != 1 {
					t.Fatalf("%v: repeat gave %d MTU events", dir, len(got))
				}
			}
			if s := stats(t, d); c.want != nil && s["icmp_pmtu_events"] != 4 {
				t.Fatalf("icmp_pmtu_events = %d, want 4", s["icmp_pmtu_events"])
			}
		})
	}
}

func TestVXLAN(t *testing.T) {
	inner4 := cat(eth(0x0800), ipv4(6, "10.244.0.5", "10.244.1.7", 0x4000, nil, tcp(40000, 8080, decode.TCPSyn)))
	inner6 := cat(eth(0x86dd), ipv6(17, "fd44::5", "fd44:1::7", udp(5353, 53, []byte("q"))))
	cases := []struct {
		name      string
		frame     []byte
		want      flowFields
		wantEncap decode.Encap
	}{
		{"ipv4 underlay 4789, ipv4 inner tcp",
			cat(eth(0x0800), ipv4(17, "192.168.50.1", "192.168.50.2", 0, nil, udp(54321, 4789, cat(vxlanHdr(1, true), inner4)))),
			flowFields{0x0800, 4, a("10.244.0.5"), a("10.244.1.7"), 40000, 8080, 6, decode.TCPSyn, 0, 0, 0},
			decode.Encap{IPVersion: 4, Src: a("192.168.50.1"), Dst: a("192.168.50.2"), DstPort: 4789, VNI: 1}},
		{"ipv6 underlay flannel 8472, ipv6 inner udp",
			cat(eth(0x86dd), ipv6(17, "fd50::1", "fd50::2", udp(40001, 8472, cat(vxlanHdr(0xabcdef, true), inner6)))),
			flowFields{0x86dd, 6, a("fd44::5"), a("fd44:1::7"), 5353, 53, 17, 0, 0, 0, 0},
			decode.Encap{IPVersion: 6, Src: a("fd50::1"), Dst: a("fd50::2"), DstPort: 8472, VNI: 0xabcdef}},
		// No valid-VNI flag: not VXLAN, stays an outer UDP flow.
		{"4789 without I flag",
			cat(eth(0x0800), ipv4(17, "192.168.50.1", "192.168.50.2", 0, nil, udp(54321, 4789, cat(vxlanHdr(1, false), inner4)))),
			flowFields{0x0800, 4, a("192.168.50.1"), a("192.168.50.2"), 54321, 4789, 17, 0, 0, 0, 0},
			decode.Encap{}},
		// Inner frame cut short: stays an outer UDP flow.
		{"truncated inner",
			cat(eth(0x0800), ipv4(17, "192.168.50.1", "192.168.50.2", 0, nil, udp(54321, 4789, cat(vxlanHdr(1, true), inner4[:20])))),
			flowFields{0x0800, 4, a("192.168.50.1"), a("192.168.50.2"), 54321, 4789, 17, 0, 0, 0, 0},
			decode.Encap{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := load(t, Config{})
			run(t, d.Ingress(), c.frame)
			evs := drain(t, d)
			if len(evs) != 1 || evs[0].Kind != decode.KindFlow {
				t.Fatalf("events: %+v", evs)
			}
			if got := fieldsOf(evs[0]); got != c.want {
				t.Fatalf("tuple:\n got  %+v\n want %+v", got, c.want)
			}
			if evs[0].Encap != c.wantEncap || evs[0].CT != (decode.Conntrack{}) {
				t.Fatalf("encap %+v ct %+v, want encap %+v", evs[0].Encap, evs[0].CT, c.wantEncap)
			}
		})
	}

	// The same inner tuple in two VNIs is two flows; the idle flush keeps the outer header.
	d := load(t, Config{FlowReportInterval: 50 * 1e6})
	for _, vni := range []uint32{7, 8, 7} {
		run(t, d.Ingress(), cat(eth(0x0800), ipv4(17, "192.168.50.1", "192.168.50.2", 0, nil,
			udp(54321, 4789, cat(vxlanHdr(vni, true), cat(eth(0x0800), ipv4(6, "10.244.0.5", "10.244.1.7", 0, nil, tcp(40000, 8080, decode.TCPAck))))))))
	}
	evs := drain(t, d)
	if len(evs) != 2 || evs[0].Encap.VNI != 7 || evs[1].Encap.VNI != 8 {
		t.Fatalf("per-VNI flows: %+v", evs)
	}
	if s := stats(t, d); s["vxlan_packets"] != 3 {
		t.Fatalf("vxlan_packets = %d", s["vxlan_packets"])
	}
	var flushed []decode.Event
	deadline := 0
	for len(flushed) == 0 && deadline < 20 {
		deadline++
		waitMs(60)
		if _, err := d.FlushIdle(func(ev *decode.Event) { flushed = append(flushed, *ev) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(flushed) != 1 || flushed[0].Encap.VNI != 7 || flushed[0].Encap.Src != a("192.168.50.1") ||
		flushed[0].Src != a("10.244.0.5") || flushed[0].Packets != 1 {
		t.Fatalf("idle flush of a VXLAN flow: %+v", flushed)
	}
}

// expectedFeatures is what Load must report on the running kernel, worked
// out from kernel BTF and helper probes rather than from the loader's own
// fallbacks: a kernel that offers a path must get it.
func expectedFeatures(t *testing.T) Features {
	t.Helper()
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var enum *btf.Enum
	f := Features{
		DropHook:    DropHookTPBTF, // every supported kernel (5.5+) has tp_btf
		DropReasons: kspec.TypeByName("skb_drop_reason", &enum) == nil,
		MTUCheck:    features.HaveProgramHelper(ebpf.SchedCLS, asm.FnCheckMtu) == nil,
		// raw_tp test runs on a chosen CPU: 5.10+, every kernel of the matrix.
		FlowCache: true,
		DropMemo:  true,
		SkbAccess: SkbNone,
	}
	f.ConntrackLookup = hasKernelFunc(kspec, "bpf_skb_ct_lookup")
	if mod, err := btf.LoadKernelModuleSpec("nf_conntrack"); err == nil && !f.ConntrackLookup {
		f.ConntrackLookup = hasKernelFunc(mod, "bpf_skb_ct_lookup")
	}
	switch {
	case hasKernelFunc(kspec, "bpf_cast_to_kern_ctx") && hasKernelFunc(kspec, "bpf_rdonly_cast"):
		f.SkbAccess = SkbKernCtx
	case hasProbeRead():
		f.SkbAccess = SkbProbeRead
	}
	f.ConntrackNfct = f.SkbAccess != SkbNone
	var feats *btf.Enum
	if kspec.TypeByName("bpf_features", &feats) == nil {
		for _, v := range feats.Values {
			f.DropDirect = f.DropDirect || v.Name == "BPF_FEAT_RDONLY_CAST_TO_VOID"
		}
	}
	return f
}

func hasProbeRead() bool {
	return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnProbeReadKernel) == nil
}

// TestFeatureFallback loads with each optional path refused, as an older
// kernel would, and checks that flows still work (with the right netns) and
// Features says so.
func TestFeatureFallback(t *testing.T) {
	base := expectedFeatures(t)
	full := load(t, Config{})
	if f := full.Features(); f != base {
		t.Fatalf("features on this kernel: %+v, want %+v", f, base)
	}
	noKctx := SkbNone
	if hasProbeRead() {
		noKctx = SkbProbeRead
	}
	for _, c := range []struct {
		cfg    Config
		change func(*Features)
	}{
		{Config{denyCTLookup: true}, func(f *Features) { f.ConntrackLookup = false }},
		{Config{denyCTCast: true}, func(f *Features) { f.ConntrackNfct = false }},
		{Config{denyFIB: true}, func(f *Features) { f.MTUCheck = false }},
		{Config{forceNoReason: true}, func(f *Features) { f.DropReasons = false }},
		{Config{NoFlowCache: true}, func(f *Features) { f.FlowCache = false }},
		{Config{NoDropMemo: true}, func(f *Features) { f.DropMemo = false }},
		{Config{noDropDirect: true}, func(f *Features) { f.DropDirect = false }},
		// 6.1: no bpf_cast_to_kern_ctx, probe reads where tc may use them.
		{Config{denyKctx: true}, func(f *Features) {
			if f.SkbAccess == SkbKernCtx {
				f.SkbAccess = noKctx
			}
			f.ConntrackNfct = f.SkbAccess != SkbNone
		}},
		// 5.10: neither; flows carry the loader's netns.
		{Config{denyKctx: true, denyKread: true, denyCTLookup: true, denyFIB: true, forceNoReason: true},
			func(f *Features) {
				*f = Features{DropHook: DropHookTPBTF, SkbAccess: SkbNone, FlowCache: true, DropMemo: true, DropDirect: f.DropDirect}
			}},
	} {
		if c.cfg.noDropDirect && !base.DropDirect {
			continue // the same load as the base's (each is ~10 s in the matrix's emulation)
		}
		want := base
		c.change(&want)
		d := load(t, c.cfg)
		if got := d.Features(); got != want {
			t.Fatalf("%+v: features %+v, want %+v", c.cfg, got, want)
		}
		run(t, d.Ingress(), tcpFrame(55000, decode.TCPSyn, 0))
		evs := drain(t, d)
		if len(evs) != 1 || evs[0].SrcPort != 55000 {
			t.Fatalf("%+v: flows broken: %+v", c.cfg, evs)
		}
		// BPF_PROG_TEST_RUN hands the program an skb on this netns's lo.
		if evs[0].Netns != selfNetns(t) {
			t.Fatalf("%+v: flow netns %d, want %d", c.cfg, evs[0].Netns, selfNetns(t))
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
