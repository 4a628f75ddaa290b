package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// DomainLimit overrides the delivery limits for a domain and its
// subdomains (the --domain-limit flags). With a Shaper its concurrency and
// rate hold for the whole fleet; without one, per process.
type DomainLimit = shaping.Limit

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
	limiter *rate.Limiter // per-process rate (no Shaper)
	waiting []*queue.Job
	runs    map[*queue.Job]*run
	// fleet: a start needs the Shaper's admission (a fleet-wide limit on
	// the domain or on a next hop). Admissions are asked for at most
	// the jobs that could start; after a refusal not again before notBefore.
	fleet     bool
	acquiring int // admissions being asked
	notBefore time.Time
	keep      int             // waiting jobs kept while refused; the rest are handed back
	refused   *shaping.Denied // the last refusal, until an admission succeeds
	paced     time.Time       // when the last job handed back at the lane's rate is due
	lastDone  time.Time       // when a delivery of the lane last ended (its creation first)
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
	lease     *shaping.Lease
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

	mu        sync.Mutex
	lanes     map[string]*lane
	order     []string // lanes with waiting jobs, round-robin
	runs      map[*queue.Job]*run
	dests     map[string]*dest
	nextHop   map[string]learned // domain → next hop
	windows   map[string]*window // domain → adaptive concurrency
	active    int
	acquiring int // admissions being asked, all lanes
	held      int // active + waiting + being handed back
	timer     *time.Timer
	changed   chan struct{} // capacity freed: the fetch loop may fetch more
}

func newScheduler(w *Worker) *scheduler {
	return &scheduler{w: w, lanes: map[string]*lane{}, runs: map[*queue.Job]*run{}, dests: map[string]*dest{},
		nextHop: map[string]learned{}, windows: map[string]*window{}, changed: make(chan struct{}, 1)}
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
	l = &lane{key: domain, cap: s.w.cfg.DomainConcurrency, runs: map[*queue.Job]*run{}, lastDone: time.Now()}
	rules := s.w.rules()
	lim, ok := s.w.limitFor(domain)
	if ok && lim.Concurrency > 0 {
		l.cap = lim.Concurrency
	}
	if s.w.cfg.Shaper != nil && ((ok && lim.Fleet()) || rules.HasHosts()) {
		l.fleet = true
		// What could start within StallAfter stays; more goes back to the queue.
		l.keep = max(lim.Concurrency*2, int(lim.Rate*s.w.cfg.StallAfter.Seconds()), 1)
		if lim.Rate == 0 && lim.NewConns > 0 {
			// Paced connections carry many messages each.
			l.keep = max(l.keep, l.cap*2)
		}
		// Never more than half the worker's concurrency: mail a limit holds
		// back never fills the fetch buffer (2 × concurrency), so the worker
		// goes on fetching and handing back, and what KEDA reads as work
		// (the ready consumer's pending + ack-pending) stays below what
		// the running pods can take.
		l.keep = max(min(l.keep, s.w.cfg.Concurrency/2), 1)
	} else if ok && lim.Rate > 0 {
		l.limiter = rate.NewLimiter(rate.Limit(lim.Rate), max(lim.Burst, 1))
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

// Adaptive concurrency per destination (as Postfix's scheduler): a
// domain starts with InitialConcurrency deliveries at once, gains one per
// success up to its cap (--domain-concurrency or its limit), and halves on
// a congestion signal (no connection, 421, 4.7.x), down to MinConcurrency.
// A destination that never answers never grows, so a few slow ones cannot
// take the worker's slots from healthy mail.
const (
	InitialConcurrency = 5
	ConcurrencyStep    = 1
	ConcurrencyBackoff = 2 // divisor on a congestion signal
	MinConcurrency     = 1
)

// slowLane: a domain none of whose deliveries ended or made progress (a
// reply line, a command or body chunk written) for this long gives up its
// waiting mail when the worker's fetch buffer is full. A destination that
// answers makes progress every round trip; a tarpit or a dribbling MX
// makes none.
const slowLane = 500 * time.Millisecond

// active is when l last showed it delivers: a delivery ended (the lane's
// creation counts) or a running one made progress.
func (l *lane) active() time.Time {
	t := l.lastDone
	for _, r := range l.runs {
		if p := r.progress(); p.After(t) {
			t = p
		}
	}
	return t
}

// window is a domain's current concurrency.
type window struct {
	cur int
	at  time.Time // last used, for pruning
}

// windowOf returns l's window (called with s.mu held); its cap is l.cap.
func (s *scheduler) windowOf(l *lane) *window {
	w := s.windows[l.key]
	if w == nil {
		if len(s.windows) >= pruneLearned {
			for k, v := range s.windows {
				if time.Since(v.at) > learnedTTL {
					delete(s.windows, k)
				}
			}
		}
		w = &window{cur: min(InitialConcurrency, l.cap)}
		s.windows[l.key] = w
	}
	w.cur = min(w.cur, l.cap)
	w.at = time.Now()
	return w
}

// feedback adjusts domain's window after a delivery: up on success, down
// on a congestion signal; neutral outcomes leave it.
func (s *scheduler) feedback(domain string, ok, congested bool) {
	if !ok && !congested {
		return
	}
	s.mu.Lock()
	l := s.lanes[domain]
	w := s.windows[domain]
	if l == nil || w == nil {
		s.mu.Unlock()
		return
	}
	before := w.cur
	if ok {
		w.cur = min(w.cur+ConcurrencyStep, l.cap)
	} else {
		w.cur = max(w.cur/ConcurrencyBackoff, MinConcurrency)
	}
	after := w.cur
	s.mu.Unlock()
	if congested && after < before {
		s.w.log.Info("destination concurrency lowered", "domain", domain, "concurrency", after, "was", before)
		s.w.cfg.ShapingMetrics.Lowered()
	}
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

// slotted reports whether j's delivery holds a fleet concurrency slot.
func (s *scheduler) slotted(j *queue.Job) bool {
	s.mu.Lock()
	r := s.runs[j]
	s.mu.Unlock()
	return r != nil && r.lease.Slots() > 0
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
			// Suspended by a reply rule (fleet-wide): back to the queue
			// until the suspension ends.
			if sh := s.w.cfg.Shaper; sh != nil {
				if sp, ok := sh.SuspendedDomain(key); ok {
					for _, j := range l.waiting {
						go func() {
							s.w.setAside(j, sp)
							s.done(nil, nil)
						}()
					}
					l.waiting = nil
					continue
				}
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
			win := s.windowOf(l).cur
			room := len(l.runs)+l.acquiring < win
			if nh, ok := s.nextHop[key]; room && ok && now.Sub(nh.at) < learnedTTL {
				// The next hop's connections are all taken: wait in the
				// lane, not in the pool holding a worker slot.
				if d := s.dests[nh.key]; d != nil && len(d.runs) >= s.w.cfg.HopConcurrency {
					room = false
				}
			}
			if !room {
				if len(l.waiting) > 0 {
					next = append(next, key)
				}
				continue
			}
			if l.fleet {
				// Admission by the fleet state, asked off the lock; the job
				// waits in the lane, holding no worker slot.
				// Refused last time: mail fetched since goes back at once
				// beyond what the lane keeps, not at the next refusal.
				s.trimRefused(l, now)
				if now.Before(l.notBefore) {
					if wake.IsZero() || l.notBefore.Before(wake) {
						wake = l.notBefore
					}
				} else {
					for l.acquiring < len(l.waiting) && len(l.runs)+l.acquiring < win && s.active+s.acquiring < s.w.cfg.Concurrency {
						l.acquiring++
						s.acquiring++
						go s.acquire(l)
					}
				}
				next = append(next, key)
				continue
			}
			if s.active+s.acquiring < s.w.cfg.Concurrency {
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
				s.start(l, now, nil)
				if toCongested {
					congested++
				}
				progress = true
			}
			if len(l.waiting) > 0 {
				next = append(next, key)
			}
		}
		s.order = append(s.order[:0], next...)
	}
	if s.held >= s.w.cfg.Concurrency*2 {
		// No room to fetch: the waiting mail of a domain whose deliveries
		// neither end nor progress (for slowLane) goes back to the queue,
		// so that the mail behind it in the stream can be fetched at all.
		// A domain that delivers keeps its backlog. Progress alone keeps
		// it only until StallAfter with no delivery ended: a destination
		// that answers a line now and then but never ends a reply must not
		// hold the buffer for its command timeout. The scheduler wakes
		// when the next lane turns slow: nothing else would (no delivery
		// ends, nothing is fetched while the buffer is full).
		for _, l := range s.lanes {
			if len(l.waiting) == 0 {
				continue
			}
			slow := l.active().Add(slowLane)
			if ended := l.lastDone.Add(s.w.cfg.StallAfter); ended.Before(slow) {
				slow = ended
			}
			if now.Before(slow) {
				if wake.IsZero() || slow.Before(wake) {
					wake = slow
				}
				continue
			}
			s.handBack(l.waiting, "destination slow: none of its deliveries ended or progressed lately")
			l.waiting = nil
		}
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

// start runs l's first waiting job under lease (called with s.mu held).
func (s *scheduler) start(l *lane, now time.Time, lease *shaping.Lease) {
	j := l.waiting[0]
	l.waiting = l.waiting[1:]
	ctx, cancel := context.WithCancelCause(s.w.work)
	r := &run{lane: l, start: now, cancel: cancel, lease: lease}
	l.runs[j] = r
	s.runs[j] = r
	s.active++
	go s.run(ctx, l, j, lease)
}

// acquire asks the fleet state to admit one delivery of l and starts it,
// or notes when to ask again and hands back what cannot start soon.
func (s *scheduler) acquire(l *lane) {
	ctx, cancel := context.WithTimeout(s.w.work, 2*shaping.DefaultOpTimeout)
	dests := s.w.fleetDests(ctx, l.key)
	lease, den := s.w.cfg.Shaper.Acquire(ctx, dests)
	cancel()
	s.mu.Lock()
	l.acquiring--
	s.acquiring--
	now := time.Now()
	switch {
	case den != nil:
		l.notBefore = now.Add(den.After)
		l.refused = den
		s.w.throttled(l.key, den)
		s.trimRefused(l, now)
	case len(l.waiting) > 0 && s.active < s.w.cfg.Concurrency && len(l.runs) < s.windowOf(l).cur && s.lanes[l.key] == l:
		l.refused = nil
		s.start(l, now, lease)
		lease = nil
	}
	s.mu.Unlock()
	lease.Release() // not used: the job went elsewhere
	s.pump()
}

// handBack defers jobs without counting an attempt (called with s.mu held).
func (s *scheduler) handBack(jobs []*queue.Job, why string) {
	s.handBackPaced(jobs, why, time.Time{}, 0)
}

// handBackPaced defers jobs due from first on, one every spacing (first
// zero: the busy delay), without counting an attempt (called with s.mu held).
func (s *scheduler) handBackPaced(jobs []*queue.Job, why string, first time.Time, spacing time.Duration) {
	for i, j := range jobs {
		var at time.Time
		if !first.IsZero() {
			at = first.Add(time.Duration(i) * spacing)
		}
		go func() {
			s.w.handBackUntil(j, why, at)
			s.done(nil, nil)
		}()
	}
}

// trimRefused hands back a refused fleet lane's waiting mail beyond what it
// keeps (called with s.mu held). Mail refused by a rate is due again at
// its turn at that rate (after what the lane keeps), so that the
// destination's rate is used while none of it waits in the worker; other
// refusals wait the busy delay.
func (s *scheduler) trimRefused(l *lane, now time.Time) {
	den := l.refused
	if den == nil || len(l.waiting) <= l.keep {
		return
	}
	jobs := l.waiting[l.keep:]
	l.waiting = l.waiting[:l.keep]
	why := "domain " + den.Reason + " limit (fleet-wide, destination " + den.Dest.Name + ")"
	if r := den.Dest.Limit.Rate; strings.HasPrefix(den.Reason, "rate") && r > 0 {
		spacing := time.Duration(float64(time.Second) / r)
		first := l.notBefore.Add(time.Duration(l.keep) * spacing)
		if l.paced.After(first) {
			first = l.paced.Add(spacing) // after those handed back before
		}
		l.paced = first.Add(time.Duration(len(jobs)-1) * spacing)
		s.handBackPaced(jobs, why, first, spacing)
		return
	}
	s.handBack(jobs, why)
}

func (s *scheduler) run(ctx context.Context, l *lane, j *queue.Job, lease *shaping.Lease) {
	s.w.process(ctx, j)
	lease.Release()
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
		l.lastDone = time.Now()
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

// limitFor finds the most specific domain rule for domain.
func (w *Worker) limitFor(domain string) (DomainLimit, bool) {
	d, ok := w.rules().Domain(domain)
	return d.Limit, ok
}

// rules are the shaping rules in force.
func (w *Worker) rules() *shaping.Rules {
	if w.cfg.Shaping != nil {
		if r := w.cfg.Shaping(); r != nil {
			return r
		}
	}
	return w.flagRules
}

// fleetDests are the limited destinations of a delivery to domain: the
// domain's rule and the rule of its first next hop.
func (w *Worker) fleetDests(ctx context.Context, domain string) []shaping.Dest {
	rules := w.rules()
	var out []shaping.Dest
	if d, ok := rules.Domain(domain); ok && d.Limit.Fleet() {
		out = append(out, d)
	}
	if rules.HasHosts() {
		if hops, err := w.router.Route(ctx, domain); err == nil && len(hops) > 0 {
			if d, ok := rules.Host(hops[0].Name, hops[0].Addr.Addr()); ok && d.Limit.Fleet() {
				out = append(out, d)
			}
		}
	}
	return out
}

// throttled notes a refused admission.
func (w *Worker) throttled(domain string, den *shaping.Denied) {
	w.log.Debug("destination throttled", "domain", domain, "destination", den.Dest.Name, "limit", den.Reason, "retry_in", den.After)
}

// replyRules suspends the destination of a delivery fleet-wide when one of
// its replies matches a reply rule of the shaping key.
func (w *Worker) replyRules(ctx context.Context, domain string, out *delivery.Outcome) {
	if w.cfg.Shaper == nil || out == nil {
		return
	}
	rules := w.rules()
	for _, st := range out.Statuses {
		if st.Delivered() {
			continue
		}
		reply := strings.TrimSpace(fmt.Sprintf("%d %s %s", st.Code, st.Enhanced, st.Text))
		rr, ok := rules.MatchReply(reply)
		if !ok {
			continue
		}
		keys := []string{"d." + domain}
		if d, ok := rules.Domain(domain); ok {
			keys[0] = d.Key
		}
		if h := out.Hop; h.Name != "" {
			if d, ok := rules.Host(h.Name, h.Addr.Addr()); ok {
				keys = append(keys, d.Key)
			}
		}
		for _, k := range keys {
			sp, err := w.cfg.Shaper.Suspend(ctx, k, rr.Suspend, reply)
			if err != nil {
				w.log.Warn("could not record a suspension for the fleet; it holds in this worker", "destination", shaping.DestName(k), "err", err)
			}
			w.log.Warn("destination suspended", "destination", shaping.DestName(k), "until", sp.Until, "rule_line", rr.Line, "reply", reply)
		}
		return
	}
}
