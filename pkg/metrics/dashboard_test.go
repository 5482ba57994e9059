package metrics

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Every metric the Grafana dashboard queries must exist, and be documented.
func TestDashboardUsesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	m := New(Config{}, Sources{
		Status: func(context.Context) (*flowtracev1.ServerStatusResponse, error) {
			return &flowtracev1.ServerStatusResponse{
				LostEvents: []*flowtracev1.LostEventsCount{{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE}},
				Interfaces: []*flowtracev1.AttachedInterface{{Mode: "tcx", Kind: "veth"}},
			}, nil
		},
		Subscribers: func() int { return 0 },
		RingBuffer:  func() (uint64, uint64, bool) { return 0, 1, true },
	})
	m.ObserveFlow(drop("ns", flowtracev1.DropReason_DROP_REASON_NO_SOCKET, 1))
	out := scrapeText(t, m)
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`flowtrace_[a-z_]+`).FindAllString(string(b), -1)
	if len(names) == 0 {
		t.Fatal("dashboard queries no flowtrace metric")
	}
	for _, n := range names {
		if !strings.Contains(out, "\n"+n+"{") && !strings.Contains(out, "\n"+n+" ") {
			t.Errorf("dashboard uses %s, which is not exported", n)
		}
		if !strings.Contains(string(doc), n+" ") {
			t.Errorf("%s is not documented in doc.go", n)
		}
	}
}
