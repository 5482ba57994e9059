package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowtrace/flowtrace/pkg/client"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/grpc"
)

// Resolver is the part of *net.Resolver the relay uses; tests pass a fake.
type Resolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// peer is one agent (or relay) the relay reads from.
type peer struct {
	addr string
	conn *grpc.ClientConn
	api  flowtracev1.ObserverServiceClient

	mu      sync.Mutex
	name    string // node name, once a response told us
	lastErr error
}

func (p *peer) displayName() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.name != "" {
		return p.name
	}
	return p.addr
}

func (p *peer) learnName(n string) {
	if n == "" {
		return
	}
	p.mu.Lock()
	p.name = n
	p.mu.Unlock()
}

func (p *peer) setErr(err error) {
	p.mu.Lock()
	p.lastErr = err
	p.mu.Unlock()
}

// peerSet holds the current peers; changed is closed (and replaced) on
// every change so that running follow streams pick up new peers.
type peerSet struct {
	opts client.Options

	mu      sync.Mutex
	peers   map[string]*peer
	changed chan struct{}
}

func newPeerSet(opts client.Options) *peerSet {
	return &peerSet{opts: opts, peers: map[string]*peer{}, changed: make(chan struct{})}
}

// snapshot returns the peers sorted by address and the channel closed on
// the next change.
func (s *peerSet) snapshot() ([]*peer, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*peer, 0, len(s.peers))
	for _, p := range s.peers {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *peer) int { return strings.Compare(a.addr, b.addr) })
	return out, s.changed
}

// set makes addrs the peer set: new addresses get a (lazy) connection,
// gone ones are closed, which ends their streams.
func (s *peerSet) set(addrs []string) error {
	want := map[string]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	var errs []error
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for a, p := range s.peers {
		if !want[a] {
			p.conn.Close()
			delete(s.peers, a)
			changed = true
		}
	}
	for a := range want {
		if _, ok := s.peers[a]; ok {
			continue
		}
		conn, err := client.NewClient(a, s.opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", a, err))
			continue
		}
		s.peers[a] = &peer{addr: a, conn: conn, api: flowtracev1.NewObserverServiceClient(conn)}
		changed = true
	}
	if changed {
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return errors.Join(errs...)
}

func (s *peerSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, p := range s.peers {
		p.conn.Close()
		delete(s.peers, a)
	}
}

// ResolveService returns the peer addresses behind a Kubernetes headless
// Service name ("name.ns.svc"): its SRV records when it has any (host:port
// of every endpoint), else its A/AAAA records with port.
func ResolveService(ctx context.Context, r Resolver, name string, port int) ([]string, error) {
	var out []string
	if _, srvs, err := r.LookupSRV(ctx, "", "", name); err == nil && len(srvs) > 0 {
		for _, s := range srvs {
			out = append(out, net.JoinHostPort(strings.TrimSuffix(s.Target, "."), strconv.Itoa(int(s.Port))))
		}
	} else {
		hosts, herr := r.LookupHost(ctx, name)
		if herr != nil {
			return nil, fmt.Errorf("resolve peer service %s: %w", name, herr)
		}
		for _, h := range hosts {
			out = append(out, net.JoinHostPort(h, strconv.Itoa(port)))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// resolveLoop re-resolves the Service every interval. A failed lookup
// keeps the previous peers: a DNS hiccup must not disconnect every node.
func (r *Relay) resolveLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.ResolveInterval)
	defer t.Stop()
	for {
		r.resolveOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) resolveOnce(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := ResolveService(rctx, r.cfg.Resolver, r.cfg.PeerService, r.cfg.PeerPort)
	if err != nil {
		r.log.Warn("peer service lookup failed; keeping the previous peers", "service", r.cfg.PeerService, "error", err)
		return
	}
	addrs = append(addrs, r.cfg.Peers...)
	if err := r.peers.set(addrs); err != nil {
		r.log.Warn("some peers cannot be used", "error", err)
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
