package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flowtrace/flowtrace/pkg/attach"
	"github.com/flowtrace/flowtrace/pkg/datapath"
	"github.com/flowtrace/flowtrace/pkg/dropreason"
	"github.com/flowtrace/flowtrace/pkg/enrich"
	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/pkg/identity/k8s"
	"github.com/flowtrace/flowtrace/pkg/ifwatch"
	"github.com/flowtrace/flowtrace/pkg/kallsyms"
	"github.com/flowtrace/flowtrace/pkg/metrics"
	"github.com/flowtrace/flowtrace/pkg/netnsutil"
	"github.com/flowtrace/flowtrace/pkg/observer"
	"github.com/flowtrace/flowtrace/pkg/server"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Config configures the agent. Zero values select defaults.
type Config struct {
	Socket       string // unix socket for the API
	IdentityFile string // static identity file; "" for none
	// Kubernetes enables the API server identity source (in-cluster
	// config, or Kubeconfig when set).
	Kubernetes        bool
	Kubeconfig        string
	KubernetesAllPods bool          // watch every pod, not only this node's
	CNICacheDir       string        // libcni result cache to read pods from; "" for none
	IdentityGrace     time.Duration // how long a deleted pod keeps naming its IPs
	NodeName          string        // default: the hostname
	Include           []string      // interface name globs to attach to (default: every veth and NIC)
	Exclude           []string      // interface name globs to skip
	AttachMode        string        // "" (auto: tcx, else clsact), "tcx" or "clsact"

	FlowReportInterval time.Duration // per-connection report interval (default 5s)
	// FirstReportDelay: how long the kernel holds a new flow's first
	// report (datapath.Config.FirstReportDelay: 0 default, negative off).
	FirstReportDelay time.Duration
	MaxFlows         int           // history bound by count (default 65536)
	MaxFlowAge       time.Duration // history bound by age (default 1h)
	QueueSize        int           // agent queue between ring buffer and enrichment (default 8192)
	// RingBufferBytes sizes the BPF ring buffer (a power of two, at least
	// a page; default DefaultRingBufferBytes). Its pages are mapped twice
	// into the agent, so it costs twice its size in RSS once written.
	RingBufferBytes int
	// FlowTableEntries sizes the kernel's flow table (tc's per-connection
	// aggregation; default datapath.DefaultFlowTableEntries): preallocated
	// kernel memory, not the agent's.
	FlowTableEntries int
	ScopeAllNetns    bool // report drops from every netns, not only ours and our pods'
	// SocketTeardownDrops reports what a socket's teardown frees (drop
	// reasons SOCKET_CLOSE, QUEUE_PURGE) as drops; otherwise counted only.
	SocketTeardownDrops bool
	NoFlowCache         bool // tc without its per-CPU flow cache (benchmark A/B)
	NoDropMemo          bool // the drop hook without its per-CPU fold memo (benchmark A/B)
	Version             string

	// ListenAddress, when set, also serves the API on TCP host:port with
	// TLS (TLS.CertFile/KeyFile; mTLS with TLS.ClientCAFile). Plain TCP is
	// allowed only on loopback with InsecureListen (server.CheckTCPSecurity).
	ListenAddress  string
	TLS            server.TLSFiles
	InsecureListen bool
	// MetricsAddress, when set, serves Prometheus metrics on
	// http://MetricsAddress/metrics; MetricsTopNamespaces bounds the
	// namespace label (default metrics.DefaultTopNamespaces).
	MetricsAddress       string
	MetricsTopNamespaces int

	// Ready, when set, is closed once the agent serves the API with the
	// datapath attached: tests and `make demo` wait on it or on the socket.
	Ready chan<- struct{}
}

// DefaultRingBufferBytes: 2 MiB holds ~20k events, over 200 ms of the
// bench's connection churn (~90k events/s) while the agent is descheduled.
// 4 MiB (the datapath's own default) cost 8 MiB of RSS (the pages are
// mapped twice) for headroom no bench workload used; 1 MiB lost a few
// dozen events (counted) in one many-flow storm out of three.
const DefaultRingBufferBytes = 2 << 20

func (c *Config) defaults() error {
	if c.Socket == "" {
		return errors.New("agent: no socket path")
	}
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("agent: node name: %w", err)
		}
		c.NodeName = h
	}
	if c.FlowReportInterval <= 0 {
		c.FlowReportInterval = 5 * time.Second
	}
	if c.MaxFlows <= 0 {
		c.MaxFlows = 65536
	}
	if c.MaxFlowAge < 0 {
		return errors.New("agent: max flow age must not be negative")
	}
	if c.MaxFlowAge == 0 {
		c.MaxFlowAge = time.Hour
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 8192
	}
	if c.RingBufferBytes == 0 {
		c.RingBufferBytes = DefaultRingBufferBytes
	}
	if c.RingBufferBytes < os.Getpagesize() || c.RingBufferBytes&(c.RingBufferBytes-1) != 0 {
		return fmt.Errorf("agent: ring buffer size %d: want a power of two of at least %d", c.RingBufferBytes, os.Getpagesize())
	}
	if c.ListenAddress != "" {
		if err := server.CheckTCPSecurity(c.ListenAddress, c.TLS.CertFile != "" || c.TLS.KeyFile != "", c.InsecureListen); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	} else if c.TLS != (server.TLSFiles{}) || c.InsecureListen {
		return errors.New("agent: TLS flags and --insecure-listen apply to --listen-address, which is not set")
	}
	switch c.AttachMode {
	case "", string(attach.ModeTCX), string(attach.ModeClsact):
	default:
		return fmt.Errorf("agent: attach mode %q: want tcx or clsact", c.AttachMode)
	}
	return nil
}

// Agent is a running flowtrace node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	start time.Time
	costs costMeter // the agent's CPU over the last minute, for its status

	selfNetns uint32
	dp        *datapath.Datapath
	attacher  *attach.Attacher
	watcher   *ifwatch.Watcher
	resolver  *netnsutil.Resolver
	reasons   *dropreason.Table
	ids       identity.Chain
	obs       *observer.Observer
	srv       *server.Server
	enricher  *enrich.Enricher
	metrics   *metrics.Metrics // nil without --metrics-address
	tlsConfig *tls.Config      // nil without TLS on the TCP listener

	queue     *eventQueue
	queueLost atomic.Uint64

	mu    sync.Mutex
	links map[int]linkState // attached interfaces by ifindex
	// netnsRefs counts the veths whose peer lives in a namespace, so the
	// namespace leaves the drop scope when its last veth goes.
	netnsRefs map[uint32]int
	netnsName map[uint32]string
	// otherNames caches names of devices in our namespace we do not attach
	// to (bridges, vxlan) for naming drops on them.
	otherNames map[uint32]string
}

type linkState struct {
	link      ifwatch.Link
	mode      attach.Mode
	peerNetns uint32
	peerName  string
}

// New validates the configuration. Nothing touches the kernel until Run.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:        cfg,
		log:        log,
		links:      map[int]linkState{},
		netnsRefs:  map[uint32]int{},
		netnsName:  map[uint32]string{},
		otherNames: map[uint32]string{},
	}
	a.queue = newEventQueue(cfg.QueueSize, &a.queueLost)
	return a, nil
}

// Run starts the agent and blocks until ctx is done or a component fails.
// It always detaches everything it attached before returning.
func (a *Agent) Run(ctx context.Context) (err error) {
	a.start = time.Now()
	if s, ok := sampleCPU(); ok {
		a.costs.begin(s)
	}
	if err := a.setup(); err != nil {
		return errors.Join(err, a.teardown())
	}
	defer func() { err = errors.Join(err, a.teardown()) }()

	lis, err := server.ListenUnix(a.cfg.Socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
	}
	var tcpLis net.Listener
	if a.cfg.ListenAddress != "" {
		if tcpLis, err = server.ListenTCP(a.cfg.ListenAddress); err != nil {
			lis.Close()
			return err
		}
	}

	g, ctx := errgroup.WithContext(ctx)
	events := make(chan ifwatch.Event, 64)
	synced := make(chan struct{})
	g.Go(func() error { return a.watcher.Run(ctx, events) })
	g.Go(func() error { a.followLinks(ctx, events, synced); return nil })
	for _, s := range a.ids {
		g.Go(func() error { return s.Run(ctx) })
	}
	g.Go(func() error {
		return a.dp.RunSink(ctx, datapath.Sink{Record: a.queue.offerRecord, Event: a.queue.offer, Flush: a.queue.flush})
	})
	g.Go(func() error { a.enrichLoop(ctx); return nil })
	g.Go(func() error { a.reportLosses(ctx); return nil })

	// Serve only once the interfaces present at start are attached: a
	// client that can connect sees a complete agent.
	select {
	case <-synced:
	case <-ctx.Done():
		lis.Close()
		if tcpLis != nil {
			tcpLis.Close()
		}
		return g.Wait()
	}
	g.Go(func() error { return a.srv.Serve(ctx, lis) })
	if tcpLis != nil {
		if a.tlsConfig != nil {
			g.Go(func() error { return a.srv.ServeTLS(ctx, tcpLis, a.tlsConfig) })
		} else {
			a.log.Warn("serving the flow API on plain TCP (--insecure-listen): loopback only, no authentication", "addr", tcpLis.Addr().String())
			g.Go(func() error { return a.srv.Serve(ctx, tcpLis) })
		}
	}
	if a.metrics != nil {
		g.Go(func() error { return metrics.Serve(ctx, a.cfg.MetricsAddress, a.metrics.Handler(), a.log) })
	}

	a.log.Info("flowtrace agent ready", "socket", a.cfg.Socket, "node", a.cfg.NodeName,
		"drop_hook", a.dp.Features().DropHook, "version", a.cfg.Version)
	if a.cfg.Ready != nil {
		close(a.cfg.Ready)
	}
	g.Go(func() error {
		<-ctx.Done()
		if context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled) {
			return nil // a failing part says what failed
		}
		a.log.Info("flowtrace agent stopping: detaching from interfaces, ending client streams")
		return nil
	})
	return g.Wait()
}

func (a *Agent) setup() error {
	var err error
	if a.selfNetns, err = netnsutil.SelfInode(); err != nil {
		return err
	}
	if n, err := attach.CleanupStale(a.log); err != nil {
		a.log.Warn("removing a previous agent's tc filters failed", "error", err)
	} else if n > 0 {
		a.log.Info("removed tc filters left by a previous agent", "count", n)
	}
	if a.reasons, err = dropreason.FromKernel(); err != nil {
		// Kernels before 5.17 have no reasons: drops are still reported.
		a.log.Warn("drop reasons unavailable; drops are reported without a reason", "error", err)
		a.reasons = nil
	}
	// Each start-up stage parses something large and keeps little of it
	// (kernel BTF twice: the drop reasons' enum, then CO-RE; kallsyms), so
	// each one's garbage is handed back before the next: VmHWM is a peak,
	// and the stages' garbage on top of each other was ~3 MB of it.
	debug.FreeOSMemory()
	a.dp, err = datapath.Load(datapath.Config{
		FlowReportInterval:  a.cfg.FlowReportInterval,
		FirstReportDelay:    a.cfg.FirstReportDelay,
		RingBufferBytes:     a.cfg.RingBufferBytes,
		FlowTableEntries:    a.cfg.FlowTableEntries,
		ScopeAllNetns:       a.cfg.ScopeAllNetns,
		SocketTeardownDrops: a.cfg.SocketTeardownDrops,
		NoFlowCache:         a.cfg.NoFlowCache,
		NoDropMemo:          a.cfg.NoDropMemo,
	}, a.log)
	if err != nil {
		return fmt.Errorf("load datapath: %w", err)
	}
	if err := a.dp.AllowNetns(a.selfNetns); err != nil {
		return fmt.Errorf("scope drops to our netns: %w", err)
	}
	// Loading parsed the kernel's BTF (CO-RE): tens of MB that are garbage
	// now. cilium/ebpf v0.22 keeps no kernel spec cache to flush
	// (btf.FlushKernelSpec is gone), so hand the pages back to the kernel
	// now rather than when the scavenger gets to them.
	//
	// The GC is left at the runtime's defaults (GOGC=100, no memory limit;
	// GOGC and GOMEMLIMIT from the environment apply as usual). History, the
	// part that grows with --max-flows, lives outside the Go heap (package
	// observer), so the heap is a ~3 MB live set plus pipeline garbage.
	// GOGC=50 saved ~5 MB of it but doubled the many-flow storm's p99
	// latency in the bench (the GC's worker takes one of two cores while
	// the agent is saturated), and a limit below the live set, which grows
	// with clients and --kubernetes in large clusters, would turn into GC
	// CPU.
	debug.FreeOSMemory()
	syms, err := kallsyms.Load()
	if err != nil {
		a.log.Warn("kernel symbols unavailable; drop locations are shown as addresses", "error", err)
	}
	debug.FreeOSMemory() // the parse buffers (~5 MB); the table is off-heap
	a.attacher = attach.New(a.log, attach.Mode(a.cfg.AttachMode))
	if a.watcher, err = ifwatch.New(ifwatch.Config{Include: a.cfg.Include, Exclude: a.cfg.Exclude}, a.log); err != nil {
		return err
	}
	a.resolver = netnsutil.NewResolver(a.log)
	// Sources in precedence order: the API server knows most, the CNI
	// cache works without API access, the static file is for labs and
	// hosts without Kubernetes (see package identity).
	if a.cfg.Kubernetes {
		kc, err := k8s.NewClient(a.cfg.Kubeconfig)
		if err != nil {
			return fmt.Errorf("kubernetes identity source: %w", err)
		}
		src, err := k8s.New(k8s.Config{NodeName: a.cfg.NodeName, AllPods: a.cfg.KubernetesAllPods, Grace: a.cfg.IdentityGrace}, kc, a.log)
		if err != nil {
			return fmt.Errorf("kubernetes identity source: %w", err)
		}
		a.ids = append(a.ids, src)
	}
	if a.cfg.CNICacheDir != "" {
		a.ids = append(a.ids, identity.NewCNICache(identity.CNIConfig{Dir: a.cfg.CNICacheDir, Node: a.cfg.NodeName, Grace: a.cfg.IdentityGrace}, a.log))
	}
	if a.cfg.IdentityFile != "" {
		f, err := identity.NewFile(a.cfg.IdentityFile, time.Second, a.log)
		if err != nil {
			return err
		}
		a.ids = append(a.ids, f)
	}
	var reasons enrich.Reasons
	if a.reasons != nil {
		reasons = a.reasons
	}
	var resolver enrich.SymbolResolver
	if syms != nil {
		resolver = syms
	}
	a.enricher = enrich.New(a.cfg.NodeName, a.ids, reasons, resolver, a)
	a.obs = observer.New(observer.Config{MaxFlows: a.cfg.MaxFlows, MaxAge: a.cfg.MaxFlowAge, NodeName: a.cfg.NodeName,
		Materialize: a.enricher.Builder().Materialize}, a.log)
	a.srv = server.New(a.obs, a, a.log)
	if a.cfg.ListenAddress != "" && !a.cfg.InsecureListen {
		if a.tlsConfig, err = server.ServerTLSConfig(a.cfg.TLS); err != nil {
			return fmt.Errorf("TLS for %s: %w", a.cfg.ListenAddress, err)
		}
	}
	if a.cfg.MetricsAddress != "" {
		a.metrics = metrics.New(metrics.Config{TopNamespaces: a.cfg.MetricsTopNamespaces}, metrics.Sources{
			Status: func(ctx context.Context) (*flowtracev1.ServerStatusResponse, error) {
				return a.srv.ServerStatus(ctx, &flowtracev1.ServerStatusRequest{})
			},
			Subscribers: func() int { return a.obs.Status().Followers },
			RingBuffer:  a.ringBufferUsage,
		})
	}
	return nil
}

// teardown detaches before closing the datapath, so no interface is ever
// left pointing at programs that are going away.
func (a *Agent) teardown() error {
	var errs []error
	if a.attacher != nil {
		errs = append(errs, a.attacher.Close())
	}
	if a.dp != nil {
		errs = append(errs, a.dp.Close())
	}
	if a.obs != nil {
		errs = append(errs, a.obs.Close())
	}
	return errors.Join(errs...)
}

// ringBufferUsage reports the BPF ring buffer's pending and total bytes
// when the datapath exposes them (RingBufferUsage); older datapaths do not,
// and the ring buffer metrics are then left out rather than made up.
func (a *Agent) ringBufferUsage() (used, size uint64, ok bool) {
	if a.dp == nil {
		return 0, 0, false
	}
	rb, ok := any(a.dp).(interface{ RingBufferUsage() (used, size int) })
	if !ok {
		return 0, 0, false
	}
	u, sz := rb.RingBufferUsage()
	if sz <= 0 || u < 0 {
		return 0, 0, false
	}
	return uint64(u), uint64(sz), true
}
