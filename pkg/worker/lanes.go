package worker

import (
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

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

// lane is the per-recipient-domain queue inside one worker process. A lane
// runs at most its concurrency at once; jobs beyond wait in the lane. A lane
// whose running jobs have all been stuck for StallAfter (a destination that
// times out), or whose rate limit leaves more than StallAfter of work
// waiting, is congested: its waiting jobs are handed back to the queue as
// deferred (without counting an attempt) instead of holding worker capacity.
// That is how one dead domain never slows the others.
type lane struct {
	key     string
	cap     int
	limiter *rate.Limiter
	waiting []*queue.Job
	starts  map[*queue.Job]time.Time
}

func (l *lane) oldestStart() time.Time {
	var t time.Time
	for _, s := range l.starts {
		if t.IsZero() || s.Before(t) {
			t = s
		}
	}
	return t
}

// scheduler decides which fetched job runs when.
type scheduler struct {
	w *Worker

	mu      sync.Mutex
	lanes   map[string]*lane
	order   []string // lanes with waiting jobs, round-robin
	active  int
	held    int // active + waiting + being handed back
	timer   *time.Timer
	changed chan struct{} // capacity freed: the fetch loop may fetch more
}

func newScheduler(w *Worker) *scheduler {
	return &scheduler{w: w, lanes: map[string]*lane{}, changed: make(chan struct{}, 1)}
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
	l = &lane{key: domain, cap: s.w.cfg.DomainConcurrency, starts: map[*queue.Job]time.Time{}}
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

// pump starts what may start and hands back what is congested.
func (s *scheduler) pump() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var wake time.Time
	var next []string
	for progress := true; progress; {
		progress = false
		next = next[:0]
		for _, key := range s.order {
			l := s.lanes[key]
			if l == nil || len(l.waiting) == 0 {
				continue
			}
			// Congested: all running jobs stuck for StallAfter.
			if len(l.starts) >= l.cap && now.Sub(l.oldestStart()) >= s.w.cfg.StallAfter {
				s.handBack(l, l.waiting, "destination not responding")
				l.waiting = nil
				continue
			}
			if l.limiter != nil {
				// Keep at most StallAfter worth of rate-limited work waiting.
				keep := max(int(float64(l.limiter.Limit())*s.w.cfg.StallAfter.Seconds()), 1)
				if len(l.waiting) > keep {
					s.handBack(l, l.waiting[keep:], "domain rate limit")
					l.waiting = l.waiting[:keep]
				}
			}
			if s.active < s.w.cfg.Concurrency && len(l.starts) < l.cap {
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
				l.starts[j] = now
				s.active++
				progress = true
				go s.run(l, j)
			} else if len(l.starts) >= l.cap {
				if t := l.oldestStart().Add(s.w.cfg.StallAfter); wake.IsZero() || t.Before(wake) {
					wake = t
				}
			}
			if len(l.waiting) > 0 {
				next = append(next, key)
			}
		}
		s.order = append(s.order[:0], next...)
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
func (s *scheduler) handBack(l *lane, jobs []*queue.Job, why string) {
	for _, j := range jobs {
		go func() {
			delay := time.Duration(float64(s.w.cfg.BusyDelay) * (0.5 + rand.Float64()))
			s.w.handBack(j, delay, why)
			s.done(nil, nil)
		}()
	}
}

func (s *scheduler) run(l *lane, j *queue.Job) {
	s.w.process(s.w.work, j)
	s.done(l, j)
}

// done releases a job's capacity.
func (s *scheduler) done(l *lane, j *queue.Job) {
	s.mu.Lock()
	s.held--
	if l != nil {
		delete(l.starts, j)
		s.active--
		if len(l.starts) == 0 && len(l.waiting) == 0 {
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

// activity returns the progress callback for j's delivery (defect 4 hook).
func (w *Worker) activity(j *queue.Job) func() { return nil }
