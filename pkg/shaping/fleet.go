package shaping

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// BucketName is the KV bucket of the fleet's shaping state.
const BucketName = "MAIL_SHAPING"

// QuotaBucketName is the KV bucket of the ingress fleet's sender quotas
// (GCRA values only; pkg/ingress).
const QuotaBucketName = "MAIL_QUOTAS"

// Errors a Bucket returns for the outcomes the shaper acts on; anything
// else means the state cannot be reached.
var (
	ErrExists   = errors.New("shaping: key exists")
	ErrChanged  = errors.New("shaping: key changed")
	ErrNotFound = errors.New("shaping: key not found")
)

// Bucket is the shaping state as the shaper uses it (pkg/queue implements
// it over a JetStream KV bucket with per-key TTLs).
type Bucket interface {
	// Create stores key only if it does not exist (ErrExists), expiring after ttl.
	Create(ctx context.Context, key string, val []byte, ttl time.Duration) (uint64, error)
	// Swap replaces key only at revision rev (ErrChanged), expiring after ttl.
	Swap(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error)
	// Get returns key's value and revision (ErrNotFound).
	Get(ctx context.Context, key string) ([]byte, uint64, error)
	// Delete removes key if it is still at revision rev (0: any).
	Delete(ctx context.Context, key string, rev uint64) error
	// List returns every key and value under prefix ("" all).
	List(ctx context.Context, prefix string) (map[string][]byte, error)
	// Watch calls fn with every key under prefix and each later change
	// (val nil: removed or expired) until ctx ends or the watch fails.
	Watch(ctx context.Context, prefix string, fn func(key string, val []byte)) error
}

// Metrics receives what the shaper sees (telemetry.ShapingMetrics).
type Metrics interface {
	Throttled(destination, limit string)
	Suspended(byDest map[string]float64)
	Leases(n int)
	LocalFallback()
}

// Tunables of the fleet state.
const (
	// DefaultLeaseTTL: a slot not refreshed for this long is free again
	// (a killed pod's slots come back after it).
	DefaultLeaseTTL = 6 * time.Second
	// DefaultOpTimeout bounds one round trip to the bucket.
	DefaultOpTimeout = 2 * time.Second
	// LocalShareDivisor: while the bucket cannot be reached, a worker takes
	// this fraction of each limit (at least one slot, at least a slow pace).
	LocalShareDivisor = 4
	// degradedFor: after a failed round trip, the local share is used this
	// long before the bucket is tried again.
	degradedFor = 5 * time.Second
	// retryFull is the base wait before asking again for a full destination.
	retryFull = 100 * time.Millisecond
	// maxSlotTries bounds the Create calls of one acquire.
	maxSlotTries = 32
	// casRetries bounds the compare-and-swap retries of one rate step.
	casRetries = 8
)

// Config tunes a Shaper.
type Config struct {
	LeaseTTL  time.Duration // default DefaultLeaseTTL
	OpTimeout time.Duration // default DefaultOpTimeout
	Owner     string        // who holds the slots (the pod's name), stored in lease values
	Logger    *slog.Logger
	Now       func() time.Time
	Metrics   Metrics       // nil: none
	Rules     func() *Rules // the rules in force, for metric labels (nil: none)
}

// Shaper admits deliveries to limited destinations for one worker process.
type Shaper struct {
	b   Bucket // nil: local shares only
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	leases    map[*Lease]struct{}
	local     map[string]*localShare
	suspended map[string]Suspension // by destination key
	gcra      *GCRA                 // nil without a bucket
	fb        fallback              // local shares while on
}

// localShare is a destination's share while the bucket cannot be reached.
type localShare struct {
	inUse    int
	cap      int
	pace     *rate.Limiter
	connPace *rate.Limiter // new connections
}

// New returns a shaper over b (nil: local shares only).
func New(b Bucket, cfg Config) *Shaper {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = DefaultOpTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Shaper{b: b, cfg: cfg, log: cfg.Logger.With("component", "shaping"),
		leases: map[*Lease]struct{}{}, local: map[string]*localShare{}, suspended: map[string]Suspension{}}
	if b != nil {
		s.gcra = NewGCRA(b, cfg.OpTimeout, cfg.Now)
		s.gcra.forwardOnly = true // the workers never give a rate step back
	}
	return s
}

// Lease is one admitted delivery's hold on its destinations.
type Lease struct {
	s      *Shaper
	val    []byte // the slots' value: owner and a lease id
	mu     sync.Mutex
	slots  []slot
	shares []*localShare
	done   bool
}

type slot struct {
	key string
	rev uint64
}

// Denied says why an acquire failed and when to ask again.
type Denied struct {
	Dest   Dest
	Reason string // "concurrency", "rate", "suspended"
	After  time.Duration
}

// Acquire tries once, without waiting, to admit one delivery to every
// destination of dests: a concurrency slot of each that has one, a
// message of each rate. It returns the lease, or why not and when to ask
// again. It never blocks beyond the bucket's round trips.
func (s *Shaper) Acquire(ctx context.Context, dests []Dest) (*Lease, *Denied) {
	l := &Lease{s: s, val: []byte(s.cfg.Owner + " " + strconv.FormatUint(rand.Uint64(), 36))}
	for _, d := range dests {
		if sp, ok := s.suspendedKey(d.Key); ok {
			l.Release()
			s.throttled(d, "suspended")
			return nil, &Denied{Dest: d, Reason: "suspended", After: sp.Until.Sub(s.cfg.Now())}
		}
		if !d.Limit.Fleet() {
			continue
		}
		if den := s.acquireOne(ctx, l, d); den != nil {
			l.Release()
			s.throttled(d, den.Reason)
			return nil, den
		}
	}
	s.mu.Lock()
	s.leases[l] = struct{}{}
	s.mu.Unlock()
	return l, nil
}

func (s *Shaper) throttled(d Dest, reason string) {
	if s.cfg.Metrics != nil {
		reason, _, _ = strings.Cut(reason, " ")
		s.cfg.Metrics.Throttled(d.Name, reason)
	}
}

func (s *Shaper) useLocal() bool {
	return s.b == nil || s.fb.active(s.cfg.Now())
}

// unreachable switches to local shares for a while.
func (s *Shaper) unreachable(err error) {
	first := s.fb.trip(s.cfg.Now())
	if first && s.cfg.Metrics != nil {
		s.cfg.Metrics.LocalFallback()
	}
	if first {
		s.log.Warn("fleet shaping state unreachable; each limit falls back to a local share", "err", err,
			"share", "1/"+strconv.Itoa(LocalShareDivisor), "for", degradedFor)
	}
}

func (s *Shaper) acquireOne(ctx context.Context, l *Lease, d Dest) *Denied {
	if !s.useLocal() {
		den, err := s.fleetAcquire(ctx, l, d)
		if err == nil {
			return den
		}
		s.unreachable(err)
	}
	return s.localAcquire(l, d)
}

// fleetAcquire takes d's slot and rate step from the bucket; a non-nil
// error means the bucket could not be reached.
func (s *Shaper) fleetAcquire(ctx context.Context, l *Lease, d Dest) (*Denied, error) {
	if c := d.Limit.Concurrency; c > 0 {
		ok, err := s.takeSlot(ctx, l, d)
		if err != nil {
			return nil, err
		}
		if !ok {
			return &Denied{Dest: d, Reason: "concurrency", After: jitter(retryFull)}, nil
		}
	}
	if d.Limit.Rate > 0 {
		wait, err := s.takeRate(ctx, d)
		if err != nil {
			return nil, err
		}
		if wait > 0 {
			return &Denied{Dest: d, Reason: "rate", After: wait}, nil
		}
	}
	if d.Limit.NewConns > 0 {
		// Only a look: the connection's step is taken when (and if) the
		// delivery dials (TakeConn). Mail does not start while none is due.
		wait, err := s.gcra.Due(ctx, connKey(d), connPaces(d))
		if err != nil {
			return nil, err
		}
		if wait > 0 {
			return &Denied{Dest: d, Reason: "new-connections", After: wait}, nil
		}
	}
	return nil, nil
}

func connKey(d Dest) string   { return "c." + d.Key }
func connPaces(d Dest) []Pace { return []Pace{{Rate: d.Limit.NewConns, Burst: d.Limit.ConnBurst}} }

// TakeConn takes one new connection of every destination of dests that
// limits them (GCRA, fleet-wide; a local share while the bucket cannot be
// reached). When one is not due yet it returns rest, the destinations
// whose connection is still to take (that one and those after it), and
// how long until it is due: the caller waits and asks again for rest only,
// as the steps of those before stay taken (asking again for all would take
// them once more, and a domain whose next hop's pace binds would get fewer
// connections than its own pace). rest nil: every step is taken. With two
// or more destinations it first looks at every pace (this process's view,
// no round trip once seen), so that one not due usually takes none. It
// never blocks beyond the bucket's round trips.
func (s *Shaper) TakeConn(ctx context.Context, dests []Dest) (rest []Dest, wait time.Duration, err error) {
	limited := 0
	for _, d := range dests {
		if d.Limit.NewConns > 0 {
			limited++
		}
	}
	if limited > 1 {
		var late Dest
		for _, d := range dests {
			if d.Limit.NewConns > 0 {
				if w := s.connStep(ctx, d, true); w > wait {
					wait, late = w, d
				}
			}
		}
		if wait > 0 {
			s.throttled(late, "new-connections")
			return dests, wait, nil
		}
	}
	for i, d := range dests {
		if d.Limit.NewConns <= 0 {
			continue
		}
		if wait := s.connStep(ctx, d, false); wait > 0 {
			s.throttled(d, "new-connections")
			return dests[i:], wait, nil
		}
	}
	return nil, 0, nil
}

// connStep takes d's new connection (look: only says how long until one
// is due) from the fleet's pace, or from the local share while the bucket
// cannot be reached.
func (s *Shaper) connStep(ctx context.Context, d Dest, look bool) time.Duration {
	if !s.useLocal() {
		var wait time.Duration
		var err error
		if look {
			wait, err = s.gcra.Due(ctx, connKey(d), connPaces(d))
		} else {
			wait, _, err = s.gcra.Take(ctx, connKey(d), connPaces(d))
		}
		if err == nil {
			return wait
		}
		s.unreachable(err)
	}
	return s.localConn(d, look)
}

// localConn takes d's new connection from its local share's pace (look:
// only says how long until one is due).
func (s *Shaper) localConn(d Dest, look bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.localShareOf(d)
	if sh.connPace == nil { // the share was made before the rule had the limit
		sh.connPace = rate.NewLimiter(rate.Limit(d.Limit.NewConns/LocalShareDivisor), 1)
	}
	now := s.cfg.Now()
	if look {
		if tokens := sh.connPace.TokensAt(now); tokens < 1 {
			return time.Duration((1 - tokens) / float64(sh.connPace.Limit()) * float64(time.Second))
		}
		return 0
	}
	r := sh.connPace.ReserveN(now, 1)
	if wait := r.DelayFrom(now); wait > 0 {
		r.CancelAt(now)
		return wait
	}
	return 0
}

// takeSlot creates one of d's slot keys, starting at a random one.
func (s *Shaper) takeSlot(ctx context.Context, l *Lease, d Dest) (bool, error) {
	c := d.Limit.Concurrency
	start := rand.IntN(c)
	for i := range min(c, maxSlotTries) {
		key := "l." + d.Key + "." + strconv.Itoa((start+i)%c)
		octx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
		rev, err := s.b.Create(octx, key, l.val, s.cfg.LeaseTTL)
		cancel()
		switch {
		case err == nil:
			l.mu.Lock()
			l.slots = append(l.slots, slot{key: key, rev: rev})
			l.mu.Unlock()
			return true, nil
		case errors.Is(err, ErrExists):
			continue
		default:
			return false, err
		}
	}
	return false, nil
}

// takeRate advances d's GCRA value by one message, or says how long
// until it may.
func (s *Shaper) takeRate(ctx context.Context, d Dest) (time.Duration, error) {
	wait, _, err := s.gcra.Take(ctx, "r."+d.Key, []Pace{{Rate: d.Limit.Rate, Burst: d.Limit.Burst}})
	return wait, err
}

// localShareOf returns d's local share (called with s.mu held).
func (s *Shaper) localShareOf(d Dest) *localShare {
	sh := s.local[d.Key]
	if sh == nil {
		sh = &localShare{cap: max(d.Limit.Concurrency/LocalShareDivisor, 1)}
		if d.Limit.Rate > 0 {
			sh.pace = rate.NewLimiter(rate.Limit(d.Limit.Rate/LocalShareDivisor), 1)
		}
		if d.Limit.NewConns > 0 {
			sh.connPace = rate.NewLimiter(rate.Limit(d.Limit.NewConns/LocalShareDivisor), 1)
		}
		s.local[d.Key] = sh
	}
	return sh
}

// localAcquire takes d's local share.
func (s *Shaper) localAcquire(l *Lease, d Dest) *Denied {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.localShareOf(d)
	if d.Limit.Concurrency > 0 && sh.inUse >= sh.cap {
		return &Denied{Dest: d, Reason: "concurrency (local share)", After: jitter(retryFull)}
	}
	if sh.pace != nil {
		now := s.cfg.Now()
		r := sh.pace.ReserveN(now, 1)
		if wait := r.DelayFrom(now); wait > 0 {
			r.CancelAt(now)
			return &Denied{Dest: d, Reason: "rate (local share)", After: wait}
		}
	}
	if d.Limit.Concurrency > 0 {
		sh.inUse++
		l.mu.Lock()
		l.shares = append(l.shares, sh)
		l.mu.Unlock()
	}
	return nil
}

// Slots is the number of concurrency slots (fleet or local share) l holds.
func (l *Lease) Slots() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.slots) + len(l.shares)
}

// Release gives the lease's slots back (idempotent).
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	l.done = true
	slots, shares := l.slots, l.shares
	l.slots, l.shares = nil, nil
	l.mu.Unlock()
	s := l.s
	s.mu.Lock()
	delete(s.leases, l)
	for _, sh := range shares {
		sh.inUse--
	}
	s.mu.Unlock()
	for _, sl := range slots {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.OpTimeout)
		// Only this lease's revision: a slot that expired and was taken by
		// another worker stays theirs. A failure leaves it to its TTL.
		err := s.b.Delete(ctx, sl.key, sl.rev)
		if errors.Is(err, ErrChanged) {
			// A refresh may have moved it: still ours if it holds our value.
			if v, rev, gerr := s.b.Get(ctx, sl.key); gerr == nil && string(v) == string(l.val) {
				err = s.b.Delete(ctx, sl.key, rev)
			}
		}
		if err != nil && !errors.Is(err, ErrChanged) && !errors.Is(err, ErrNotFound) {
			s.log.Debug("could not free a slot; it expires on its own", "key", sl.key, "err", err)
		}
		cancel()
	}
}

// Run refreshes the slots of the leases held until ctx ends.
func (s *Shaper) Run(ctx context.Context) {
	if s.b == nil {
		return
	}
	go s.watchSuspensions(ctx)
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.refresh(ctx)
			if s.cfg.Metrics != nil {
				s.cfg.Metrics.Leases(s.Held())
				s.reportSuspended(0)
			}
		}
	}
}

func (s *Shaper) refresh(ctx context.Context) {
	s.mu.Lock()
	leases := make([]*Lease, 0, len(s.leases))
	for l := range s.leases {
		leases = append(leases, l)
	}
	s.mu.Unlock()
	for _, l := range leases {
		l.mu.Lock()
		slots := append([]slot(nil), l.slots...)
		l.mu.Unlock()
		for i, sl := range slots {
			octx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
			rev, err := s.b.Swap(octx, sl.key, l.val, sl.rev, s.cfg.LeaseTTL)
			cancel()
			if err != nil {
				s.log.Warn("could not refresh a slot lease", "key", sl.key, "err", err)
				continue
			}
			l.mu.Lock()
			if !l.done && i < len(l.slots) && l.slots[i].key == sl.key {
				l.slots[i].rev = rev
			}
			l.mu.Unlock()
		}
	}
}

// Held is the number of leases this process holds.
func (s *Shaper) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// jitter spreads d by ±50% so that workers do not ask in step.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}
