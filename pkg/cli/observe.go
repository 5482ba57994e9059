package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flowtrace/flowtrace/pkg/filters"
	"github.com/flowtrace/flowtrace/pkg/printer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
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

	// allow holds the filter flags as given; deny has one entry per flag
	// after --not, each its own denylist filter.
	allow      filterOpts
	deny       []filterOpts
	negateNext bool
	doubleNot  bool // --not --not: refused by request

	printRawFilters bool
	fields          []string
	timeFormat      string
	color           string
	inputFile       string

	lastSet, firstSet bool
}

// filterOpts is one list's worth of filter flags (allowlist or denylist).
type filterOpts struct {
	verdicts, dropReasons, dropCauses, protocols, interfaces []string

	pods, fromPods, toPods                   []string
	namespaces, fromNamespaces, toNamespaces []string
	ips, fromIPs, toIPs                      []string
	ports, fromPorts, toPorts                []string
	services, fromServices, toServices       []string
	labels, fromLabels, toLabels             []string
	workloads, fromWorkloads, toWorkloads    []string

	nodes, uuids, tcpFlags                           []string
	directions, observationPoints, ipVersions, reply []string
}

// Color modes for --color.
var colorModes = []string{"auto", "always", "never"}

func newObserveCmd(g *globalOpts) *cobra.Command {
	o := &observeOpts{}
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows and drops observed by the agent",
		Long: `Show recent flows from the agent's history and, with --follow, new ones as they happen.

Without --follow, --last, --first or a time range, the last 20 flows are shown.
Filters of different flags must all match; repeated values of one flag are alternatives.
--pod, --namespace, --ip, --port, --service, --label and --workload match either end of
a flow; the --from-/--to- forms match one end. Either-end flags match together on the
same end, as in Hubble: "--ip 10.0.0.10 --port 53" is that address's own port 53, and
"--pod shop/frontend --port 5432" is the frontend's own port 5432; the frontend's
connections to port 5432 are "--pod shop/frontend --to-port 5432". A pod is "namespace/name-prefix",
"namespace/", or a bare pod-name prefix that matches in any namespace; a Service is
written the same way. A flow carries a Service when its client addressed the Service's
VIP: the request has it as destination, the backend's reply as source.

--not negates the filter flag that follows it: that flag goes into the request's
denylist, and a flow matching it is not shown ("--not --verdict forwarded"). Each
--not excludes on its own: "--not --verdict dropped --not --protocol udp" hides drops
and UDP flows.
Labels are Kubernetes selectors: app=web, 'app in (a,b)', '!canary', tier!=db.
When the agent no longer holds the start of what you asked for (--since before its
oldest flow), a "HISTORY STARTS AT" line on stderr says so.`,
		Example: `  flowtrace observe --verdict dropped --last 50
  flowtrace observe -f --pod shop/frontend --to-port 5432
  flowtrace observe --since 10m --drop-reason netfilter_drop -o json
  flowtrace observe --to-service shop/web --verdict translated,dropped
  flowtrace observe --label 'app in (web,api)' --not --namespace kube-system
  flowtrace observe --tcp-flags SYN --not --reply -o dict
  flowtrace observe --fields time,verdict,source.pod_name,destination.pod_name -o json
  flowtrace observe --input-file flows.json --verdict dropped`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.noteSet(cmd)
			req, err := o.request(time.Now())
			if err != nil {
				return err
			}
			if o.printRawFilters {
				return printRawFilters(cmd.OutOrStdout(), req)
			}
			popts := printer.Options{TimeFormat: o.timeFormat, Color: colorOn(o.color, cmd.OutOrStdout())}
			if o.inputFile != "" {
				return o.replay(req, popts, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			return runObserve(cmdContext(cmd), g, req, o.output, popts, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.bindFlags(cmd)
	return cmd
}

// noteSet records which flags whose zero value means something were given.
func (o *observeOpts) noteSet(cmd *cobra.Command) {
	o.lastSet = cmd.Flags().Changed("last")
	o.firstSet = cmd.Flags().Changed("first")
}

// filterFlag is a filter flag that appends to the allowlist's or, right
// after --not, the denylist's values; the order of flags matters for --not,
// so values are routed as pflag parses them.
type filterFlag struct {
	o     *observeOpts
	field func(*filterOpts) *[]string
	split bool // comma-separated values, as a string slice flag
}

func (f *filterFlag) Set(v string) error {
	target := &f.o.allow
	if f.o.negateNext {
		// Each negated flag excludes on its own: merged into one denylist
		// filter, "--not --verdict dropped --not --protocol udp" hid only
		// flows that were both, and showed more than either alone.
		f.o.deny = append(f.o.deny, filterOpts{})
		target, f.o.negateNext = &f.o.deny[len(f.o.deny)-1], false
	}
	dst := f.field(target)
	if !f.split {
		*dst = append(*dst, v)
		return nil
	}
	// Values are kept verbatim (no trimming) so that the filter errors show
	// exactly what was typed.
	*dst = append(*dst, strings.Split(v, ",")...)
	return nil
}

func (f *filterFlag) String() string { return "" }
func (f *filterFlag) Type() string   { return "strings" }

// notFlag is --not: it marks the next filter flag as negated.
type notFlag struct{ o *observeOpts }

func (n *notFlag) Set(v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return err
	}
	n.o.doubleNot = n.o.doubleNot || b && n.o.negateNext
	n.o.negateNext = b
	return nil
}
func (n *notFlag) String() string   { return "false" }
func (n *notFlag) Type() string     { return "bool" }
func (n *notFlag) IsBoolFlag() bool { return true }

func (o *observeOpts) bindFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVarP(&o.follow, "follow", "f", false, "keep streaming new flows")
	f.Uint64Var(&o.last, "last", 0, "show the N most recent matching flows, 0 for all held (with --follow: before the live ones)")
	f.Uint64Var(&o.first, "first", 0, "show the N oldest matching flows (N ≥ 1)")
	f.StringVar(&o.since, "since", "", "only flows at or after this time: RFC3339 (without a zone: local), unix seconds, or a duration ago (5m, 1h)")
	f.StringVar(&o.until, "until", "", "only flows at or before this time: RFC3339 (without a zone: local), unix seconds, or a duration ago (5m, 1h)")
	f.StringVarP(&o.output, "output", "o", printer.Compact, "output format: "+strings.Join(printer.Formats(), ", "))
	f.BoolVar(&o.printRawFilters, "print-raw-filters", false, "print the request's allowlist and denylist as JSON and exit")
	f.StringSliceVar(&o.fields, "fields", nil, "only these Flow fields, e.g. time,verdict,source.pod_name (a field mask)")
	f.StringVar(&o.timeFormat, "time-format", "StampMilli", "time format: "+strings.Join(printer.TimeFormats(), ", "))
	f.StringVar(&o.color, "color", "auto", "colour verdicts and drop reasons: auto (on a terminal), always, never")
	f.StringVar(&o.inputFile, "input-file", "", `read flows from a file written by "-o json" instead of the agent ("-" for stdin)`)

	f.Var(&notFlag{o}, "not", "negate the next filter flag (it goes into the denylist)")
	f.Lookup("not").NoOptDefVal = "true"

	add := func(name, usage string, split bool, field func(*filterOpts) *[]string) {
		f.Var(&filterFlag{o: o, field: field, split: split}, name, usage)
	}
	add("verdict", "verdict: "+strings.Join(enumNames(flowtracev1.Verdict_name, "VERDICT_"), ", "), true, func(x *filterOpts) *[]string { return &x.verdicts })
	add("drop-reason", "drop reason, e.g. NETFILTER_DROP, NO_SOCKET", true, func(x *filterOpts) *[]string { return &x.dropReasons })
	add("drop-cause", "flowtrace's explanation of a drop: "+strings.Join(lower(dropCauseNames()), ", ")+
		` ("none": drops it has none for); e.g. --not --drop-cause multicast-not-joined hides drops that are not faults`,
		true, func(x *filterOpts) *[]string { return &x.dropCauses })
	add("protocol", "protocol: "+strings.Join(filters.Protocols(), ", "), true, func(x *filterOpts) *[]string { return &x.protocols })
	add("interface", `interface name, "prefix*", or "name@netns" as flows print it (eth0@shop/db-0)`, true, func(x *filterOpts) *[]string { return &x.interfaces })
	add("pod", "pod at either end: namespace/name-prefix, namespace/, or name-prefix", true, func(x *filterOpts) *[]string { return &x.pods })
	add("from-pod", "source pod", true, func(x *filterOpts) *[]string { return &x.fromPods })
	add("to-pod", "destination pod", true, func(x *filterOpts) *[]string { return &x.toPods })
	add("namespace", "namespace at either end", true, func(x *filterOpts) *[]string { return &x.namespaces })
	add("from-namespace", "source namespace", true, func(x *filterOpts) *[]string { return &x.fromNamespaces })
	add("to-namespace", "destination namespace", true, func(x *filterOpts) *[]string { return &x.toNamespaces })
	add("ip", "IP address or CIDR at either end", true, func(x *filterOpts) *[]string { return &x.ips })
	add("from-ip", "source IP address or CIDR", true, func(x *filterOpts) *[]string { return &x.fromIPs })
	add("to-ip", "destination IP address or CIDR", true, func(x *filterOpts) *[]string { return &x.toIPs })
	add("port", "port at either end", true, func(x *filterOpts) *[]string { return &x.ports })
	add("from-port", "source port", true, func(x *filterOpts) *[]string { return &x.fromPorts })
	add("to-port", "destination port", true, func(x *filterOpts) *[]string { return &x.toPorts })
	add("service", "Service at either end: namespace/name-prefix, namespace/, or name-prefix", true, func(x *filterOpts) *[]string { return &x.services })
	add("from-service", "source Service (the backend's replies)", true, func(x *filterOpts) *[]string { return &x.fromServices })
	add("to-service", "destination Service (requests to its VIP)", true, func(x *filterOpts) *[]string { return &x.toServices })
	// A selector contains commas itself: one selector per flag.
	add("label", "label selector at either end: app=web, 'app in (a,b)', '!canary', tier!=db", false, func(x *filterOpts) *[]string { return &x.labels })
	add("from-label", "source label selector", false, func(x *filterOpts) *[]string { return &x.fromLabels })
	add("to-label", "destination label selector", false, func(x *filterOpts) *[]string { return &x.toLabels })
	add("workload", "workload at either end: kind/name, kind/ or name", true, func(x *filterOpts) *[]string { return &x.workloads })
	add("from-workload", "source workload", true, func(x *filterOpts) *[]string { return &x.fromWorkloads })
	add("to-workload", "destination workload", true, func(x *filterOpts) *[]string { return &x.toWorkloads })
	add("node", `observing node name, or "prefix*"`, true, func(x *filterOpts) *[]string { return &x.nodes })
	add("uuid", "flow record uuid", true, func(x *filterOpts) *[]string { return &x.uuids })
	// "SYN,ACK" is one value (both flags set); repeat the flag for alternatives.
	add("tcp-flags", "TCP flags that must all be set, e.g. SYN or SYN,ACK (a closing report matches on its other direction's flags too: FIN finds closes); repeat for alternatives", false, func(x *filterOpts) *[]string { return &x.tcpFlags })
	add("traffic-direction", "traffic direction: ingress, egress", true, func(x *filterOpts) *[]string { return &x.directions })
	add("observation-point", "observation point: "+strings.Join(enumNames(flowtracev1.ObservationPoint_name, "OBSERVATION_POINT_"), ", "), true, func(x *filterOpts) *[]string { return &x.observationPoints })
	add("ip-version", "IP version: ipv4, ipv6", true, func(x *filterOpts) *[]string { return &x.ipVersions })
	add("reply", "only replies (--reply) or only requests (--reply=false)", true, func(x *filterOpts) *[]string { return &x.reply })
	f.Lookup("reply").NoOptDefVal = "true"

	for name, vals := range map[string][]string{
		"verdict":           lower(enumNames(flowtracev1.Verdict_name, "VERDICT_")),
		"drop-reason":       lower(enumNames(flowtracev1.DropReason_name, "DROP_REASON_")),
		"drop-cause":        lower(dropCauseNames()),
		"protocol":          filters.Protocols(),
		"output":            printer.Formats(),
		"traffic-direction": lower(enumNames(flowtracev1.TrafficDirection_name, "TRAFFIC_DIRECTION_")),
		"observation-point": lower(enumNames(flowtracev1.ObservationPoint_name, "OBSERVATION_POINT_")),
		"ip-version":        {"ipv4", "ipv6"},
		"tcp-flags":         filters.TCPFlagNames(),
		"time-format":       printer.TimeFormats(),
		"color":             colorModes,
		"reply":             {"true", "false"},
		"fields":            filters.FlowFieldPaths(),
	} {
		_ = cmd.RegisterFlagCompletionFunc(name, fixedCompletion(vals))
	}
}

func lower(vals []string) []string {
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.ToLower(v)
	}
	return out
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
	if _, err := printer.ParseTimeFormat(o.timeFormat); err != nil {
		return nil, usageErrorf("invalid --time-format %q: valid values are %s", o.timeFormat, strings.Join(printer.TimeFormats(), ", "))
	}
	if o.color != "" && !contains(colorModes, o.color) {
		return nil, usageErrorf("invalid --color %q: valid values are %s", o.color, strings.Join(colorModes, ", "))
	}
	if o.negateNext {
		return nil, usageErrorf("--not must be followed by a filter flag, e.g. --not --namespace kube-system")
	}
	if o.doubleNot {
		return nil, usageErrorf("--not twice in a row: it negates the one filter flag after it")
	}
	if o.inputFile != "" && o.follow {
		return nil, usageErrorf("--follow cannot be used with --input-file: a file has no live flows")
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
	case o.firstSet && o.first == 0:
		return nil, usageErrorf("--first 0 shows nothing: --first N wants N ≥ 1 (--last 0 shows every flow held)")
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

	if req.Allowlist, err = o.allow.filters(""); err != nil {
		return nil, err
	}
	for i := range o.deny {
		fs, err := o.deny[i].filters("--not ")
		if err != nil {
			return nil, err
		}
		req.Denylist = append(req.Denylist, fs...)
	}
	// The server validates too; doing it here turns mistakes into usage errors.
	if _, err := filters.Build(req.Allowlist, req.Denylist); err != nil {
		return nil, usageErrorf("invalid filter: %v", err)
	}
	if len(o.fields) > 0 {
		if o.output != printer.JSON && o.output != printer.Dict {
			// compact and table print every column: a field left out
			// would show as a real zero ("0 pkts") or "?".
			return nil, usageErrorf("--fields needs -o json or -o dict: the %s format cannot show which fields were left out", o.output)
		}
		if _, err := filters.NewFieldMask(o.fields); err != nil {
			return nil, usageErrorf("invalid --fields: %v (see 'flowtrace observe --fields <TAB>' for the paths)", err)
		}
		req.FieldMask = &fieldmaskpb.FieldMask{Paths: o.fields}
	}
	return req, nil
}

// filters builds one list: one filter, or two (source side and destination
// side) when an either-end flag is used. Flags that are not either-end apply
// to both. neg prefixes flag names in errors ("--not ").
func (o *filterOpts) filters(neg string) ([]*flowtracev1.FlowFilter, error) {
	for _, c := range []struct {
		either, from, to []string
		name             string
	}{
		{o.pods, o.fromPods, o.toPods, "pod"},
		{o.namespaces, o.fromNamespaces, o.toNamespaces, "namespace"},
		{o.ips, o.fromIPs, o.toIPs, "ip"},
		{o.ports, o.fromPorts, o.toPorts, "port"},
		{o.services, o.fromServices, o.toServices, "service"},
		{o.labels, o.fromLabels, o.toLabels, "label"},
		{o.workloads, o.fromWorkloads, o.toWorkloads, "workload"},
	} {
		if len(c.either) > 0 && (len(c.from) > 0 || len(c.to) > 0) {
			return nil, usageErrorf("%s--%s cannot be combined with --from-%s or --to-%s", neg, c.name, c.name, c.name)
		}
	}

	common := &flowtracev1.FlowFilter{}
	for _, v := range o.verdicts {
		n, err := parseEnum(neg+"--verdict", v, "VERDICT_", flowtracev1.Verdict_value, flowtracev1.Verdict_name)
		if err != nil {
			return nil, err
		}
		common.Verdict = append(common.Verdict, flowtracev1.Verdict(n))
	}
	for _, v := range o.dropReasons {
		n, err := parseEnum(neg+"--drop-reason", v, "DROP_REASON_", flowtracev1.DropReason_value, flowtracev1.DropReason_name)
		if err != nil {
			return nil, err
		}
		common.DropReason = append(common.DropReason, flowtracev1.DropReason(n))
	}
	for _, v := range o.dropCauses {
		c, err := parseDropCause(neg+"--drop-cause", v)
		if err != nil {
			return nil, err
		}
		common.DropCause = append(common.DropCause, c)
	}
	for _, v := range o.directions {
		n, err := parseEnum(neg+"--traffic-direction", v, "TRAFFIC_DIRECTION_", flowtracev1.TrafficDirection_value, flowtracev1.TrafficDirection_name)
		if err != nil {
			return nil, err
		}
		common.TrafficDirection = append(common.TrafficDirection, flowtracev1.TrafficDirection(n))
	}
	for _, v := range o.observationPoints {
		n, err := parseEnum(neg+"--observation-point", v, "OBSERVATION_POINT_", flowtracev1.ObservationPoint_value, flowtracev1.ObservationPoint_name)
		if err != nil {
			return nil, err
		}
		common.ObservationPoint = append(common.ObservationPoint, flowtracev1.ObservationPoint(n))
	}
	for _, v := range o.ipVersions {
		// "4" and "v4" are what people type.
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "4", "v4":
			v = "ipv4"
		case "6", "v6":
			v = "ipv6"
		}
		n, err := parseEnum(neg+"--ip-version", v, "IP_VERSION_", flowtracev1.IPVersion_value, flowtracev1.IPVersion_name)
		if err != nil {
			return nil, err
		}
		common.IpVersion = append(common.IpVersion, flowtracev1.IPVersion(n))
	}
	for _, v := range o.reply {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, usageErrorf("invalid %s--reply %q: want true or false", neg, v)
		}
		common.Reply = append(common.Reply, b)
	}
	for _, v := range o.tcpFlags {
		fl, err := filters.ParseTCPFlags(v)
		if err != nil {
			return nil, usageErrorf("invalid %s--tcp-flags: %v", neg, err)
		}
		common.TcpFlags = append(common.TcpFlags, fl)
	}
	for _, v := range o.protocols {
		p := strings.ToLower(strings.TrimSpace(v))
		if !contains(filters.Protocols(), p) {
			return nil, usageErrorf("invalid %s--protocol %q: valid values are %s", neg, v, strings.Join(filters.Protocols(), ", "))
		}
		common.Protocol = append(common.Protocol, p)
	}
	for _, c := range []struct {
		name string
		vals []string
	}{{"label", o.labels}, {"from-label", o.fromLabels}, {"to-label", o.toLabels}} {
		for _, v := range c.vals {
			if err := filters.CheckLabelSelector(v); err != nil {
				return nil, usageErrorf("invalid %s--%s: %v", neg, c.name, err)
			}
		}
	}
	common.Interface = append(common.Interface, o.interfaces...)
	common.SourcePod = append(common.SourcePod, o.fromPods...)
	common.DestinationPod = append(common.DestinationPod, o.toPods...)
	common.SourceNamespace = append(common.SourceNamespace, o.fromNamespaces...)
	common.DestinationNamespace = append(common.DestinationNamespace, o.toNamespaces...)
	common.SourceService = append(common.SourceService, o.fromServices...)
	common.DestinationService = append(common.DestinationService, o.toServices...)
	common.SourceLabel = append(common.SourceLabel, o.fromLabels...)
	common.DestinationLabel = append(common.DestinationLabel, o.toLabels...)
	common.SourceWorkload = append(common.SourceWorkload, o.fromWorkloads...)
	common.DestinationWorkload = append(common.DestinationWorkload, o.toWorkloads...)
	common.NodeName = append(common.NodeName, o.nodes...)
	common.Uuid = append(common.Uuid, o.uuids...)
	var err error
	if common.SourceIp, err = checkIPs(neg+"--from-ip", o.fromIPs); err != nil {
		return nil, err
	}
	if common.DestinationIp, err = checkIPs(neg+"--to-ip", o.toIPs); err != nil {
		return nil, err
	}
	if common.SourcePort, err = parsePorts(neg+"--from-port", o.fromPorts); err != nil {
		return nil, err
	}
	if common.DestinationPort, err = parsePorts(neg+"--to-port", o.toPorts); err != nil {
		return nil, err
	}
	ips, err := checkIPs(neg+"--ip", o.ips)
	if err != nil {
		return nil, err
	}
	ports, err := parsePorts(neg+"--port", o.ports)
	if err != nil {
		return nil, err
	}

	if len(o.pods) == 0 && len(o.namespaces) == 0 && len(ips) == 0 && len(ports) == 0 && len(o.services) == 0 &&
		len(o.labels) == 0 && len(o.workloads) == 0 {
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
	if len(o.labels) > 0 {
		src.SourceLabel, dst.DestinationLabel = o.labels, o.labels
	}
	if len(o.workloads) > 0 {
		src.SourceWorkload, dst.DestinationWorkload = o.workloads, o.workloads
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
	return 0, usageErrorf("invalid %s %q: valid values are %s", flag, v, strings.Join(enumNames(names, prefix), ", "))
}

// dropCauseNames are --drop-cause's values: the causes, and "NONE" for a
// drop flowtrace has no explanation for (DROP_CAUSE_UNSPECIFIED).
func dropCauseNames() []string {
	return append(enumNames(flowtracev1.DropCause_name, "DROP_CAUSE_"), "NONE")
}

func parseDropCause(flag, v string) (flowtracev1.DropCause, error) {
	if strings.EqualFold(strings.TrimSpace(v), "none") {
		return flowtracev1.DropCause_DROP_CAUSE_UNSPECIFIED, nil
	}
	n, err := parseEnum(flag, v, "DROP_CAUSE_", flowtracev1.DropCause_value, flowtracev1.DropCause_name)
	if err != nil {
		return 0, usageErrorf("invalid %s %q: valid values are %s", flag, v, strings.Join(dropCauseNames(), ", "))
	}
	return flowtracev1.DropCause(n), nil
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
		return nil, usageErrorf("invalid %s %q: want an IP address or CIDR, e.g. 10.0.0.1 or 10.0.0.0/8", flag, v)
	}
	return vals, nil
}

func parsePorts(flag string, vals []string) ([]uint32, error) {
	var out []uint32
	for _, v := range vals {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil || n == 0 || n > 65535 {
			return nil, usageErrorf("invalid %s %q: want a port number from 1 to 65535", flag, v)
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
	if t, ok := parseTimeOf(v, now.Location()); ok {
		return timestamppb.New(t), nil
	}
	return nil, usageErrorf("invalid --%s %q: want RFC3339 (2006-01-02T15:04:05Z07:00; the zone may be left out for local time, the time for midnight), unix seconds (as --time-format unix prints), or a duration ago (30s, 5m, 1h)", flag, v)
}

// localLayouts are the times --since and --until take without a zone, in
// loc (the local zone): what people type.
var localLayouts = []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"}

// parseTimeOf reads an absolute time: RFC3339, unix seconds with an
// optional fraction (what --time-format unix prints, so its output can be
// fed back), or one of localLayouts in loc.
func parseTimeOf(v string, loc *time.Location) (time.Time, bool) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, true
	}
	if sec, frac, found := strings.Cut(v, "."); sec != "" && isDigits(sec) && (!found || frac != "" && isDigits(frac)) && len(sec) <= 11 {
		s, _ := strconv.ParseInt(sec, 10, 64)
		var ns int64
		if found {
			frac = (frac + "000000000")[:9]
			ns, _ = strconv.ParseInt(frac, 10, 64)
		}
		return time.Unix(s, ns), true
	}
	for _, layout := range localLayouts {
		if t, err := time.ParseInLocation(layout, v, loc); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func contains(vals []string, v string) bool {
	for _, x := range vals {
		if x == v {
			return true
		}
	}
	return false
}

func runObserve(ctx context.Context, g *globalOpts, req *flowtracev1.GetFlowsRequest, output string, popts printer.Options, w, errw io.Writer) error {
	p, err := printer.New(output, w, popts)
	if err != nil {
		return usageErrorf("%v", err)
	}
	dctx, cancel := context.WithTimeout(ctx, g.timeout)
	conn, err := g.dial(dctx)
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
	return receive(ctx, stream, p, output, req.Follow && output == printer.Table, errw)
}

// tableIdleFlush is how long a followed table's rows wait for more before
// they are written: a table aligns the rows it writes together, and rows
// that trickle in would otherwise wait for a batch of 50 (a quiet
// --verdict dropped looked dead).
const tableIdleFlush = 200 * time.Millisecond

// receive prints the stream's responses until it ends. idleFlush (a
// followed table) writes the rows once the stream has been quiet for
// tableIdleFlush; the other formats write each response at once.
func receive(ctx context.Context, stream flowtracev1.ObserverService_GetFlowsClient, p *printer.Printer, output string, idleFlush bool, errw io.Writer) error {
	type recvd struct {
		r   *flowtracev1.GetFlowsResponse
		err error
	}
	ch := make(chan recvd, 64)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			r, err := stream.Recv()
			select {
			case ch <- recvd{r, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	for {
		select {
		case <-idle.C:
			if err := p.Flush(); err != nil {
				return fmt.Errorf("print flow: %w", err)
			}
		case in := <-ch:
			if errors.Is(in.err, io.EOF) {
				return p.Flush()
			}
			if in.err != nil {
				return streamError(ctx, in.err, p)
			}
			if err := printResponse(p, output, in.r, errw); err != nil {
				return fmt.Errorf("print flow: %w", err)
			}
			if idleFlush {
				idle.Reset(tableIdleFlush)
			}
		}
	}
}

// printResponse prints one response; a HistoryStart is a line for people on
// stderr (and, in json, also an object in the stream, for replays).
func printResponse(p *printer.Printer, output string, r *flowtracev1.GetFlowsResponse, errw io.Writer) error {
	if hs := r.GetHistoryStart(); hs != nil {
		if err := p.Flush(); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(errw, p.HistoryStartText(hs)); err != nil {
			return err
		}
		if output != printer.JSON {
			return nil
		}
	}
	return p.Print(r)
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
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		return errors.Join(fmt.Errorf("the stream ended: %s", st.Message()), ferr)
	}
	return errors.Join(fmt.Errorf("receive flows: %w", err), ferr)
}

// printRawFilters prints the request's lists as JSON (proto field names), as
// the agent will receive them.
func printRawFilters(w io.Writer, req *flowtracev1.GetFlowsRequest) error {
	enc := protojson.MarshalOptions{UseProtoNames: true}
	list := func(ffs []*flowtracev1.FlowFilter) ([]json.RawMessage, error) {
		out := make([]json.RawMessage, 0, len(ffs))
		for _, ff := range ffs {
			b, err := enc.Marshal(ff)
			if err != nil {
				return nil, err
			}
			out = append(out, json.RawMessage(b))
		}
		return out, nil
	}
	var raw struct {
		Allowlist []json.RawMessage `json:"allowlist"`
		Denylist  []json.RawMessage `json:"denylist"`
	}
	var err error
	if raw.Allowlist, err = list(req.GetAllowlist()); err != nil {
		return fmt.Errorf("encode allowlist: %w", err)
	}
	if raw.Denylist, err = list(req.GetDenylist()); err != nil {
		return fmt.Errorf("encode denylist: %w", err)
	}
	b, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		return fmt.Errorf("encode filters: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// colorOn decides --color: auto colours only a terminal, and honours NO_COLOR.
func colorOn(mode string, w io.Writer) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	if os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// maxReplayLine bounds one JSON line of --input-file.
const maxReplayLine = 4 << 20

// replay reads responses written by "-o json" and prints those the request
// selects, with the same filters (pkg/filters) and printers as a live
// stream. Without --last or --first every matching flow is printed. A
// malformed line is reported on errw with its line number and skipped.
func (o *observeOpts) replay(req *flowtracev1.GetFlowsRequest, popts printer.Options, stdin io.Reader, w, errw io.Writer) error {
	p, err := printer.New(o.output, w, popts)
	if err != nil {
		return usageErrorf("%v", err)
	}
	m, err := filters.Build(req.GetAllowlist(), req.GetDenylist())
	if err != nil {
		return usageErrorf("invalid filter: %v", err)
	}
	mask, err := filters.NewFieldMask(req.GetFieldMask().GetPaths())
	if err != nil {
		return usageErrorf("invalid --fields: %v", err)
	}
	name := o.inputFile
	in := stdin
	if name == "-" {
		name = "stdin"
	} else {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("open input file: %w", err)
		}
		defer f.Close()
		in = f
	}
	var since, until time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		until = req.GetUntil().AsTime()
	}
	// last > 0 keeps a window of the newest matching flows; lost-events and
	// history lines inside the window stay where they were.
	last := uint64(0)
	if o.lastSet || o.last > 0 {
		last = o.last
	}
	var kept []*flowtracev1.GetFlowsResponse
	var keptFlows, printed uint64
	emit := func(r *flowtracev1.GetFlowsResponse) error {
		return printResponse(p, o.output, r, errw)
	}

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), maxReplayLine)
	dec := protojson.UnmarshalOptions{DiscardUnknown: true}
	line, bad, good := 0, 0, 0
	for sc.Scan() {
		line++
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		r := &flowtracev1.GetFlowsResponse{}
		if err := dec.Unmarshal(text, r); err != nil || r.GetResponseTypes() == nil || unknownVerdict(r, text) {
			switch {
			case err != nil:
			case r.GetResponseTypes() == nil:
				err = errors.New("neither a flow, lost events nor a history start")
			default:
				err = errors.New("a flow whose verdict this version does not know")
			}
			bad++
			if bad <= maxReplayErrors {
				fmt.Fprintf(errw, "%s:%d: skipping malformed line: %v\n", name, line, err)
			}
			continue
		}
		good++
		if f := r.GetFlow(); f != nil {
			t := r.GetTime().AsTime()
			if r.GetTime() == nil {
				t = f.GetTime().AsTime()
			}
			if !since.IsZero() && t.Before(since) || !until.IsZero() && t.After(until) || !m.Match(f) {
				continue
			}
			r.ResponseTypes = &flowtracev1.GetFlowsResponse_Flow{Flow: mask.Apply(f)}
			switch {
			case o.first > 0:
				if printed == o.first {
					continue
				}
				printed++
			case last > 0:
				kept = append(kept, r)
				keptFlows++
				for keptFlows > last {
					if kept[0].GetFlow() != nil {
						keptFlows--
					}
					kept[0] = nil
					kept = kept[1:]
					// Reports before the oldest flow kept belong to the part
					// left out.
					for len(kept) > 0 && kept[0].GetFlow() == nil {
						kept = kept[1:]
					}
				}
				continue
			}
		} else if last > 0 {
			kept = append(kept, r)
			continue
		}
		if err := emit(r); err != nil {
			return fmt.Errorf("print flow: %w", err)
		}
	}
	if err := sc.Err(); err != nil {
		_ = p.Flush()
		return fmt.Errorf("read %s after line %d: %w", name, line, err)
	}
	for _, r := range kept {
		if err := emit(r); err != nil {
			return fmt.Errorf("print flow: %w", err)
		}
	}
	if bad > 0 {
		fmt.Fprintf(errw, "%s: %d malformed line(s) skipped\n", name, bad)
	}
	if bad > 0 && good == 0 {
		_ = p.Flush()
		return fmt.Errorf("%s has no flows: none of its %d non-empty lines is a response written by \"-o json\"", name, bad)
	}
	return p.Flush()
}

// unknownVerdict reports a flow line that names a verdict the decoder
// turned into 0: DiscardUnknown, which lets files of newer versions with
// new fields replay, also takes an unknown enum name for the zero value. A
// line without a verdict (written with --fields) is fine.
func unknownVerdict(r *flowtracev1.GetFlowsResponse, line []byte) bool {
	f := r.GetFlow()
	return f != nil && f.GetVerdict() == 0 && bytes.Contains(line, []byte(`"verdict"`))
}

// maxReplayErrors bounds the malformed lines a replay names one by one: a
// file of something else is one error, not one per line.
const maxReplayErrors = 10
