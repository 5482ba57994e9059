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
		{
			ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, NumEventsLost: 42, Cpu: &cpu,
			}},
			NodeName: "node-1", Time: timestamppb.New(t0.Add(5 * time.Second)),
		},
		{
			ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{
				Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE, NumEventsLost: 7,
			}},
			NodeName: "node-1", Time: timestamppb.New(t0.Add(6 * time.Second)),
		},
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
	if _, err := New("yaml", &bytes.Buffer{}, Options{}); err == nil || !strings.Contains(err.Error(), "compact, json, table") {
		t.Fatalf("err = %v", err)
	}
}
