package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// ServiceName is the ObserverService's full name, the name gRPC health
// checks ask about.
const ServiceName = "flowtrace.v1.ObserverService"

// Limits bound what one client may ask of the server. Requests beyond them
// are refused with codes.InvalidArgument (filters, number) or
// codes.ResourceExhausted (message size, streams) rather than served slowly.
type Limits struct {
	// MaxRecvMsgSize bounds a request message in bytes (default 256 KiB:
	// a GetFlowsRequest with hundreds of filters is a few KiB).
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds streams per connection (default 64).
	MaxConcurrentStreams uint32
	// MaxFilters bounds allowlist plus denylist filters per request (default 128).
	MaxFilters int
	// MaxNumber bounds GetFlowsRequest.number (default 1,000,000). History
	// never holds more than --max-flows, so a larger number is a mistake or
	// an attempt to make the server buffer without bound behind a relay.
	MaxNumber uint64
	// UnaryTimeout is applied to unary calls (ServerStatus) that arrive
	// without a deadline (default 10s).
	UnaryTimeout time.Duration
}

// Defaults for Limits' zero values.
const (
	DefaultMaxRecvMsgSize       = 256 << 10
	DefaultMaxConcurrentStreams = 64
	DefaultMaxFilters           = 128
	DefaultMaxNumber            = 1_000_000
	DefaultUnaryTimeout         = 10 * time.Second
)

func (l Limits) withDefaults() Limits {
	if l.MaxRecvMsgSize <= 0 {
		l.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if l.MaxFilters <= 0 {
		l.MaxFilters = DefaultMaxFilters
	}
	if l.MaxNumber == 0 {
		l.MaxNumber = DefaultMaxNumber
	}
	if l.UnaryTimeout <= 0 {
		l.UnaryTimeout = DefaultUnaryTimeout
	}
	return l
}

// Keepalive policy. Clients (pkg/client) ping every 30s; the server refuses
// pings more often than every 10s (a misbehaving client gets GOAWAY
// ENHANCE_YOUR_CALM) and pings idle clients itself so that dead peers —
// a node that vanished without a FIN — do not hold streams forever.
const (
	KeepaliveMinTime     = 10 * time.Second
	keepaliveServerTime  = 60 * time.Second
	keepaliveServerAfter = 20 * time.Second
)

// CheckLimits refuses a request that exceeds lim with codes.InvalidArgument.
func CheckLimits(req *flowtracev1.GetFlowsRequest, lim Limits) error {
	lim = lim.withDefaults()
	if n := len(req.GetAllowlist()) + len(req.GetDenylist()); n > lim.MaxFilters {
		return status.Errorf(codes.InvalidArgument, "too many filters: %d (allowlist %d + denylist %d); the server accepts at most %d per request",
			n, len(req.GetAllowlist()), len(req.GetDenylist()), lim.MaxFilters)
	}
	if req.GetNumber() > lim.MaxNumber {
		return status.Errorf(codes.InvalidArgument, "number %d is too large: the server returns at most %d flows from history per request (use 0 without follow for all held flows)",
			req.GetNumber(), lim.MaxNumber)
	}
	return nil
}

// NewGRPCServer returns a gRPC server with svc, the health service (svc's
// name and "" SERVING), reflection, keepalive enforcement, the limits and,
// when creds is not nil, transport security. Follow streams are tied to
// ctx: when ctx ends they end, so GracefulStop never waits for a client
// that would stream forever.
func NewGRPCServer(ctx context.Context, svc flowtracev1.ObserverServiceServer, lim Limits, creds credentials.TransportCredentials) *grpc.Server {
	lim = lim.withDefaults()
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newFlowCodec()),
		grpc.MaxRecvMsgSize(lim.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(lim.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveServerTime, Timeout: keepaliveServerAfter}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			sctx, cancel := context.WithCancel(ss.Context())
			defer cancel()
			stop := context.AfterFunc(ctx, cancel)
			defer stop()
			err := h(srv, &ctxStream{ServerStream: ss, ctx: sctx, lim: lim})
			if ctx.Err() != nil && ss.Context().Err() == nil {
				// Ended by the server's shutdown, not by the client: say
				// so ("context canceled" read as the client's own doing).
				return status.Error(codes.Unavailable, "the server is shutting down")
			}
			return err
		}),
		grpc.ChainUnaryInterceptor(func(uctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if _, ok := uctx.Deadline(); !ok {
				var cancel context.CancelFunc
				uctx, cancel = context.WithTimeout(uctx, lim.UnaryTimeout)
				defer cancel()
			}
			return h(uctx, req)
		}),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	gs := grpc.NewServer(opts...)
	flowtracev1.RegisterObserverServiceServer(gs, svc)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	// Health answers NOT_SERVING while draining, so a load balancer or
	// relay stops sending new streams before the listener closes.
	context.AfterFunc(ctx, hs.Shutdown)
	return gs
}

// ctxStream replaces the stream's context and checks request limits as the
// request is read, before the handler sees it.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
	lim Limits
}

func (c *ctxStream) Context() context.Context { return c.ctx }

func (c *ctxStream) RecvMsg(m any) error {
	if err := c.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if req, ok := m.(*flowtracev1.GetFlowsRequest); ok {
		return CheckLimits(req, c.lim)
	}
	return nil
}

// stopGrace bounds how long ServeGRPC waits for in-flight calls after ctx is done.
const stopGrace = 5 * time.Second

// ServeGRPC serves gs on lis until ctx is done, then stops gracefully
// (bounded by stopGrace). It returns nil after a stop caused by ctx.
func ServeGRPC(ctx context.Context, gs *grpc.Server, lis net.Listener, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	log.Info("serving flow API", "addr", lis.Addr().String(), "network", lis.Addr().Network())
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
		log.Warn("graceful stop timed out; closing connections")
		gs.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve grpc on %s: %w", lis.Addr(), err)
	}
	return nil
}
