package filters

import (
	"strings"
	"testing"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

type ff = flowtracev1.FlowFilter

func tcpFlow() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict:    flowtracev1.Verdict_VERDICT_DROPPED,
		DropReason: flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP,
		Ip:         &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.0.30", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV4},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
			SourcePort: 43512, DestinationPort: 5432,
		}}},
		Source:         &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
		Destination:    &flowtracev1.Endpoint{Namespace: "shop", PodName: "db-0"},
		Interface:      &flowtracev1.Interface{Name: "ftv-frontend"},
		InputInterface: &flowtracev1.Interface{Name: "eth0"},
	}
}

// multicastDrop is an MLD report a host that did not join ff02::16 freed.
func multicastDrop() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict:    flowtracev1.Verdict_VERDICT_DROPPED,
		DropReason: flowtracev1.DropReason_DROP_REASON_NOT_SPECIFIED,
		DropCause:  flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED,
		Ip:         &flowtracev1.IP{Source: "fe80::1", Destination: "ff02::16", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV6},
	}
}

func udp6Flow() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict: flowtracev1.Verdict_VERDICT_FORWARDED,
		Ip:      &flowtracev1.IP{Source: "fd00::1", Destination: "fd00:1::53", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV6},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{
			SourcePort: 5353, DestinationPort: 53,
		}}},
		Source:      &flowtracev1.Endpoint{Namespace: "kube-system", PodName: "coredns-abc"},
		Destination: &flowtracev1.Endpoint{},
		Interface:   &flowtracev1.Interface{Name: "lxc12345"},
	}
}

// svcFlow is a request from a client to a Service backend after DNAT, and
// reply is its answer: both carry the Service, on opposite ends.
func svcFlow() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict:            flowtracev1.Verdict_VERDICT_TRANSLATED,
		Ip:                 &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.0.20"},
		Source:             &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
		Destination:        &flowtracev1.Endpoint{Namespace: "shop", PodName: "backend-5d8b9c"},
		DestinationService: &flowtracev1.Service{Namespace: "shop", Name: "web", PortName: "http", Port: 80},
	}
}

func svcReplyFlow() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict:       flowtracev1.Verdict_VERDICT_FORWARDED,
		Ip:            &flowtracev1.IP{Source: "10.244.0.20", Destination: "10.244.0.10"},
		SourceService: &flowtracev1.Service{Namespace: "shop", Name: "web"},
	}
}

// podIfaceFlow was seen on a pod's own eth0.
func podIfaceFlow() *flowtracev1.Flow {
	f := tcpFlow()
	f.Interface = &flowtracev1.Interface{Name: "eth0", Netns: "shop/db-0"}
	f.InputInterface = nil
	return f
}

func icmpFlow() *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
		Ip:      &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
		L4:      &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 3, Code: 4}}},
	}
}

// portRange is n ports from first on.
func portRange(first, n uint32) []uint32 {
	ps := make([]uint32, n)
	for i := range ps {
		ps[i] = first + uint32(i)
	}
	return ps
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name        string
		allow, deny []*ff
		flow        *flowtracev1.Flow
		want        bool
	}{
		{"no filters", nil, nil, tcpFlow(), true},
		{"empty filter matches all", []*ff{{}}, nil, tcpFlow(), true},
		{"deny empty filter drops all", nil, []*ff{{}}, tcpFlow(), false},
		{"verdict match", []*ff{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}}}, nil, tcpFlow(), true},
		{"verdict no match", []*ff{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_FORWARDED}}}, nil, tcpFlow(), false},
		{"verdict OR", []*ff{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_FORWARDED, flowtracev1.Verdict_VERDICT_DROPPED}}}, nil, tcpFlow(), true},
		{"drop reason", []*ff{{DropReason: []flowtracev1.DropReason{flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP}}}, nil, tcpFlow(), true},
		{"drop reason miss", []*ff{{DropReason: []flowtracev1.DropReason{flowtracev1.DropReason_DROP_REASON_NO_SOCKET}}}, nil, tcpFlow(), false},
		{"drop cause none: an unexplained drop", []*ff{{DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_UNSPECIFIED}}}, nil, tcpFlow(), true},
		{"drop cause miss", []*ff{{DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED}}}, nil, tcpFlow(), false},
		{"drop cause match", []*ff{{DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED, flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED}}}, nil, multicastDrop(), true},
		{"deny a drop cause keeps the rest", nil, []*ff{{DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED}}}, tcpFlow(), true},
		{"deny a drop cause", nil, []*ff{{DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED}}}, multicastDrop(), false},
		{"source pod ns/prefix", []*ff{{SourcePod: []string{"shop/frontend"}}}, nil, tcpFlow(), true},
		{"source pod ns/", []*ff{{SourcePod: []string{"shop/"}}}, nil, tcpFlow(), true},
		{"source pod other ns", []*ff{{SourcePod: []string{"default/frontend"}}}, nil, tcpFlow(), false},
		{"pod bare prefix any ns", []*ff{{DestinationPod: []string{"db-"}}}, nil, tcpFlow(), true},
		{"pod bare prefix miss", []*ff{{DestinationPod: []string{"frontend"}}}, nil, tcpFlow(), false},
		{"pod bare prefix unknown pod", []*ff{{DestinationPod: []string{"x"}}}, nil, udp6Flow(), false},
		{"source ip exact", []*ff{{SourceIp: []string{"10.244.0.10"}}}, nil, tcpFlow(), true},
		{"source ip cidr", []*ff{{SourceIp: []string{"10.244.0.0/16"}}}, nil, tcpFlow(), true},
		{"dest ip cidr miss", []*ff{{DestinationIp: []string{"10.245.0.0/16"}}}, nil, tcpFlow(), false},
		{"v6 cidr", []*ff{{DestinationIp: []string{"fd00:1::/64"}}}, nil, udp6Flow(), true},
		{"v4 cidr vs v6 flow", []*ff{{DestinationIp: []string{"0.0.0.0/0"}}}, nil, udp6Flow(), false},
		{"v4-mapped address", []*ff{{SourceIp: []string{"::ffff:10.244.0.10"}}}, nil, tcpFlow(), true},
		{"dest port", []*ff{{DestinationPort: []uint32{80, 5432}}}, nil, tcpFlow(), true},
		{"source port miss", []*ff{{SourcePort: []uint32{5432}}}, nil, tcpFlow(), false},
		{"port vs icmp", []*ff{{DestinationPort: []uint32{53}}}, nil, icmpFlow(), false},
		{"udp port", []*ff{{DestinationPort: []uint32{53}}}, nil, udp6Flow(), true},
		// Longer lists than smallPortList take the bit set.
		{"long port list", []*ff{{DestinationPort: portRange(5400, 40)}}, nil, tcpFlow(), true},
		{"long port list miss", []*ff{{DestinationPort: portRange(5433, 40)}}, nil, tcpFlow(), false},
		{"long source list", []*ff{{SourcePort: portRange(43500, 20)}}, nil, tcpFlow(), true},
		{"long list vs icmp", []*ff{{DestinationPort: portRange(1, 100)}}, nil, icmpFlow(), false},
		{"long list top port", []*ff{{SourcePort: portRange(65500, 36)}}, nil, &flowtracev1.Flow{L4: &flowtracev1.Layer4{
			Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: 65535}}}}, true},
		{"protocol case-insensitive", []*ff{{Protocol: []string{"TCP"}}}, nil, tcpFlow(), true},
		{"protocol miss", []*ff{{Protocol: []string{"udp"}}}, nil, tcpFlow(), false},
		{"protocol icmpv4", []*ff{{Protocol: []string{"icmpv4"}}}, nil, icmpFlow(), true},
		{"interface exact", []*ff{{Interface: []string{"ftv-frontend"}}}, nil, tcpFlow(), true},
		{"interface prefix", []*ff{{Interface: []string{"ftv-*"}}}, nil, tcpFlow(), true},
		{"interface input device", []*ff{{Interface: []string{"eth0"}}}, nil, tcpFlow(), true},
		{"interface exact is not prefix", []*ff{{Interface: []string{"ftv"}}}, nil, tcpFlow(), false},
		// As flows print a pod's own device: name@netns.
		{"interface in its netns", []*ff{{Interface: []string{"eth0@shop/db-0"}}}, nil, podIfaceFlow(), true},
		{"interface prefix in its netns", []*ff{{Interface: []string{"eth*@shop/db-0"}}}, nil, podIfaceFlow(), true},
		{"interface in another netns", []*ff{{Interface: []string{"eth0@shop/web-1"}}}, nil, podIfaceFlow(), false},
		{"icmp is either version", []*ff{{Protocol: []string{"icmp"}}}, nil, icmpFlow(), true},
		{"icmp is not tcp", []*ff{{Protocol: []string{"ICMP"}}}, nil, tcpFlow(), false},
		{"namespace", []*ff{{SourceNamespace: []string{"kube-system"}}}, nil, udp6Flow(), true},
		{"namespace unknown endpoint", []*ff{{DestinationNamespace: []string{"kube-system"}}}, nil, udp6Flow(), false},
		{"AND inside filter", []*ff{{Protocol: []string{"tcp"}, DestinationPort: []uint32{80}}}, nil, tcpFlow(), false},
		{"OR across filters", []*ff{{DestinationPort: []uint32{80}}, {SourcePod: []string{"shop/"}}}, nil, tcpFlow(), true},
		{"deny wins", []*ff{{SourcePod: []string{"shop/"}}}, []*ff{{Protocol: []string{"tcp"}}}, tcpFlow(), false},
		{"deny miss", nil, []*ff{{Protocol: []string{"udp"}}}, tcpFlow(), true},
		{"dest service ns/name", []*ff{{DestinationService: []string{"shop/web"}}}, nil, svcFlow(), true},
		{"dest service ns/prefix", []*ff{{DestinationService: []string{"shop/w"}}}, nil, svcFlow(), true},
		{"dest service ns/", []*ff{{DestinationService: []string{"shop/"}}}, nil, svcFlow(), true},
		{"dest service bare prefix any ns", []*ff{{DestinationService: []string{"we"}}}, nil, svcFlow(), true},
		{"dest service other ns", []*ff{{DestinationService: []string{"default/web"}}}, nil, svcFlow(), false},
		{"dest service name miss", []*ff{{DestinationService: []string{"shop/api"}}}, nil, svcFlow(), false},
		{"dest service is not the pod", []*ff{{DestinationService: []string{"shop/backend"}}}, nil, svcFlow(), false},
		{"dest service OR", []*ff{{DestinationService: []string{"shop/api", "web"}}}, nil, svcFlow(), true},
		{"source service on reply", []*ff{{SourceService: []string{"shop/web"}}}, nil, svcReplyFlow(), true},
		{"source service not on request", []*ff{{SourceService: []string{"shop/web"}}}, nil, svcFlow(), false},
		{"dest service not on reply", []*ff{{DestinationService: []string{"shop/"}}}, nil, svcReplyFlow(), false},
		{"service on flow without one", []*ff{{DestinationService: []string{"shop/"}}}, nil, tcpFlow(), false},
		{"service bare prefix on nil service", []*ff{{SourceService: []string{"w"}}}, nil, &flowtracev1.Flow{}, false},
		{"service and pod AND", []*ff{{DestinationService: []string{"shop/web"}, DestinationPod: []string{"shop/db"}}}, nil, svcFlow(), false},
		{"deny service", nil, []*ff{{DestinationService: []string{"shop/web"}}}, svcFlow(), false},
		{"nil l4 and ip", []*ff{{SourceIp: []string{"0.0.0.0/0"}}}, nil, &flowtracev1.Flow{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Build(tt.allow, tt.deny)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if got := m.Match(tt.flow); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name        string
		allow, deny []*ff
		want        string
	}{
		{"bad ip", []*ff{{SourceIp: []string{"10.0.0.300"}}}, nil, `allowlist[0].source_ip: "10.0.0.300" is not an IP address or CIDR`},
		{"bad cidr", nil, []*ff{{}, {DestinationIp: []string{"10.0.0.0/33"}}}, `denylist[1].destination_ip: "10.0.0.0/33" is not an IP address or CIDR`},
		{"bad port", []*ff{{DestinationPort: []uint32{70000}}}, nil, `allowlist[0].destination_port: 70000 is not a port (1-65535)`},
		{"zero port", []*ff{{SourcePort: []uint32{0}}}, nil, `allowlist[0].source_port: 0 is not a port`},
		{"bad protocol", []*ff{{Protocol: []string{"gre"}}}, nil, `allowlist[0].protocol: "gre" is not a protocol (want one of tcp, udp, sctp, icmp, icmpv4, icmpv6)`},
		{"iface without netns", []*ff{{Interface: []string{"eth0@"}}}, nil, `allowlist[0].interface: "eth0@" is not an interface name, "prefix*" or "name@netns"`},
		{"bad verdict", []*ff{{Verdict: []flowtracev1.Verdict{42}}}, nil, `allowlist[0].verdict: 42 is not a known verdict`},
		{"unspecified verdict", []*ff{{Verdict: []flowtracev1.Verdict{0}}}, nil, `allowlist[0].verdict: 0 is not a known verdict`},
		{"bad reason", []*ff{{DropReason: []flowtracev1.DropReason{9999}}}, nil, `allowlist[0].drop_reason: 9999 is not a known drop reason`},
		{"bad cause", nil, []*ff{{DropCause: []flowtracev1.DropCause{64}}}, `denylist[0].drop_cause: 64 is not a known drop cause`},
		{"empty pod", []*ff{{SourcePod: []string{""}}}, nil, `allowlist[0].source_pod: "" is not a pod`},
		{"pod without ns", []*ff{{SourcePod: []string{"/x"}}}, nil, `allowlist[0].source_pod: "/x" is not a pod`},
		{"bad iface", []*ff{{Interface: []string{"*"}}}, nil, ``},
		{"iface too long", []*ff{{Interface: []string{"abcdefghijklmnopq"}}}, nil, `allowlist[0].interface: "abcdefghijklmnopq" is not an interface name`},
		{"empty service", []*ff{{DestinationService: []string{""}}}, nil, `allowlist[0].destination_service: "" is not a service: want "namespace/name", "namespace/" or a service-name prefix`},
		{"service without ns", nil, []*ff{{SourceService: []string{"/web"}}}, `denylist[0].source_service: "/web" is not a service`},
		{"service two slashes", []*ff{{SourceService: []string{"shop/web/x"}}}, nil, `allowlist[0].source_service: "shop/web/x" is not a service`},
		{"service blank", []*ff{{DestinationService: []string{" shop/web"}}}, nil, `allowlist[0].destination_service: " shop/web" is not a service`},
		{"bad namespace", []*ff{{SourceNamespace: []string{"a/b"}}}, nil, `allowlist[0].source_namespace: "a/b" is not a namespace name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.allow, tt.deny)
			if tt.want == "" {
				// "*" alone is a valid "every interface" prefix pattern.
				if err != nil {
					t.Fatalf("Build: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Build succeeded, want error %q", tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error = %q, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	m, err := Build([]*ff{{
		SourcePod: []string{"shop/"}, DestinationIp: []string{"10.244.0.0/16"},
		DestinationPort: []uint32{5432}, Protocol: []string{"tcp"}, Interface: []string{"ftv-*"},
		Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED},
	}}, []*ff{{SourceNamespace: []string{"kube-system"}}, {SourceService: []string{"kube-system/"}, DestinationService: []string{"web", "shop/api"}}})
	if err != nil {
		t.Fatal(err)
	}
	f := tcpFlow()
	f.DestinationService = &flowtracev1.Service{Namespace: "shop", Name: "web"}
	if allocs := testing.AllocsPerRun(100, func() {
		if !m.Match(f) {
			t.Fatal("no match")
		}
	}); allocs != 0 {
		t.Errorf("Match allocates %.1f times per call", allocs)
	}
	// The service predicates must run: a flow the deny filter matches.
	f.SourceService = &flowtracev1.Service{Namespace: "kube-system", Name: "dns"}
	if allocs := testing.AllocsPerRun(100, func() {
		if m.Match(f) {
			t.Fatal("denied flow matched")
		}
	}); allocs != 0 {
		t.Errorf("Match with services allocates %.1f times per call", allocs)
	}
}

func FuzzBuild(f *testing.F) {
	f.Add("10.0.0.0/8", "shop/db", "tcp", "eth*", uint32(80), int32(2))
	f.Add("fd00::1", "db", "ICMPv6", "lo", uint32(0), int32(0))
	f.Add("", "/", "", "*", uint32(65536), int32(-1))
	f.Fuzz(func(t *testing.T, ip, pod, proto, iface string, port uint32, verdict int32) {
		flt := &ff{
			SourceIp: []string{ip}, DestinationPod: []string{pod}, Protocol: []string{proto},
			SourceService: []string{pod}, DestinationService: []string{pod},
			Interface: []string{iface}, DestinationPort: []uint32{port},
			SourceLabel: []string{pod}, DestinationWorkload: []string{pod}, NodeName: []string{iface},
			Uuid:    []string{proto},
			Verdict: []flowtracev1.Verdict{flowtracev1.Verdict(verdict)},
		}
		m, err := Build([]*ff{flt}, []*ff{flt})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "allowlist[0].") {
				t.Fatalf("error without location: %v", err)
			}
			return
		}
		// A flow can never pass when the same filter is in both lists.
		for _, fl := range []*flowtracev1.Flow{tcpFlow(), udp6Flow(), icmpFlow(), svcFlow(), svcReplyFlow(), richFlow(), {}} {
			if m.Match(fl) {
				t.Fatalf("flow passed allow and deny of the same filter %v", flt)
			}
		}
	})
}
