//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/attach"
	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/netnsutil"
	"github.com/flowtrace/flowtrace/pkg/netnsutil/nstest"
)

// Real-netns tests: client -- router -- server, all in namespaces made here,
// flowtrace attached (TCX) to both router interfaces. Nothing leaves them.
//
//	client c0 10.77.1.2 fd77:1::2 | r1 10.77.1.1 fd77:1::1  router  r2 10.77.2.1 fd77:2::1 | s0 10.77.2.2 fd77:2::2 server
type topo struct {
	client, router, server string
	routerIno              uint32
	r1, r2                 int // router ifindexes
}

func newTopo(t *testing.T, r2MTU int) *topo {
	t.Helper()
	tp := &topo{client: nstest.NewNetns(t), router: nstest.NewNetns(t), server: nstest.NewNetns(t)}
	run := func(ns string, args ...string) {
		nstest.Run(t, append([]string{"ip", "netns", "exec", ns}, args...)...)
	}
	nstest.Veth(t, tp.client, "c0", "10.77.1.2/24", tp.router, "r1", "10.77.1.1/24")
	nstest.Veth(t, tp.router, "r2", "10.77.2.1/24", tp.server, "s0", "10.77.2.2/24")
	for _, a := range [][3]string{{tp.client, "c0", "fd77:1::2/64"}, {tp.router, "r1", "fd77:1::1/64"},
		{tp.router, "r2", "fd77:2::1/64"}, {tp.server, "s0", "fd77:2::2/64"}} {
		run(a[0], "ip", "addr", "add", a[2], "dev", a[1], "nodad")
	}
	if r2MTU > 0 { // >= 1280 keeps the IPv6 addresses (KERNEL.md)
		run(tp.router, "ip", "link", "set", "r2", "mtu", fmt.Sprint(r2MTU))
		run(tp.server, "ip", "link", "set", "s0", "mtu", fmt.Sprint(r2MTU))
	}
	// Only lab prefixes are routed: no default route anywhere.
	for _, r := range []string{"10.77.2.0/24", "10.96.0.0/16"} {
		run(tp.client, "ip", "route", "add", r, "via", "10.77.1.1")
	}
	for _, r := range []string{"fd77:2::/64", "fd96::/64"} {
		run(tp.client, "ip", "-6", "route", "add", r, "via", "fd77:1::1")
	}
	run(tp.server, "ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.1")
	run(tp.server, "ip", "-6", "route", "add", "fd77:1::/64", "via", "fd77:2::1")
	run(tp.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(tp.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	// IPv6 neighbour discovery stalls until the link-local addresses leave
	// DAD; wait for that instead of losing the first IPv6 exchange.
	deadline := time.Now().Add(5 * time.Second)
	for _, ns := range []string{tp.client, tp.router, tp.server} {
		for strings.TrimSpace(nstest.Run(t, "ip", "-n", ns, "-6", "addr", "show", "tentative")) != "" {
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses in %s still tentative", ns)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ino, err := netnsInode(tp.router)
	if err != nil {
		t.Fatal(err)
	}
	tp.routerIno = ino
	err = netnsutil.Do(tp.router, func() error {
		for _, n := range []struct {
			name string
			dst  *int
		}{{"r1", &tp.r1}, {"r2", &tp.r2}} {
			ifc, err := net.InterfaceByName(n.name)
			if err != nil {
				return err
			}
			*n.dst = ifc.Index
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

func netnsInode(name string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(netnsutil.RunDir+"/"+name, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// attach puts flowtrace on both hooks of both router interfaces.
func (tp *topo) attach(t *testing.T, d *Datapath) {
	t.Helper()
	// As the agent does: TCX where the kernel has it (6.6+), clsact below.
	at := attach.New(slog.New(slog.DiscardHandler), "")
	err := netnsutil.Do(tp.router, func() error {
		for _, ifx := range []int{tp.r1, tp.r2} {
			if _, err := at.Attach(ifx, fmt.Sprint("if", ifx), d.Ingress(), d.Egress()); err != nil {
				return err
			}
		}
		return nil
	})
	t.Cleanup(func() { _ = netnsutil.Do(tp.router, at.Close) })
	if err != nil {
		t.Fatal(err)
	}
}

func (tp *topo) nft(t *testing.T, rules string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", tp.router, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// serve runs echo servers in the server netns: TCP and UDP on port.
func (tp *topo) serve(t *testing.T, port int) {
	t.Helper()
	var tl net.Listener
	var uc net.PacketConn
	err := netnsutil.Do(tp.server, func() error {
		var err error
		if tl, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		uc, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { tl.Close(); uc.Close(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = uc.WriteTo(buf[:n], from)
		}
	}()
}

// exchange dials addr from the client netns, sends a line and reads it back.
func (tp *topo) exchange(t *testing.T, network, addr string) {
	t.Helper()
	var c net.Conn
	if err := netnsutil.Do(tp.client, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := []byte("flowtrace\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write %s: %v", addr, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %s %s: %v", network, addr, err)
	}
}

// collect drains until the ring stays empty, keeping the router's events.
func collect(t *testing.T, d *Datapath, ino uint32) []decode.Event {
	t.Helper()
	var out []decode.Event
	time.Sleep(100 * time.Millisecond)
	for _, ev := range drain(t, d) {
		if ev.Netns == ino {
			out = append(out, ev)
		}
	}
	return out
}

// dnatRules: kube-proxy-like DNAT of a VIP to the backend; IPv4 TCP is also
// masqueraded.
const dnatRules = `table inet ftsvc {
 chain pre {
  type nat hook prerouting priority dstnat; policy accept;
  ip daddr 10.96.0.10 tcp dport 80 dnat ip to 10.77.2.2:8080
  ip daddr 10.96.0.10 udp dport 53 dnat ip to 10.77.2.2:8080
  ip6 daddr fd96::10 tcp dport 80 dnat ip6 to [fd77:2::2]:8080
  ip6 daddr fd96::10 udp dport 53 dnat ip6 to [fd77:2::2]:8080
  ip daddr 10.96.0.11 udp dport 53 dnat ip to 10.77.2.2:9
 }
 chain fwdfilter {
  type filter hook forward priority filter; policy accept;
  ip daddr 10.77.2.2 udp dport 9 drop
 }
 chain post {
  type nat hook postrouting priority srcnat; policy accept;
  oifname "r2" ip daddr 10.77.2.2 tcp dport 8080 masquerade
 }
}
`

func TestTranslatedDNAT(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft not installed: %v", err)
	}
	d := load(t, Config{})
	tp := newTopo(t, 0)
	tp.attach(t, d)
	tp.serve(t, 8080)
	lookup := d.Features().ConntrackLookup
	if !d.Features().ConntrackNfct {
		// Kernels without a tc view of conntrack: connections still work
		// and flowtrace claims no translation it cannot see; the drop path
		// (kfree_skb reads _nfct everywhere) still names the VIP.
		defer tp.dropAfterDNAT(t, d)
	}
	cases := []struct {
		network, addr string
		conns         int
		vip, backend  string
		vport         uint16
		proto         uint8
		snatTo        string // "" = no SNAT
	}{
		{"tcp", "10.96.0.10:80", 3, "10.96.0.10", "10.77.2.2", 80, 6, "10.77.2.1"},
		{"udp", "10.96.0.10:53", 1, "10.96.0.10", "10.77.2.2", 53, 17, ""},
		{"udp", "[fd96::10]:53", 1, "fd96::10", "fd77:2::2", 53, 17, ""},
		{"tcp", "[fd96::10]:80", 2, "fd96::10", "fd77:2::2", 80, 6, ""},
	}
	if f := d.Features(); !f.ConntrackNfct {
		tp.nft(t, dnatRules)
		drain(t, d)
		tp.exchange(t, "tcp", "10.96.0.10:80")
		for _, ev := range drain(t, d) {
			if ev.Kind == decode.KindTranslated {
				t.Fatalf("TRANSLATED without a conntrack view (features %+v): %+v", f, ev)
			}
		}
		return
	}
	tp.nft(t, dnatRules)
	for _, c := range cases {
		t.Run(c.network+" "+c.addr, func(t *testing.T) {
			drain(t, d)
			for i := 0; i < c.conns; i++ {
				tp.exchange(t, c.network, c.addr)
			}
			evs := collect(t, d, tp.routerIno)
			xl := eventsOf(evs, decode.KindTranslated)
			if len(xl) != c.conns {
				t.Fatalf("%d TRANSLATED events for %d connections: %+v", len(xl), c.conns, xl)
			}
			clientPorts := map[uint16]bool{}
			for _, ev := range xl {
				wantFlags := decode.CTKnown | decode.CTDNAT | decode.CTViaNfct
				if c.snatTo != "" {
					wantFlags |= decode.CTSNAT
				}
				if ev.CT.OrigDst != a(c.vip) || ev.CT.OrigDstPort != c.vport || ev.XlatDst != a(c.backend) ||
					ev.XlatDstPort != 8080 || ev.CT.Flags != wantFlags || ev.Proto != c.proto ||
					ev.Ifindex != uint32(tp.r2) || ev.Direction != decode.DirEgress {
					t.Fatalf("TRANSLATED %+v", ev)
				}
				wantSrc, wantSport := ev.CT.OrigSrc, ev.CT.OrigSrcPort
				if c.snatTo != "" {
					wantSrc = a(c.snatTo)
					wantSport = ev.XlatSrcPort // masquerade may keep or remap the port
				}
				if ev.XlatSrc != wantSrc || ev.XlatSrcPort != wantSport || ev.CT.OrigSrcPort == 0 {
					t.Fatalf("TRANSLATED source: %+v", ev)
				}
				clientPorts[ev.CT.OrigSrcPort] = true
			}
			if len(clientPorts) != c.conns {
				t.Fatalf("TRANSLATED events not one per connection: %+v", xl)
			}
			// Flows toward the backend (egress r2, _nfct) and its replies
			// (ingress r2) both name the VIP. A TCP reply takes the view
			// of its connection's entry at egress; a UDP reply (whose
			// entry may outlive its conntrack entry) asks the conntrack
			// kfunc (5.18+), and without it is not named.
			tcpReply := c.proto == 6
			var fwd, rep bool
			for _, ev := range eventsOf(evs, decode.KindFlow) {
				if ev.Ifindex != uint32(tp.r2) || ev.CT.OrigDst != a(c.vip) || !ev.CT.Flags.Has(decode.CTDNAT) {
					continue
				}
				if ev.Direction == decode.DirEgress && ev.Dst == a(c.backend) && !ev.CT.Flags.Has(decode.CTReply) {
					fwd = true
				}
				via := decode.CTViaLookup
				if tcpReply {
					via = decode.CTViaRev
				}
				if ev.Direction == decode.DirIngress && ev.Src == a(c.backend) && ev.CT.Flags.Has(decode.CTReply|via) {
					rep = true
				}
			}
			if !fwd || rep != (tcpReply || lookup) {
				t.Fatalf("service not named on backend-side flows (forward %v, reply %v): %+v", fwd, rep, eventsOf(evs, decode.KindFlow))
			}
		})
	}
	if s := stats(t, d); s["translated_events"] != 7 || (s["ct_lookups"] == 0) == lookup {
		t.Fatalf("stats: %v", s)
	}
	tp.dropAfterDNAT(t, d)
}

// dropAfterDNAT: a drop after DNAT names the VIP too (kfree_skb reads
// skb->_nfct, on every kernel).
func (tp *topo) dropAfterDNAT(t *testing.T, d *Datapath) {
	t.Helper()
	if err := d.AllowNetns(tp.routerIno); err != nil {
		t.Fatal(err)
	}
	names := dropReasonNames(t)
	tp.sendDF(t, "10.96.0.11:53", 10)
	for _, ev := range waitDrops(t, d, tp.routerIno) {
		if !hasReason(d, names, &ev, "NETFILTER_DROP", 9) {
			continue
		}
		if ev.Dst != a("10.77.2.2") || ev.DstPort != 9 || ev.CT.OrigDst != a("10.96.0.11") || ev.CT.OrigDstPort != 53 ||
			!ev.CT.Flags.Has(decode.CTKnown|decode.CTDNAT|decode.CTViaNfct) || ev.CT.Flags.Has(decode.CTReply) {
			t.Fatalf("drop after DNAT: %+v", ev)
		}
		return
	}
	t.Fatal("no NETFILTER_DROP for the DNAT'd datagram")
}

// sendDF sends one UDP datagram of size bytes with DF (IPv4) from the client.
func (tp *topo) sendDF(t *testing.T, addr string, size int) {
	t.Helper()
	var c net.Conn
	err := netnsutil.Do(tp.client, func() error {
		d := net.Dialer{Control: func(network, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if strings.HasSuffix(network, "6") {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
				}
			})
			return errors.Join(err, serr)
		}}
		var err error
		c, err = d.Dial("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatalf("send %d bytes to %s: %v", size, addr, err)
	}
}

func TestMTUExceeded(t *testing.T) {
	d := load(t, Config{})
	tp := newTopo(t, 1280)
	tp.attach(t, d)
	if !d.Features().MTUCheck {
		// No bpf_check_mtu (before 5.12): no MTU_EXCEEDED claims at all.
		drain(t, d)
		tp.sendDF(t, "10.77.2.2:9999", 1400)
		time.Sleep(100 * time.Millisecond)
		for _, ev := range eventsOf(drain(t, d), decode.KindMTU) {
			if ev.MTUKind == decode.MTUExceeded {
				t.Fatalf("MTU_EXCEEDED without bpf_check_mtu: %+v", ev)
			}
		}
		return
	}
	for _, c := range []struct {
		addr, src, dst string
		l3Len          uint32
		kind           decode.MTUKind
		icmpType       uint8
	}{
		{"10.77.2.2:9999", "10.77.1.2", "10.77.2.2", 1428, decode.MTUICMPFragNeeded, 3},
		{"[fd77:2::2]:9999", "fd77:1::2", "fd77:2::2", 1448, decode.MTUICMPv6PacketTooBig, 2},
	} {
		t.Run(c.addr, func(t *testing.T) {
			drain(t, d)
			tp.sendDF(t, c.addr, 1400)
			evs := eventsOf(collect(t, d, tp.routerIno), decode.KindMTU)
			var exceeded, icmp []decode.Event
			for _, ev := range evs {
				switch ev.MTUKind {
				case decode.MTUExceeded:
					exceeded = append(exceeded, ev)
				case c.kind:
					icmp = append(icmp, ev)
				}
			}
			if len(exceeded) != 1 {
				t.Fatalf("%d MTU_EXCEEDED events: %+v (stats %v)", len(exceeded), evs, stats(t, d))
			}
			ev := exceeded[0]
			if ev.MTU != 1280 || ev.PktLen != c.l3Len || ev.Ifindex != uint32(tp.r1) ||
				ev.EgressIfindex != uint32(tp.r2) || ev.Direction != decode.DirIngress ||
				ev.Src != a(c.src) || ev.Dst != a(c.dst) || ev.DstPort != 9999 || ev.Proto != 17 {
				t.Fatalf("MTU_EXCEEDED %+v", ev)
			}
			// The router's ICMP error back to the client crosses r1 egress,
			// quoting the flow it is about.
			if len(icmp) != 1 {
				t.Fatalf("%d ICMP PMTU events: %+v", len(icmp), evs)
			}
			ie := icmp[0]
			if ie.MTU != 1280 || ie.Ifindex != uint32(tp.r1) || ie.Direction != decode.DirEgress ||
				ie.ICMPType != c.icmpType || ie.Dst != a(c.src) ||
				ie.Embedded != (decode.Embedded{IPVersion: ev.IPVersion, Proto: 17, Src: a(c.src), Dst: a(c.dst), SrcPort: ev.SrcPort, DstPort: 9999}) {
				t.Fatalf("ICMP PMTU event %+v", ie)
			}
		})
	}
	// A packet that fits produces no MTU event, and small ones skip the FIB.
	drain(t, d)
	before := stats(t, d)["fib_lookups"]
	tp.sendDF(t, "10.77.2.2:9998", 1000)
	tp.sendDF(t, "10.77.2.2:9997", 100)
	if evs := eventsOf(collect(t, d, tp.routerIno), decode.KindMTU); len(evs) != 0 {
		t.Fatalf("MTU events for packets that fit: %+v", evs)
	}
	if got := stats(t, d)["fib_lookups"] - before; got != 1 {
		t.Fatalf("fib lookups for one 1028-byte and one 128-byte packet: %d, want 1", got)
	}
}

// TestMTUCheckGSO: a bulk TCP transfer through the router is a stream of
// GSO packets (tens of KB each) whose segments fit the egress MTU. The MTU
// check must judge them by segment, so each flow entry pays one FIB lookup
// per report interval, not one per packet, and no MTU_EXCEEDED is claimed.
// Without bpf_check_mtu (before 5.12) the same holds trivially: no lookups.
func TestMTUCheckGSO(t *testing.T) {
	d := load(t, Config{})
	tp := newTopo(t, 0)
	tp.attach(t, d)
	tp.serve(t, 9100)
	drain(t, d)
	before := stats(t, d)["fib_lookups"]

	const total = 8 << 20
	var c net.Conn
	if err := netnsutil.Do(tp.client, func() (err error) {
		c, err = net.DialTimeout("tcp", "10.77.2.2:9100", 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	echoed := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, c, total)
		echoed <- err
	}()
	buf := make([]byte, 256<<10)
	for sent := 0; sent < total; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if err := <-echoed; err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	for _, ev := range eventsOf(collect(t, d, tp.routerIno), decode.KindMTU) {
		t.Errorf("MTU event for segments that fit: %+v", ev)
	}
	// Two data directions, each checked at its router ingress; a few more
	// for an interval boundary. Judged by merged length it was ~300.
	lookups := stats(t, d)["fib_lookups"] - before
	t.Logf("%d MiB each way: %d FIB lookups", total>>20, lookups)
	if lookups > 6 {
		t.Fatalf("%d FIB lookups for one bulk TCP connection: the check runs per GSO packet", lookups)
	}
}
