// Package hubbleserver serves Hubble's Observer API (GetFlows, ServerStatus,
// GetNodes, GetNamespaces and the gRPC health check the Hubble CLI calls)
// from a flowtrace agent's native API, so the unchanged `hubble` CLI and
// other Hubble clients work against flowtrace.
//
// Hubble's filters are applied here, with Hubble's semantics, to the
// converted flows; the part of them flowtrace can express is also sent to
// the agent so it streams less. When that part is exact, the agent also
// applies number/first; otherwise this server reads the agent's history and
// selects the flows itself.
package hubbleserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"github.com/cilium/cilium/pkg/hubble/parser/fieldmask"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/flowtrace/flowtrace/cmd/flowtrace-hubble/internal/convert"
	"github.com/flowtrace/flowtrace/cmd/flowtrace-hubble/internal/hubblefilter"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// ObserverServiceName is the service the Hubble CLI's health check asks
// about ("hubble status").
const ObserverServiceName = "hubble.server.Observer"

// Config describes the upstream for the answers that name it.
type Config struct {
	// Upstream is the flowtrace agent's address, reported by GetNodes.
	Upstream string
	// Version of this adapter, reported with the agent's.
	Version string
	// TLS says whether this server's listener uses TLS (GetNodes).
	TLS bool
	// HealthInterval is how often the agent is probed for the health
	// service; 0 means 5 s.
	HealthInterval time.Duration
}

// Server implements observerpb.ObserverServer over a flowtrace agent.
type Server struct {
	observerpb.UnimplementedObserverServer
	cfg    Config
	up     flowtracev1.ObserverServiceClient
	log    *slog.Logger
	health *health.Server
}

// New returns a Server reading from up.
func New(cfg Config, up flowtracev1.ObserverServiceClient, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 5 * time.Second
	}
	return &Server{cfg: cfg, up: up, log: log, health: health.NewServer()}
}

// Register adds the Observer and health services to gs.
func (s *Server) Register(gs *grpc.Server) {
	observerpb.RegisterObserverServer(gs, s)
	healthpb.RegisterHealthServer(gs, s.health)
}

// RunHealth reports "hubble.server.Observer" as SERVING while the agent
// answers ServerStatus, NOT_SERVING otherwise, until ctx is done.
func (s *Server) RunHealth(ctx context.Context) {
	t := time.NewTicker(s.cfg.HealthInterval)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	for {
		st := healthpb.HealthCheckResponse_SERVING
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := s.up.ServerStatus(cctx, &flowtracev1.ServerStatusRequest{})
		cancel()
		if err != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if st != last {
			s.log.Info("observer health", "status", st.String(), "error", err)
			last = st
		}
		s.health.SetServingStatus(ObserverServiceName, st)
		s.health.SetServingStatus("", st)
		select {
		case <-ctx.Done():
			s.health.Shutdown()
			return
		case <-t.C:
		}
	}
}

// request is one GetFlows call, compiled.
type request struct {
	match *hubblefilter.Matcher
	mask  fieldmask.FieldMask
	kinds convert.Kinds
}

func (r *request) convert(resp *flowtracev1.GetFlowsResponse) *observerpb.GetFlowsResponse {
	out := &observerpb.GetFlowsResponse{NodeName: resp.GetNodeName(), Time: resp.GetTime()}
	switch {
	case resp.GetFlow() != nil:
		f := convert.Flow(resp.GetFlow(), r.kinds)
		if !r.match.Match(f) {
			return nil
		}
		if r.mask.Active() {
			masked := &flowpb.Flow{}
			r.mask.Alloc(masked.ProtoReflect())
			r.mask.Copy(masked.ProtoReflect(), f.ProtoReflect())
			f = masked
		}
		out.ResponseTypes = &observerpb.GetFlowsResponse_Flow{Flow: f}
	case resp.GetLostEvents() != nil:
		out.ResponseTypes = &observerpb.GetFlowsResponse_LostEvents{LostEvents: convert.LostEvent(resp.GetLostEvents())}
	default:
		return nil
	}
	return out
}

// GetFlows implements the Observer service.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	ctx := stream.Context()
	r := &request{}
	var err error
	if r.match, err = hubblefilter.Build(req.GetWhitelist(), req.GetBlacklist()); err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid filter: %v", err)
	}
	if r.mask, err = fieldmask.New(req.GetFieldMask()); err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid field mask: %v", err)
	}
	if req.GetFirst() && req.GetFollow() {
		return status.Error(codes.InvalidArgument, "first cannot be combined with follow")
	}
	r.kinds = s.kinds(ctx)

	push := convert.Filters(req.GetWhitelist(), req.GetBlacklist())
	native := &flowtracev1.GetFlowsRequest{
		Since:     req.GetSince(),
		Until:     req.GetUntil(),
		Allowlist: push.Allow,
		Denylist:  push.Deny,
	}
	// As Hubble does: a bounded-in-time read without until ends now.
	if native.Since != nil && native.Until == nil && !req.GetFollow() {
		native.Until = timestamppb.Now()
	}
	send := func(resp *flowtracev1.GetFlowsResponse) error {
		if out := r.convert(resp); out != nil {
			return stream.Send(out)
		}
		return nil
	}

	if push.Exact {
		native.Number, native.First, native.Follow = req.GetNumber(), req.GetFirst(), req.GetFollow()
		return s.stream(ctx, native, send)
	}
	if !req.GetFollow() {
		return s.history(ctx, native, req.GetNumber(), req.GetFirst(), r, stream.Send)
	}
	return s.followSelected(ctx, native, req.GetNumber(), r, stream.Send, send)
}

// stream copies one native stream through send.
func (s *Server) stream(ctx context.Context, native *flowtracev1.GetFlowsRequest, send func(*flowtracev1.GetFlowsResponse) error) error {
	st, err := s.up.GetFlows(ctx, native)
	if err != nil {
		return upstreamErr(err)
	}
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return upstreamErr(err)
		}
		if err := send(resp); err != nil {
			return err
		}
	}
}

// selectHistory reads the agent's whole (time-bounded) history and keeps
// the number Hubble asked for: the first ones, or the last ones.
func (s *Server) selectHistory(ctx context.Context, native *flowtracev1.GetFlowsRequest, number uint64, first bool, r *request, seen map[string]struct{}) ([]*observerpb.GetFlowsResponse, error) {
	h := proto.Clone(native).(*flowtracev1.GetFlowsRequest)
	h.Number, h.First, h.Follow = 0, false, false
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []*observerpb.GetFlowsResponse
	errEnough := errors.New("enough")
	err := s.stream(ctx, h, func(resp *flowtracev1.GetFlowsResponse) error {
		if seen != nil && resp.GetFlow().GetUuid() != "" {
			seen[resp.GetFlow().GetUuid()] = struct{}{}
		}
		c := r.convert(resp)
		if c == nil || c.GetFlow() == nil {
			return nil
		}
		out = append(out, c)
		if number == 0 || uint64(len(out)) <= number {
			if first && number != 0 && uint64(len(out)) == number && seen == nil {
				return errEnough
			}
			return nil
		}
		// Keep the newest number flows; copy down now and then so the
		// slice stays bounded by twice number.
		if uint64(len(out)) >= 2*number {
			out = append(out[:0], out[uint64(len(out))-number:]...)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return nil, err
	}
	if number != 0 && uint64(len(out)) > number {
		if first {
			out = out[:number]
		} else {
			out = out[uint64(len(out))-number:]
		}
	}
	return out, nil
}

func (s *Server) history(ctx context.Context, native *flowtracev1.GetFlowsRequest, number uint64, first bool, r *request, send func(*observerpb.GetFlowsResponse) error) error {
	out, err := s.selectHistory(ctx, native, number, first, r, nil)
	if err != nil {
		return err
	}
	for _, resp := range out {
		if err := send(resp); err != nil {
			return err
		}
	}
	return nil
}

// followSelected serves --last N --follow when the agent cannot select the
// N flows itself: it subscribes to live flows first, then reads history, so
// nothing published in between is missed; flows in both are sent once.
func (s *Server) followSelected(ctx context.Context, native *flowtracev1.GetFlowsRequest, number uint64, r *request,
	sendOut func(*observerpb.GetFlowsResponse) error, send func(*flowtracev1.GetFlowsResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	live := proto.Clone(native).(*flowtracev1.GetFlowsRequest)
	live.Number, live.Follow, live.Since = 0, true, nil
	st, err := s.up.GetFlows(ctx, live)
	if err != nil {
		return upstreamErr(err)
	}
	type item struct {
		resp *flowtracev1.GetFlowsResponse
		err  error
	}
	ch := make(chan item, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			resp, err := st.Recv()
			select {
			case ch <- item{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	// The agent registers a follower as its GetFlows call starts, and the
	// live call was sent first on the same connection; give it a moment
	// (or its first flow) before reading history, so no flow falls
	// between the two. Flows in both are deduplicated below.
	var first *item
	select {
	case it := <-ch:
		first = &it
	case <-time.After(100 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}

	seen := map[string]struct{}{}
	if number > 0 || native.GetSince() != nil {
		out, err := s.selectHistory(ctx, native, number, false, r, seen)
		if err != nil {
			return err
		}
		for _, resp := range out {
			if err := sendOut(resp); err != nil {
				return err
			}
		}
	}
	for {
		var it item
		if first != nil {
			it, first = *first, nil
		} else {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case it = <-ch:
			}
		}
		{
			if errors.Is(it.err, io.EOF) {
				return nil
			}
			if it.err != nil {
				return upstreamErr(it.err)
			}
			if id := it.resp.GetFlow().GetUuid(); id != "" {
				if _, dup := seen[id]; dup {
					delete(seen, id)
					continue
				}
			}
			if err := send(it.resp); err != nil {
				return err
			}
		}
	}
}

func upstreamErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return status.Errorf(st.Code(), "flowtrace agent: %s", st.Message())
	}
	return status.Errorf(codes.Unavailable, "flowtrace agent: %v", err)
}

// kinds asks the agent which of its interfaces are veths; without an
// answer flows are still served, with stack-relative trace points.
func (s *Server) kinds(ctx context.Context) convert.Kinds {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := s.up.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
	if err != nil {
		s.log.Debug("agent status for interface kinds", "error", err)
		return nil
	}
	k := convert.Kinds{}
	for _, i := range st.GetInterfaces() {
		switch i.GetKind() {
		case "veth":
			k[i.GetName()] = convert.KindVeth
		case "device":
			k[i.GetName()] = convert.KindDevice
		}
	}
	return k
}

func (s *Server) version(st *flowtracev1.ServerStatusResponse) string {
	v := "flowtrace " + st.GetVersion()
	if s.cfg.Version != "" {
		v += " (flowtrace-hubble " + s.cfg.Version + ")"
	}
	return v
}

// ServerStatus implements the Observer service from the agent's status.
func (s *Server) ServerStatus(ctx context.Context, _ *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	st, err := s.up.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
	if err != nil {
		return nil, upstreamErr(err)
	}
	up := st.GetUptime().AsDuration()
	return &observerpb.ServerStatusResponse{
		NumFlows:            st.GetNumFlows(),
		MaxFlows:            st.GetMaxFlows(),
		SeenFlows:           st.GetSeenFlows(),
		UptimeNs:            uint64(up.Nanoseconds()),
		Version:             s.version(st),
		FlowsRate:           st.GetFlowsRate(), // the last minute's, as Hubble's
		NumConnectedNodes:   wrapperspb.UInt32(1),
		NumUnavailableNodes: wrapperspb.UInt32(0),
	}, nil
}

// recent returns the agent's flows of the last hour, for the node and
// namespace listings.
func (s *Server) recent(ctx context.Context) ([]*flowtracev1.Flow, error) {
	var out []*flowtracev1.Flow
	err := s.stream(ctx, &flowtracev1.GetFlowsRequest{Since: timestamppb.New(time.Now().Add(-time.Hour)), Until: timestamppb.Now()},
		func(resp *flowtracev1.GetFlowsResponse) error {
			if f := resp.GetFlow(); f != nil {
				out = append(out, f)
			}
			return nil
		})
	return out, err
}

// GetNodes implements the Observer service: the agent's node, and any
// other node named by recent flows (an agent behind a relay).
func (s *Server) GetNodes(ctx context.Context, _ *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	st, err := s.up.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
	if err != nil {
		return nil, upstreamErr(err)
	}
	tls := &observerpb.TLS{Enabled: s.cfg.TLS}
	self := &observerpb.Node{
		Name:      st.GetNodeName(),
		Version:   s.version(st),
		Address:   s.cfg.Upstream,
		State:     relaypb.NodeState_NODE_CONNECTED,
		Tls:       tls,
		UptimeNs:  uint64(st.GetUptime().AsDuration().Nanoseconds()),
		NumFlows:  st.GetNumFlows(),
		MaxFlows:  st.GetMaxFlows(),
		SeenFlows: st.GetSeenFlows(),
	}
	resp := &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{self}}
	flows, err := s.recent(ctx)
	if err != nil {
		return nil, err
	}
	known := map[string]bool{self.GetName(): true}
	for _, f := range flows {
		if n := f.GetNodeName(); n != "" && !known[n] {
			known[n] = true
			resp.Nodes = append(resp.Nodes, &observerpb.Node{Name: n, Version: self.GetVersion(), Address: s.cfg.Upstream, State: relaypb.NodeState_NODE_CONNECTED, Tls: tls})
		}
	}
	slices.SortFunc(resp.Nodes[1:], func(a, b *observerpb.Node) int { return compare(a.GetName(), b.GetName()) })
	return resp, nil
}

// GetNamespaces implements the Observer service: namespaces with flows in
// the last hour, as Hubble defines it.
func (s *Server) GetNamespaces(ctx context.Context, _ *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	flows, err := s.recent(ctx)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, f := range flows {
		for _, ns := range []string{f.GetSource().GetNamespace(), f.GetDestination().GetNamespace(),
			f.GetSourceService().GetNamespace(), f.GetDestinationService().GetNamespace()} {
			if ns != "" {
				set[ns] = true
			}
		}
	}
	resp := &observerpb.GetNamespacesResponse{}
	for ns := range set {
		resp.Namespaces = append(resp.Namespaces, &observerpb.Namespace{Namespace: ns})
	}
	slices.SortFunc(resp.Namespaces, func(a, b *observerpb.Namespace) int { return compare(a.GetNamespace(), b.GetNamespace()) })
	return resp, nil
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// String describes the server for logs.
func (s *Server) String() string { return fmt.Sprintf("hubble observer over %s", s.cfg.Upstream) }
