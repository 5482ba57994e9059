package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/filters"
	"github.com/flowtrace/flowtrace/pkg/printer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// defaultLast is how many flows observe shows without --last, --first,
// --follow or a time range, as Hubble does.
const defaultLast = 20

type observeOpts struct {
	follow       bool
	last, first  uint64
	since, until string
	output       string

	verdicts, dropReasons, protocols, interfaces []string

	pods, fromPods, toPods                   []string
	namespaces, fromNamespaces, toNamespaces []string
	ips, fromIPs, toIPs                      []string
	ports, fromPorts, toPorts                []string
	services, fromServices, toServices       []string

	lastSet bool
}

func newObserveCmd(g *globalOpts) *cobra.Command {
	o := &observeOpts{}
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows and drops observed by the agent",
		Long: `Show recent flows from the agent's history and, with --follow, new ones as they happen.

Without --follow, --last, --first or a time range, the last 20 flows are shown.
Filters of different flags must all match; repeated values of one flag are alternatives.
--pod, --namespace, --ip, --port and --service match either end of a flow; the
--from-/--to- forms match one end. A pod is "namespace/name-prefix", "namespace/", or a
bare pod-name prefix that matches in any namespace; a Service is written the same way.
A flow carries a Service when its client addressed the Service's VIP: the request has
it as destination, the backend's reply as source.`,
		Example: `  flowtrace observe --verdict dropped --last 50
  flowtrace observe -f --pod shop/frontend --to-port 5432
  flowtrace observe --since 10m --drop-reason netfilter_drop -o json
  flowtrace observe --to-service shop/web --verdict translated,dropped
  flowtrace observe --verdict mtu_exceeded --last 10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.lastSet = cmd.Flags().Changed("last")
			req, err := o.request(time.Now())
			if err != nil {
				return err
			}
			return runObserve(cmdContext(cmd), g, req, o.output, cmd.OutOrStdout())
		},
	}
	o.bindFlags(cmd)
	return cmd
}

func (o *observeOpts) bindFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVarP(&o.follow, "follow", "f", false, "keep streaming new flows")
	f.Uint64Var(&o.last, "last", 0, "show the N most recent matching flows (with --follow: before the live ones)")
	f.Uint64Var(&o.first, "first", 0, "show the N oldest matching flows")
	f.StringVar(&o.since, "since", "", "only flows at or after this time: RFC3339, or a duration ago (5m, 1h)")
	f.StringVar(&o.until, "until", "", "only flows at or before this time: RFC3339, or a duration ago (5m, 1h)")
	f.StringVarP(&o.output, "output", "o", printer.Compact, "output format: "+strings.Join(printer.Formats(), ", "))
	f.StringSliceVar(&o.verdicts, "verdict", nil, "verdict: "+strings.Join(enumNames(flowtracev1.Verdict_name, "VERDICT_"), ", "))
	f.StringSliceVar(&o.dropReasons, "drop-reason", nil, "drop reason, e.g. NETFILTER_DROP, NO_SOCKET")
	f.StringSliceVar(&o.protocols, "protocol", nil, "protocol: "+strings.Join(filters.Protocols(), ", "))
	f.StringSliceVar(&o.interfaces, "interface", nil, `interface name, or "prefix*"`)
	f.StringSliceVar(&o.pods, "pod", nil, "pod at either end: namespace/name-prefix, namespace/, or name-prefix")
	f.StringSliceVar(&o.fromPods, "from-pod", nil, "source pod")
	f.StringSliceVar(&o.toPods, "to-pod", nil, "destination pod")
	f.StringSliceVar(&o.namespaces, "namespace", nil, "namespace at either end")
	f.StringSliceVar(&o.fromNamespaces, "from-namespace", nil, "source namespace")
	f.StringSliceVar(&o.toNamespaces, "to-namespace", nil, "destination namespace")
	f.StringSliceVar(&o.ips, "ip", nil, "IP address or CIDR at either end")
	f.StringSliceVar(&o.fromIPs, "from-ip", nil, "source IP address or CIDR")
	f.StringSliceVar(&o.toIPs, "to-ip", nil, "destination IP address or CIDR")
	f.StringSliceVar(&o.ports, "port", nil, "port at either end")
	f.StringSliceVar(&o.fromPorts, "from-port", nil, "source port")
	f.StringSliceVar(&o.toPorts, "to-port", nil, "destination port")
	f.StringSliceVar(&o.services, "service", nil, "Service at either end: namespace/name-prefix, namespace/, or name-prefix")
	f.StringSliceVar(&o.fromServices, "from-service", nil, "source Service (the backend's replies)")
	f.StringSliceVar(&o.toServices, "to-service", nil, "destination Service (requests to its VIP)")
	_ = cmd.RegisterFlagCompletionFunc("verdict", fixedCompletion(enumNames(flowtracev1.Verdict_name, "VERDICT_")))
	_ = cmd.RegisterFlagCompletionFunc("drop-reason", fixedCompletion(enumNames(flowtracev1.DropReason_name, "DROP_REASON_")))
	_ = cmd.RegisterFlagCompletionFunc("protocol", fixedCompletion(filters.Protocols()))
	_ = cmd.RegisterFlagCompletionFunc("output", fixedCompletion(printer.Formats()))
}

func fixedCompletion(vals []string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

// cmdContext is the command's context (Ctrl-C cancels it in main).
func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// request validates the flags and builds the GetFlowsRequest. now anchors
// "duration ago" times.
func (o *observeOpts) request(now time.Time) (*flowtracev1.GetFlowsRequest, error) {
	if !contains(printer.Formats(), o.output) {
		return nil, usageErrorf("invalid --output %q: valid values are %s", o.output, strings.Join(printer.Formats(), ", "))
	}
	req := &flowtracev1.GetFlowsRequest{Follow: o.follow}
	var err error
	if req.Since, err = parseTimeFlag("since", o.since, now); err != nil {
		return nil, err
	}
	if req.Until, err = parseTimeFlag("until", o.until, now); err != nil {
		return nil, err
	}
	if req.Since != nil && req.Until != nil && req.Since.AsTime().After(req.Until.AsTime()) {
		return nil, usageErrorf("--since (%s) is after --until (%s)", req.Since.AsTime().Format(time.RFC3339), req.Until.AsTime().Format(time.RFC3339))
	}
	switch {
	case o.first > 0 && (o.lastSet || o.last > 0):
		return nil, usageErrorf("--first and --last cannot be combined")
	case o.first > 0 && o.follow:
		return nil, usageErrorf("--first and --follow cannot be combined: --first reads the oldest flows")
	case o.first > 0:
		req.Number, req.First = o.first, true
	case o.lastSet || o.last > 0:
		req.Number = o.last
	case o.follow || req.Since != nil || req.Until != nil:
		// Follow alone shows only new flows; a time range shows all of it.
	default:
		req.Number = defaultLast
	}

	ff, err := o.filters()
	if err != nil {
		return nil, err
	}
	req.Allowlist = ff
	// The server validates too; doing it here turns mistakes into usage errors.
	if _, err := filters.Build(req.Allowlist, nil); err != nil {
		return nil, usageErrorf("invalid filter: %v", err)
	}
	return req, nil
}

// filters builds the allowlist: one filter, or two (source side and
// destination side) when an either-end flag is used. Flags that are not
// either-end apply to both.
func (o *observeOpts) filters() ([]*flowtracev1.FlowFilter, error) {
	for _, c := range []struct {
		either, from, to []string
		name             string
	}{
		{o.pods, o.fromPods, o.toPods, "pod"},
		{o.namespaces, o.fromNamespaces, o.toNamespaces, "namespace"},
		{o.ips, o.fromIPs, o.toIPs, "ip"},
		{o.ports, o.fromPorts, o.toPorts, "port"},
		{o.services, o.fromServices, o.toServices, "service"},
	} {
		if len(c.either) > 0 && (len(c.from) > 0 || len(c.to) > 0) {
			return nil, usageErrorf("--%s cannot be combined with --from-%s or --to-%s", c.name, c.name, c.name)
		}
	}

	common := &flowtracev1.FlowFilter{}
	for _, v := range o.verdicts {
		n, err := parseEnum("verdict", v, "VERDICT_", flowtracev1.Verdict_value, flowtracev1.Verdict_name)
		if err != nil {
			return nil, err
		}
		common.Verdict = append(common.Verdict, flowtracev1.Verdict(n))
	}
	for _, v := range o.dropReasons {
		n, err := parseEnum("drop-reason", v, "DROP_REASON_", flowtracev1.DropReason_value, flowtracev1.DropReason_name)
		if err != nil {
			return nil, err
		}
		common.DropReason = append(common.DropReason, flowtracev1.DropReason(n))
	}
	for _, v := range o.protocols {
		p := strings.ToLower(strings.TrimSpace(v))
		if !contains(filters.Protocols(), p) {
			return nil, usageErrorf("invalid --protocol %q: valid values are %s", v, strings.Join(filters.Protocols(), ", "))
		}
		common.Protocol = append(common.Protocol, p)
	}
	common.Interface = append(common.Interface, o.interfaces...)
	common.SourcePod = append(common.SourcePod, o.fromPods...)
	common.DestinationPod = append(common.DestinationPod, o.toPods...)
	common.SourceNamespace = append(common.SourceNamespace, o.fromNamespaces...)
	common.DestinationNamespace = append(common.DestinationNamespace, o.toNamespaces...)
	common.SourceService = append(common.SourceService, o.fromServices...)
	common.DestinationService = append(common.DestinationService, o.toServices...)
	var err error
	if common.SourceIp, err = checkIPs("from-ip", o.fromIPs); err != nil {
		return nil, err
	}
	if common.DestinationIp, err = checkIPs("to-ip", o.toIPs); err != nil {
		return nil, err
	}
	if common.SourcePort, err = parsePorts("from-port", o.fromPorts); err != nil {
		return nil, err
	}
	if common.DestinationPort, err = parsePorts("to-port", o.toPorts); err != nil {
		return nil, err
	}
	ips, err := checkIPs("ip", o.ips)
	if err != nil {
		return nil, err
	}
	ports, err := parsePorts("port", o.ports)
	if err != nil {
		return nil, err
	}

	if len(o.pods) == 0 && len(o.namespaces) == 0 && len(ips) == 0 && len(ports) == 0 && len(o.services) == 0 {
		if isEmptyFilter(common) {
			return nil, nil
		}
		return []*flowtracev1.FlowFilter{common}, nil
	}
	// Either-end and directional flags of one kind were rejected above, so
	// an either-end value never replaces a directional one.
	src, dst := cloneFilter(common), cloneFilter(common)
	if len(o.pods) > 0 {
		src.SourcePod, dst.DestinationPod = o.pods, o.pods
	}
	if len(o.namespaces) > 0 {
		src.SourceNamespace, dst.DestinationNamespace = o.namespaces, o.namespaces
	}
	if len(ips) > 0 {
		src.SourceIp, dst.DestinationIp = ips, ips
	}
	if len(ports) > 0 {
		src.SourcePort, dst.DestinationPort = ports, ports
	}
	if len(o.services) > 0 {
		src.SourceService, dst.DestinationService = o.services, o.services
	}
	return []*flowtracev1.FlowFilter{src, dst}, nil
}

// cloneFilter copies every field, so a field added to FlowFilter later
// cannot be forgotten here.
func cloneFilter(f *flowtracev1.FlowFilter) *flowtracev1.FlowFilter {
	return proto.Clone(f).(*flowtracev1.FlowFilter)
}

// isEmptyFilter: a FlowFilter has only repeated fields, so it encodes to
// nothing exactly when all of them are empty.
func isEmptyFilter(f *flowtracev1.FlowFilter) bool {
	return proto.Size(f) == 0
}

// parseEnum accepts "DROPPED", "dropped" and "VERDICT_DROPPED" (and "-" for "_").
func parseEnum(flag, v, prefix string, values map[string]int32, names map[int32]string) (int32, error) {
	name := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(v), "-", "_"))
	name = strings.TrimPrefix(name, prefix)
	if n, ok := values[prefix+name]; ok && n != 0 {
		return n, nil
	}
	return 0, usageErrorf("invalid --%s %q: valid values are %s", flag, v, strings.Join(enumNames(names, prefix), ", "))
}

// enumNames lists an enum's names without prefix and UNSPECIFIED, by number.
func enumNames(names map[int32]string, prefix string) []string {
	nums := make([]int32, 0, len(names))
	for n := range names {
		if n != 0 {
			nums = append(nums, n)
		}
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	out := make([]string, len(nums))
	for i, n := range nums {
		out[i] = strings.TrimPrefix(names[n], prefix)
	}
	return out
}

func checkIPs(flag string, vals []string) ([]string, error) {
	for _, v := range vals {
		if _, err := netip.ParsePrefix(v); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(v); err == nil {
			continue
		}
		return nil, usageErrorf("invalid --%s %q: want an IP address or CIDR, e.g. 10.0.0.1 or 10.0.0.0/8", flag, v)
	}
	return vals, nil
}

func parsePorts(flag string, vals []string) ([]uint32, error) {
	var out []uint32
	for _, v := range vals {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil || n == 0 || n > 65535 {
			return nil, usageErrorf("invalid --%s %q: want a port number from 1 to 65535", flag, v)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// parseTimeFlag accepts RFC3339 or a duration ago ("5m" is five minutes
// before now).
func parseTimeFlag(flag, v string, now time.Time) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return nil, usageErrorf("invalid --%s %q: a duration means that long ago and must not be negative", flag, v)
		}
		return timestamppb.New(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return nil, usageErrorf("invalid --%s %q: want RFC3339 (2006-01-02T15:04:05Z07:00) or a duration ago (30s, 5m, 1h)", flag, v)
	}
	return timestamppb.New(t), nil
}

func contains(vals []string, v string) bool {
	for _, x := range vals {
		if x == v {
			return true
		}
	}
	return false
}

func runObserve(ctx context.Context, g *globalOpts, req *flowtracev1.GetFlowsRequest, output string, w io.Writer) error {
	p, err := printer.New(output, w, printer.Options{})
	if err != nil {
		return usageErrorf("%v", err)
	}
	dctx, cancel := context.WithTimeout(ctx, g.timeout)
	conn, err := client.Dial(dctx, g.server)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer conn.Close()

	stream, err := flowtracev1.NewObserverServiceClient(conn).GetFlows(ctx, req)
	if err != nil {
		return streamError(ctx, err, p)
	}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return p.Flush()
		}
		if err != nil {
			return streamError(ctx, err, p)
		}
		if err := p.Print(r); err != nil {
			return fmt.Errorf("print flow: %w", err)
		}
	}
}

// streamError ends the stream: Ctrl-C is a clean exit, a request the agent
// rejects is a usage error, anything else is a failure.
func streamError(ctx context.Context, err error, p *printer.Printer) error {
	ferr := p.Flush()
	// gRPC enforces a deadline with its own timer, so the stream can end
	// with DeadlineExceeded an instant before ctx itself reports it.
	if dl, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(dl) {
		return ferr
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
		return usageErrorf("the agent rejected the request: %s", st.Message())
	}
	return errors.Join(fmt.Errorf("receive flows: %w", err), ferr)
}
