// Package server serves the flowtrace ObserverService over gRPC.
//
// Request validation (codes.InvalidArgument): since after until, enum values
// the API does not define, and filters that do not compile. number is never
// rejected: a number larger than the history holds simply returns everything
// that matches, since no request can ask for more flows than exist.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/flowtrace/flowtrace/pkg/filters"
	"github.com/flowtrace/flowtrace/pkg/observer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
}

// New returns a Server over obs; st may be nil (observer status only).
func New(obs *observer.Observer, st StatusSource, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{obs: obs, st: st, log: log}
}

// stopGrace bounds how long Serve waits for in-flight calls after ctx is done.
const stopGrace = 5 * time.Second

// Serve serves on lis until ctx is done, then stops gracefully: followed
// streams are ended (their contexts derive from ctx) and unary calls may
// finish. It returns nil after a stop caused by ctx.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	gs := grpc.NewServer(
		// Follow streams never end on their own; tie them to ctx so that
		// GracefulStop does not wait for clients that stream forever.
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			sctx, cancel := context.WithCancel(ss.Context())
			defer cancel()
			stop := context.AfterFunc(ctx, cancel)
			defer stop()
			return h(srv, &ctxStream{ServerStream: ss, ctx: sctx})
		}),
	)
	flowtracev1.RegisterObserverServiceServer(gs, s)

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	s.log.Info("serving flow API", "addr", lis.Addr().String())
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("serve grpc on %s: %w", lis.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		s.log.Warn("graceful stop timed out; closing connections")
		gs.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve grpc on %s: %w", lis.Addr(), err)
	}
	return nil
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// GetFlows implements the ObserverService.
func (s *Server) GetFlows(req *flowtracev1.GetFlowsRequest, stream grpc.ServerStreamingServer[flowtracev1.GetFlowsResponse]) error {
	m, err := ValidateRequest(req)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	err = s.obs.GetFlows(ctx, req, m, stream.Send)
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
