package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// The storms' following client runs as "ftbench follow-drops", a process of
// its own like a user's `flowtrace observe -f`: inside the bench process it
// competed with the 200k/s sender goroutines for the same Ps, and that wait
// showed up as drop latency.
//
// Protocol, one line each way: the child prints "ready" once it follows;
// the parent writes "settle" after the storm; the child waits until nothing
// arrived for settleQuiet (at most settleMax), then prints its followResult
// as one JSON line and exits 0. Stdin closing or SIGINT/SIGTERM make it
// print its results at once, without settling.
const (
	followDropsCmd = "follow-drops"
	followReady    = "ready"
	followSettle   = "settle"
	settleQuiet    = time.Second
	settleMax      = 15 * time.Second
	// subscribeWait bounds the wait for the agent to count the follow
	// stream (ServerStatus num_followers): it subscribes a stream
	// asynchronously after the request arrives, and a storm started before
	// that would lose its first drops to the stream.
	subscribeWait = 10 * time.Second
)

// waitSubscribed returns once the agent counts more followers than before:
// this process's stream is subscribed, and gets every flow published from
// then on. It returns at once when the stream has ended (its error is in
// the results).
func waitSubscribed(ctx context.Context, a *agentConn, before uint32, ended <-chan struct{}) error {
	deadline := time.Now().Add(subscribeWait)
	for {
		select {
		case <-ended:
			return nil
		default:
		}
		st, err := a.status(ctx)
		if err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		if st.GetNumFollowers() > before {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent does not count the follow stream after %v (%d followers, %d before it)",
				subscribeWait, st.GetNumFollowers(), before)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// followResult is what a follow-drops process counted.
type followResult struct {
	Reported      uint64 `json:"reported"`       // sum of event_count
	Events        uint64 `json:"events"`         // records received
	LostClient    uint64 `json:"lost_client"`    // its queue, or history evicted before it read
	LostAnnounced uint64 `json:"lost_announced"` // ring buffer / agent queue losses the stream reported
	// Latency: receive time - the flow's timestamp, over Samples flows.
	Samples    int     `json:"latency_samples"`
	LatencyP50 float64 `json:"latency_p50_ms"`
	LatencyP99 float64 `json:"latency_p99_ms"`
	// StreamError is set when the stream ended before it was told to stop
	// (e.g. the agent died): the counts are then short.
	StreamError string `json:"stream_error,omitempty"`
}

// followDrops is the follow-drops process: args are its flags, commands
// come from stdin, and the protocol and results go to stdout.
func followDrops(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet(followDropsCmd, flag.ContinueOnError)
	sock := fs.String("socket", "", "the agent's unix socket")
	portSpec := fs.String("ports", "", "destination ports of the drops to follow, e.g. 9999 or 10000-10999")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sock == "" {
		return errors.New("--socket is required")
	}
	ports, err := parsePorts(*portSpec)
	if err != nil {
		return fmt.Errorf("--ports: %w", err)
	}
	a, err := dialAgent(*sock)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", *sock, err)
	}
	defer a.Close()
	st, err := a.status(ctx)
	if err != nil {
		return fmt.Errorf("agent status: %w", err)
	}
	before := st.GetNumFollowers()
	f, err := follow(ctx, a, ports)
	if err != nil {
		return err
	}
	if err := waitSubscribed(ctx, a, before, f.done); err != nil {
		f.close()
		return err
	}
	if _, err := fmt.Fprintln(stdout, followReady); err != nil {
		f.close()
		return fmt.Errorf("say ready: %w", err)
	}
	cmds := make(chan string, 1)
	go func() {
		defer close(cmds)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			cmds <- strings.TrimSpace(sc.Text())
		}
	}()
	select {
	case cmd, ok := <-cmds:
		if ok && cmd != followSettle {
			f.close()
			return fmt.Errorf("unknown command %q (want %q)", cmd, followSettle)
		}
		if ok {
			f.settle(ctx, settleQuiet, settleMax)
		}
	case <-ctx.Done():
	}
	ended := f.close()
	res := f.result()
	if ended != nil {
		res.StreamError = ended.Error()
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// parsePorts reads "9999,10000-10999" into the ports it names.
func parsePorts(spec string) ([]uint32, error) {
	var ports []uint32
	for _, part := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		if !isRange {
			hi = lo
		}
		first, err1 := strconv.ParseUint(lo, 10, 16)
		last, err2 := strconv.ParseUint(hi, 10, 16)
		if err := errors.Join(err1, err2); err != nil || first == 0 || last < first {
			return nil, fmt.Errorf("bad port or range %q: want N or N-M with 0 < N <= M < 65536", part)
		}
		for p := first; p <= last; p++ {
			ports = append(ports, uint32(p))
		}
	}
	return ports, nil
}

// follower is a following client of drops to a set of ports.
type follower struct {
	mu        sync.Mutex
	reported  uint64
	events    uint64
	lost      uint64 // this client's queue
	otherLost uint64 // ring buffer / agent queue losses the stream announced
	lat       []time.Duration
	last      time.Time
	ended     error // why the stream ended, before close cancelled it
	cancel    context.CancelFunc
	done      chan struct{}
}

func follow(ctx context.Context, a *agentConn, ports []uint32) (*follower, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := a.api.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true, Allowlist: []*flowtracev1.FlowFilter{{
		Verdict:         []flowtracev1.Verdict{flowtracev1.Verdict_VERDICT_DROPPED},
		DestinationPort: ports,
	}}})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("follow drops: %w", err)
	}
	f := &follower{cancel: cancel, done: make(chan struct{}), lat: make([]time.Duration, 0, 1<<16)}
	go func() {
		defer close(f.done)
		for {
			r, err := stream.Recv()
			if err != nil {
				f.mu.Lock()
				if ctx.Err() == nil {
					f.ended = err
				}
				f.mu.Unlock()
				return
			}
			now := time.Now()
			f.mu.Lock()
			f.last = now
			if fl := r.GetFlow(); fl != nil {
				n := uint64(fl.GetEventCount())
				if n == 0 {
					n = 1
				}
				f.reported += n
				f.events++
				if t := fl.GetTime(); t != nil {
					f.lat = append(f.lat, now.Sub(t.AsTime()))
				}
			} else if le := r.GetLostEvents(); le != nil {
				// Ring buffer and agent queue losses also reach every
				// follower; the status counters account for those, so only
				// this client's own losses are added here.
				switch le.GetSource() {
				case flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_CLIENT_QUEUE,
					// A follower that falls behind the agent's history ring
					// loses what was evicted; each reader counts its own.
					flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_HISTORY_EVICTED:
					f.lost += le.GetNumEventsLost()
				default:
					f.otherLost += le.GetNumEventsLost()
				}
			}
			f.mu.Unlock()
		}
	}()
	return f, nil
}

// settle waits until nothing arrived for quiet (and at least quiet), or
// max passed, or the stream ended.
func (f *follower) settle(ctx context.Context, quiet, max time.Duration) {
	start := time.Now()
	end := start.Add(max)
	for time.Now().Before(end) && ctx.Err() == nil {
		f.mu.Lock()
		last := f.last
		f.mu.Unlock()
		// Quiet since the last report, or since settle began if none came
		// yet: reports still in flight when it is asked are waited for.
		if last.Before(start) {
			last = start
		}
		idle := time.Since(last) > quiet
		if idle {
			return
		}
		select {
		case <-f.done:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// result is what the follower counted so far.
func (f *follower) result() followResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := followResult{Reported: f.reported, Events: f.events, LostClient: f.lost, LostAnnounced: f.otherLost, Samples: len(f.lat)}
	if len(f.lat) > 0 {
		slices.Sort(f.lat)
		ms := func(q float64) float64 { return float64(quantile(f.lat, q).Microseconds()) / 1e3 }
		res.LatencyP50, res.LatencyP99 = ms(0.5), ms(0.99)
	}
	return res
}

// close stops following; the error says why the stream had ended on its
// own before, if it had.
func (f *follower) close() error {
	f.cancel()
	<-f.done
	return f.ended
}

// followProc is the parent's handle on a follow-drops process.
type followProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer // read only once the process is reaped
	lines  chan string  // its stdout, line by line; closed at EOF
	exited chan error   // cmd.Wait, once stdout is read to the end
	reaped bool
	err    error // cmd.Wait's, once reaped
}

// startFollow starts a follow-drops process (this binary) following drops
// to ports on the agent at sock, and returns once it follows.
func startFollow(ctx context.Context, sock, ports string) (*followProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("storm follower: own executable: %w", err)
	}
	p := &followProc{lines: make(chan string, 4), exited: make(chan error, 1)}
	p.cmd = exec.Command(exe, followDropsCmd, "--socket", sock, "--ports", ports)
	// The runtime's default for the machine, as a user's client would run,
	// whatever GOMAXPROCS the bench itself was given.
	p.cmd.Env = slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "GOMAXPROCS=") })
	p.cmd.Stderr = &p.stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("storm follower: %w", err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("storm follower: %w", err)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("storm follower: start %s: %w", exe, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			// The protocol has two lines: never block the reaping below
			// on a parent that stopped listening.
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
		p.exited <- p.cmd.Wait()
	}()
	// The process gives up (and says why) after subscribeWait.
	line, err := p.next(ctx, "ready line", subscribeWait+5*time.Second)
	if err == nil && line != followReady {
		err = fmt.Errorf("storm follower: said %q, want %q", line, followReady)
		p.stop(0)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// next returns the process's next stdout line; if it does not come within
// timeout, or ctx ends, the process is killed.
func (p *followProc) next(ctx context.Context, what string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line, ok := <-p.lines:
		if ok {
			return line, nil
		}
		err := p.stop(time.Second)
		return "", fmt.Errorf("storm follower: exited before its %s (%v): %s", what, err, excerpt(p.stderr.String()))
	case <-t.C:
		p.stop(0)
		return "", fmt.Errorf("storm follower: no %s within %s, killed: %s", what, timeout, excerpt(p.stderr.String()))
	case <-ctx.Done():
		p.stop(0)
		return "", fmt.Errorf("storm follower: %w", ctx.Err())
	}
}

// settle has the process wait for the storm's last reports and returns
// what it counted.
func (p *followProc) settle(ctx context.Context) (followResult, error) {
	var res followResult
	if _, err := io.WriteString(p.stdin, followSettle+"\n"); err != nil {
		p.stop(0)
		return res, fmt.Errorf("storm follower: ask to settle: %w: %s", err, excerpt(p.stderr.String()))
	}
	line, err := p.next(ctx, "results", settleMax+5*time.Second)
	if err != nil {
		return res, err
	}
	if err := p.stop(5 * time.Second); err != nil {
		return res, fmt.Errorf("storm follower: %w: %s", err, excerpt(p.stderr.String()))
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return res, fmt.Errorf("storm follower: results %q: %w", line, err)
	}
	if res.StreamError != "" {
		return res, fmt.Errorf("storm follower: stream ended during the storm: %s", res.StreamError)
	}
	return res, nil
}

// stop closes the process's stdin (it then prints its results and exits),
// waits up to grace for it to exit, kills it after that, and reaps it.
func (p *followProc) stop(grace time.Duration) error {
	if p.reaped {
		return p.err
	}
	_ = p.stdin.Close()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case p.err = <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		p.err = errors.Join(fmt.Errorf("still running %s after it was told to stop: killed", grace), <-p.exited)
	}
	p.reaped = true
	return p.err
}
