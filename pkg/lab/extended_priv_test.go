//go:build linux

package lab

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/pkg/netnsutil"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// serve starts a TCP listener inside a pod that answers every connection
// with the pod's name, so a client learns which backend it reached.
func serve(t *testing.T, l *Lab, pod string, ip netip.Addr, port int) {
	t.Helper()
	p, ok := l.Pod(pod)
	if !ok {
		t.Fatalf("no pod %s", pod)
	}
	var ln net.Listener
	err := l.Do(pod, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", pod, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, p.Name)
			c.Close()
		}
	}()
}

// fetch connects from a pod or node namespace and returns what the server
// said.
func fetch(l *Lab, from string, to netip.Addr, port int, timeout time.Duration) (string, error) {
	var got []byte
	err := l.Do(from, func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(to.String(), strconv.Itoa(port)), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		got, err = io.ReadAll(c)
		return err
	})
	return string(got), err
}

func TestLabExtended(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.Extended = true
	t.Cleanup(func() {
		if err := Down(ctx, cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if _, err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	l, err := Up(ctx, cfg) // idempotent: rebuilt over the running lab
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if len(l.Nodes) != 2 || len(l.Pods) != 5 {
		t.Fatalf("lab has %d nodes, %d pods", len(l.Nodes), len(l.Pods))
	}
	n1, n2 := l.Nodes[0], l.Nodes[1]

	// The identity file is what the agent's static source accepts.
	src, err := identity.NewFile(cfg.IdentityFile, time.Second, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("identity file rejected by pkg/identity: %v", err)
	}
	api, _ := l.Pod("api")
	if p, ok := src.PodByIP(api.IPv6); !ok || p.Node != Node2Name || p.Name != "api-7b9d4c" {
		t.Errorf("identity of %s = %+v, %v", api.IPv6, p, ok)
	}
	if p, ok := src.PodByIP(netip.MustParseAddr("10.244.0.21")); !ok || p.Workload.Name != "backend" || p.Node != NodeName {
		t.Errorf("identity of backend-2 = %+v, %v", p, ok)
	}
	web, _ := l.Service("shop/web")
	ghost, _ := l.Service("ghost")
	for _, s := range []Service{web, ghost} {
		for _, vip := range s.VIPs {
			got, ok := src.ServiceByIP(vip)
			if !ok || got.Namespace+"/"+got.Name != s.Key() || len(got.Ports) != 1 || got.Ports[0].Name != "http" || got.Ports[0].Port != 80 {
				t.Errorf("identity of Service VIP %s = %+v, %v", vip, got, ok)
			}
		}
	}

	// The MTUs are what the scenario says they are.
	for _, c := range []struct {
		netns, dev string
		want       int
	}{
		{n1.Netns, n1.Overlay, OverlayMTU}, {n2.Netns, n2.Overlay, OverlayMTU},
		{n1.Netns, n1.Underlay, UnderlayMTU}, {n2.Netns, n2.Underlay, UnderlayMTU},
		{n1.Netns, n1.Bridge, PodMTU}, {api.Netns, "eth0", PodMTU},
	} {
		var mtu int
		err := l.Do(c.netns, func() error {
			ifc, err := net.InterfaceByName(c.dev)
			if err == nil {
				mtu = ifc.MTU
			}
			return err
		})
		if err != nil || mtu != c.want {
			t.Errorf("%s/%s mtu = %d (%v), want %d", c.netns, c.dev, mtu, err, c.want)
		}
	}

	for _, pod := range []string{"backend", "backend2", "api"} {
		p, _ := l.Pod(pod)
		for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
			serve(t, l, pod, ip, BackendPort)
		}
	}
	backends := map[string]bool{"backend-5d8b9c": true, "backend-5d8b9c-2": true}

	for _, fam := range []struct {
		name string
		is4  bool
	}{{"ipv4", true}, {"ipv6", false}} {
		t.Run(fam.name, func(t *testing.T) {
			pick := func(a4, a6 netip.Addr) netip.Addr {
				if fam.is4 {
					return a4
				}
				return a6
			}
			webVIP := pick(web.VIPs[0], web.VIPs[1])
			ghostVIP := pick(ghost.VIPs[0], ghost.VIPs[1])

			// ClusterIP: from a pod on the same bridge as the backends (the
			// replies are bridged, so br_netfilter must un-DNAT them) and
			// from the other node's pod across the overlay; over enough
			// connections the random choice lands on both backends.
			for _, from := range []string{"frontend", "api"} {
				seen := map[string]int{}
				for i := 0; i < 24; i++ {
					got, err := fetch(l, from, webVIP, ServicePort, 3*time.Second)
					if err != nil {
						t.Fatalf("%s -> %s:%d: %v", from, webVIP, ServicePort, err)
					}
					if !backends[got] {
						t.Fatalf("%s -> %s:%d answered by %q, not a backend", from, webVIP, ServicePort, got)
					}
					seen[got]++
				}
				if len(seen) != 2 {
					t.Errorf("%s -> ClusterIP: 24 connections reached only %v", from, seen)
				}
			}

			// A Service without endpoints is rejected at once, not
			// blackholed.
			start := time.Now()
			_, err := fetch(l, "frontend", ghostVIP, ServicePort, 3*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("frontend -> ghost %s:%d: err = %v, want connection refused", ghostVIP, ServicePort, err)
			} else if d := time.Since(start); d > time.Second {
				t.Errorf("ghost refusal took %v", d)
			}
			// A ClusterIP port the Service does not serve is rejected too.
			if _, err := fetch(l, "frontend", webVIP, 81, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("frontend -> %s:81: err = %v, want connection refused", webVIP, err)
			}

			// NodePort on node 1's underlay address, from node 2's own
			// namespace (masqueraded on node 1) and from a pod.
			nodeIP := pick(n1.UnderlayV4, n1.UnderlayV6)
			for _, from := range []string{n2.Netns, "frontend"} {
				if got, err := fetch(l, from, nodeIP, ServiceNodePort, 3*time.Second); err != nil || !backends[got] {
					t.Errorf("%s -> NodePort %s:%d: %q, %v", from, nodeIP, ServiceNodePort, got, err)
				}
			}

			// Pod to pod across the overlay, both ways.
			fe, _ := l.Pod("frontend")
			if got, err := fetch(l, "frontend", pick(api.IPv4, api.IPv6), BackendPort, 3*time.Second); err != nil || got != api.Name {
				t.Errorf("frontend -> api over VXLAN: %q, %v", got, err)
			}
			if got, err := fetch(l, "api", pick(web.VIPs[0], web.VIPs[1]), ServicePort, 3*time.Second); err != nil || !backends[got] {
				t.Errorf("api -> web ClusterIP: %q, %v", got, err)
			}
			ping := "ping"
			if !fam.is4 {
				ping = "ping6"
			}
			dst := pick(api.IPv4, api.IPv6).String()
			if out, err := l.Exec(ctx, "api", ping, "-c", "1", "-W", "2", pick(fe.IPv4, fe.IPv6).String()); err != nil {
				t.Errorf("api -> frontend ping: %v %s", err, out)
			}
			// The largest DF payload that fits the overlay passes...
			hdr := 28
			if !fam.is4 {
				hdr = 48
			}
			fits := strconv.Itoa(OverlayMTU - hdr)
			if out, err := l.Exec(ctx, "frontend", ping, "-M", "do", "-s", fits, "-c", "1", "-W", "2", dst); err != nil {
				t.Errorf("DF ping -s %s frontend -> api: %v %s", fits, err, out)
			}
			// ...one byte more, and a 1400-byte one, exceed the VXLAN
			// device's MTU on node 1 and come back as frag-needed /
			// packet-too-big naming 1350 (later attempts fail locally with
			// "message too long" once the pod learned the path MTU).
			for _, size := range []string{strconv.Itoa(OverlayMTU - hdr + 1), "1400"} {
				out, err := l.Exec(ctx, "frontend", ping, "-M", "do", "-s", size, "-c", "1", "-W", "2", dst)
				s := strings.ToLower(string(out))
				if err == nil || !strings.Contains(s, strconv.Itoa(OverlayMTU)) ||
					!(strings.Contains(s, "frag needed") || strings.Contains(s, "too big") || strings.Contains(s, "message too long")) {
					t.Errorf("DF ping -s %s frontend -> api: err = %v, want frag-needed/too-big with mtu %d; output:\n%s", size, err, OverlayMTU, out)
				}
			}
		})
	}

	// Nothing of the lab is in the test's namespace, and neither node has a
	// way out.
	for _, dev := range []string{n1.Underlay, n1.Overlay, n1.ServiceDev} {
		if _, err := net.InterfaceByName(dev); err == nil {
			t.Errorf("%s leaked into the test's namespace", dev)
		}
	}
	for _, n := range l.Nodes {
		out, err := run(ctx, "", "ip", "-n", n.Netns, "route", "show", "default")
		out6, err6 := run(ctx, "", "ip", "-n", n.Netns, "-6", "route", "show", "default")
		if err != nil || err6 != nil || len(out) != 0 || len(out6) != 0 {
			t.Errorf("%s has a default route: %q %q (%v %v)", n.Netns, out, out6, err, err6)
		}
	}

	if err := Down(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for _, ns := range l.namespaces() {
		if _, err := os.Lstat(filepath.Join(netnsutil.RunDir, ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns %s still present after Down (%v)", ns, err)
		}
	}
}
