// Package relay serves the ObserverService over many agents: it asks every
// peer, merges their flows in time order and serves the result, so the
// CLI works unchanged against a relay.
//
// Semantics:
//   - --last N (number N) is across all nodes: each peer is asked for its
//     newest N, the relay keeps the newest N of the union (oldest N with
//     first).
//   - follow: live flows from all peers pass through a sort window
//     (Config.SortWindow, default 1s): a flow is held until it has waited
//     the window, and flows leave in time order. A flow arriving later than
//     the window after a newer one was sent goes out late rather than
//     being dropped. With number N and follow, the history part (newest N
//     across nodes) comes first; the live streams are opened before the
//     history is read and flows seen in both are sent once (by uuid).
//   - a peer that cannot be reached, or whose stream ends, is reported
//     inline: a response whose node_name is the peer and whose lost_events
//     has source LOST_EVENTS_SOURCE_UNSPECIFIED and count 0 (see
//     NodeUnavailable). ServerStatus sums the peers' history and losses,
//     lists their interfaces as "node/ifname", and reports every peer as
//     an identity_sources entry "peer <node>" (synced = reachable) and the
//     counters relay_peers_connected / relay_peers_unavailable.
//   - peers found later (DNS) join running follow streams; a peer that
//     failed is not retried within a stream (the client reconnects).
package relay

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	"github.com/flowtrace/flowtrace/pkg/server"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config configures a Relay.
type Config struct {
	// Peers are static peer addresses (socket paths, unix:///path, host:port).
	Peers []string
	// PeerService is a DNS name (a Kubernetes headless Service,
	// "name.ns.svc") whose SRV or A records are the peers, re-resolved
	// every ResolveInterval (default 30s). A records use PeerPort (default 4245).
	PeerService     string
	PeerPort        int
	ResolveInterval time.Duration
	Resolver        Resolver // default net.DefaultResolver
	// Client configures connections to peers (TLS).
	Client client.Options
	// SortWindow bounds how long live flows wait to be sorted (default 1s);
	// MaxBuffered bounds how many wait (default 10000; beyond it the
	// oldest leaves early).
	SortWindow  time.Duration
	MaxBuffered int
	// PeerTimeout bounds ServerStatus calls to each peer (default 3s).
	PeerTimeout time.Duration
	NodeName    string // the relay's name in ServerStatus
	Version     string
}

// Relay implements flowtracev1.ObserverServiceServer over its peers.
type Relay struct {
	flowtracev1.UnimplementedObserverServiceServer
	cfg   Config
	log   *slog.Logger
	peers *peerSet
	start time.Time
	// followers counts the GetFlows streams following now (ServerStatus).
	followers atomic.Int32
}

// New validates cfg and connects (lazily) to the static peers.
func New(cfg Config, log *slog.Logger) (*Relay, error) {
	if len(cfg.Peers) == 0 && cfg.PeerService == "" {
		return nil, fmt.Errorf("relay: no peers: give static peers or a peer service")
	}
	if cfg.PeerPort <= 0 {
		cfg.PeerPort = 4245
	}
	if cfg.ResolveInterval <= 0 {
		cfg.ResolveInterval = 30 * time.Second
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.SortWindow <= 0 {
		cfg.SortWindow = time.Second
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 10000
	}
	if cfg.PeerTimeout <= 0 {
		cfg.PeerTimeout = 3 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, log: log, peers: newPeerSet(cfg.Client), start: time.Now()}
	if err := r.peers.set(cfg.Peers); err != nil {
		r.peers.close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	return r, nil
}

// Run resolves the peer service until ctx is done, then closes every peer
// connection.
func (r *Relay) Run(ctx context.Context) error {
	defer r.peers.close()
	if r.cfg.PeerService != "" {
		r.resolveLoop(ctx)
		return nil
	}
	<-ctx.Done()
	return nil
}

// ResolveNow re-resolves the peer service once (tests, and a first
// resolution before serving).
func (r *Relay) ResolveNow(ctx context.Context) {
	if r.cfg.PeerService != "" {
		r.resolveOnce(ctx)
	}
}

// NodeUnavailable is the inline report that a node's flows are missing
// from the stream: node_name names the node, lost_events has source
// UNSPECIFIED and no count (the number is unknown).
func NodeUnavailable(node string, at time.Time) *flowtracev1.GetFlowsResponse {
	return &flowtracev1.GetFlowsResponse{
		NodeName: node,
		Time:     timestamppb.New(at),
		ResponseTypes: &flowtracev1.GetFlowsResponse_NodeStatus{NodeStatus: &flowtracev1.NodeStatus{
			NodeName: node, State: flowtracev1.NodeState_NODE_STATE_UNAVAILABLE,
			Message: "the relay cannot read this node's flows; they are missing from here on",
		}},
	}
}

// IsNodeUnavailable reports whether r is a NodeUnavailable report.
func IsNodeUnavailable(r *flowtracev1.GetFlowsResponse) bool {
	return r.GetNodeStatus().GetState() == flowtracev1.NodeState_NODE_STATE_UNAVAILABLE
}

func respTime(r *flowtracev1.GetFlowsResponse) int64 {
	if f := r.GetFlow(); f != nil && f.GetTime() != nil {
		return f.GetTime().AsTime().UnixNano()
	}
	if r.GetTime() != nil {
		return r.GetTime().AsTime().UnixNano()
	}
	return 0
}

// GetFlows implements the ObserverService.
func (r *Relay) GetFlows(req *flowtracev1.GetFlowsRequest, stream grpc.ServerStreamingServer[flowtracev1.GetFlowsResponse]) error {
	if _, err := server.ValidateRequest(req); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	peers, changed := r.peers.snapshot()

	var live chan liveItem
	started := map[*peer]bool{}
	startLive := func(ps []*peer) {
		lreq := proto.Clone(req).(*flowtracev1.GetFlowsRequest)
		lreq.Number, lreq.First = 0, false
		for _, p := range ps {
			if started[p] {
				continue
			}
			started[p] = true
			go r.readLive(ctx, p, lreq, live)
		}
	}
	if req.GetFollow() {
		r.followers.Add(1)
		defer r.followers.Add(-1)
		live = make(chan liveItem, 256)
		startLive(peers)
	}

	var seen map[*peer]map[string]struct{}
	if !req.GetFollow() || req.GetNumber() > 0 {
		hreq := proto.Clone(req).(*flowtracev1.GetFlowsRequest)
		hreq.Follow = false
		var out []*flowtracev1.GetFlowsResponse
		out, seen = r.history(ctx, peers, hreq)
		for _, resp := range out {
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
	if !req.GetFollow() {
		return nil
	}
	return r.followMerge(ctx, stream, live, seen, changed, startLive)
}

// history asks every peer for its part and keeps number flows across all.
func (r *Relay) history(ctx context.Context, peers []*peer, req *flowtracev1.GetFlowsRequest) ([]*flowtracev1.GetFlowsResponse, map[*peer]map[string]struct{}) {
	type result struct {
		p     *peer
		resps []*flowtracev1.GetFlowsResponse
		err   error
	}
	results := make([]result, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			res := result{p: p}
			s, err := p.api.GetFlows(ctx, req)
			for err == nil {
				var resp *flowtracev1.GetFlowsResponse
				if resp, err = s.Recv(); err == nil {
					p.learnName(resp.GetNodeName())
					res.resps = append(res.resps, resp)
				}
			}
			if !isEOF(err) {
				res.err = err
			}
			results[i] = res
		})
	}
	wg.Wait()

	var notes, flows []*flowtracev1.GetFlowsResponse
	seen := map[*peer]map[string]struct{}{}
	now := time.Now()
	for _, res := range results {
		if res.err != nil {
			res.p.setErr(res.err)
			r.log.Warn("peer unavailable", "peer", res.p.addr, "error", res.err)
			notes = append(notes, NodeUnavailable(res.p.displayName(), now))
			continue
		}
		res.p.setErr(nil)
		ids := map[string]struct{}{}
		for _, resp := range res.resps {
			if resp.GetFlow() == nil {
				notes = append(notes, resp)
				continue
			}
			if id := resp.GetFlow().GetUuid(); id != "" {
				ids[id] = struct{}{}
			}
			flows = append(flows, resp)
		}
		seen[res.p] = ids
	}
	slices.SortStableFunc(flows, func(a, b *flowtracev1.GetFlowsResponse) int { return cmp.Compare(respTime(a), respTime(b)) })
	if n := req.GetNumber(); n > 0 && uint64(len(flows)) > n {
		if req.GetFirst() {
			flows = flows[:n]
		} else {
			flows = flows[uint64(len(flows))-n:]
		}
	}
	slices.SortStableFunc(notes, func(a, b *flowtracev1.GetFlowsResponse) int { return cmp.Compare(respTime(a), respTime(b)) })
	return append(notes, flows...), seen
}

type liveItem struct {
	p    *peer
	resp *flowtracev1.GetFlowsResponse
	end  error // the stream ended (resp is nil)
}

func (r *Relay) readLive(ctx context.Context, p *peer, req *flowtracev1.GetFlowsRequest, out chan<- liveItem) {
	send := func(it liveItem) bool {
		select {
		case out <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	s, err := p.api.GetFlows(ctx, req)
	for err == nil {
		var resp *flowtracev1.GetFlowsResponse
		if resp, err = s.Recv(); err == nil {
			p.learnName(resp.GetNodeName())
			if !send(liveItem{p: p, resp: resp}) {
				return
			}
		}
	}
	if ctx.Err() != nil {
		return
	}
	if isEOF(err) {
		err = fmt.Errorf("stream ended")
	}
	p.setErr(err)
	send(liveItem{p: p, end: err})
}

// followMerge sorts live flows within the window and sends them.
func (r *Relay) followMerge(ctx context.Context, stream grpc.ServerStreamingServer[flowtracev1.GetFlowsResponse],
	live <-chan liveItem, seen map[*peer]map[string]struct{}, changed <-chan struct{}, startLive func([]*peer)) error {
	win := r.cfg.SortWindow
	tick := time.NewTicker(max(win/4, 5*time.Millisecond))
	defer tick.Stop()
	var h sortHeap
	var seq uint64
	flush := func(now time.Time, all bool) error {
		for h.Len() > 0 && (all || h.Len() > r.cfg.MaxBuffered || now.Sub(h[0].arrived) >= win) {
			it := heap.Pop(&h).(*held)
			if err := stream.Send(it.resp); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			var ps []*peer
			ps, changed = r.peers.snapshot()
			startLive(ps)
		case now := <-tick.C:
			if err := flush(now, false); err != nil {
				return err
			}
		case it := <-live:
			if it.end != nil {
				r.log.Warn("peer stream ended", "peer", it.p.addr, "error", it.end)
				if err := stream.Send(NodeUnavailable(it.p.displayName(), time.Now())); err != nil {
					return err
				}
				continue
			}
			if f := it.resp.GetFlow(); f != nil && f.GetUuid() != "" {
				if ids := seen[it.p]; ids != nil {
					if _, dup := ids[f.GetUuid()]; dup {
						delete(ids, f.GetUuid())
						continue
					}
				}
			}
			seq++
			heap.Push(&h, &held{resp: it.resp, t: respTime(it.resp), arrived: time.Now(), seq: seq})
			if h.Len() > r.cfg.MaxBuffered {
				if err := flush(time.Now(), false); err != nil {
					return err
				}
			}
		}
	}
}

type held struct {
	resp    *flowtracev1.GetFlowsResponse
	t       int64
	arrived time.Time
	seq     uint64
}

// sortHeap orders by flow time, then arrival order.
type sortHeap []*held

func (h sortHeap) Len() int { return len(h) }
func (h sortHeap) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].seq < h[j].seq
}
func (h sortHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *sortHeap) Push(x any)   { *h = append(*h, x.(*held)) }
func (h *sortHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// ServerStatus implements the ObserverService: the peers' status summed,
// with every peer's reachability.
func (r *Relay) ServerStatus(ctx context.Context, _ *flowtracev1.ServerStatusRequest) (*flowtracev1.ServerStatusResponse, error) {
	peers, _ := r.peers.snapshot()
	type result struct {
		st  *flowtracev1.ServerStatusResponse
		err error
	}
	results := make([]result, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, r.cfg.PeerTimeout)
			defer cancel()
			st, err := p.api.ServerStatus(pctx, &flowtracev1.ServerStatusRequest{})
			if err == nil {
				p.learnName(st.GetNodeName())
			}
			p.setErr(err)
			results[i] = result{st, err}
		})
	}
	wg.Wait()

	out := &flowtracev1.ServerStatusResponse{
		NodeName:         r.cfg.NodeName,
		Version:          r.cfg.Version,
		Uptime:           durationpb.New(time.Since(r.start)),
		NumFollowers:     uint32(r.followers.Load()),
		DatapathCounters: map[string]uint64{},
	}
	lost := map[flowtracev1.LostEventsSource]uint64{}
	var connected, unavailable uint64
	for i, res := range results {
		p := peers[i]
		src := &flowtracev1.IdentitySourceStatus{Name: "peer " + p.displayName()}
		if res.err != nil {
			unavailable++
			src.Detail = fmt.Sprintf("%s: unavailable: %v", p.addr, res.err)
			out.IdentitySources = append(out.IdentitySources, src)
			continue
		}
		connected++
		src.Synced, src.Detail = true, p.addr+": connected"
		out.IdentitySources = append(out.IdentitySources, src)
		st := res.st
		out.NumFlows += st.GetNumFlows()
		out.MaxFlows += st.GetMaxFlows()
		out.SeenFlows += st.GetSeenFlows()
		out.FlowsRate += st.GetFlowsRate()
		if o := st.GetOldestFlowTime(); o != nil && (out.OldestFlowTime == nil || o.AsTime().Before(out.OldestFlowTime.AsTime())) {
			out.OldestFlowTime = o
		}
		if n := st.GetNewestFlowTime(); n != nil && (out.NewestFlowTime == nil || n.AsTime().After(out.NewestFlowTime.AsTime())) {
			out.NewestFlowTime = n
		}
		if a := st.GetMaxFlowAge(); a != nil && (out.MaxFlowAge == nil || a.AsDuration() < out.MaxFlowAge.AsDuration()) {
			out.MaxFlowAge = a
		}
		for _, lc := range st.GetLostEvents() {
			lost[lc.GetSource()] += lc.GetCount()
		}
		for _, ifc := range st.GetInterfaces() {
			c := proto.Clone(ifc).(*flowtracev1.AttachedInterface)
			c.Name = p.displayName() + "/" + c.Name
			out.Interfaces = append(out.Interfaces, c)
		}
		for k, v := range st.GetDatapathCounters() {
			out.DatapathCounters[k] += v
		}
		if out.Features == nil {
			out.Features = st.GetFeatures()
		}
		out.FlowTable = mergeFlowTable(out.FlowTable, st.GetFlowTable())
	}
	out.DatapathCounters["relay_peers_connected"] = connected
	out.DatapathCounters["relay_peers_unavailable"] = unavailable
	for src, n := range lost {
		out.LostEvents = append(out.LostEvents, &flowtracev1.LostEventsCount{Source: src, Count: n})
	}
	slices.SortFunc(out.LostEvents, func(a, b *flowtracev1.LostEventsCount) int { return cmp.Compare(a.Source, b.Source) })
	return out, nil
}

// mergeFlowTable adds one node's kernel flow table to the sum of the others:
// capacities, the entries seen and the packets that found a table full add
// up, so a full table on any node shows in the relay's status (the per-node
// figures are each agent's own). The sum is dated by its oldest walk, and
// has none until every node with a table has walked it: a used count
// missing a node's entries would read as room that is not there.
func mergeFlowTable(sum, ft *flowtracev1.KernelFlowTable) *flowtracev1.KernelFlowTable {
	if ft == nil {
		return sum
	}
	if sum == nil {
		return proto.Clone(ft).(*flowtracev1.KernelFlowTable)
	}
	sum.Capacity += ft.GetCapacity()
	sum.Full += ft.GetFull()
	if sum.WalkedAt == nil || ft.GetWalkedAt() == nil {
		sum.Used, sum.WalkedAt = 0, nil
		return sum
	}
	sum.Used += ft.GetUsed()
	if ft.GetWalkedAt().AsTime().Before(sum.WalkedAt.AsTime()) {
		sum.WalkedAt = ft.GetWalkedAt()
	}
	return sum
}
