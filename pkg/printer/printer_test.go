package printer

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var t0 = time.Date(2025, 11, 23, 15, 31, 47, 123000000, time.UTC)

func flowResp(f *flowtracev1.Flow) *flowtracev1.GetFlowsResponse {
	return &flowtracev1.GetFlowsResponse{
		ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f},
		NodeName:      "node-1",
		Time:          f.GetTime(),
	}
}

func fixtures() []*flowtracev1.GetFlowsResponse {
	cpu := uint32(1)
	return []*flowtracev1.GetFlowsResponse{
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0), Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
			DropReason: flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, DropReasonKernel: "NETFILTER_DROP", DropReasonCode: 6,
			DropLocation: "nf_hook_slow+0x8d", EventCount: 1,
			Ip: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.0.30", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV4},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
				SourcePort: 43512, DestinationPort: 5432, Flags: &flowtracev1.TCPFlags{Syn: true},
			}}},
			Source:      &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
			Destination: &flowtracev1.Endpoint{Namespace: "shop", PodName: "db-0"},
			Interface:   &flowtracev1.Interface{Name: "ftv-frontend", Index: 7, Netns: "node"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(time.Second)), Verdict: flowtracev1.Verdict_VERDICT_FORWARDED,
			Report: flowtracev1.FlowReport_FLOW_REPORT_PERIODIC, Packets: 12, Bytes: 3400,
			Ip: &flowtracev1.IP{Source: "fd00::10", Destination: "fd00::30", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV6},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
				SourcePort: 40000, DestinationPort: 80, Flags: &flowtracev1.TCPFlags{Ack: true, Psh: true},
			}}},
			Destination: &flowtracev1.Endpoint{Namespace: "shop", PodName: "web-1"},
			Interface:   &flowtracev1.Interface{Name: "eth0", Netns: "shop/web-1"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(2 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
			DropReason: flowtracev1.DropReason_DROP_REASON_UNKNOWN, DropReasonKernel: "SOME_NEW_REASON", EventCount: 3,
			LastTime:       timestamppb.New(t0.Add(3500 * time.Millisecond)),
			DropLocation:   "ip_rcv_core+0x12",
			Ip:             &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
			L4:             &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: 5353, DestinationPort: 53}}},
			InputInterface: &flowtracev1.Interface{Name: "veth1"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(3 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
			Ip:        &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
			L4:        &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 3, Code: 4}}},
			Interface: &flowtracev1.Interface{Name: "ftv-node"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(4 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_FORWARDED,
			Report: flowtracev1.FlowReport_FLOW_REPORT_NEW, Packets: 1, Bytes: 84,
			Ip: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 8}}},
		}),
		// Issue 3: Services, translations, MTU, VXLAN (fixtures 5..13).
		flowResp(translatedFlow(6, nil)),
		flowResp(translatedFlow(7, &flowtracev1.Translation{
			OriginalIp: "10.96.0.10", OriginalPort: 80, TranslatedIp: "10.244.0.20", TranslatedPort: 8080,
			TranslatedSourceIp: "10.244.0.1", TranslatedSourcePort: 40000,
		})),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(8 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_FORWARDED,
			Report: flowtracev1.FlowReport_FLOW_REPORT_TCP_FLAGS, Packets: 1, Bytes: 60,
			Ip: &flowtracev1.IP{Source: "10.244.0.20", Destination: "10.244.0.10"},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
				SourcePort: 8080, DestinationPort: 43512, Flags: &flowtracev1.TCPFlags{Syn: true, Ack: true},
			}}},
			Source:        &flowtracev1.Endpoint{Namespace: "shop", PodName: "backend-5d8b9c"},
			Destination:   &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
			SourceService: &flowtracev1.Service{Namespace: "shop", Name: "web", PortName: "http", Port: 80},
			Interface:     &flowtracev1.Interface{Name: "ftv-backend"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(9 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
			DropReason: flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP, DropReasonKernel: "NETFILTER_DROP",
			DropCause: flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS, EventCount: 1,
			Ip: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.96.0.99"},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
				SourcePort: 43600, DestinationPort: 80, Flags: &flowtracev1.TCPFlags{Syn: true},
			}}},
			Source:             &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
			DestinationService: &flowtracev1.Service{Namespace: "shop", Name: "ghost", Port: 80},
			Interface:          &flowtracev1.Interface{Name: "ftv-frontend"},
		}),
		flowResp(mtuExceededFlow(10, true)),
		flowResp(mtuExceededFlow(11, false)),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(12 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
			Ip: &flowtracev1.IP{Source: "10.244.0.1", Destination: "10.244.0.10"},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 3, Code: 4}}},
			Mtu: &flowtracev1.MTUInfo{
				Event: flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED, Mtu: 1350,
				QuotedIp: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.1.10"},
				QuotedL4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 8}}},
			},
			Interface: &flowtracev1.Interface{Name: "ftv-frontend"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(13 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
			Ip: &flowtracev1.IP{Source: "fd00::1", Destination: "fd00::10", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV6},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv6{Icmpv6: &flowtracev1.ICMPv6{Type: 2}}},
			Mtu: &flowtracev1.MTUInfo{
				Event: flowtracev1.MTUEvent_MTU_EVENT_ICMPV6_PACKET_TOO_BIG, Mtu: 1280,
				QuotedIp: &flowtracev1.IP{Source: "fd00::10", Destination: "fd00:1::20"},
				QuotedL4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{SourcePort: 40100, DestinationPort: 443}}},
			},
			Interface: &flowtracev1.Interface{Name: "eth0", Netns: "shop/frontend-6c9f7d"},
		}),
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(14 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_FORWARDED,
			Report: flowtracev1.FlowReport_FLOW_REPORT_NEW, Packets: 1, Bytes: 84,
			Ip:            &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.1.10"},
			L4:            &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Icmpv4{Icmpv4: &flowtracev1.ICMPv4{Type: 8}}},
			Encapsulation: &flowtracev1.Encapsulation{OuterSource: "192.168.50.1", OuterDestination: "192.168.50.2", Vni: 1, Port: 4789},
			Interface:     &flowtracev1.Interface{Name: "eth1"},
		}),
		{
			ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, NumEventsLost: 42, Cpu: &cpu,
			}},
			NodeName: "node-1", Time: timestamppb.New(t0.Add(15 * time.Second)),
		},
		{
			ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE, NumEventsLost: 7,
			}},
			NodeName: "node-1", Time: timestamppb.New(t0.Add(16 * time.Second)),
		},
		{
			ResponseTypes: &flowtracev1.GetFlowsResponse_HistoryStart{HistoryStart: &flowtracev1.HistoryStart{
				OldestFlowTime: timestamppb.New(t0), EvictedFlows: 5000,
			}},
			NodeName: "node-1", Time: timestamppb.New(t0.Add(17 * time.Second)),
		},
		flowResp(&flowtracev1.Flow{
			Time: timestamppb.New(t0.Add(18 * time.Second)), Uuid: "0b6e3c1e", NodeName: "node-1",
			Verdict: flowtracev1.Verdict_VERDICT_FORWARDED, IsReply: true, Report: flowtracev1.FlowReport_FLOW_REPORT_IDLE_FLUSH,
			Packets: 3, Bytes: 180, TrafficDirection: flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS,
			Ip: &flowtracev1.IP{Source: "10.244.0.30", Destination: "10.244.0.10"},
			L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
				SourcePort: 5432, DestinationPort: 43512, Flags: &flowtracev1.TCPFlags{Fin: true, Ack: true},
			}}},
			Source:      &flowtracev1.Endpoint{Namespace: "shop", PodName: "db-0", Labels: []string{"app=db"}},
			Destination: &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
			Interface:   &flowtracev1.Interface{Name: "eth0", Netns: "shop/db-0"},
			Summary:     "TCP FIN|ACK reply",
		}),
	}
}

// translatedFlow is the client's SYN to the shop/web VIP, seen on its veth
// after conntrack chose a backend; tr nil is the plain DNAT of the example.
func translatedFlow(sec int, tr *flowtracev1.Translation) *flowtracev1.Flow {
	if tr == nil {
		tr = &flowtracev1.Translation{OriginalIp: "10.96.0.10", OriginalPort: 80, TranslatedIp: "10.244.0.20", TranslatedPort: 8080}
	}
	return &flowtracev1.Flow{
		Time: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_TRANSLATED,
		Ip: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.96.0.10"},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
			SourcePort: 43512, DestinationPort: 80, Flags: &flowtracev1.TCPFlags{Syn: true},
		}}},
		Source:             &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
		Destination:        &flowtracev1.Endpoint{Namespace: "shop", PodName: "backend-5d8b9c"},
		DestinationService: &flowtracev1.Service{Namespace: "shop", Name: "web", PortName: "http", Port: 80},
		Translation:        tr,
		Interface:          &flowtracev1.Interface{Name: "ftv-frontend"},
	}
}

// mtuExceededFlow is a 1428-byte DF packet from the frontend that does not
// fit the 1350-byte VXLAN device.
func mtuExceededFlow(sec int, icmpSent bool) *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Time: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
		Ip: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.1.10"},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{
			SourcePort: 43700, DestinationPort: 8080, Flags: &flowtracev1.TCPFlags{Ack: true, Psh: true},
		}}},
		Source: &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d"},
		Mtu: &flowtracev1.MTUInfo{
			Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED, Mtu: 1350, PacketLength: 1428,
			EgressInterface: &flowtracev1.Interface{Name: "ftvx0"}, IcmpSent: icmpSent,
		},
		Interface: &flowtracev1.Interface{Name: "ftv-frontend"},
	}
}

func render(t *testing.T, format string) []byte {
	t.Helper()
	var buf bytes.Buffer
	p, err := New(format, &buf, Options{Location: time.UTC})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range fixtures() {
		if err := p.Print(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGolden(t *testing.T) {
	for _, format := range Formats() {
		t.Run(format, func(t *testing.T) {
			got := render(t, format)
			path := filepath.Join("testdata", format+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (go test -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}

func TestCompactExample(t *testing.T) {
	// The line from the design card, verbatim.
	got := strings.SplitN(string(render(t, Compact)), "\n", 2)[0]
	want := "Nov 23 15:31:47.123: shop/frontend-6c9f7d (10.244.0.10:43512) -> shop/db-0 (10.244.0.30:5432) tcp SYN DROPPED (NETFILTER_DROP) at nf_hook_slow+0x8d on ftv-frontend"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestCompactIssue3Lines(t *testing.T) {
	lines := strings.Split(string(render(t, Compact)), "\n")
	want := map[int]string{
		5:  "Nov 23 15:31:53.123: shop/frontend-6c9f7d (10.244.0.10:43512) -> 10.96.0.10:80 ⇒ 10.244.0.20:8080 (shop/web) tcp SYN TRANSLATED on ftv-frontend",
		6:  "Nov 23 15:31:54.123: shop/frontend-6c9f7d (10.244.0.10:43512) -> 10.96.0.10:80 ⇒ 10.244.0.20:8080 (shop/web) SNAT 10.244.0.1:40000 tcp SYN TRANSLATED on ftv-frontend",
		7:  "Nov 23 15:31:55.123: shop/backend-5d8b9c (10.244.0.20:8080) [svc shop/web] -> shop/frontend-6c9f7d (10.244.0.10:43512) tcp SYN|ACK FORWARDED [tcp-flags] 1 pkts 60 bytes on ftv-backend",
		8:  "Nov 23 15:31:56.123: shop/frontend-6c9f7d (10.244.0.10:43600) -> 10.96.0.99:80 [svc shop/ghost] tcp SYN DROPPED (NETFILTER_DROP: Service shop/ghost has no endpoints) on ftv-frontend",
		9:  "Nov 23 15:31:57.123: shop/frontend-6c9f7d (10.244.0.10:43700) -> 10.244.1.10:8080 tcp ACK|PSH MTU_EXCEEDED 1428 > 1350 on ftvx0 (in ftv-frontend) icmp-sent",
		10: "Nov 23 15:31:58.123: shop/frontend-6c9f7d (10.244.0.10:43700) -> 10.244.1.10:8080 tcp ACK|PSH MTU_EXCEEDED 1428 > 1350 on ftvx0 (in ftv-frontend) no icmp",
		11: "Nov 23 15:31:59.123: 10.244.0.1 -> 10.244.0.10 icmp frag-needed mtu 1350 about 10.244.0.10 -> 10.244.1.10 icmp MTU_EXCEEDED on ftv-frontend",
		12: "Nov 23 15:32:00.123: fd00::1 -> fd00::10 icmpv6 packet-too-big mtu 1280 about [fd00::10]:40100 -> [fd00:1::20]:443 tcp MTU_EXCEEDED on eth0@shop/frontend-6c9f7d",
		13: "Nov 23 15:32:01.123: 10.244.0.10 -> 10.244.1.10 icmpv4 echo-request FORWARDED [new] 1 pkts 84 bytes on eth1 vxlan vni 1 192.168.50.1 -> 192.168.50.2",
	}
	for i, w := range want {
		if i >= len(lines) {
			t.Fatalf("only %d lines", len(lines))
		}
		if lines[i] != w {
			t.Errorf("line %d\ngot  %s\nwant %s", i, lines[i], w)
		}
	}
}

func TestTextHelpers(t *testing.T) {
	tests := []struct{ name, got, want string }{
		{"service without namespace", ServiceText(&flowtracev1.Service{Name: "web"}), "web"},
		{"nil service", ServiceText(nil), ""},
		{"service without name", ServiceText(&flowtracev1.Service{Namespace: "shop"}), ""},
		{"translation needs TRANSLATED", TranslationText(&flowtracev1.Flow{
			Verdict: flowtracev1.Verdict_VERDICT_FORWARDED, Translation: &flowtracev1.Translation{TranslatedIp: "10.0.0.1"},
		}), ""},
		{"translation v6 without service, original from ip", TranslationText(&flowtracev1.Flow{
			Verdict: flowtracev1.Verdict_VERDICT_TRANSLATED, Ip: &flowtracev1.IP{Destination: "fd00:96::a"},
			Translation: &flowtracev1.Translation{OriginalPort: 53, TranslatedIp: "fd00::20", TranslatedPort: 5353},
		}), "[fd00:96::a]:53 ⇒ [fd00::20]:5353"},
		{"no-endpoints drop without service", ReasonText(&flowtracev1.Flow{
			DropCause: flowtracev1.DropCause_DROP_CAUSE_SERVICE_NO_ENDPOINTS,
			Ip:        &flowtracev1.IP{Destination: "10.96.0.99"},
			L4:        &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{DestinationPort: 53}}},
		}), "Service 10.96.0.99:53 has no endpoints"},
		{"mtu exceeded without egress", MTUExceededText(&flowtracev1.Flow{
			Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED, Interface: &flowtracev1.Interface{Name: "eth0"},
			Mtu: &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED, Mtu: 1500, PacketLength: 1600},
		}), "1600 > 1500 (in eth0) no icmp"},
		{"mtu exceeded seen on egress", MTUExceededText(&flowtracev1.Flow{
			Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED, Interface: &flowtracev1.Interface{Name: "ftvx0"},
			Mtu: &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED, Mtu: 1350, PacketLength: 1400,
				EgressInterface: &flowtracev1.Interface{Name: "ftvx0"}, IcmpSent: true},
		}), "1400 > 1350 on ftvx0 icmp-sent"},
		{"icmp event is not exceeded", MTUExceededText(&flowtracev1.Flow{
			Verdict: flowtracev1.Verdict_VERDICT_MTU_EXCEEDED,
			Mtu:     &flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED},
		}), ""},
		{"frag-needed without quote or mtu", MTUICMPText(&flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED}), "icmp frag-needed"},
		{"frag-needed about udp", MTUICMPText(&flowtracev1.MTUInfo{
			Event: flowtracev1.MTUEvent_MTU_EVENT_ICMP_FRAG_NEEDED, Mtu: 1400,
			QuotedIp: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
			QuotedL4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{SourcePort: 5000, DestinationPort: 53}}},
		}), "icmp frag-needed mtu 1400 about 10.0.0.1:5000 -> 10.0.1.1:53 udp"},
		{"exceeded is not icmp", MTUICMPText(&flowtracev1.MTUInfo{Event: flowtracev1.MTUEvent_MTU_EVENT_EXCEEDED}), ""},
		{"vxlan other port", EncapsulationText(&flowtracev1.Encapsulation{OuterSource: "192.168.50.1", OuterDestination: "192.168.50.2", Vni: 42, Port: 8472}),
			"vxlan vni 42 192.168.50.1 -> 192.168.50.2 port 8472"},
		{"empty encapsulation", EncapsulationText(&flowtracev1.Encapsulation{}), ""},
		{"counts", CountsText(&flowtracev1.Flow{Packets: 12, Bytes: 3400}), "12 pkts 3400 bytes"},
		{"closing report with the other direction", CountsText(&flowtracev1.Flow{Packets: 3, Bytes: 162,
			ReversePackets: 1, ReverseBytes: 54, ReverseTcpFlags: &flowtracev1.TCPFlags{Fin: true, Ack: true}}),
			"3 pkts 162 bytes, reverse ACK|FIN 1 pkts 54 bytes"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(string(render(t, JSON))), "\n")
	fx := fixtures()
	if len(lines) != len(fx) {
		t.Fatalf("%d lines for %d responses", len(lines), len(fx))
	}
	for i, line := range lines {
		var r flowtracev1.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if describe := r.String(); describe != fx[i].String() {
			t.Errorf("line %d round-trips to %s, want %s", i, describe, fx[i])
		}
	}
}

func TestUnknownFormat(t *testing.T) {
	if _, err := New("yaml", &bytes.Buffer{}, Options{}); err == nil || !strings.Contains(err.Error(), "compact, dict, json, table") {
		t.Fatalf("err = %v", err)
	}
}

func TestHistoryStartAndTimeFormats(t *testing.T) {
	hs := &flowtracev1.GetFlowsResponse{
		ResponseTypes: &flowtracev1.GetFlowsResponse_HistoryStart{HistoryStart: &flowtracev1.HistoryStart{
			OldestFlowTime: timestamppb.New(t0), EvictedFlows: 1234, RequestedSince: timestamppb.New(t0.Add(-30 * time.Minute)),
		}},
		Time: timestamppb.New(t0.Add(time.Hour)),
	}
	for _, tt := range []struct{ tf, want string }{
		{"", "Nov 23 16:31:47.123: HISTORY STARTS AT Nov 23 15:31:47.123: 1234 older flows were evicted (you asked from Nov 23 15:01:47.123)\n"},
		{"rfc3339", "2025-11-23T16:31:47Z: HISTORY STARTS AT 2025-11-23T15:31:47Z: 1234 older flows were evicted (you asked from 2025-11-23T15:01:47Z)\n"},
		{"RFC3339Nano", "2025-11-23T16:31:47.123Z: HISTORY STARTS AT 2025-11-23T15:31:47.123Z: 1234 older flows were evicted (you asked from 2025-11-23T15:01:47.123Z)\n"},
		{"unix", "1763915507.123000000: HISTORY STARTS AT 1763911907.123000000: 1234 older flows were evicted (you asked from 1763910107.123000000)\n"},
	} {
		var buf bytes.Buffer
		p, err := New(Compact, &buf, Options{Location: time.UTC, TimeFormat: tt.tf})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Print(hs); err != nil {
			t.Fatal(err)
		}
		if buf.String() != tt.want {
			t.Errorf("time format %q:\ngot  %q\nwant %q", tt.tf, buf.String(), tt.want)
		}
	}
	if _, err := New(Compact, &bytes.Buffer{}, Options{TimeFormat: "kitchen"}); err == nil || !strings.Contains(err.Error(), "StampMilli, RFC3339") {
		t.Errorf("bad time format: %v", err)
	}
}

func TestColor(t *testing.T) {
	var buf bytes.Buffer
	p, err := New(Compact, &buf, Options{Location: time.UTC, Color: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Print(fixtures()[0]); err != nil {
		t.Fatal(err)
	}
	want := "DROPPED" + "\x1b[0m (" + "\x1b[33mNETFILTER_DROP\x1b[0m)"
	if !strings.Contains(buf.String(), "\x1b[31m"+want) {
		t.Errorf("coloured line %q lacks %q", buf.String(), want)
	}
	// json is never coloured, even when asked.
	buf.Reset()
	p, _ = New(JSON, &buf, Options{Color: true})
	_ = p.Print(fixtures()[0])
	if strings.Contains(buf.String(), "\x1b[") {
		t.Errorf("json coloured: %q", buf.String())
	}
	// Without Color, no escape codes at all.
	if strings.Contains(string(render(t, Compact))+string(render(t, Dict))+string(render(t, Table)), "\x1b[") {
		t.Error("escape codes without Color")
	}
}

// A folded record says how many drops it stands for and over how long,
// rounded to what a reader can use; a single packet says nothing.
func TestFoldText(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	fold := func(n uint32, last time.Duration) *flowtracev1.Flow {
		f := &flowtracev1.Flow{Time: timestamppb.New(t0), EventCount: n}
		if last >= 0 {
			f.LastTime = timestamppb.New(t0.Add(last))
		}
		return f
	}
	for _, c := range []struct {
		f    *flowtracev1.Flow
		want string
	}{
		{fold(0, -1), ""},
		{fold(1, -1), ""},
		{fold(1, time.Second), ""},
		{fold(3, -1), "x3"},
		{fold(3, 0), "x3"},
		{fold(200000, 1234567), "x200000 over 1.23ms"},
		{fold(2, 812), "x2 over 1µs"},
		{fold(40, 421512345), "x40 over 422ms"},
		{fold(2000000, 9987654321), "x2000000 over 10s"},
		{fold(5, 61*time.Second+449*time.Millisecond), "x5 over 1m1.4s"},
		{&flowtracev1.Flow{EventCount: 4, LastTime: timestamppb.New(t0)}, "x4"},
	} {
		if got := FoldText(c.f); got != c.want {
			t.Errorf("FoldText(count %d, time %v, last %v) = %q, want %q", c.f.GetEventCount(),
				c.f.GetTime(), c.f.GetLastTime(), got, c.want)
		}
	}
}
