package server

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server/servertest"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

func TestCheckTCPSecurity(t *testing.T) {
	tests := []struct {
		addr          string
		tls, insecure bool
		wantErr       string
	}{
		{"0.0.0.0:4245", true, false, ""},
		{"0.0.0.0:4245", false, false, "needs TLS: pass --tls-cert-file"},
		{"0.0.0.0:4245", false, true, "loopback address only"},
		{"10.1.2.3:4245", false, true, "loopback address only"},
		{"127.0.0.1:4245", false, true, ""},
		{"[::1]:4245", false, true, ""},
		{"localhost:4245", false, true, ""},
		{"127.0.0.1:4245", true, true, "mutually exclusive"},
		{"nonsense", false, true, "listen address"},
	}
	for _, tt := range tests {
		err := CheckTCPSecurity(tt.addr, tt.tls, tt.insecure)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("CheckTCPSecurity(%q, tls=%v, insecure=%v) = %v, want %q", tt.addr, tt.tls, tt.insecure, err, tt.wantErr)
		}
	}
}

// startTLS serves a fresh observer over TLS (mTLS when clientCA) on loopback.
func startTLS(t *testing.T, pki servertest.PKI, mtls bool, opts ...Option) (*observer.Observer, string) {
	t.Helper()
	files := TLSFiles{CertFile: pki.ServerCert, KeyFile: pki.ServerKey}
	if mtls {
		files.ClientCAFile = pki.CAFile
	}
	cfg, err := ServerTLSConfig(files)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	obs := observer.New(observer.Config{MaxFlows: 10, NodeName: "tls-node"}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(obs, nil, nil, opts...).ServeTLS(ctx, lis, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	return obs, lis.Addr().String()
}

func dialStatus(t *testing.T, addr string, o client.Options) (*flowtracev1.ServerStatusResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := client.Dial(ctx, addr, o)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return flowtracev1.NewObserverServiceClient(conn).ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
}

func TestTLS(t *testing.T) {
	pki := servertest.NewPKI(t)
	_, addr := startTLS(t, pki, false)

	r, err := dialStatus(t, addr, client.Options{TLS: client.TLSOptions{CAFile: pki.CAFile}})
	if err != nil || r.GetNodeName() != "tls-node" {
		t.Fatalf("TLS status: %v, %v", r, err)
	}
	if _, err := dialStatus(t, addr, client.Options{}); err == nil || !strings.Contains(err.Error(), "requires TLS, try --tls") {
		t.Errorf("plain client: %v", err)
	}
	if _, err := dialStatus(t, addr, client.Options{TLS: client.TLSOptions{CAFile: pki.OtherCAFile}}); err == nil || !strings.Contains(err.Error(), "TLS handshake") || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("wrong CA: %v", err)
	}
	if _, err := dialStatus(t, addr, client.Options{TLS: client.TLSOptions{CAFile: pki.CAFile, ServerName: "other.example"}}); err == nil || !strings.Contains(err.Error(), "other.example") {
		t.Errorf("wrong server name: %v", err)
	}
}

func TestMTLS(t *testing.T) {
	pki := servertest.NewPKI(t)
	_, addr := startTLS(t, pki, true)
	ok := client.TLSOptions{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	if r, err := dialStatus(t, addr, client.Options{TLS: ok}); err != nil || r.GetNodeName() != "tls-node" {
		t.Fatalf("mTLS status: %v, %v", r, err)
	}
	// Without a client certificate the server ends the handshake; TLS 1.3
	// reports it on the first read, so the error may come from Dial or
	// from the call.
	if _, err := dialStatus(t, addr, client.Options{TLS: client.TLSOptions{CAFile: pki.CAFile}}); err == nil {
		t.Error("client without a certificate was served")
	}
	if _, err := dialStatus(t, addr, client.Options{TLS: client.TLSOptions{CAFile: pki.CAFile, CertFile: pki.ClientCert}}); err == nil || !strings.Contains(err.Error(), "needs both") {
		t.Errorf("cert without key: %v", err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	_, c, sock, _, _ := start(t)
	_ = c
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, svc := range []string{"", ServiceName} {
		r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v, %v", svc, r, err)
		}
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unknown service: %v", err)
	}
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), ServiceName) {
		t.Errorf("reflection lists %v, want %s", names, ServiceName)
	}
}

func TestRequestLimits(t *testing.T) {
	_, c, _, _, _ := start(t)
	many := make([]*flowtracev1.FlowFilter, DefaultMaxFilters+1)
	for i := range many {
		many[i] = &flowtracev1.FlowFilter{}
	}
	huge := &flowtracev1.FlowFilter{SourcePod: []string{strings.Repeat("x", DefaultMaxRecvMsgSize)}}
	tests := []struct {
		name string
		req  *flowtracev1.GetFlowsRequest
		code codes.Code
		want string
	}{
		{"too many filters", &flowtracev1.GetFlowsRequest{Allowlist: many}, codes.InvalidArgument, "too many filters: 129 (allowlist 129 + denylist 0); the server accepts at most 128"},
		{"number too large", &flowtracev1.GetFlowsRequest{Number: DefaultMaxNumber + 1}, codes.InvalidArgument, "number 1000001 is too large"},
		{"oversized request", &flowtracev1.GetFlowsRequest{Allowlist: []*flowtracev1.FlowFilter{huge}}, codes.ResourceExhausted, "larger than max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := c.GetFlows(context.Background(), tt.req)
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Fatalf("err = %v, want %v containing %q", err, tt.code, tt.want)
			}
		})
	}
	// At the limit is fine.
	s, err := c.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{Number: DefaultMaxNumber, Allowlist: many[:DefaultMaxFilters]})
	if err == nil {
		_, err = s.Recv()
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("request at the limits: %v, want the end of an empty history", err)
	}
}

type blockingStatus struct{ called chan struct{} }

func (b blockingStatus) Status(ctx context.Context) *flowtracev1.ServerStatusResponse {
	close(b.called)
	<-ctx.Done()
	return nil
}

// A unary call without a deadline gets the server's.
func TestUnaryDeadline(t *testing.T) {
	obs := observer.New(observer.Config{}, nil)
	sock := filepath.Join(t.TempDir(), "ft.sock")
	lis, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- New(obs, blockingStatus{make(chan struct{})}, nil, WithLimits(Limits{UnaryTimeout: 200 * time.Millisecond})).Serve(ctx, lis)
	}()
	defer func() { cancel(); <-done }()
	// A raw connection: pkg/client would add its own deadline.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	begin := time.Now()
	// The StatusSource returns nil when its context ends: the response is
	// the observer part, delivered once the server deadline passed.
	if _, err := flowtracev1.NewObserverServiceClient(conn).ServerStatus(context.Background(), &flowtracev1.ServerStatusRequest{}); err != nil {
		t.Fatalf("status: %v", err)
	}
	if d := time.Since(begin); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("status took %v, want about the 200ms server deadline", d)
	}
}
