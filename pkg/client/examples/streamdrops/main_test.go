package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestStreamDrops(t *testing.T) {
	obs := observer.New(observer.Config{MaxFlows: 10, NodeName: "node-1"}, nil)
	t0 := time.Date(2025, 11, 23, 15, 31, 47, 0, time.UTC)
	obs.Publish(&flowtracev1.Flow{Time: timestamppb.New(t0), NodeName: "node-1", Verdict: flowtracev1.Verdict_VERDICT_FORWARDED})
	obs.Publish(&flowtracev1.Flow{Time: timestamppb.New(t0), NodeName: "node-1", Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
		Ip: &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.0.30"}, DropReasonKernel: "NETFILTER_DROP", DropLocation: "nf_hook_slow+0x8d"})
	sock := filepath.Join(t.TempDir(), "ft.sock")
	lis, err := server.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- server.New(obs, nil, nil).Serve(sctx, lis) }()
	defer func() { scancel(); <-sdone }()

	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuf
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-server", sock}, &out) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "NETFILTER_DROP") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// A live drop follows the history one.
	obs.Publish(&flowtracev1.Flow{Time: timestamppb.New(t0.Add(time.Second)), NodeName: "node-1", Verdict: flowtracev1.Verdict_VERDICT_DROPPED,
		Ip: &flowtracev1.IP{Source: "10.244.0.11", Destination: "10.244.0.30"}, DropReasonKernel: "NO_SOCKET", DropLocation: "tcp_v4_rcv+0x1"})
	for !strings.Contains(out.String(), "NO_SOCKET") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := "2025-11-23T15:31:47Z node-1: 10.244.0.10 -> 10.244.0.30 dropped: NETFILTER_DROP at nf_hook_slow+0x8d\n" +
		"2025-11-23T15:31:48Z node-1: 10.244.0.11 -> 10.244.0.30 dropped: NO_SOCKET at tcp_v4_rcv+0x1\n"
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
