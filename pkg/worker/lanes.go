package worker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// DomainLimit overrides the per-domain delivery limits for a domain and its
// subdomains.
type DomainLimit struct {
	Concurrency int     // deliveries in flight at once (0: the default)
	Rate        float64 // messages per second (0: unlimited)
	Burst       int     // token bucket size for Rate (default 1)
	MsgsPerConn int     // SMTP transactions per connection (0: the worker's --max-msgs-per-conn)
}

// errCongested is the cause of a delivery cancelled because its next hop
// is congested and the congested share of the worker is exceeded.
var errCongested = errors.New("next hop congested")

// lane is the per-recipient-domain queue inside one worker process. A lane
// runs at most its concurrency at once; jobs beyond wait in the lane. A lane
// whose running jobs are all stuck (no progress for StallAfter: a
// destination that does not answer; a long transfer that moves bytes is
// not stuck), or whose rate limit leaves more than StallAfter of work
// waiting, is congested: its waiting jobs are handed back to the queue as
// deferred (without counting an attempt) instead of holding worker capacity.
type lane struct {
	key     string
	cap     int
	limiter *rate.Limiter
	waiting []*queue.Job
	runs    map[*queue.Job]*run
}

// run is one job being processed.
type run struct {
	lane      *lane
	dest      *dest
	start     time.Time
	last      atomic.Int64 // unix nanos of the last byte moved to or from the remote
	cancel    context.CancelCauseFunc
	preempted bool
	inData    atomic.Bool // the remote accepted DATA: never preempted (a duplicate could follow)
}

// progress is when the run last made progress (its start counts).
func (r *run) progress() time.Time {
	if n := r.last.Load(); n > 0 {
		if t := time.Unix(0, n); t.After(r.start) {
			return t
		}
	}
	return r.start
}

func (r *run) stuck(now time.Time, after time.Duration) bool { return now.Sub(r.progress()) >= after }

// dest is a next hop (the first address of a route) and the runs going to
// it, whatever their domain: many domains sharing one slow next hop (a
// mailertable entry, a hosting provider's MX) are congestion of that hop.
type dest struct {
	key  string
	runs map[*run]struct{}
}

// congested: every run to the next hop is stuck.
func (d *dest) congested(now time.Time, after time.Duration) bool {
	if len(d.runs) == 0 {
		return false
	}
	for r := range d.runs {
		if !r.stuck(now, after) {
			return false
		}
	}
	return true
}

// learned is a domain's next hop as its last delivery resolved it.
type learned struct {
	key string
	at  time.Time
}

// learnedTTL: how long a domain's next hop is assumed unchanged.
const learnedTTL = 10 * time.Minute

func (l *lane) congested(now time.Time, after time.Duration) bool {
	if len(l.runs) < l.cap {
		return false
	}
	for _, r := range l.runs {
		if !r.stuck(now, after) {
			return false
		}
	}
	return true
}

// scheduler decides which fetched job runs when.
type scheduler struct {
	w *Worker

	mu      sync.Mutex
	lanes   map[string]*lane
	order   []string // lanes with waiting jobs, round-robin
	runs    map[*queue.Job]*run
	dests   map[string]*dest
	nextHop map[string]learned // domain → next hop
	active  int
	held    int // active + waiting + being handed back
	timer   *time.Timer
	changed chan struct{} // capacity freed: the fetch loop may fetch more
}

func newScheduler(w *Worker) *scheduler {
	return &scheduler{w: w, lanes: map[string]*lane{}, runs: map[*queue.Job]*run{}, dests: map[string]*dest{},
		nextHop: map[string]learned{}, changed: make(chan struct{}, 1)}
}

func (s *scheduler) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// room is how many more jobs the fetch loop may take.
func (s *scheduler) room() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.cfg.Concurrency*2 - s.held
}

func (s *scheduler) laneFor(domain string) *lane {
	l := s.lanes[domain]
	if l != nil {
		return l
	}
	l = &lane{key: domain, cap: s.w.cfg.DomainConcurrency, runs: map[*queue.Job]*run{}}
	if lim, ok := s.w.limitFor(domain); ok {
		if lim.Concurrency > 0 {
			l.cap = lim.Concurrency
		}
		if lim.Rate > 0 {
			l.limiter = rate.NewLimiter(rate.Limit(lim.Rate), max(lim.Burst, 1))
		}
	}
	s.lanes[domain] = l
	return l
}

// add takes a fetched job.
func (s *scheduler) add(j *queue.Job) {
	s.mu.Lock()
	s.held++
	domain := ""
	if j.Env != nil {
		domain = j.Env.Domain
	}
	l := s.laneFor(domain)
	if len(l.waiting) == 0 {
		s.order = append(s.order, domain)
	}
	l.waiting = append(l.waiting, j)
	s.mu.Unlock()
	s.pump()
}

// bind records that j's delivery goes to the next hop of hops (called by
// the worker once the route is known).
func (s *scheduler) bind(j *queue.Job, hops []delivery.Hop) {
	if len(hops) == 0 {
		return
	}
	key := hops[0].Addr.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[j]
	if r == nil {
		return
	}
	if r.dest != nil {
		delete(r.dest.runs, r)
	}
	d := s.dests[key]
	if d == nil {
		d = &dest{key: key, runs: map[*run]struct{}{}}
		s.dests[key] = d
	}
	d.runs[r] = struct{}{}
	r.dest = d
	now := time.Now()
	if len(s.nextHop) >= pruneLearned {
		for k, v := range s.nextHop {
			if now.Sub(v.at) > learnedTTL {
				delete(s.nextHop, k)
			}
		}
	}
	s.nextHop[r.lane.key] = learned{key: key, at: now}
}

// pruneLearned is the size at which expired next-hop entries are swept.
const pruneLearned = 4096

// activity returns the progress callback of j's delivery.
func (s *scheduler) activity(j *queue.Job) func() {
	s.mu.Lock()
	r := s.runs[j]
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	return func() { r.last.Store(time.Now().UnixNano()) }
}

// dataStarted returns the callback marking j's delivery as in DATA.
func (s *scheduler) dataStarted(j *queue.Job) func() {
	s.mu.Lock()
	r := s.runs[j]
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	return func() { r.inData.Store(true) }
}

// congestedRuns counts the runs to congested next hops (not yet preempted)
// and preempts the newest stuck ones beyond the congested share, so that
// the congested destinations together never hold more than it.
func (s *scheduler) congestedRuns(now time.Time) int {
	after := s.w.cfg.StallAfter
	var stuck []*run
	for _, d := range s.dests {
		if !d.congested(now, after) {
			continue
		}
		for r := range d.runs {
			if !r.preempted {
				stuck = append(stuck, r)
			}
		}
	}
	share := s.w.cfg.CongestedConcurrency
	if len(stuck) <= share {
		return len(stuck)
	}
	// Keep those in DATA (aborting one could duplicate a delivered
	// message), then the oldest (closest to their own timeout); cancel the rest.
	slices.SortFunc(stuck, func(a, b *run) int {
		if a.inData.Load() != b.inData.Load() {
			if a.inData.Load() {
				return -1
			}
			return 1
		}
		return a.start.Compare(b.start)
	})
	kept := 0
	for _, r := range stuck {
		if kept < share || r.inData.Load() {
			kept++
			continue
		}
		r.preempted = true
		r.cancel(errCongested)
	}
	return kept
}

// pump starts what may start and hands back what is congested.
func (s *scheduler) pump() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	after := s.w.cfg.StallAfter
	var wake time.Time
	var next []string
	congested := s.congestedRuns(now)
	for progress := true; progress; {
		progress = false
		next = next[:0]
		for _, key := range s.order {
			l := s.lanes[key]
			if l == nil || len(l.waiting) == 0 {
				continue
			}
			// Congested domain: all running jobs stuck.
			if l.congested(now, after) {
				s.handBack(l.waiting, "destination not responding")
				l.waiting = nil
				continue
			}
			// Congested next hop, whose share of the worker is used up.
			toCongested := false
			if nh, ok := s.nextHop[key]; ok && now.Sub(nh.at) < learnedTTL {
				if d := s.dests[nh.key]; d != nil && d.congested(now, after) {
					toCongested = true
					if congested >= s.w.cfg.CongestedConcurrency {
						s.handBack(l.waiting, "next hop "+nh.key+" not responding")
						l.waiting = nil
						continue
					}
				}
			}
			if l.limiter != nil {
				// Keep at most StallAfter worth of rate-limited work waiting.
				keep := max(int(float64(l.limiter.Limit())*after.Seconds()), 1)
				if len(l.waiting) > keep {
					s.handBack(l.waiting[keep:], "domain rate limit")
					l.waiting = l.waiting[:keep]
				}
			}
			if s.active < s.w.cfg.Concurrency && len(l.runs) < l.cap {
				if l.limiter != nil {
					r := l.limiter.ReserveN(now, 1)
					if d := r.DelayFrom(now); d > 0 {
						r.CancelAt(now)
						if t := now.Add(d); wake.IsZero() || t.Before(wake) {
							wake = t
						}
						next = append(next, key)
						continue
					}
				}
				j := l.waiting[0]
				l.waiting = l.waiting[1:]
				ctx, cancel := context.WithCancelCause(s.w.work)
				r := &run{lane: l, start: now, cancel: cancel}
				l.runs[j] = r
				s.runs[j] = r
				s.active++
				if toCongested {
					congested++
				}
				progress = true
				go s.run(ctx, l, j)
			}
			if len(l.waiting) > 0 {
				next = append(next, key)
			}
		}
		s.order = append(s.order[:0], next...)
	}
	// While anything runs, look again as runs may become stuck.
	if len(s.runs) > 0 {
		if t := now.Add(max(after/4, 50*time.Millisecond)); wake.IsZero() || t.Before(wake) {
			wake = t
		}
	}
	if !wake.IsZero() {
		d := max(time.Until(wake), 10*time.Millisecond)
		if s.timer == nil {
			s.timer = time.AfterFunc(d, s.pump)
		} else {
			s.timer.Reset(d)
		}
	}
}

// handBack defers jobs without counting an attempt (called with s.mu held).
func (s *scheduler) handBack(jobs []*queue.Job, why string) {
	for _, j := range jobs {
		go func() {
			s.w.handBack(j, why)
			s.done(nil, nil)
		}()
	}
}

func (s *scheduler) run(ctx context.Context, l *lane, j *queue.Job) {
	s.w.process(ctx, j)
	s.done(l, j)
}

// done releases a job's capacity.
func (s *scheduler) done(l *lane, j *queue.Job) {
	s.mu.Lock()
	s.held--
	if l != nil {
		if r := l.runs[j]; r != nil {
			r.cancel(nil)
			if r.dest != nil {
				delete(r.dest.runs, r)
				if len(r.dest.runs) == 0 {
					delete(s.dests, r.dest.key)
				}
			}
		}
		delete(l.runs, j)
		delete(s.runs, j)
		s.active--
		if len(l.runs) == 0 && len(l.waiting) == 0 {
			delete(s.lanes, l.key)
		}
	}
	s.mu.Unlock()
	s.signal()
	s.pump()
}

// heartbeat keeps waiting jobs' ack deadlines ahead.
func (s *scheduler) heartbeat() {
	s.mu.Lock()
	var jobs []*queue.Job
	for _, l := range s.lanes {
		jobs = append(jobs, l.waiting...)
	}
	s.mu.Unlock()
	for _, j := range jobs {
		_ = j.InProgress()
	}
}

// drainWaiting hands every waiting job back to the queue at once (shutdown).
func (s *scheduler) drainWaiting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lanes {
		for _, j := range l.waiting {
			_ = j.Nak(0)
			s.held--
		}
		l.waiting = nil
	}
	s.order = nil
}

func (s *scheduler) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held == 0
}

// limitFor finds the most specific DomainLimit for domain.
func (w *Worker) limitFor(domain string) (DomainLimit, bool) {
	d := domain
	for {
		if l, ok := w.cfg.DomainLimits[d]; ok {
			return l, true
		}
		i := strings.IndexByte(d, '.')
		if i < 0 {
			return DomainLimit{}, false
		}
		d = d[i+1:]
	}
}
