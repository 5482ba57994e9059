//go:build linux

package datapath

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/netnsutil/nstest"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// dropReasonNames is the running kernel's enum skb_drop_reason; empty on
// kernels before 5.17, which have none.
func dropReasonNames(t *testing.T) map[uint32]string {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var enum *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &enum); errors.Is(err, btf.ErrNotFound) {
		return map[uint32]string{}
	} else if err != nil {
		t.Fatal(err)
	}
	names := make(map[uint32]string, len(enum.Values))
	for _, v := range enum.Values {
		names[uint32(v.Value)] = strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
	}
	return names
}

// testNetns creates a named netns with lo up and returns its name and inode.
func testNetns(t *testing.T) (string, uint32) {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "ftt" + hex.EncodeToString(b[:])

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name) // also switches this thread into it
	if serr := netns.Set(orig); serr != nil {
		panic("cannot restore netns: " + serr.Error()) // thread state is unrecoverable
	}
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return name, uint32(st.Ino)
}

// inNetns runs fn with this goroutine's thread in the named netns, and
// switches it back afterwards (also when fn fails the test): sockets fn
// makes belong to that netns.
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot restore netns: " + err.Error()) // thread state is unrecoverable
		}
	}()
	fn()
}

// dialIn dials addr with dialer from inside the named netns.
func dialIn(t *testing.T, name string, dialer *net.Dialer, network, addr string) (conn net.Conn, err error) {
	t.Helper()
	// The socket belongs to the netns it is created in; restoring the
	// thread afterwards does not move it.
	inNetns(t, name, func() { conn, err = dialer.Dial(network, addr) })
	return conn, err
}

// sendUDPIn sends one datagram to addr from inside the named netns.
func sendUDPIn(t *testing.T, name, addr string) {
	t.Helper()
	sendUDPWith(t, name, &net.Dialer{}, addr)
}

// sendUDPWith is sendUDPIn with a dialer of the caller's (socket options).
func sendUDPWith(t *testing.T, name string, dialer *net.Dialer, addr string) {
	t.Helper()
	conn, err := dialIn(t, name, dialer, "udp", addr)
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, name, err)
	}
	defer conn.Close()
	// EPERM is how a local sender learns that netfilter dropped its packet.
	if _, err := conn.Write([]byte("flowtrace")); err != nil && !errors.Is(err, unix.EPERM) {
		t.Fatalf("send to %s in %s: %v", addr, name, err)
	}
}

// hasReason: ev carries the kernel reason want, or, where the datapath has
// no reasons (kernels before 5.17), reason 0 on a UDP drop to dport, which
// is all such a kernel can say.
func hasReason(d *Datapath, names map[uint32]string, ev *decode.Event, want string, dport uint16) bool {
	if d.Features().DropReasons {
		return names[ev.DropReason] == want
	}
	return ev.DropReason == 0 && ev.Proto == 17 && ev.DstPort == dport
}

func waitDrops(t *testing.T, d *Datapath, netnsIno uint32) []decode.Event {
	t.Helper()
	var out []decode.Event
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		for _, ev := range drain(t, d) {
			if ev.Kind == decode.KindDrop && ev.Netns == netnsIno {
				out = append(out, ev)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return out
}

func TestDropNoSocket(t *testing.T) {
	d := load(t, Config{})
	if got := d.Features().DropHook; got != DropHookTPBTF {
		t.Fatalf("drop hook %q on a kernel with tp_btf", got)
	}
	names := dropReasonNames(t)
	inScope, inIno := testNetns(t)
	outScope, outIno := testNetns(t)
	if err := d.AllowNetns(inIno); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		addr     string
		src, dst string
		ethType  uint16
	}{
		{"127.0.0.1:9", "127.0.0.1", "127.0.0.1", 0x0800},
		{"[::1]:9", "::1", "::1", 0x86dd},
	} {
		before := stats(t, d)
		sendUDPIn(t, inScope, c.addr)
		evs := waitDrops(t, d, inIno)
		var found *decode.Event
		for i := range evs {
			if hasReason(d, names, &evs[i], "NO_SOCKET", 9) {
				found = &evs[i]
			}
		}
		if found == nil {
			t.Fatalf("%s: no NO_SOCKET drop in %+v", c.addr, evs)
		}
		ev := *found
		if ev.Proto != 17 || ev.DstPort != 9 || ev.SrcPort == 0 || ev.Src != a(c.src) || ev.Dst != a(c.dst) ||
			ev.EtherType != c.ethType || ev.ParseStatus != decode.ParseOK || ev.Count != 1 ||
			ev.FirstNs != ev.TimeNs || ev.LastNs != ev.TimeNs || ev.Location == 0 || ev.Ifindex != 1 ||
			ev.PktLen == 0 {
			t.Fatalf("%s: bad drop event %+v", c.addr, ev)
		}
		after := stats(t, d)
		if after["drop_events"] <= before["drop_events"] || after["drops_seen"] <= before["drops_seen"] {
			t.Fatalf("drop counters did not move: %v -> %v", before, after)
		}
	}

	before := stats(t, d)
	sendUDPIn(t, outScope, "127.0.0.1:9")
	if evs := waitDrops(t, d, outIno); len(evs) != 0 {
		t.Fatalf("drop from a netns outside the scope was emitted: %+v", evs)
	}
	if after := stats(t, d); after["drops_out_of_scope"] <= before["drops_out_of_scope"] {
		t.Fatalf("drops_out_of_scope did not move")
	}

	// Forgetting the netns stops its drops too, although the drop hook
	// memoises the last scope answer per CPU: on one CPU, a drop just
	// before makes the memo "in scope", and ForgetNetns must void it.
	pinCPU(t, -1)
	sendUDPIn(t, inScope, "127.0.0.1:9")
	if evs := waitDrops(t, d, inIno); len(evs) == 0 {
		t.Fatal("no drop in scope before ForgetNetns")
	}
	if err := d.ForgetNetns(inIno); err != nil {
		t.Fatal(err)
	}
	sendUDPIn(t, inScope, "127.0.0.1:9")
	if evs := waitDrops(t, d, inIno); len(evs) != 0 {
		t.Fatalf("drop after ForgetNetns: %+v", evs)
	}
}

// TestDropFastParse holds the drop hook's fast parse (ft_drop_raw)
// to the general one: datapaths see the same drops, one parsing in place
// (where the kernel allows it; then another from a copy of the headers),
// one the general way, and their tuples must be the same field by field (fold
// memos and slots compare tuples made by any of them). The fast ones must
// have parsed the packets they are for (IPv4 and IPv6, UDP and TCP) and
// left alone the one they are not for (IPv4 with options).
func TestDropFastParse(t *testing.T) {
	// TestFeatureFallback checks that fast has in-place reads where the
	// kernel offers them; where it has none, fast is the copied parse.
	fast := load(t, Config{})
	all := []*Datapath{fast}
	if fast.Features().DropDirect {
		copied := load(t, Config{noDropDirect: true})
		if copied.Features().DropDirect {
			t.Error("DropDirect with noDropDirect")
		}
		all = append(all, copied)
	}
	general := load(t, Config{noFastDropParse: true})
	all = append(all, general)
	name, ino := testNetns(t)
	for _, d := range all {
		if err := d.AllowNetns(ino); err != nil {
			t.Fatal(err)
		}
	}
	ipOptions := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// NOP, NOP, NOP, end of options: a 24-byte IPv4 header.
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00")
		})
		return errors.Join(err, serr)
	}}
	for _, c := range []struct {
		name     string
		send     func()
		proto    uint8
		src      string
		ipv      uint8
		tcpFlags uint8
		fast     bool
	}{
		{"udp4", func() { sendUDPIn(t, name, "127.0.0.1:9") }, 17, "127.0.0.1", 4, 0, true},
		{"udp6", func() { sendUDPIn(t, name, "[::1]:9") }, 17, "::1", 6, 0, true},
		{"tcp4 SYN", func() { dialRefusedIn(t, name, "127.0.0.1:9") }, 6, "127.0.0.1", 4, 0x02, true},
		{"tcp6 SYN", func() { dialRefusedIn(t, name, "[::1]:9") }, 6, "::1", 6, 0x02, true},
		{"udp4 with IP options", func() { sendUDPWith(t, name, ipOptions, "127.0.0.1:9") }, 17, "127.0.0.1", 4, 0, false},
	} {
		fastOnes := all[:len(all)-1] // general is last
		before := make([]uint64, len(fastOnes))
		for i, d := range fastOnes {
			before[i] = stats(t, d)["drops_parsed_fast"]
		}
		c.send()
		got := make([]*decode.Event, len(all))
		for i, d := range all {
			for _, ev := range waitDrops(t, d, ino) {
				if ev.Proto == c.proto && ev.DstPort == 9 {
					got[i] = &ev
				}
			}
			if got[i] == nil {
				t.Fatalf("%s: no drop to port 9 (datapath %d of %d: fast, [copied,] general)", c.name, i, len(all))
			}
		}
		ev := *got[0]
		if ev.Src != a(c.src) || ev.Dst != a(c.src) || ev.IPVersion != c.ipv || ev.SrcPort == 0 ||
			ev.TCPFlags != c.tcpFlags || ev.ParseStatus != decode.ParseOK {
			t.Errorf("%s: drop %+v", c.name, ev)
		}
		tuple := func(e *decode.Event) [13]any {
			return [13]any{e.EtherType, e.IPVersion, e.Src, e.Dst, e.SrcPort, e.DstPort, e.Proto, e.TCPFlags,
				e.ICMPType, e.ICMPCode, e.VLAN, e.ParseStatus, e.DropReason}
		}
		for i := 1; i < len(all); i++ {
			if f, g := tuple(got[0]), tuple(got[i]); f != g {
				t.Errorf("%s: fast parse %v, datapath %d's parse %v (in place %v, fast parse off %v)",
					c.name, f, i, g, all[i].Features().DropDirect, all[i] == general)
			}
		}
		for i, d := range fastOnes {
			if n := stats(t, d)["drops_parsed_fast"] - before[i]; (n > 0) != c.fast {
				t.Errorf("%s: drops_parsed_fast moved by %d (in place %v), want the fast parse %v", c.name, n, d.Features().DropDirect, c.fast)
			}
		}
	}
	if n := stats(t, general)["drops_parsed_fast"]; n != 0 {
		t.Errorf("drops_parsed_fast = %d with the fast parse off", n)
	}
}

// dialRefusedIn connects to a closed TCP port from inside the named netns:
// the SYN is dropped (no socket) and answered with a reset.
func dialRefusedIn(t *testing.T, name, addr string) {
	t.Helper()
	conn, err := dialIn(t, name, &net.Dialer{Timeout: 2 * time.Second}, "tcp", addr)
	if err == nil {
		conn.Close()
		t.Fatalf("connected to %s in %s: the port was to be closed", addr, name)
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("dial %s in %s: %v, want connection refused", addr, name, err)
	}
}

func TestDropScopeAll(t *testing.T) {
	d := load(t, Config{ScopeAllNetns: true})
	name, ino := testNetns(t)
	sendUDPIn(t, name, "127.0.0.1:7")
	if evs := waitDrops(t, d, ino); len(evs) == 0 {
		t.Fatal("scope_all_netns did not report a drop from an unlisted netns")
	}
}

func TestDropNetfilter(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft not installed: %v", err)
	}
	d := load(t, Config{})
	names := dropReasonNames(t)
	name, ino := testNetns(t)
	if err := d.AllowNetns(ino); err != nil {
		t.Fatal(err)
	}
	// The table lives inside the test netns and disappears with it.
	rules := "table inet " + name + " {\n chain out {\n  type filter hook output priority 0; policy accept;\n  udp dport 9999 drop\n }\n}\n"
	cmd := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	sendUDPIn(t, name, "127.0.0.1:9999")
	evs := waitDrops(t, d, ino)
	for _, ev := range evs {
		if hasReason(d, names, &ev, "NETFILTER_DROP", 9999) {
			if ev.DstPort != 9999 || ev.Proto != 17 || ev.Dst != a("127.0.0.1") {
				t.Fatalf("bad netfilter drop event: %+v", ev)
			}
			return
		}
	}
	t.Fatalf("no NETFILTER_DROP event in %+v", evs)
}

func TestDropRawTPFallback(t *testing.T) {
	d := load(t, Config{forceRawTP: true})
	if got := d.Features().DropHook; got != DropHookRawTP {
		t.Fatalf("drop hook %q, want %q", got, DropHookRawTP)
	}
	names := dropReasonNames(t)
	name, ino := testNetns(t)
	if err := d.AllowNetns(ino); err != nil {
		t.Fatal(err)
	}
	sendUDPIn(t, name, "127.0.0.1:9")
	for _, ev := range waitDrops(t, d, ino) {
		if hasReason(d, names, &ev, "NO_SOCKET", 9) && ev.DstPort == 9 && ev.Proto == 17 && ev.Src == a("127.0.0.1") {
			return
		}
	}
	t.Fatal("raw_tp hook produced no NO_SOCKET drop")
}

// TestDropWithoutReason loads the two-argument kfree_skb programs that
// kernels before 5.17 get: drops still arrive, with reason 0, through both
// tp_btf and raw_tp.
func TestDropWithoutReason(t *testing.T) {
	for _, cfg := range []Config{{forceNoReason: true}, {forceNoReason: true, forceRawTP: true}} {
		d := load(t, cfg)
		f := d.Features()
		wantHook := DropHookTPBTF
		if cfg.forceRawTP {
			wantHook = DropHookRawTP
		}
		if f.DropReasons || f.DropHook != wantHook {
			t.Fatalf("%+v: features %+v", cfg, f)
		}
		name, ino := testNetns(t)
		if err := d.AllowNetns(ino); err != nil {
			t.Fatal(err)
		}
		sendUDPIn(t, name, "127.0.0.1:9")
		var found bool
		for _, ev := range waitDrops(t, d, ino) {
			if ev.DropReason == 0 && ev.Proto == 17 && ev.DstPort == 9 && ev.Src == a("127.0.0.1") && ev.Location != 0 {
				found = true
			}
		}
		if !found {
			t.Fatalf("%+v: no reason-less drop of the UDP datagram", cfg)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSocketTeardownNotDrops: the buffers a closed socket still held (here
// a netlink socket's unread notifications, as an agent's own start and stop
// leave) are freed with a teardown reason (SOCKET_CLOSE or QUEUE_PURGE). They are counted, not reported as drops, unless asked
// for: no packet died on the network, and every connection closed with
// unread data filled "--verdict DROPPED" with them.
func TestSocketTeardownNotDrops(t *testing.T) {
	names := dropReasonNames(t)
	teardown := func(ev *decode.Event) bool {
		return names[ev.DropReason] == "SOCKET_CLOSE" || names[ev.DropReason] == "QUEUE_PURGE"
	}
	if _, ok := reasonCode(names, "SOCKET_CLOSE"); !ok {
		testutil.SkipInKernelMatrix(t, "kernel without SKB_DROP_REASON_SOCKET_CLOSE (6.10+)")
		testutil.SkipOrFail(t, "kernel without SKB_DROP_REASON_SOCKET_CLOSE")
	}
	for _, report := range []bool{false, true} {
		d := load(t, Config{SocketTeardownDrops: report})
		ns, ino := testNetns(t)
		if err := d.AllowNetns(ino); err != nil {
			t.Fatal(err)
		}
		before := stats(t, d)
		unreadNotifications(t, ns, 3)
		var got []decode.Event
		for _, ev := range waitDrops(t, d, ino) {
			if teardown(&ev) {
				got = append(got, ev)
			}
		}
		counted := stats(t, d)["drops_socket_teardown"] - before["drops_socket_teardown"]
		switch {
		case report && len(got) == 0:
			t.Errorf("SocketTeardownDrops: no teardown drop reported")
		case !report && (len(got) != 0 || counted < 3):
			t.Errorf("teardown frees: %d reported, %d counted; want none reported, 3 counted: %+v", len(got), counted, got)
		case report && counted != 0:
			t.Errorf("SocketTeardownDrops: %d counted as teardown, want them reported instead", counted)
		}
	}
}

func reasonCode(names map[uint32]string, name string) (uint32, bool) {
	for code, n := range names {
		if n == name {
			return code, true
		}
	}
	return 0, false
}

// unreadNotifications leaves n link notifications unread in a netlink
// socket in the named netns and closes it: its teardown purges them.
func unreadNotifications(t *testing.T, name string, n int) {
	t.Helper()
	inNetns(t, name, func() {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
			t.Fatal(err)
		}
		nl, err := netlink.NewHandle() // in the netns this thread is in
		if err != nil {
			t.Fatal(err)
		}
		defer nl.Close()
		lo, err := nl.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		for i := range n + 1 { // down, up, ...: ends up
			set := nl.LinkSetUp
			if i%2 == 0 && i < n {
				set = nl.LinkSetDown
			}
			if err := set(lo); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestDropDeviceMemo: the drop hook memoises a device's ifindex and netns
// per CPU for the current jiffy (ft_skb_netns). Drops alternating between
// two netns on one CPU are each named after their own; a device moved to
// another netns is named after its new one once a tick has passed.
func TestDropDeviceMemo(t *testing.T) {
	d := load(t, Config{DropFoldWindow: -1}) // every drop an event
	pinCPU(t, -1)
	nsA, inoA := testNetns(t)
	nsB, inoB := testNetns(t)
	nsC, inoC := testNetns(t)
	for _, ino := range []uint32{inoA, inoB, inoC} {
		if err := d.AllowNetns(ino); err != nil {
			t.Fatal(err)
		}
	}
	// collect reads drop events until want arrived (or a deadline).
	collect := func(want int) []decode.Event {
		t.Helper()
		var out []decode.Event
		for deadline := time.Now().Add(2 * time.Second); len(out) < want && time.Now().Before(deadline); {
			for _, ev := range drain(t, d) {
				if ev.Kind == decode.KindDrop && ev.Proto == 17 {
					out = append(out, ev)
				}
			}
		}
		return out
	}

	// Both loopbacks, back to back: each drop within the other's jiffy.
	sendA, sendB := udpSenderIn(t, nsA), udpSenderIn(t, nsB)
	const rounds = 200
	for i := 0; i < rounds; i++ {
		sendA(1, 9)
		sendB(1, 10)
	}
	evs := collect(2 * rounds)
	byPort := map[uint16]uint32{9: inoA, 10: inoB}
	for _, ev := range evs {
		if want, ok := byPort[ev.DstPort]; ok && ev.Netns != want {
			t.Fatalf("drop to port %d named netns %d, want %d", ev.DstPort, ev.Netns, want)
		}
	}
	if len(evs) < 2*rounds {
		t.Fatalf("%d drop events of %d", len(evs), 2*rounds)
	}

	// A veth from C into A: a datagram to a closed port on its A end is
	// dropped with skb->dev that end. Then that end moves to B.
	nstest.Veth(t, nsC, "ftmemo0", "10.77.0.1/30", nsA, "ftmemo1", "10.77.0.2/30")
	sendC := udpSenderTo(t, nsC, [4]byte{10, 77, 0, 2})
	sendC(1, 11)
	if evs := collect(1); len(evs) != 1 || evs[0].Netns != inoA || evs[0].DstPort != 11 {
		t.Fatalf("before the move: %+v, want one drop to port 11 in netns %d", evs, inoA)
	}
	nstest.Run(t, "ip", "-n", nsA, "link", "set", "ftmemo1", "netns", nsB)
	nstest.Run(t, "ip", "-n", nsB, "addr", "add", "10.77.0.2/30", "dev", "ftmemo1")
	nstest.Run(t, "ip", "-n", nsB, "link", "set", "ftmemo1", "up")
	var ifB *net.Interface
	var err error
	inNetns(t, nsB, func() { ifB, err = net.InterfaceByName("ftmemo1") })
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // a tick (250 Hz: 4 ms) and more
	sendC(1, 12)
	evs = collect(1)
	if len(evs) != 1 || evs[0].Netns != inoB || evs[0].Ifindex != uint32(ifB.Index) || evs[0].DstPort != 12 {
		t.Fatalf("after the move: %+v, want one drop to port 12 in netns %d on ifindex %d", evs, inoB, ifB.Index)
	}
}
