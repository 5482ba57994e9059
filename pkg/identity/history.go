package identity

import (
	"net/netip"
	"sync"
	"time"
)

// DefaultGrace is how long a released IP keeps naming its last pod. Drops
// to a pod that just died are the interesting ones, and they arrive after
// the API server has already forgotten it.
const DefaultGrace = 2 * time.Minute

// maxSpans bounds the remembered holders of one IP, so churn on one address
// cannot grow memory without bound between prunes.
const maxSpans = 8

// History remembers, per IP, which pod held it and when, so an event is
// named with the identity valid when it happened: a deleted pod keeps its
// IP for a grace period unless a newer pod takes the IP, and a newer pod
// does not name an event that happened before it held the address.
// It is safe for concurrent use; lookups take only a read lock.
type History struct {
	grace time.Duration
	now   func() time.Time

	mu      sync.RWMutex
	byIP    map[netip.Addr][]span // oldest first
	holders map[string][]netip.Addr
}

type span struct {
	holder string
	pod    *Pod
	since  time.Time
	until  time.Time // zero while held
}

func (s *span) covers(t time.Time, grace time.Duration) bool {
	if t.Before(s.since) {
		return false
	}
	return s.until.IsZero() || t.Before(s.until.Add(grace))
}

// NewHistory returns a history with the given grace (DefaultGrace if <= 0)
// and clock (time.Now if nil).
func NewHistory(grace time.Duration, now func() time.Time) *History {
	if grace <= 0 {
		grace = DefaultGrace
	}
	if now == nil {
		now = time.Now
	}
	return &History{grace: grace, now: now, byIP: map[netip.Addr][]span{}, holders: map[string][]netip.Addr{}}
}

// Grace returns the configured grace period.
func (h *History) Grace() time.Duration { return h.grace }

// Set records that holder (a stable id: a pod UID, a CNI cache entry) now
// holds ips as pod, since the given time. Addresses the holder held before
// and no longer lists are released now. A holder's span never starts before
// the previous holder of the same IP let go of it, so a pod created before
// the old one was deleted does not name the old one's last packets.
func (h *History) Set(holder string, pod *Pod, ips []netip.Addr, since time.Time) {
	now := h.now()
	if since.IsZero() || since.After(now) {
		since = now
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	keep := make(map[netip.Addr]bool, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		if !ip.IsValid() || keep[ip] {
			continue
		}
		keep[ip] = true
		spans := h.byIP[ip]
		found := false
		start := since
		for i := range spans {
			s := &spans[i]
			if s.holder == holder && s.until.IsZero() {
				s.pod, found = pod, true
				break
			}
			if s.holder != holder && !s.until.IsZero() && s.until.After(start) {
				start = s.until
			}
		}
		if !found {
			spans = append(spans, span{holder: holder, pod: pod, since: start})
			if len(spans) > maxSpans {
				spans = spans[len(spans)-maxSpans:]
			}
			h.byIP[ip] = spans
		}
	}
	var held []netip.Addr
	for _, ip := range h.holders[holder] {
		if !keep[ip] {
			h.endLocked(holder, ip, now)
		}
	}
	for ip := range keep {
		held = append(held, ip)
	}
	h.holders[holder] = held
}

// Release ends every span of holder at t (zero: now): the pod was deleted
// or its sandbox torn down.
func (h *History) Release(holder string, t time.Time) {
	if t.IsZero() {
		t = h.now()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ip := range h.holders[holder] {
		h.endLocked(holder, ip, t)
	}
	delete(h.holders, holder)
}

func (h *History) endLocked(holder string, ip netip.Addr, t time.Time) {
	spans := h.byIP[ip]
	for i := range spans {
		if spans[i].holder == holder && spans[i].until.IsZero() {
			spans[i].until = t
		}
	}
}

// At returns the pod that held ip at t (zero t: now). Among the spans
// covering t, the one that started last wins: a newer pod cuts the grace of
// the previous one short.
func (h *History) At(ip netip.Addr, t time.Time) (*Pod, bool) {
	if t.IsZero() {
		t = h.now()
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	spans := h.byIP[ip.Unmap()]
	var best *span
	for i := range spans {
		s := &spans[i]
		if s.covers(t, h.grace) && (best == nil || !s.since.Before(best.since)) {
			best = s
		}
	}
	if best == nil {
		return nil, false
	}
	return best.pod, true
}

// Current returns how many holders hold at least one address now.
func (h *History) Current() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.holders)
}

// Prune forgets spans that ended more than the grace period ago.
func (h *History) Prune() {
	cut := h.now().Add(-h.grace)
	h.mu.Lock()
	defer h.mu.Unlock()
	for ip, spans := range h.byIP {
		kept := spans[:0]
		for _, s := range spans {
			if s.until.IsZero() || s.until.After(cut) {
				kept = append(kept, s)
			}
		}
		if len(kept) == 0 {
			delete(h.byIP, ip)
		} else {
			h.byIP[ip] = kept
		}
	}
}
