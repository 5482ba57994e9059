// Package server serves the flowtrace ObserverService over gRPC.
//
// Request validation (codes.InvalidArgument): since after until, enum values
// the API does not define, filters that do not compile, more filters than
// Limits.MaxFilters and a number above Limits.MaxNumber (default 1,000,000;
// a number up to it but above what history holds returns everything that
// matches). Requests larger than Limits.MaxRecvMsgSize are refused with
// codes.ResourceExhausted by gRPC itself.
//
// Transport: the unix socket (Serve) carries no transport security, its
// 0600 mode is the access control; a TCP listener is served with TLS
// (ServeTLS), optionally requiring client certificates (mTLS). Every
// server also answers gRPC health checks (grpc.health.v1, service
// "flowtrace.v1.ObserverService") and reflection.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/flowtrace/flowtrace/pkg/filters"
	"github.com/flowtrace/flowtrace/pkg/observer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// StatusSource is the agent's part of ServerStatus: interfaces, features,
// kernel and agent-queue losses, identity sources, counters, version, uptime.
type StatusSource interface {
	Status(ctx context.Context) *flowtracev1.ServerStatusResponse
}

// Server implements flowtracev1.ObserverServiceServer.
type Server struct {
	flowtracev1.UnimplementedObserverServiceServer
	obs *observer.Observer
	st  StatusSource
	log *slog.Logger
	lim Limits
}

// Option configures a Server.
type Option func(*Server)

// WithLimits sets the request limits (zero fields keep their defaults).
func WithLimits(l Limits) Option { return func(s *Server) { s.lim = l } }

// New returns a Server over obs; st may be nil (observer status only).
func New(obs *observer.Observer, st StatusSource, log *slog.Logger, opts ...Option) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{obs: obs, st: st, log: log}
	for _, o := range opts {
		o(s)
	}
	s.lim = s.lim.withDefaults()
	return s
}

// Serve serves on lis without transport security (the unix socket, whose
// 0600 mode is the access control) until ctx is done, then stops
// gracefully: followed streams are ended (their contexts derive from ctx)
// and unary calls may finish. It returns nil after a stop caused by ctx.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	return ServeGRPC(ctx, NewGRPCServer(ctx, s, s.lim, nil), lis, s.log)
}

// ServeTLS is Serve with TLS (and mTLS when cfg has ClientCAs) on lis; it
// is what a TCP listener must use.
func (s *Server) ServeTLS(ctx context.Context, lis net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		return errors.New("serve TLS: no TLS configuration")
	}
	return ServeGRPC(ctx, NewGRPCServer(ctx, s, s.lim, credentials.NewTLS(cfg)), lis, s.log)
}

// GetFlows implements the ObserverService.
func (s *Server) GetFlows(req *flowtracev1.GetFlowsRequest, stream grpc.ServerStreamingServer[flowtracev1.GetFlowsResponse]) error {
	m, err := ValidateRequest(req)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	// Flows read out of history go as the bytes history holds
	// (flowCodec knows *observer.EncodedFlow), not encoded again.
	err = s.obs.GetFlowsTo(ctx, req, m, observer.Sender{Send: stream.Send,
		Encoded: func(e *observer.EncodedFlow) error { return stream.SendMsg(e) }})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		// The client went away or the server is stopping: not an error.
		return status.FromContextError(ctx.Err()).Err()
	default:
		s.log.Debug("get flows stream ended", "error", err)
		return err
	}
}

// ValidateRequest checks req and compiles its filters; errors are
// codes.InvalidArgument with a message a person can act on.
func ValidateRequest(req *flowtracev1.GetFlowsRequest) (filters.Matcher, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	for _, ts := range []struct {
		name string
		t    *timestamppb.Timestamp
	}{{"since", req.GetSince()}, {"until", req.GetUntil()}} {
		if ts.t != nil {
			if err := ts.t.CheckValid(); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "%s: %v", ts.name, err)
			}
		}
	}
	if req.GetSince() != nil && req.GetUntil() != nil && req.GetSince().AsTime().After(req.GetUntil().AsTime()) {
		return nil, status.Errorf(codes.InvalidArgument, "since (%s) is after until (%s): no flow can match",
			req.GetSince().AsTime().Format(time.RFC3339Nano), req.GetUntil().AsTime().Format(time.RFC3339Nano))
	}
	if req.GetFirst() && req.GetFollow() {
		return nil, status.Error(codes.InvalidArgument, "first and follow cannot be combined: first reads the oldest flows, follow the newest")
	}
	m, err := filters.Build(req.GetAllowlist(), req.GetDenylist())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad filter: %v", err)
	}
	return m, nil
}

// ServerStatus implements the ObserverService: the StatusSource's response
// with the observer's history and loss counters merged in. For a loss stage
// both report, the StatusSource's count wins (the agent counts at the
// source, e.g. the kernel's failed ring buffer reserves); history-evicted and
// client-queue totals always come from the observer.
func (s *Server) ServerStatus(ctx context.Context, _ *flowtracev1.ServerStatusRequest) (*flowtracev1.ServerStatusResponse, error) {
	resp := &flowtracev1.ServerStatusResponse{}
	if s.st != nil {
		if r := s.st.Status(ctx); r != nil {
			// Clone: the source may hand out a shared message.
			resp = proto.Clone(r).(*flowtracev1.ServerStatusResponse)
		}
	}
	os := s.obs.Status()
	resp.NumFlows = os.NumFlows
	resp.MaxFlows = os.MaxFlows
	resp.SeenFlows = os.SeenFlows
	resp.EvictedFlows = os.EvictedFlows
	resp.NumFollowers = uint32(os.Followers)
	resp.FlowsRate = os.FlowsRate
	resp.MaxFlowAge = durationpb.New(os.MaxAge)
	resp.OldestFlowTime, resp.NewestFlowTime = nil, nil
	if !os.OldestFlow.IsZero() {
		resp.OldestFlowTime = timestamppb.New(os.OldestFlow)
		resp.NewestFlowTime = timestamppb.New(os.NewestFlow)
	}
	if resp.NodeName == "" {
		resp.NodeName = s.obs.Config().NodeName
	}

	lost := make(map[flowtracev1.LostEventsSource]uint64, len(os.Lost))
	for src, n := range os.Lost {
		lost[src] = n
	}
	for _, lc := range resp.GetLostEvents() {
		switch lc.GetSource() {
		case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED,
			flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE:
		default:
			lost[lc.GetSource()] = lc.GetCount()
		}
	}
	resp.LostEvents = resp.LostEvents[:0]
	for src, n := range lost {
		resp.LostEvents = append(resp.LostEvents, &flowtracev1.LostEventsCount{Source: src, Count: n})
	}
	slices.SortFunc(resp.LostEvents, func(a, b *flowtracev1.LostEventsCount) int { return cmp.Compare(a.Source, b.Source) })
	return resp, nil
}
