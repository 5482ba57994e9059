package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultTopNamespaces bounds the namespace label when Config leaves it 0.
const DefaultTopNamespaces = 50

// Namespace label values that are not namespaces.
const (
	OtherNamespace = "other" // beyond TopNamespaces
	NoNamespace    = "none"  // neither end is a pod: the host
)

// Config configures the metrics.
type Config struct {
	// TopNamespaces is how many distinct namespaces get their own label
	// value on flowtrace_drops_total; the rest are "other".
	TopNamespaces int
}

// Sources are read at scrape time. Any may be nil.
type Sources struct {
	// Status returns the merged ServerStatus, the same the API serves.
	Status func(ctx context.Context) (*flowtracev1.ServerStatusResponse, error)
	// Subscribers returns the number of following clients.
	Subscribers func() int
	// RingBuffer returns the BPF ring buffer's pending bytes and size; ok
	// is false when the datapath cannot tell.
	RingBuffer func() (used, size uint64, ok bool)
}

// Metrics holds flowtrace's collectors in their own registry (no global
// state: two agents in one test process do not collide).
type Metrics struct {
	reg   *prometheus.Registry
	flows *prometheus.CounterVec
	drops *prometheus.CounterVec

	mu    sync.Mutex
	topN  int
	nsSet map[string]struct{}

	// The children already looked up, so a flow costs a map read, not a
	// label formatting (String, ToLower: an allocation) and a hash of the
	// label values. Bounded: verdicts and reasons are enums, namespaces
	// topN + 2.
	cmu         sync.Mutex
	flowsByVerd map[flowtracev1.Verdict]prometheus.Counter
	dropsBy     map[dropKey]prometheus.Counter
}

type dropKey struct {
	reason flowtracev1.DropReason
	cause  flowtracev1.DropCause
	ns     string
}

// New registers the collectors.
func New(cfg Config, src Sources) *Metrics {
	if cfg.TopNamespaces <= 0 {
		cfg.TopNamespaces = DefaultTopNamespaces
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowtrace_flows_total", Help: "Flows published, by verdict.",
		}, []string{"verdict"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowtrace_drops_total", Help: "Dropped packets, by flowtrace drop reason, flowtrace's explanation (cause, none when it has none) and namespace (bounded: see --metrics-top-namespaces).",
		}, []string{"reason", "cause", "namespace"}),
		topN:  cfg.TopNamespaces,
		nsSet: map[string]struct{}{},

		flowsByVerd: map[flowtracev1.Verdict]prometheus.Counter{},
		dropsBy:     map[dropKey]prometheus.Counter{},
	}
	m.reg.MustRegister(m.flows, m.drops, &scrape{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry, for tests and embedding.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: nil, Registry: m.reg})
}

// ObserveFlow counts one published flow.
func (m *Metrics) ObserveFlow(f *flowtracev1.Flow) {
	if f == nil {
		return
	}
	v := f.GetVerdict()
	m.flowCounter(v).Inc()
	if v != flowtracev1.Verdict_VERDICT_DROPPED {
		return
	}
	n := float64(f.GetEventCount())
	if n == 0 {
		n = 1
	}
	m.dropCounter(dropKey{f.GetDropReason(), f.GetDropCause(), m.namespace(f)}).Add(n)
}

// ObserveForwarded counts n forwarded-traffic flows the agent kept
// without making them (observer.Lazy): ObserveFlow's count of them.
func (m *Metrics) ObserveForwarded(n int) {
	m.flowCounter(flowtracev1.Verdict_VERDICT_FORWARDED).Add(float64(n))
}

func (m *Metrics) flowCounter(v flowtracev1.Verdict) prometheus.Counter {
	m.cmu.Lock()
	defer m.cmu.Unlock()
	c, ok := m.flowsByVerd[v]
	if !ok {
		c = m.flows.WithLabelValues(EnumLabel(v.String(), "VERDICT_"))
		m.flowsByVerd[v] = c
	}
	return c
}

func (m *Metrics) dropCounter(k dropKey) prometheus.Counter {
	m.cmu.Lock()
	defer m.cmu.Unlock()
	c, ok := m.dropsBy[k]
	if !ok {
		cause := "none"
		if k.cause != flowtracev1.DropCause_DROP_CAUSE_UNSPECIFIED {
			cause = EnumLabel(k.cause.String(), "DROP_CAUSE_")
		}
		c = m.drops.WithLabelValues(EnumLabel(k.reason.String(), "DROP_REASON_"), cause, k.ns)
		m.dropsBy[k] = c
	}
	return c
}

// namespace admits the first topN namespaces; later ones are "other".
func (m *Metrics) namespace(f *flowtracev1.Flow) string {
	ns := f.GetSource().GetNamespace()
	if ns == "" {
		ns = f.GetDestination().GetNamespace()
	}
	if ns == "" {
		return NoNamespace
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.nsSet[ns]; ok {
		return ns
	}
	if len(m.nsSet) < m.topN {
		m.nsSet[ns] = struct{}{}
		return ns
	}
	return OtherNamespace
}

// EnumLabel turns "DROP_REASON_NO_SOCKET" into "no_socket".
func EnumLabel(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

var (
	descLost = prometheus.NewDesc("flowtrace_lost_events_total",
		"Events lost, by pipeline stage; the same counters as ServerStatus.", []string{"stage"}, nil)
	descIfaces = prometheus.NewDesc("flowtrace_attached_interfaces",
		"Interfaces observed, by attach mode and kind.", []string{"mode", "kind"}, nil)
	descSubs = prometheus.NewDesc("flowtrace_subscribers",
		"Clients following the flow stream.", nil, nil)
	descHeld = prometheus.NewDesc("flowtrace_history_flows",
		"Flows held in history.", nil, nil)
	descMax = prometheus.NewDesc("flowtrace_history_max_flows",
		"History capacity in flows.", nil, nil)
	descSeen = prometheus.NewDesc("flowtrace_seen_flows_total",
		"Flows published since the agent started.", nil, nil)
	descRingUsed = prometheus.NewDesc("flowtrace_ring_buffer_used_bytes",
		"Bytes waiting in the BPF ring buffer.", nil, nil)
	descRingSize = prometheus.NewDesc("flowtrace_ring_buffer_size_bytes",
		"Size of the BPF ring buffer.", nil, nil)
	descTableUsed = prometheus.NewDesc("flowtrace_flow_table_entries",
		"Entries in the kernel's flow table at the agent's last walk of it.", nil, nil)
	descTableSize = prometheus.NewDesc("flowtrace_flow_table_capacity_entries",
		"Size of the kernel's flow table (--flow-table-entries).", nil, nil)
	descCounter = prometheus.NewDesc("flowtrace_datapath_counter_total",
		"Kernel-side datapath counters.", []string{"name"}, nil)
	// The kernel counts programs' runs and run time only while its BPF
	// statistics are on (kernel.bpf_stats_enabled): a program it has never
	// counted has neither series, rather than a zero that reads as idle.
	descProgRuns = prometheus.NewDesc("flowtrace_bpf_program_runs_total",
		"Runs of the agent's per-packet and per-drop BPF programs the kernel counted while its BPF statistics were on.", []string{"program"}, nil)
	descProgTime = prometheus.NewDesc("flowtrace_bpf_program_run_seconds_total",
		"Kernel time of the agent's per-packet and per-drop BPF programs, counted while the kernel's BPF statistics were on.", []string{"program"}, nil)
)

// scrape reads the sources at scrape time.
type scrape struct{ src Sources }

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLost, descIfaces, descSubs, descHeld, descMax, descSeen, descRingUsed, descRingSize, descTableUsed, descTableSize, descCounter, descProgRuns, descProgTime} {
		ch <- d
	}
}

// scrapeTimeout bounds the status read: a scrape must not hang on a lock.
const scrapeTimeout = 5 * time.Second

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	if s.src.Subscribers != nil {
		ch <- prometheus.MustNewConstMetric(descSubs, prometheus.GaugeValue, float64(s.src.Subscribers()))
	}
	if s.src.RingBuffer != nil {
		if used, size, ok := s.src.RingBuffer(); ok {
			ch <- prometheus.MustNewConstMetric(descRingUsed, prometheus.GaugeValue, float64(used))
			ch <- prometheus.MustNewConstMetric(descRingSize, prometheus.GaugeValue, float64(size))
		}
	}
	if s.src.Status == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	st, err := s.src.Status(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descLost, fmt.Errorf("read status: %w", err))
		return
	}
	for _, lc := range st.GetLostEvents() {
		ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lc.GetCount()),
			EnumLabel(lc.GetSource().String(), "LOST_EVENTS_SOURCE_"))
	}
	type mk struct{ mode, kind string }
	ifaces := map[mk]int{}
	for _, i := range st.GetInterfaces() {
		ifaces[mk{i.GetMode(), i.GetKind()}]++
	}
	for k, n := range ifaces {
		ch <- prometheus.MustNewConstMetric(descIfaces, prometheus.GaugeValue, float64(n), k.mode, k.kind)
	}
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(st.GetNumFlows()))
	ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(st.GetMaxFlows()))
	ch <- prometheus.MustNewConstMetric(descSeen, prometheus.CounterValue, float64(st.GetSeenFlows()))
	if ft := st.GetFlowTable(); ft != nil {
		ch <- prometheus.MustNewConstMetric(descTableSize, prometheus.GaugeValue, float64(ft.GetCapacity()))
		if ft.GetWalkedAt() != nil {
			ch <- prometheus.MustNewConstMetric(descTableUsed, prometheus.GaugeValue, float64(ft.GetUsed()))
		}
	}
	for name, v := range st.GetDatapathCounters() {
		ch <- prometheus.MustNewConstMetric(descCounter, prometheus.CounterValue, float64(v), name)
	}
	for _, p := range st.GetCost().GetPrograms() {
		if p.GetRunCount() == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descProgRuns, prometheus.CounterValue, float64(p.GetRunCount()), p.GetName())
		ch <- prometheus.MustNewConstMetric(descProgTime, prometheus.CounterValue, p.GetRunTime().AsDuration().Seconds(), p.GetName())
	}
}

// Serve serves h on /metrics at addr until ctx is done. Only metrics are
// served there, never flows; bind it where Prometheus can reach it.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return ServeListener(ctx, lis, h, log)
}

// ServeListener is Serve on an existing listener.
func ServeListener(ctx context.Context, lis net.Listener, h http.Handler, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	log.Info("serving metrics", "addr", "http://"+lis.Addr().String()+"/metrics")
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("metrics: shut down: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", lis.Addr(), err)
	}
	return nil
}
