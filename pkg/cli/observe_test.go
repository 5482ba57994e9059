package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var now = time.Date(2025, 11, 23, 16, 0, 0, 0, time.UTC)

// parseObserve runs the observe flags through cobra and returns the request.
func parseObserve(t *testing.T, args ...string) (*flowtracev1.GetFlowsRequest, error) {
	t.Helper()
	o := &observeOpts{}
	cmd := &cobra.Command{Use: "observe"}
	o.bindFlags(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	o.noteSet(cmd)
	return o.request(now)
}

func compactText(req *flowtracev1.GetFlowsRequest) string {
	b, _ := prototext.MarshalOptions{}.Marshal(req)
	return strings.Join(strings.Fields(string(b)), " ")
}

func TestObserveFlagsToRequest(t *testing.T) {
	since5m := timestamppb.New(now.Add(-5 * time.Minute))
	tests := []struct {
		name string
		args []string
		want *flowtracev1.GetFlowsRequest
	}{
		{"default last 20", nil, &flowtracev1.GetFlowsRequest{Number: 20}},
		{"follow only live", []string{"-f"}, &flowtracev1.GetFlowsRequest{Follow: true}},
		{"follow with last", []string{"-f", "--last", "5"}, &flowtracev1.GetFlowsRequest{Follow: true, Number: 5}},
		{"last 0 is all", []string{"--last", "0"}, &flowtracev1.GetFlowsRequest{}},
		{"first", []string{"--first", "3"}, &flowtracev1.GetFlowsRequest{Number: 3, First: true}},
		{"since duration, all in range", []string{"--since", "5m"}, &flowtracev1.GetFlowsRequest{Since: since5m}},
		{"until rfc3339", []string{"--until", "2025-11-23T15:00:00Z", "--last", "1"}, &flowtracev1.GetFlowsRequest{Number: 1, Until: timestamppb.New(time.Date(2025, 11, 23, 15, 0, 0, 0, time.UTC))}},
		// What --time-format unix prints reads back; times without a zone are
		// local (now's zone in these tests), a date alone is its midnight.
		{"since unix seconds", []string{"--since", "1763913600.250000000"}, &flowtracev1.GetFlowsRequest{Since: timestamppb.New(time.Unix(1763913600, 250000000))}},
		{"since unix, no fraction", []string{"--since", "1763913600"}, &flowtracev1.GetFlowsRequest{Since: timestamppb.New(time.Unix(1763913600, 0))}},
		{"since local time", []string{"--since", "2025-11-23 15:04"}, &flowtracev1.GetFlowsRequest{Since: timestamppb.New(time.Date(2025, 11, 23, 15, 4, 0, 0, time.UTC))}},
		{"since a date", []string{"--since", "2025-11-23"}, &flowtracev1.GetFlowsRequest{Since: timestamppb.New(time.Date(2025, 11, 23, 0, 0, 0, 0, time.UTC))}},
		{"enum spellings", []string{"--verdict", "DROPPED,forwarded", "--verdict", "VERDICT_TRANSLATED", "--drop-reason", "netfilter-drop"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			Verdict:    []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED, flowtracev1.Verdict_VERDICT_FORWARDED, flowtracev1.Verdict_VERDICT_TRANSLATED},
			DropReason: []flowtracev1.DropReason{flowtracev1.DropReason_DROP_REASON_NETFILTER_DROP},
		}}}},
		{"drop causes, and none", []string{"--verdict", "dropped", "--drop-cause", "echo-reply-unclaimed,NONE", "--not", "--drop-cause", "DROP_CAUSE_MULTICAST_NOT_JOINED"}, &flowtracev1.GetFlowsRequest{Number: 20,
			Allowlist: []*flowtracev1.FlowFilter{{
				Verdict:   []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED},
				DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_ECHO_REPLY_UNCLAIMED, flowtracev1.DropCause_DROP_CAUSE_UNSPECIFIED},
			}},
			Denylist: []*flowtracev1.FlowFilter{{DropCause: []flowtracev1.DropCause{flowtracev1.DropCause_DROP_CAUSE_MULTICAST_NOT_JOINED}}},
		}},
		{"directional only: one filter", []string{"--from-pod", "shop/frontend", "--to-port", "5432", "--protocol", "TCP", "--to-ip", "10.0.0.0/8"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			SourcePod: []string{"shop/frontend"}, DestinationPort: []uint32{5432}, Protocol: []string{"tcp"}, DestinationIp: []string{"10.0.0.0/8"},
		}}}},
		{"either end: two filters", []string{"--pod", "shop/db", "--to-namespace", "shop", "--verdict", "dropped", "--interface", "ftv-*"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{
			{SourcePod: []string{"shop/db"}, DestinationNamespace: []string{"shop"}, Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}, Interface: []string{"ftv-*"}},
			{DestinationPod: []string{"shop/db"}, DestinationNamespace: []string{"shop"}, Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}, Interface: []string{"ftv-*"}},
		}}},
		{"new verdicts", []string{"--verdict", "translated,mtu-exceeded", "--verdict", "MTU_EXCEEDED"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_TRANSLATED, flowtracev1.Verdict_VERDICT_MTU_EXCEEDED, flowtracev1.Verdict_VERDICT_MTU_EXCEEDED},
		}}}},
		{"to-service: one filter", []string{"--to-service", "shop/web", "--to-service", "api", "--verdict", "translated"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			DestinationService: []string{"shop/web", "api"}, Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_TRANSLATED},
		}}}},
		{"from- and to-service", []string{"--from-service", "shop/", "--to-service", "kube-system/dns"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			SourceService: []string{"shop/"}, DestinationService: []string{"kube-system/dns"},
		}}}},
		{"service either end: two filters", []string{"--service", "shop/web", "--from-pod", "shop/frontend", "--protocol", "tcp"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{
			{SourceService: []string{"shop/web"}, SourcePod: []string{"shop/frontend"}, Protocol: []string{"tcp"}},
			{DestinationService: []string{"shop/web"}, SourcePod: []string{"shop/frontend"}, Protocol: []string{"tcp"}},
		}}},
		{"service with pod: same side", []string{"--service", "web", "--pod", "shop/"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{
			{SourcePod: []string{"shop/"}, SourceService: []string{"web"}},
			{DestinationPod: []string{"shop/"}, DestinationService: []string{"web"}},
		}}},
		{"either-end flags share a side", []string{"--ip", "10.0.0.1", "--port", "53", "--namespace", "kube-system"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{
			{SourceIp: []string{"10.0.0.1"}, SourcePort: []uint32{53}, SourceNamespace: []string{"kube-system"}},
			{DestinationIp: []string{"10.0.0.1"}, DestinationPort: []uint32{53}, DestinationNamespace: []string{"kube-system"}},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseObserve(t, tt.args...)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			if g, w := compactText(got), compactText(tt.want); g != w {
				t.Errorf("request\n got  %s\n want %s", g, w)
			}
		})
	}
}

func TestObserveUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--verdict", "blocked"}, `invalid --verdict "blocked": valid values are FORWARDED, DROPPED, TRANSLATED, MTU_EXCEEDED`},
		{[]string{"--verdict", "unspecified"}, `invalid --verdict "unspecified"`},
		{[]string{"--drop-reason", "nope"}, `invalid --drop-reason "nope": valid values are UNKNOWN, NOT_SPECIFIED, NO_SOCKET,`},
		{[]string{"--drop-cause", "unspecified"}, `invalid --drop-cause "unspecified": valid values are SERVICE_NO_ENDPOINTS, ECHO_REPLY_UNCLAIMED, MULTICAST_NOT_JOINED, NONE`},
		{[]string{"--protocol", "gre"}, `invalid --protocol "gre": valid values are tcp, udp, sctp, icmp, icmpv4, icmpv6`},
		{[]string{"-o", "yaml"}, `invalid --output "yaml": valid values are compact, dict, json, table`},
		{[]string{"--since", "yesterday"}, `invalid --since "yesterday": want RFC3339`},
		{[]string{"--since", "17639.x"}, `invalid --since "17639.x"`},
		{[]string{"--until", "2025-13-01"}, `invalid --until "2025-13-01"`},
		{[]string{"--since", "-5m"}, `must not be negative`},
		{[]string{"--since", "1m", "--until", "5m"}, `--since (2025-11-23T15:59:00Z) is after --until (2025-11-23T15:55:00Z)`},
		{[]string{"--first", "2", "--last", "3"}, `--first and --last cannot be combined`},
		{[]string{"--first", "0"}, `--first 0 shows nothing`},
		{[]string{"--first", "2", "-f"}, `--first and --follow cannot be combined`},
		{[]string{"--ip", "10.0.0.300"}, `invalid --ip "10.0.0.300": want an IP address or CIDR`},
		{[]string{"--to-port", "http"}, `invalid --to-port "http": want a port number from 1 to 65535`},
		{[]string{"--port", "70000"}, `invalid --port "70000"`},
		{[]string{"--pod", "a/b", "--from-pod", "c/d"}, `--pod cannot be combined with --from-pod or --to-pod`},
		{[]string{"--from-pod", "/x"}, `invalid filter: allowlist[0].source_pod: "/x" is not a pod`},
		{[]string{"--service", "shop/web", "--to-service", "shop/api"}, `--service cannot be combined with --from-service or --to-service`},
		{[]string{"--from-service", "shop/web", "--service", "x"}, `--service cannot be combined with --from-service or --to-service`},
		{[]string{"--to-service", "/web"}, `invalid filter: allowlist[0].destination_service: "/web" is not a service`},
		{[]string{"--service", "shop/web/x"}, `invalid filter: allowlist[0].source_service: "shop/web/x" is not a service`},
		{[]string{"--from-service", " web"}, `invalid filter: allowlist[0].source_service: " web" is not a service`},
		{[]string{"--verdict", "mtu"}, `invalid --verdict "mtu": valid values are FORWARDED, DROPPED, TRANSLATED, MTU_EXCEEDED`},
		{[]string{"--interface", "a/b"}, `invalid filter: allowlist[0].interface: "a/b" is not an interface name`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseObserve(t, tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			if !IsUsageError(err) {
				t.Errorf("%v is not a usage error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestObserveAndStatusAgainstServer runs the real commands against an
// in-process server on a unix socket.
func TestObserveAndStatusAgainstServer(t *testing.T) {
	obs := observer.New(observer.Config{MaxFlows: 100, NodeName: "node-x"}, nil)
	for i := 0; i < 30; i++ {
		v := flowtracev1.Verdict_VERDICT_FORWARDED
		if i%3 == 0 {
			v = flowtracev1.Verdict_VERDICT_DROPPED
		}
		obs.Publish(&flowtracev1.Flow{
			Uuid: strconv.Itoa(i), Time: timestamppb.New(now.Add(time.Duration(i) * time.Second)), Verdict: v,
			Ip: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.0." + strconv.Itoa(i+2)},
		})
	}
	// One translated connection to a Service, for the --service flags.
	obs.Publish(&flowtracev1.Flow{
		Uuid: "svc", Time: timestamppb.New(now.Add(30 * time.Second)), Verdict: flowtracev1.Verdict_VERDICT_TRANSLATED,
		Ip:                 &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.96.0.10"},
		DestinationService: &flowtracev1.Service{Namespace: "shop", Name: "web"},
		Translation:        &flowtracev1.Translation{OriginalIp: "10.96.0.10", OriginalPort: 80, TranslatedIp: "10.244.0.20", TranslatedPort: 8080},
	})
	sock := filepath.Join(t.TempDir(), "ft.sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.New(obs, nil, nil).Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })

	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := NewRootCmd("test")
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"--server", sock}, args...))
		err := cmd.ExecuteContext(context.Background())
		return out.String(), err
	}

	out, err := run("observe")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(out, "\n"); lines != 20 {
		t.Errorf("default observe printed %d lines, want 20:\n%s", lines, out)
	}
	out, err = run("observe", "--verdict", "dropped", "--last", "2", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"uuid":"24"`) || !strings.Contains(lines[1], `"uuid":"27"`) {
		t.Errorf("json output:\n%s", out)
	}
	out, err = run("observe", "--to-ip", "10.0.0.5", "-o", "table")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "TIME") || strings.Count(out, "\n") != 2 || !strings.Contains(out, "10.0.0.5") {
		t.Errorf("table output:\n%s", out)
	}

	for _, args := range [][]string{{"--to-service", "shop/web"}, {"--service", "web"}, {"--verdict", "translated"}} {
		out, err = run(append([]string{"observe"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if want := "10.0.0.1 -> 10.96.0.10:80 ⇒ 10.244.0.20:8080 (shop/web) TRANSLATED\n"; !strings.HasSuffix(out, want) || strings.Count(out, "\n") != 1 {
			t.Errorf("observe %v:\n%s\nwant one line ending %q", args, out, want)
		}
	}
	for _, args := range [][]string{{"--from-service", "shop/web"}, {"--to-service", "default/"}} {
		if out, err = run(append([]string{"observe"}, args...)...); err != nil || out != "" {
			t.Errorf("observe %v: err %v, output:\n%s", args, err, out)
		}
	}

	// Ctrl-C on a follow stream ends cleanly.
	fctx, fcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer fcancel()
	var fout bytes.Buffer
	cmd := NewRootCmd("test")
	cmd.SetOut(&fout)
	cmd.SetArgs([]string{"--server", sock, "observe", "-f", "--last", "1"})
	if err := cmd.ExecuteContext(fctx); err != nil {
		t.Fatalf("follow ended with %v", err)
	}
	if strings.Count(fout.String(), "\n") != 1 {
		t.Errorf("follow output:\n%s", fout.String())
	}

	out, err = run("status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"node-x", "31/100 held, 31 seen (", "/s over the last minute)", "client too slow", "history evicted"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	// status -o json: one line a script can read back as the response.
	out, err = run("status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st flowtracev1.ServerStatusResponse
	if err := protojson.Unmarshal([]byte(out), &st); err != nil || strings.Count(out, "\n") != 1 ||
		st.GetNodeName() != "node-x" || st.GetNumFlows() != 31 || st.GetMaxFlows() != 100 || st.GetFlowsRate() <= 0 {
		t.Errorf("status -o json (%v):\n%s", err, out)
	}

	// A bad flag value exits as a usage error before dialing.
	if _, err := run("observe", "--verdict", "nope"); !IsUsageError(err) {
		t.Errorf("bad verdict: %v, want a usage error", err)
	}
	if _, err := run("status", "-o", "yaml"); !IsUsageError(err) || !strings.Contains(err.Error(), "text, json") {
		t.Errorf("status -o yaml: %v, want a usage error naming the formats", err)
	}
	// A missing agent says so.
	var out2 bytes.Buffer
	cmd = NewRootCmd("test")
	cmd.SetOut(&out2)
	cmd.SetArgs([]string{"--server", filepath.Join(t.TempDir(), "none.sock"), "status"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "is the agent running?") || IsUsageError(err) {
		t.Errorf("missing agent: %v", err)
	}
}
