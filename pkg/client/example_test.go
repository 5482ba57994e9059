package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Stream dropped packets from the local agent as they happen. For a TCP
// agent or relay, pass "host:port" and client.Options{TLS: ...}. The full
// program, with a test, is pkg/client/examples/streamdrops.
func ExampleDial() {
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := client.Dial(dctx, "/var/run/flowtrace/flowtrace.sock")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	stream, err := flowtracev1.NewObserverServiceClient(conn).GetFlows(ctx, &flowtracev1.GetFlowsRequest{
		Follow:    true,
		Allowlist: []*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		if f := resp.GetFlow(); f != nil {
			fmt.Println(f.GetIp().GetSource(), "->", f.GetIp().GetDestination(), f.GetDropReasonKernel())
		}
	}
}
