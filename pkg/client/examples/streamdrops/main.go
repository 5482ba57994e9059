// Command streamdrops is a runnable example of the flowtrace Go client: it
// connects to an agent (or relay) and prints every dropped packet as it
// happens, one line each.
//
//	go run ./pkg/client/examples/streamdrops -server /var/run/flowtrace/flowtrace.sock
//	go run ./pkg/client/examples/streamdrops -server relay.example:4245 -tls-ca-file ca.pem
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "streamdrops:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("streamdrops", flag.ContinueOnError)
	srv := fs.String("server", "/var/run/flowtrace/flowtrace.sock", "agent or relay: socket path or host:port")
	caFile := fs.String("tls-ca-file", "", "CA of a TLS server (host:port)")
	last := fs.Uint64("last", 10, "drops from history to start with")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := client.Dial(dctx, *srv, client.Options{TLS: client.TLSOptions{CAFile: *caFile}})
	if err != nil {
		return err
	}
	defer conn.Close()

	stream, err := flowtracev1.NewObserverServiceClient(conn).GetFlows(ctx, &flowtracev1.GetFlowsRequest{
		Number: *last,
		Follow: true,
		// The server filters: only drops cross the connection.
		Allowlist: []*flowtracev1.FlowFilter{{Verdict: []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED}}},
	})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF) || ctx.Err() != nil:
			return nil
		case err != nil:
			return fmt.Errorf("stream: %w", err)
		}
		if le := resp.GetLostEvents(); le != nil {
			fmt.Fprintf(out, "%s: lost %d events (%s)\n", resp.GetNodeName(), le.GetNumEventsLost(), le.GetSource())
			continue
		}
		f := resp.GetFlow()
		fmt.Fprintf(out, "%s %s: %s -> %s dropped: %s at %s\n",
			f.GetTime().AsTime().Format(time.RFC3339Nano), f.GetNodeName(),
			f.GetIp().GetSource(), f.GetIp().GetDestination(), f.GetDropReasonKernel(), f.GetDropLocation())
	}
}
