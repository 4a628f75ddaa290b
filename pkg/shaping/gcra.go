package shaping

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Pace is one GCRA limit: Rate events per second, up to Burst of them at
// once (0 and 1: none ahead of the pace). A zero Rate limits nothing.
type Pace struct {
	Rate  float64
	Burst int
}

func (p Pace) interval() time.Duration { return time.Duration(float64(time.Second) / p.Rate) }

// tolerance is how far the theoretical arrival time may run ahead of now.
func (p Pace) tolerance() time.Duration { return time.Duration(max(p.Burst-1, 0)) * p.interval() }

// GCRA keeps paces for a fleet in a Bucket: a key's value is the
// theoretical arrival time (TAT) of each of its paces (Unix nanoseconds,
// comma-separated), advanced with a compare-and-swap on its revision. It
// tries the swap on the value it saw last, so while no other process moved
// a key one event costs one round trip; a lost race reads and tries again.
// Any window of length T holds at most Burst + Rate·T events of a pace.
// The shaper's destination rates and the ingress's sender quotas use it.
type GCRA struct {
	b         Bucket
	opTimeout time.Duration
	now       func() time.Time
	// forwardOnly: nobody calls Give on these keys, so values only
	// advance and a refusal on the last view seen is sound (no re-read).
	forwardOnly bool
	// gate, when set, is asked once a step holds its key's lock: a non-nil
	// error ends the step before any round trip (Rates: the bucket was
	// found unreachable while this step waited behind one that timed out,
	// so it goes to the local share at once instead of paying its own
	// timeout in turn).
	gate func() error

	mu     sync.Mutex
	states map[string]*rateState
}

// NewGCRA returns paces over b (opTimeout: one round trip; 0 the default).
func NewGCRA(b Bucket, opTimeout time.Duration, now func() time.Time) *GCRA {
	if opTimeout <= 0 {
		opTimeout = DefaultOpTimeout
	}
	if now == nil {
		now = time.Now
	}
	return &GCRA{b: b, opTimeout: opTimeout, now: now, states: map[string]*rateState{}}
}

// rateState is this process's last view of a key's value; its lock makes
// the process's steps on one key go one at a time (no CAS races among its
// own callers).
type rateState struct {
	mu    sync.Mutex
	tat   []time.Time
	rev   uint64
	known bool
}

// maxRateStates bounds the cached views (one per key in use).
const maxRateStates = 10000

func (g *GCRA) stateOf(key string) *rateState {
	g.mu.Lock()
	defer g.mu.Unlock()
	rs := g.states[key]
	if rs == nil {
		if len(g.states) >= maxRateStates {
			clear(g.states)
		}
		rs = &rateState{}
		g.states[key] = rs
	}
	return rs
}

// Take admits one event of key under every pace of paces, all or none. It
// returns 0, or how long until it could and the index of the pace that
// refused; err means the bucket could not be reached (nothing was taken).
func (g *GCRA) Take(ctx context.Context, key string, paces []Pace) (wait time.Duration, refused int, err error) {
	refused = -1
	err = g.update(ctx, key, len(paces), func(tat []time.Time, now time.Time) bool {
		wait, refused = 0, -1
		for i, p := range paces {
			if p.Rate <= 0 {
				continue
			}
			t := maxTime(tat[i], now)
			if w := t.Sub(now) - p.tolerance(); w > 0 {
				wait, refused = w, i
				return false
			}
		}
		for i, p := range paces {
			if p.Rate > 0 {
				tat[i] = maxTime(tat[i], now).Add(p.interval())
			}
		}
		return true
	})
	if errors.Is(err, errBusy) {
		return jitter(retryFull), -1, nil
	}
	return wait, refused, err
}

// Due says how long until Take would admit one event of key under every
// pace, without taking one: a look (one round trip at most; none while
// this process's view of a forward-only key already says to wait).
func (g *GCRA) Due(ctx context.Context, key string, paces []Pace) (wait time.Duration, err error) {
	err = g.update(ctx, key, len(paces), func(tat []time.Time, now time.Time) bool {
		wait = 0
		for i, p := range paces {
			if p.Rate > 0 {
				wait = max(wait, maxTime(tat[i], now).Sub(now)-p.tolerance())
			}
		}
		return false // store nothing
	})
	if errors.Is(err, errBusy) {
		return jitter(retryFull), nil
	}
	return wait, err
}

// Give returns one event that Take admitted and that did not happen (an
// SMTP transaction that ended without its message): each pace's TAT moves
// back by one interval. A failure leaves the event counted.
func (g *GCRA) Give(ctx context.Context, key string, paces []Pace) error {
	err := g.update(ctx, key, len(paces), func(tat []time.Time, now time.Time) bool {
		moved := false
		for i, p := range paces {
			if p.Rate > 0 && tat[i].After(now) {
				tat[i] = maxTime(tat[i].Add(-p.interval()), now)
				moved = true
			}
		}
		return moved
	})
	if errors.Is(err, errBusy) {
		return nil
	}
	return err
}

// errBusy: the key kept changing under every compare-and-swap tried.
var errBusy = errors.New("shaping: rate key busy")

// update applies step to key's TATs (n of them) and stores the result with
// a compare-and-swap; step returns false to store nothing (decided on a
// value read by this call, never on an older view).
func (g *GCRA) update(ctx context.Context, key string, n int, step func(tat []time.Time, now time.Time) bool) error {
	rs := g.stateOf(key)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if g.gate != nil {
		if err := g.gate(); err != nil {
			return err
		}
	}
	fresh := false
	for range casRetries {
		if !rs.known {
			fresh = true
			octx, cancel := context.WithTimeout(ctx, g.opTimeout)
			v, rev, err := g.b.Get(octx, key)
			cancel()
			switch {
			case errors.Is(err, ErrNotFound):
				rs.tat, rs.rev = nil, 0
			case err != nil:
				return err
			default:
				rs.tat, rs.rev = parseTATs(v, n), rev
			}
			rs.known = true
		}
		tat := make([]time.Time, n)
		copy(tat, rs.tat)
		now := g.now()
		if !step(tat, now) {
			if fresh || g.forwardOnly {
				return nil
			}
			// A refusal on a view this call did not read may be stale (a
			// Give moves a value back): read it before saying no.
			rs.known = false
			continue
		}
		var ttl time.Duration
		for _, t := range tat {
			ttl = max(ttl, t.Sub(now))
		}
		ttl += 2 * time.Second // a value means nothing once past
		val := formatTATs(tat)
		octx, cancel := context.WithTimeout(ctx, g.opTimeout)
		var rev uint64
		var err error
		if rs.rev == 0 {
			rev, err = g.b.Create(octx, key, val, ttl)
		} else {
			rev, err = g.b.Swap(octx, key, val, rs.rev, ttl)
		}
		cancel()
		switch {
		case err == nil:
			rs.tat, rs.rev = tat, rev
			return nil
		case errors.Is(err, ErrExists), errors.Is(err, ErrChanged):
			rs.known = false // another process moved it: read it again
		default:
			rs.known = false
			return err
		}
	}
	return errBusy
}

// parseTATs reads n comma-separated Unix nanosecond times (a missing or
// unreadable one is zero: no debt).
func parseTATs(v []byte, n int) []time.Time {
	out := make([]time.Time, n)
	for i, f := range strings.SplitN(string(v), ",", n+1) {
		if i >= n {
			break
		}
		if ns, err := strconv.ParseInt(f, 10, 64); err == nil && ns > 0 {
			out[i] = time.Unix(0, ns)
		}
	}
	return out
}

func formatTATs(tat []time.Time) []byte {
	var b []byte
	for i, t := range tat {
		if i > 0 {
			b = append(b, ',')
		}
		var ns int64
		if !t.IsZero() {
			ns = t.UnixNano()
		}
		b = strconv.AppendInt(b, ns, 10)
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// fallback is the switch to local shares: after a failed round trip the
// state is not asked again for degradedFor.
type fallback struct {
	mu    sync.Mutex
	until time.Time
}

func (f *fallback) active(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return now.Before(f.until)
}

// trip starts (or extends) the local period; first says it was not on.
func (f *fallback) trip(now time.Time) (first bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	first = !now.Before(f.until)
	f.until = now.Add(degradedFor)
	return first
}

// RatesConfig tunes Rates.
type RatesConfig struct {
	OpTimeout time.Duration // one round trip (default DefaultOpTimeout)
	Now       func() time.Time
	Logger    *slog.Logger
	What      string // what the paces are, for the log line ("sender quotas")
	// OnFallback is called each time the bucket is found unreachable and
	// the local shares take over (a metric).
	OnFallback func()
}

// Rates are fleet-wide paces (GCRA in a Bucket) that fall back to a local
// share when the bucket cannot be reached: each pace at 1/LocalShareDivisor
// of its rate and burst (at least one event), never no limit. The
// ingress's sender quotas use it.
type Rates struct {
	g   *GCRA // nil: local shares only
	cfg RatesConfig
	log *slog.Logger
	fb  fallback

	mu    sync.Mutex
	local map[string]*localPaces
}

// localPaces is one key's local share.
type localPaces struct {
	paces []Pace // what the limiters were made for
	lims  []*rate.Limiter
}

// NewRates returns paces over b (nil: local shares only).
func NewRates(b Bucket, cfg RatesConfig) *Rates {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Rates{cfg: cfg, log: cfg.Logger, local: map[string]*localPaces{}}
	if b != nil {
		r.g = NewGCRA(b, cfg.OpTimeout, cfg.Now)
		r.g.gate = func() error {
			if r.fb.active(r.cfg.Now()) {
				return errLocalShare
			}
			return nil
		}
	}
	return r
}

// errLocalShare: the fallback to the local shares began while a step
// waited for its key.
var errLocalShare = errors.New("shaping: on the local share")

// Take admits one event of key under every pace (all or none); otherwise
// it returns how long until it could and the index of the refusing pace.
// local says the decision was made on the local share.
func (r *Rates) Take(ctx context.Context, key string, paces []Pace) (wait time.Duration, refused int, local bool) {
	if r.g != nil && !r.fb.active(r.cfg.Now()) {
		w, i, err := r.g.Take(ctx, key, paces)
		if err == nil {
			return w, i, false
		}
		if !errors.Is(err, errLocalShare) {
			r.unreachable(err)
		}
	}
	w, i := r.localTake(key, paces)
	return w, i, true
}

// Give returns an event Take admitted from the fleet state (best effort;
// a local share's event stays counted).
func (r *Rates) Give(ctx context.Context, key string, paces []Pace) {
	if r.g == nil || r.fb.active(r.cfg.Now()) {
		return
	}
	if err := r.g.Give(ctx, key, paces); err != nil && !errors.Is(err, errLocalShare) {
		r.unreachable(err)
	}
}

func (r *Rates) unreachable(err error) {
	if !r.fb.trip(r.cfg.Now()) {
		return
	}
	if r.cfg.OnFallback != nil {
		r.cfg.OnFallback()
	}
	r.log.Warn("fleet rate state unreachable; each limit falls back to a local share", "what", r.cfg.What, "err", err,
		"share", "1/"+strconv.Itoa(LocalShareDivisor), "for", degradedFor)
}

// localTake takes one event of every pace's local share, all or none.
func (r *Rates) localTake(key string, paces []Pace) (time.Duration, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lp := r.local[key]
	if lp == nil || !slices.Equal(lp.paces, paces) {
		if len(r.local) >= maxRateStates {
			clear(r.local)
		}
		lp = &localPaces{paces: slices.Clone(paces), lims: make([]*rate.Limiter, len(paces))}
		for i, p := range paces {
			if p.Rate > 0 {
				lp.lims[i] = rate.NewLimiter(rate.Limit(p.Rate/LocalShareDivisor), max(p.Burst/LocalShareDivisor, 1))
			}
		}
		r.local[key] = lp
	}
	now := r.cfg.Now()
	var taken []*rate.Reservation
	for i, l := range lp.lims {
		if l == nil {
			continue
		}
		res := l.ReserveN(now, 1)
		if w := res.DelayFrom(now); w > 0 || !res.OK() {
			res.CancelAt(now)
			for _, t := range taken {
				t.CancelAt(now)
			}
			return w, i
		}
		taken = append(taken, res)
	}
	return 0, -1
}
