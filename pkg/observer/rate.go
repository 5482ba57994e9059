package observer

// rateSeconds is the window of the flow rate ServerStatus reports: the last
// minute, as Hubble's flows_rate.
const rateSeconds = 60

// rateWindow counts the flows history took in each second of the last
// minute, so a status can say how busy the node is now: seen_flows over
// uptime is a lifetime average that a quiet hour hides a storm in. It is
// updated once per published batch, under the observer's lock.
type rateWindow struct {
	first int64 // unix ns of the first flow counted; 0 before it
	slots [rateSeconds]struct {
		sec int64 // the unix second the count is of
		n   uint64
	}
}

// add counts n flows taken at unix ns at.
func (w *rateWindow) add(at int64, n uint64) {
	if n == 0 {
		return
	}
	if w.first == 0 {
		w.first = at
	}
	sec := at / 1e9
	s := &w.slots[sec%rateSeconds]
	if s.sec != sec {
		s.sec, s.n = sec, 0
	}
	s.n += n
}

// rate returns flows per second over the last minute at unix ns now: the
// seconds now-59 .. now (the current one in part), or since the first flow
// if that is later. Never less than a second is divided by, so the first
// flows do not read as a burst.
func (w *rateWindow) rate(now int64) float64 {
	if w.first == 0 {
		return 0
	}
	nowSec := now / 1e9
	var n uint64
	for _, s := range w.slots {
		if s.sec > nowSec-rateSeconds && s.sec <= nowSec {
			n += s.n
		}
	}
	start := max(w.first, (nowSec-rateSeconds+1)*1e9)
	span := max(float64(now-start)/1e9, 1)
	return float64(n) / span
}
