package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server"
	"github.com/flowtrace/flowtrace/pkg/testutil"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestObserveNewFilterFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want *flowtracev1.GetFlowsRequest
	}{
		{"label either end, selector with commas", []string{"--label", "app in (web,api),!canary"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{
			{SourceLabel: []string{"app in (web,api),!canary"}},
			{DestinationLabel: []string{"app in (web,api),!canary"}},
		}}},
		{"directional labels and workloads", []string{"--from-label", "app=web", "--to-workload", "StatefulSet/db", "--node", "kind-*", "--uuid", "a,b"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			SourceLabel: []string{"app=web"}, DestinationWorkload: []string{"StatefulSet/db"}, NodeName: []string{"kind-*"}, Uuid: []string{"a", "b"},
		}}}},
		{"enums, flags, reply", []string{"--tcp-flags", "SYN,ACK", "--tcp-flags", "rst", "--traffic-direction", "egress", "--observation-point", "tc-ingress", "--ip-version", "6", "--reply"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{
			TcpFlags:         []*flowtracev1.TCPFlags{{Syn: true, Ack: true}, {Rst: true}},
			TrafficDirection: []flowtracev1.TrafficDirection{flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_EGRESS},
			ObservationPoint: []flowtracev1.ObservationPoint{flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_INGRESS},
			IpVersion:        []flowtracev1.IPVersion{flowtracev1.IPVersion_IP_VERSION_IPV6},
			Reply:            []bool{true},
		}}}},
		{"not negates only the next flag", []string{"--verdict", "dropped", "--not", "--namespace", "kube-system", "--to-port", "53"}, &flowtracev1.GetFlowsRequest{Number: 20,
			Allowlist: []*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}, DestinationPort: []uint32{53}}},
			Denylist: []*flowtracev1.FlowFilter{
				{SourceNamespace: []string{"kube-system"}},
				{DestinationNamespace: []string{"kube-system"}},
			}}},
		{"not reply", []string{"--not", "--reply"}, &flowtracev1.GetFlowsRequest{Number: 20, Denylist: []*flowtracev1.FlowFilter{{Reply: []bool{true}}}}},
		// Each --not its own denylist filter: a flow matching any is hidden.
		{"each not excludes on its own", []string{"--not", "--verdict", "dropped", "--not", "--protocol", "icmpv6", "--not", "--pod", "shop/db"},
			&flowtracev1.GetFlowsRequest{Number: 20, Denylist: []*flowtracev1.FlowFilter{
				{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}},
				{Protocol: []string{"icmpv6"}},
				{SourcePod: []string{"shop/db"}},
				{DestinationPod: []string{"shop/db"}},
			}}},
		{"reply=false", []string{"--reply=false"}, &flowtracev1.GetFlowsRequest{Number: 20, Allowlist: []*flowtracev1.FlowFilter{{Reply: []bool{false}}}}},
		{"fields", []string{"--fields", "time,verdict,source.pod_name", "-o", "json"}, &flowtracev1.GetFlowsRequest{Number: 20, FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"time", "verdict", "source.pod_name"}}}},
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

func TestObserveNewUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--not"}, `--not must be followed by a filter flag`},
		{[]string{"--not", "--not", "--verdict", "dropped"}, `--not twice in a row`},
		{[]string{"--fields", "verdict"}, `--fields needs -o json or -o dict: the compact format cannot show which fields were left out`},
		{[]string{"--fields", "verdict", "-o", "table"}, `--fields needs -o json or -o dict`},
		{[]string{"--verdict", "dropped", "--not"}, `--not must be followed by a filter flag`},
		{[]string{"--not", "--verdict", "nope"}, `invalid --not --verdict "nope": valid values are FORWARDED`},
		{[]string{"--label", "app in (a,b"}, `invalid --label: "app in (a,b" is not a label selector: unbalanced parentheses`},
		{[]string{"--label", "x", "--from-label", "y"}, `--label cannot be combined with --from-label or --to-label`},
		{[]string{"--tcp-flags", "SYN,FOO"}, `invalid --tcp-flags: "FOO" is not a TCP flag`},
		{[]string{"--traffic-direction", "up"}, `invalid --traffic-direction "up": valid values are INGRESS, EGRESS`},
		{[]string{"--observation-point", "xdp"}, `invalid --observation-point "xdp": valid values are TC_INGRESS, TC_EGRESS, KFREE_SKB`},
		{[]string{"--ip-version", "5"}, `invalid --ip-version "5": valid values are IPV4, IPV6`},
		{[]string{"--reply=maybe"}, `invalid --reply "maybe": want true or false`},
		{[]string{"--from-workload", "/x"}, `invalid filter: allowlist[0].source_workload: "/x" is not a workload`},
		{[]string{"--not", "--node", "a/b"}, `invalid filter: denylist[0].node_name: "a/b" is not a node name`},
		{[]string{"--fields", "time,source.pod", "-o", "json"}, `invalid --fields: field mask: path "source.pod": flowtrace.v1.Endpoint has no field "pod"`},
		{[]string{"--time-format", "kitchen"}, `invalid --time-format "kitchen": valid values are StampMilli, RFC3339, RFC3339Milli, RFC3339Nano, unix`},
		{[]string{"--color", "sometimes"}, `invalid --color "sometimes": valid values are auto, always, never`},
		{[]string{"--input-file", "x.json", "-f"}, `--follow cannot be used with --input-file`},
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

func runObserveCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := NewRootCmd("test")
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestPrintRawFilters(t *testing.T) {
	out, _, err := runObserveCLI(t, "", "observe", "--print-raw-filters", "--verdict", "dropped", "--not", "--pod", "kube-system/", "--server", "/nonexistent")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Allowlist []map[string]any `json:"allowlist"`
		Denylist  []map[string]any `json:"denylist"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(raw.Allowlist) != 1 || len(raw.Denylist) != 2 ||
		raw.Allowlist[0]["verdict"].([]any)[0] != "VERDICT_DROPPED" || raw.Denylist[1]["destination_pod"].([]any)[0] != "kube-system/" {
		t.Errorf("raw filters:\n%s", out)
	}
}

func TestCompletion(t *testing.T) {
	out, _, err := runObserveCLI(t, "", "completion", "bash")
	if err != nil || !strings.Contains(out, "bash completion") {
		t.Fatalf("completion bash: %v\n%.200s", err, out)
	}
	out, _, err = runObserveCLI(t, "", "__complete", "observe", "--verdict", "")
	if err != nil || !strings.Contains(out, "dropped\n") || !strings.Contains(out, "mtu_exceeded\n") {
		t.Errorf("verdict completion: %v\n%s", err, out)
	}
	out, _, err = runObserveCLI(t, "", "__complete", "observe", "--traffic-direction", "")
	if err != nil || !strings.Contains(out, "ingress\negress\n") {
		t.Errorf("direction completion: %v\n%s", err, out)
	}
	out, _, _ = runObserveCLI(t, "", "__complete", "observe", "-o", "")
	if !strings.Contains(out, "dict\n") {
		t.Errorf("output completion:\n%s", out)
	}
}

// replayInput is what "-o json" wrote, with a malformed line, a blank line
// and a lost-events line.
func replayInput(t *testing.T) string {
	t.Helper()
	var lines []string
	for i := 0; i < 6; i++ {
		v := "VERDICT_FORWARDED"
		if i%2 == 1 {
			v = "VERDICT_DROPPED"
		}
		ts := now.Add(time.Duration(i) * time.Second).Format(time.RFC3339Nano)
		lines = append(lines, `{"flow":{"time":"`+ts+`","uuid":"`+strconv.Itoa(i)+`","verdict":"`+v+`","ip":{"source":"10.0.0.1","destination":"10.0.0.2"},"source":{"namespace":"shop","podName":"web-`+strconv.Itoa(i)+`"}},"nodeName":"n1","time":"`+ts+`"}`)
		if i == 2 {
			lines = append(lines, `{"flow": {"uuid": truncated`, "", `{"lostEvents":{"source":"LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER","numEventsLost":"3"},"nodeName":"n1","time":"`+ts+`"}`)
		}
	}
	return strings.Join(lines, "\n") + "\n{}\n"
}

func TestReplayInputFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.json")
	if err := os.WriteFile(path, []byte(replayInput(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runObserveCLI(t, "", "observe", "--input-file", path, "--verdict", "dropped", "--time-format", "rfc3339", "--color", "never")
	if err != nil {
		t.Fatal(err)
	}
	want := "2025-11-23T16:00:01Z: shop/web-1 (10.0.0.1) -> 10.0.0.2 DROPPED\n" +
		"2025-11-23T16:00:02Z: EVENTS LOST: 3 (kernel ring buffer)\n" +
		"2025-11-23T16:00:03Z: shop/web-3 (10.0.0.1) -> 10.0.0.2 DROPPED\n" +
		"2025-11-23T16:00:05Z: shop/web-5 (10.0.0.1) -> 10.0.0.2 DROPPED\n"
	if out != want {
		t.Errorf("replay output:\n%s\nwant:\n%s", out, want)
	}
	for _, w := range []string{path + ":4: skipping malformed line", path + ":10: skipping malformed line: neither", "2 malformed line(s) skipped"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}

	// stdin, --last, --not, --fields and json: the same filters as live.
	out, _, err = runObserveCLI(t, replayInput(t), "observe", "--input-file", "-", "--last", "2", "--not", "--from-pod", "shop/web-5", "--fields", "uuid", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"flow":{"uuid":"3"},"nodeName":"n1","time":"2025-11-23T16:00:03Z"}` + "\n" + `{"flow":{"uuid":"4"},"nodeName":"n1","time":"2025-11-23T16:00:04Z"}` + "\n"; out != want {
		t.Errorf("replay --last 2 json:\n%s\nwant:\n%s", out, want)
	}
	if _, _, err := runObserveCLI(t, "", "observe", "--input-file", filepath.Join(t.TempDir(), "missing.json")); err == nil || IsUsageError(err) {
		t.Errorf("missing file: %v", err)
	}

	// A verdict this version does not know is a malformed line, not
	// UNSPECIFIED; a line written with --fields has none, and is fine.
	out, errOut, err = runObserveCLI(t, `{"flow":{"verdict":"NOPE","uuid":"x"}}`+"\n"+`{"flow":{"uuid":"masked"}}`+"\n",
		"observe", "--input-file", "-", "-o", "json")
	if err != nil || out != `{"flow":{"uuid":"masked"}}`+"\n" || !strings.Contains(errOut, "stdin:1: skipping malformed line: a flow whose verdict this version does not know") {
		t.Errorf("unknown verdict: err %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	// A file of something else is an error, named a few lines at most.
	junk := strings.Repeat(`{"pods": []}`+"\n", 50)
	_, errOut, err = runObserveCLI(t, junk, "observe", "--input-file", "-")
	if err == nil || !strings.Contains(err.Error(), "stdin has no flows") {
		t.Errorf("a file with no flows: %v", err)
	}
	if n := strings.Count(errOut, "skipping malformed line"); n != maxReplayErrors || !strings.Contains(errOut, "50 malformed line(s) skipped") {
		t.Errorf("%d malformed lines named, want %d and a count of 50:\n%s", n, maxReplayErrors, errOut)
	}
}

// TestHistoryStartOnStderr runs observe against a server whose history
// has evicted flows: --since before the oldest one prints the notice on
// stderr, and -o dict and field masks work end to end.
func TestHistoryStartOnStderr(t *testing.T) {
	obs := observer.New(observer.Config{MaxFlows: 5, NodeName: "node-x"}, nil)
	for i := 0; i < 8; i++ {
		obs.Publish(&flowtracev1.Flow{
			Uuid: strconv.Itoa(i), Time: timestamppb.New(time.Now().Add(time.Duration(i-10) * time.Second)),
			Verdict: flowtracev1.Verdict_VERDICT_DROPPED, DropReasonKernel: "NO_SOCKET",
			Ip: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.0.2"},
		})
	}
	sock := filepath.Join(t.TempDir(), "ft.sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.New(obs, nil, nil).Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })

	out, errOut, err := runObserveCLI(t, "", "--server", sock, "observe", "--since", "1h")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "\n") != 5 || !strings.Contains(errOut, "HISTORY STARTS AT ") || !strings.Contains(errOut, ": 3 older flows were evicted (you asked from ") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
	out, errOut, err = runObserveCLI(t, "", "--server", sock, "observe", "--last", "2", "-o", "dict", "--fields", "uuid,verdict")
	if err != nil {
		t.Fatal(err)
	}
	want := "  TIMESTAMP: "
	if !strings.HasPrefix(out, want) || !strings.Contains(out, "       UUID: 6\n    VERDICT: DROPPED\n------------\n") ||
		strings.Contains(out, "10.0.0.1") || errOut != "" {
		t.Errorf("dict with fields:\n%s\nstderr: %s", out, errOut)
	}
	// A bad path is caught before dialing.
	if _, _, err := runObserveCLI(t, "", "--server", sock, "observe", "--fields", "nope", "-o", "json"); !IsUsageError(err) {
		t.Errorf("bad fields: %v", err)
	}
}

// TestFollowTableShowsQuietRows: a followed table writes its rows once the
// stream goes quiet, not after 50 of them (a quiet --verdict dropped
// looked dead until then).
func TestFollowTableShowsQuietRows(t *testing.T) {
	sock := serveObserver(t, "n1", &flowtracev1.Flow{Uuid: "a", Time: timestamppb.New(now), Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
		Ip: &flowtracev1.IP{Source: "10.0.0.1", Destination: "10.0.0.2"}})
	ctx, cancel := context.WithCancel(context.Background())
	var out testutil.Buffer
	done := make(chan error, 1)
	go func() {
		cmd := NewRootCmd("test")
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs([]string{"--server", sock, "observe", "-f", "--last", "1", "-o", "table"})
		done <- cmd.ExecuteContext(ctx)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "10.0.0.2") {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no row after 5 s of a followed table: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "VERDICT") {
		t.Errorf("no header: %q", out.String())
	}
}
