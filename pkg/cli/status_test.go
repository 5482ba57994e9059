package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestPrintStatus(t *testing.T) {
	var out bytes.Buffer
	err := printStatus(&out, &flowtracev1.ServerStatusResponse{
		NumFlows: 12, MaxFlows: 65536, SeenFlows: 99, MaxFlowAge: durationpb.New(time.Hour),
		Version: "v0.1.0", Uptime: durationpb.New(90*time.Minute + 400*time.Millisecond), NodeName: "node-1",
		Features: &flowtracev1.DatapathFeatures{TcAttach: "tcx", DropHook: "tp_btf", DropReasons: 132,
			ConntrackNfct: true, MtuCheck: true, FlowCache: true, DropDirect: true,
			FirstReportDelay: durationpb.New(20 * time.Millisecond)},
		LostEvents: []*flowtracev1.LostEventsCount{
			{Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, Count: 3},
		},
		Interfaces: []*flowtracev1.AttachedInterface{
			{Name: "ftv-frontend", Index: 7, Mode: "tcx", Kind: "veth", PeerNetns: "shop/frontend-6c9f7d"},
		},
		IdentitySources:  []*flowtracev1.IdentitySourceStatus{{Name: "kubernetes", Synced: true, Detail: "3 pods"}},
		DatapathCounters: map[string]uint64{"parse_errors": 2, "drops_out_of_scope": 5},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"Node:", "node-1", "v0.1.0 (uptime 1h30m0s)", "12/65536 held, 99 seen, max age 1h0m0s",
		"tc tcx, drops tp_btf, 132 kernel drop reasons", "Features:", "conntrack_nfct on, conntrack_lookup off, mtu_check on, flow_cache on, drop_memo off, drop_direct on", "kernel ring buffer  3",
		"ftv-frontend  7      tcx   veth  shop/frontend-6c9f7d", "kubernetes  synced  3 pods",
		"drops_out_of_scope  5\n  parse_errors        2",
		"New flows:", "first reported 20ms after their first packet, or by their close if sooner",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("status lacks %q:\n%s", want, s)
		}
	}
}

func TestPrintStatusFeaturesOff(t *testing.T) {
	// An agent that reports no features (an older one) shows everything off.
	var out bytes.Buffer
	if err := printStatus(&out, &flowtracev1.ServerStatusResponse{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"conntrack_nfct off, conntrack_lookup off, mtu_check off, flow_cache off", "reported at their first packet"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}
