package test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/lab"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

var (
	translated  = &flowtracev1.FlowFilter{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_TRANSLATED}}
	mtuExceeded = &flowtracev1.FlowFilter{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_MTU_EXCEEDED}}
)

func l4Ports(f *flowtracev1.Flow) (uint32, uint32) {
	switch {
	case f.L4.GetTcp() != nil:
		return f.L4.GetTcp().GetSourcePort(), f.L4.GetTcp().GetDestinationPort()
	case f.L4.GetUdp() != nil:
		return f.L4.GetUdp().GetSourcePort(), f.L4.GetUdp().GetDestinationPort()
	}
	return 0, 0
}

func podAddr(p lab.Pod, v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IPv4
}

// The Service story on the two-node lab: TRANSLATED names the Service and
// the backend, later flows at the backend and replies carry the Service,
// a Service without endpoints explains its drop, and a too-big packet over
// the mis-sized overlay is MTU_EXCEEDED with the answering ICMP noted.
func TestServicesAndMTU(t *testing.T) {
	l, ids := newExtendedLab(t)
	a := startAgent(t, l, ids, "--flow-report-interval", "1s")
	st, err := a.status()
	if err != nil {
		t.Fatal(err)
	}
	// TCP replies carry the Service where tc reads the packet's conntrack
	// (skb->_nfct) at egress: the reply at ingress takes its connection's
	// view from there, or else from the bpf_skb_ct_lookup kfunc (5.18+).
	// The agent says which it has in its status, and the test asks for
	// what the kernel can do.
	replyNamed := st.GetFeatures().GetConntrackNfct() || st.GetFeatures().GetConntrackLookup()
	web, _ := l.Service("web")
	ghost, _ := l.Service("ghost")
	frontend := ip4(t, l, "frontend")
	var backends []lab.Pod
	for _, name := range web.Endpoints {
		backends = append(backends, ip4(t, l, name))
	}
	for _, b := range backends {
		for _, v6 := range []bool{false, true} {
			listenOn(t, l, b, podAddr(b, v6), web.TargetPort)
		}
	}

	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
		t.Run("TCP through the ClusterIP is TRANSLATED "+name, func(t *testing.T) {
			vip, _ := web.VIP(podAddr(frontend, v6))
			c, err := dial(l, "frontend", vip, int(web.Port), 2*time.Second)
			if err != nil {
				t.Fatalf("dial %s: %v", vip, err)
			}
			port := uint32(c.LocalAddr().(*net.TCPAddr).Port)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
			// Open past the agent's first-report delay (20 ms): each
			// direction's first report is then a flow of its own, and the
			// reply's must name the Service as its source. (A shorter
			// connection is its closes, whose reverse counts are the reply's.)
			time.Sleep(200 * time.Millisecond)
			c.Close()

			byPort := &flowtracev1.FlowFilter{SourcePort: []uint32{port}}
			var xl *flowtracev1.Flow
			a.waitFlows(t, "TRANSLATED", func(fs []*flowtracev1.Flow) bool {
				for _, f := range fs {
					if f.Verdict == flowtracev1.Verdict_VERDICT_TRANSLATED {
						xl = f
						return true
					}
				}
				return false
			}, byPort)
			tr := xl.Translation
			backendIPs := []string{}
			for _, b := range backends {
				backendIPs = append(backendIPs, podAddr(b, v6).String())
			}
			if tr.GetOriginalIp() != vip.String() || tr.GetOriginalPort() != uint32(web.Port) ||
				!slices.Contains(backendIPs, tr.GetTranslatedIp()) || tr.GetTranslatedPort() != uint32(web.TargetPort) {
				t.Errorf("translation %v, want %s:%d => one of %v:%d", tr, vip, web.Port, backendIPs, web.TargetPort)
			}
			svc := xl.DestinationService
			if svc.GetNamespace() != "shop" || svc.GetName() != "web" || svc.GetPortName() != "http" {
				t.Errorf("TRANSLATED names service %v, want shop/web port http", svc)
			}
			if xl.Source.GetPodName() != frontend.Name || xl.Destination.GetWorkload().GetName() != "backend" {
				t.Errorf("TRANSLATED ends %v -> %v", xl.Source, xl.Destination)
			}

			// Every later report of the connection carries the Service, at
			// the backend's veth too, and the replies name it as source.
			reverse := &flowtracev1.FlowFilter{DestinationPort: []uint32{port}}
			fs := a.waitFlows(t, "the connection's flows with the Service", func(fs []*flowtracev1.Flow) bool {
				var atBackend, reply bool
				for _, f := range fs {
					if f.Verdict != flowtracev1.Verdict_VERDICT_FORWARDED {
						continue
					}
					if f.DestinationService.GetName() == "web" && f.Destination.GetWorkload().GetName() == "backend" &&
						f.ObservationPoint == flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_EGRESS {
						atBackend = true
					}
					if f.SourceService.GetName() == "web" && f.Source.GetWorkload().GetName() == "backend" {
						reply = true
					}
				}
				return atBackend && (reply || !replyNamed)
			}, byPort, reverse)
			n := 0
			for _, f := range fs {
				if f.Verdict == flowtracev1.Verdict_VERDICT_TRANSLATED {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d TRANSLATED events for one connection, want 1", n)
			}
			if len(fs) > 24 {
				t.Errorf("%d events for one short connection through a Service, want a bounded handful", len(fs))
			}
		})
	}

	t.Run("UDP through the ClusterIP is TRANSLATED", func(t *testing.T) {
		dns, _ := l.Service("dns")
		var c net.Conn
		err := l.Do(frontend.Netns, func() error {
			var err error
			c, err = net.Dial("udp", netip.AddrPortFrom(dns.VIPs[0], dns.Port).String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		port := uint32(c.LocalAddr().(*net.UDPAddr).Port)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			t.Fatalf("no echo through shop/dns: %v", err)
		}
		a.waitFlows(t, "UDP TRANSLATED", func(fs []*flowtracev1.Flow) bool {
			for _, f := range fs {
				if f.L4.GetUdp() != nil && f.Translation.GetOriginalIp() == dns.VIPs[0].String() && f.DestinationService.GetName() == "dns" &&
					f.DestinationService.GetPortName() == "dns" {
					return true
				}
			}
			return false
		}, &flowtracev1.FlowFilter{Verdict: translated.Verdict, SourcePort: []uint32{port}})
	})

	t.Run("a Service without endpoints is a drop saying so", func(t *testing.T) {
		_, err := dial(l, "frontend", ghost.VIPs[0], int(ghost.Port), 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial shop/ghost: %v, want connection refused", err)
		}
		a.waitFlows(t, "no-endpoints drop", func(fs []*flowtracev1.Flow) bool {
			for _, f := range fs {
				if f.DestinationService.GetName() == "ghost" && f.DropCause == flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS &&
					f.Source.GetPodName() == frontend.Name {
					return true
				}
			}
			return false
		}, dropped)
	})

	api := ip4(t, l, "api")
	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
		t.Run("a DF packet too big for the overlay is MTU_EXCEEDED "+name, func(t *testing.T) {
			dst := podAddr(api, v6)
			port := sendDF(t, l, frontend, dst, 1400)
			if !st.GetFeatures().GetMtuCheck() {
				// Before 5.12 (no bpf_check_mtu) the too-big packet itself is
				// not judged; the ICMP error crossing the node still names it.
				waitPMTUError(t, a, dst, uint32(l.OverlayMTU))
				return
			}
			var got *flowtracev1.Flow
			a.waitFlows(t, "MTU_EXCEEDED", func(fs []*flowtracev1.Flow) bool {
				for _, f := range fs {
					sp, _ := l4Ports(f)
					if f.Mtu.GetEvent() == flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED && sp == port {
						got = f
						return true
					}
				}
				return false
			}, mtuExceeded)
			m := got.Mtu
			wantLen := uint32(1400 + 8 + 20)
			if v6 {
				wantLen = 1400 + 8 + 40
			}
			if m.Mtu != uint32(l.OverlayMTU) || m.PacketLength != wantLen || m.EgressInterface.GetName() != l.Nodes[0].Overlay ||
				got.Interface.GetName() != frontend.HostVeth || !m.IcmpSent {
				t.Errorf("MTU_EXCEEDED: mtu %d len %d egress %q in %q icmp_sent %v; want %d %d %q %q true",
					m.Mtu, m.PacketLength, m.EgressInterface.GetName(), got.Interface.GetName(), m.IcmpSent,
					l.OverlayMTU, wantLen, l.Nodes[0].Overlay, frontend.HostVeth)
			}
			if got.Destination.GetPodName() != api.Name || got.Destination.GetNodeName() != "lab-node2" {
				t.Errorf("MTU_EXCEEDED destination %v", got.Destination)
			}
			// The ICMP error crossing the node is reported too, quoting the flow.
			waitPMTUError(t, a, dst, uint32(l.OverlayMTU))
		})
	}
}

// A TCP transfer and a DF ping over the mis-sized overlay: a TCP burst (GSO
// on the veth) is reported with the size of its segments, not the merged
// length no wire carries, and a ping is checked like any packet.
func TestMTUPingAndTCP(t *testing.T) {
	l, ids := newExtendedLab(t)
	a := startAgent(t, l, ids)
	st, err := a.status()
	if err != nil {
		t.Fatal(err)
	}
	// Kernels before 5.12 have no bpf_check_mtu: there the ICMP errors the
	// node sends back are what names the too-big packets.
	mtuCheck := st.GetFeatures().GetMtuCheck()
	frontend, api := ip4(t, l, "frontend"), ip4(t, l, "api")

	listenOn(t, l, api, api.IPv4, 8080)
	c, err := dial(l, "frontend", api.IPv4, 8080, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	port := uint32(c.LocalAddr().(*net.TCPAddr).Port)
	go func() { _, _ = io.Copy(io.Discard, c) }()
	if _, err := c.Write(make([]byte, 300_000)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if !mtuCheck {
		waitPMTUError(t, a, api.IPv4, uint32(l.OverlayMTU))
		return
	}
	fs := a.waitFlows(t, "MTU_EXCEEDED for the TCP transfer", func(fs []*flowtracev1.Flow) bool {
		for _, f := range fs {
			if sp, _ := l4Ports(f); sp == port && f.Mtu.GetEvent() == flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED {
				return true
			}
		}
		return false
	}, mtuExceeded)
	for _, f := range fs {
		if sp, _ := l4Ports(f); sp == port && f.Mtu.GetEvent() == flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED {
			if n := f.Mtu.GetPacketLength(); n <= uint32(l.OverlayMTU) || n > uint32(l.PodMTU) {
				t.Errorf("TCP MTU_EXCEEDED packet length %d, want a segment of the pod's MTU (%d < n <= %d)", n, l.OverlayMTU, l.PodMTU)
			}
		}
	}

	// After the transfer the pod knows the IPv4 path MTU and would refuse a
	// big DF packet itself, so the ping goes over IPv6 (its own path MTU).
	out, _ := exec.Command("ip", "netns", "exec", frontend.Netns, "ping", "-6", "-M", "do", "-s", "1400", "-c", "1", "-W", "1", api.IPv6.String()).CombinedOutput()
	if !strings.Contains(string(out), "mtu=1350") {
		t.Fatalf("DF ping did not meet the overlay MTU:\n%s", out)
	}
	a.waitFlows(t, "MTU_EXCEEDED for the ping", func(fs []*flowtracev1.Flow) bool {
		for _, f := range fs {
			if f.Mtu.GetEvent() == flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED && f.L4.GetIcmpv6() != nil &&
				f.Mtu.GetPacketLength() == 1448 && f.Mtu.GetIcmpSent() {
				return true
			}
		}
		return false
	}, mtuExceeded)

}

// waitPMTUError waits for the ICMP frag-needed / packet-too-big that the
// node sent back about a packet to dst.
func waitPMTUError(t *testing.T, a *agentProc, dst netip.Addr, mtu uint32) {
	t.Helper()
	a.waitFlows(t, "ICMP PMTU error", func(fs []*flowtracev1.Flow) bool {
		for _, f := range fs {
			if f.Mtu.GetEvent() != flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED && f.Mtu.GetQuotedIp().GetDestination() == dst.String() &&
				f.Mtu.GetMtu() == mtu {
				return true
			}
		}
		return false
	}, mtuExceeded)
}

// listenOn serves TCP (echo) and UDP (echo) on addr:port inside pod p.
func listenOn(t *testing.T, l *lab.Lab, p lab.Pod, addr netip.Addr, port uint16) {
	t.Helper()
	ap := netip.AddrPortFrom(addr, port).String()
	var ln net.Listener
	var pc net.PacketConn
	err := l.Do(p.Netns, func() error {
		var err error
		if ln, err = net.Listen("tcp", ap); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ap)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", ap, p.Name, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// sendDF sends one UDP datagram of size bytes with fragmentation forbidden
// (IPv4 DF; IPv6 routers never fragment) and returns its source port.
func sendDF(t *testing.T, l *lab.Lab, from lab.Pod, to netip.Addr, size int) uint32 {
	t.Helper()
	var port uint32
	err := l.Do(from.Netns, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(to, 9).String())
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := c.(*net.UDPConn).SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		_ = raw.Control(func(fd uintptr) {
			if to.Is4() {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
			}
		})
		if serr != nil {
			return serr
		}
		port = uint32(c.LocalAddr().(*net.UDPAddr).Port)
		// The pod's MTU is 1500, so the first datagram leaves; the node
		// cannot forward it over the overlay.
		_, err = c.Write(make([]byte, size))
		return err
	})
	if err != nil {
		t.Fatalf("send %d-byte DF datagram to %s: %v", size, to, err)
	}
	return port
}
