package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/printer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
)

// statusText is status's default output; its other is printer.JSON, the
// same one-object-per-line JSON that observe -o json writes.
const statusText = "text"

func newStatusCmd(g *globalOpts) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's status: history, losses, interfaces, features",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != statusText && output != printer.JSON {
				return usageErrorf("invalid --output %q: valid values are %s, %s", output, statusText, printer.JSON)
			}
			ctx, cancel := context.WithTimeout(cmdContext(cmd), g.timeout)
			defer cancel()
			conn, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer conn.Close()
			r, err := flowtracev1.NewObserverServiceClient(conn).ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
			if err != nil {
				return fmt.Errorf("get agent status: %w", err)
			}
			if output == printer.JSON {
				var buf bytes.Buffer
				return printer.WriteJSONLine(cmd.OutOrStdout(), &buf, r)
			}
			return printStatus(cmd.OutOrStdout(), r)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", statusText,
		"output format: text, or json (the ServerStatus response as one protojson object, for scripts: e.g. jq .flowsRate)")
	return cmd
}

// addClientTLSFlags registers the client's TLS flags on root (persistent:
// every client command shares them).
func addClientTLSFlags(root *cobra.Command, g *globalOpts) {
	f := root.PersistentFlags()
	f.BoolVar(&g.tls.Enabled, "tls", false, "connect to a host:port server with TLS (implied by the other --tls-* flags)")
	f.StringVar(&g.tls.CAFile, "tls-ca-file", "", "PEM CA that signs the server certificate (default: the system roots)")
	f.StringVar(&g.tls.CertFile, "tls-cert-file", "", "PEM client certificate for mTLS (with --tls-key-file)")
	f.StringVar(&g.tls.KeyFile, "tls-key-file", "", "PEM client key for mTLS")
	f.StringVar(&g.tls.ServerName, "tls-server-name", "", "name to verify in the server certificate (default: the host of --server)")
}

// dial connects to --server with the global TLS flags.
func (g *globalOpts) dial(ctx context.Context) (*grpc.ClientConn, error) {
	if (g.tls.CertFile == "") != (g.tls.KeyFile == "") {
		return nil, usageErrorf("--tls-cert-file and --tls-key-file go together")
	}
	return client.Dial(ctx, g.server, g.clientOptions())
}

// clientOptions are the connection options the global flags select.
func (g *globalOpts) clientOptions() client.Options {
	return client.Options{TLS: g.tls, UnaryTimeout: g.timeout}
}

func printStatus(out io.Writer, r *flowtracev1.ServerStatusResponse) error {
	w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "%s:\t"+format+"\n", append([]any{k}, args...)...) }
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	row("Node", "%s", orDash(r.GetNodeName()))
	uptime := "-"
	if r.GetUptime() != nil {
		uptime = r.GetUptime().AsDuration().Round(time.Second).String()
	}
	row("Version", "%s (uptime %s)", orDash(r.GetVersion()), uptime)
	age := "none"
	if d := r.GetMaxFlowAge().AsDuration(); d > 0 {
		age = d.String()
	}
	row("Flows", "%d/%d held, %d seen (%.1f/s over the last minute), max age %s", r.GetNumFlows(), r.GetMaxFlows(), r.GetSeenFlows(),
		r.GetFlowsRate(), age)
	row("Followers", "%d streams following now", r.GetNumFollowers())
	ts := func(t interface{ AsTime() time.Time }, ok bool) string {
		if !ok {
			return "-"
		}
		return t.AsTime().Local().Format(time.RFC3339Nano)
	}
	row("Oldest flow", "%s (history starts here; %d older flows evicted)", ts(r.GetOldestFlowTime(), r.GetOldestFlowTime() != nil), r.GetEvictedFlows())
	row("Newest flow", "%s", ts(r.GetNewestFlowTime(), r.GetNewestFlowTime() != nil))
	f := r.GetFeatures()
	row("Datapath", "tc %s, drops %s, %d kernel drop reasons", orDash(f.GetTcAttach()), orDash(f.GetDropHook()), f.GetDropReasons())
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	// Named as in DatapathFeatures, so the status line and the API agree.
	row("Features", "conntrack_nfct %s, conntrack_lookup %s, mtu_check %s, flow_cache %s, drop_memo %s, drop_direct %s",
		onOff(f.GetConntrackNfct()), onOff(f.GetConntrackLookup()), onOff(f.GetMtuCheck()), onOff(f.GetFlowCache()),
		onOff(f.GetDropMemo()), onOff(f.GetDropDirect()))
	if d := f.GetFirstReportDelay(); d != nil {
		row("New flows", "first reported %s after their first packet, or by their close if sooner", d.AsDuration())
	} else {
		row("New flows", "reported at their first packet")
	}

	if ft := r.GetFlowTable(); ft != nil {
		row("Flow table", "%s", flowTableText(ft))
	}
	if c := r.GetCost(); c != nil {
		row("Agent cost", "%s", agentCostText(c, r.GetUptime().AsDuration()))
		row("BPF programs", "%s", programCostText(c.GetPrograms()))
	}

	fmt.Fprintln(w, "Lost events:\t")
	for _, lc := range r.GetLostEvents() {
		fmt.Fprintf(w, "  %s\t%d\n", printer.SourceText(lc.GetSource()), lc.GetCount())
	}
	if err := w.Flush(); err != nil {
		return err
	}

	w = tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintf(w, "Interfaces (%d):\n", len(r.GetInterfaces()))
	if len(r.GetInterfaces()) > 0 {
		fmt.Fprintln(w, "  NAME\tINDEX\tMODE\tKIND\tPEER NETNS")
		for _, i := range r.GetInterfaces() {
			fmt.Fprintf(w, "  %s\t%d\t%s\t%s\t%s\n", i.GetName(), i.GetIndex(), orDash(i.GetMode()), orDash(i.GetKind()), orDash(i.GetPeerNetns()))
		}
	}
	fmt.Fprintf(w, "Identity sources (%d):\n", len(r.GetIdentitySources()))
	for _, s := range r.GetIdentitySources() {
		state := "not synced"
		if s.GetSynced() {
			state = "synced"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", s.GetName(), state, s.GetDetail())
	}
	if len(r.GetDatapathCounters()) > 0 {
		fmt.Fprintln(w, "Datapath counters:")
		names := make([]string, 0, len(r.GetDatapathCounters()))
		for k := range r.GetDatapathCounters() {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(w, "  %s\t%d\n", k, r.GetDatapathCounters()[k])
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return nil
}

// flowTableText says how full the kernel's flow table was at the agent's
// last walk of it, and what to do when it ran out of room.
func flowTableText(ft *flowtracev1.KernelFlowTable) string {
	var b strings.Builder
	if ft.GetWalkedAt() != nil {
		used := ft.GetUsed()
		pct := 0.0
		if c := ft.GetCapacity(); c > 0 {
			pct = 100 * float64(used) / float64(c)
		}
		fmt.Fprintf(&b, "%d/%d entries (%.0f%%) at %s", used, ft.GetCapacity(), pct,
			ft.GetWalkedAt().AsTime().Local().Format(time.TimeOnly))
	} else {
		fmt.Fprintf(&b, "%d entries, not walked yet", ft.GetCapacity())
	}
	if n := ft.GetFull(); n > 0 {
		fmt.Fprintf(&b, "; full for %d packets, reported unaggregated: raise the agent's --flow-table-entries", n)
	} else {
		b.WriteString("; never full")
	}
	return b.String()
}

// agentCostText says what the agent process takes: its CPU now (the last
// minute, or since start in its first minute, start-up included) and in
// all, and its memory.
func agentCostText(c *flowtracev1.AgentCost, uptime time.Duration) string {
	var b strings.Builder
	if w := c.GetCpuWindow().AsDuration(); c.GetCpuWindow() != nil && w > 0 {
		span := fmt.Sprintf("over the last %.0fs", w.Seconds())
		if uptime > 0 && w >= uptime-time.Second {
			span = fmt.Sprintf("since its start %.0fs ago (start-up included)", w.Seconds())
		}
		fmt.Fprintf(&b, "%.2f%% of a CPU %s, %s of CPU since start",
			100*c.GetCpuRate(), span, c.GetCpuTime().AsDuration().Round(time.Millisecond))
	} else {
		b.WriteString("CPU unknown")
	}
	if c.GetRssBytes() > 0 {
		fmt.Fprintf(&b, "; RSS %.1f MiB (peak %.1f MiB)", float64(c.GetRssBytes())/(1<<20), float64(c.GetPeakRssBytes())/(1<<20))
	} else {
		b.WriteString("; memory unknown")
	}
	return b.String()
}

// programCostText gives each program's mean kernel time a run, where the
// kernel measured any, or says how to have it measured.
func programCostText(ps []*flowtracev1.ProgramCost) string {
	if len(ps) == 0 {
		return "unknown (the agent could not read its programs' statistics: see its log)"
	}
	var parts []string
	for _, p := range ps {
		if p.GetRunCount() == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.0f ns a run over %d runs", p.GetName(),
			float64(p.GetRunTime().AsDuration().Nanoseconds())/float64(p.GetRunCount()), p.GetRunCount()))
	}
	if len(parts) == 0 {
		return "no runs measured: the kernel counts them only while sysctl kernel.bpf_stats_enabled=1 (every program run then pays two clock reads)"
	}
	return strings.Join(parts, ", ") + " (while the kernel's BPF statistics were on)"
}
