package smtptrace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/xid"
	"golang.org/x/time/rate"
)

// Watcher keeps this process's view of the running traces and wraps the
// connections they match. Its zero value is not usable; a nil *Watcher
// traces nothing (Wrap returns the conn unchanged), so a daemon without a
// bucket can still call the hooks.
type Watcher struct {
	b         Bucket
	log       *slog.Logger
	component string
	limits    Limits
	now       func() time.Time

	snap     atomic.Pointer[[]compiled] // honoured settings, oldest first
	sessions atomic.Int64               // sessions being recorded now
	rate     *rate.Limiter              // recorded bytes, whole process

	dropped atomic.Int64 // records dropped by the byte rate
	skipped atomic.Int64 // matching sessions not traced (max traced sessions)
}

// NewWatcher watches b (Run) and logs trace records to log with the
// attribute component (ingress, worker). l must have passed Validate.
func NewWatcher(b Bucket, log *slog.Logger, component string, l Limits) *Watcher {
	w := &Watcher{
		b: b, log: log, component: component, limits: l, now: time.Now,
		rate: rate.NewLimiter(rate.Limit(l.MaxBytesPerSecond), l.MaxBytesPerSecond),
	}
	w.snap.Store(&[]compiled{})
	return w
}

// Stats are counters for metrics and tests.
type Stats struct {
	Traces          int   // settings honoured now
	TracedSessions  int64 // sessions being recorded
	DroppedRecords  int64 // records dropped by --trace-max-bytes-per-second
	SkippedSessions int64 // matching sessions not traced (--trace-max-traced-sessions)
}

// Stats returns the counters.
func (w *Watcher) Stats() Stats {
	return Stats{Traces: len(w.active()), TracedSessions: w.sessions.Load(),
		DroppedRecords: w.dropped.Load(), SkippedSessions: w.skipped.Load()}
}

// Settings returns the settings honoured now (expired ones left out).
func (w *Watcher) Settings() []Setting {
	var out []Setting
	for _, c := range w.active() {
		out = append(out, c.Setting)
	}
	return out
}

func (w *Watcher) active() []compiled {
	now := w.now()
	all := *w.snap.Load()
	out := all[:0:0]
	for _, c := range all {
		if c.Active(now) {
			out = append(out, c)
		}
	}
	return out
}

// live reports whether trace id is still running (not stopped, not expired).
func (w *Watcher) live(id string) bool {
	now := w.now()
	for _, c := range *w.snap.Load() {
		if c.ID == id {
			return c.Active(now)
		}
	}
	return false
}

// match finds the first running trace for a peer; no NATS round trip.
func (w *Watcher) match(side Side, peerAddr, peerName string) (compiled, bool) {
	snap := *w.snap.Load()
	if len(snap) == 0 {
		return compiled{}, false
	}
	ip := peerIP(peerAddr)
	now := w.now()
	for i := range snap {
		if snap[i].Active(now) && snap[i].matches(side, ip, peerName) {
			return snap[i], true
		}
	}
	return compiled{}, false
}

// Run watches the bucket until ctx ends, keeping the snapshot current. A
// lost watch (NATS down, bucket missing) is retried with backoff; the last
// snapshot stays in force meanwhile, and its settings still expire on time.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn("smtp trace: settings watch lost, retrying", "component", w.component, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (w *Watcher) watch(ctx context.Context) error {
	kw, err := w.b.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch trace settings: %w", err)
	}
	defer func() { _ = kw.Stop() }()
	set := map[string]Setting{}
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case ent, ok := <-kw.Updates():
			if !ok {
				return errors.New("trace settings watcher closed")
			}
			if ent == nil {
				initial = false
				w.publish(set)
				continue
			}
			if ent.Operation() == jetstream.KeyValuePut {
				var s Setting
				if err := json.Unmarshal(ent.Value(), &s); err != nil || s.Validate() != nil || s.ID != ent.Key() {
					w.log.Warn("smtp trace: ignoring an invalid setting", "component", w.component, "key", ent.Key())
					delete(set, ent.Key())
				} else {
					set[ent.Key()] = s
				}
			} else {
				delete(set, ent.Key())
			}
			if !initial {
				w.publish(set)
			}
		}
	}
}

// publish makes set the snapshot: expired ones dropped, at most MaxTraces,
// oldest first (a flood of new settings cannot push out the first ones).
func (w *Watcher) publish(set map[string]Setting) {
	now := w.now()
	var ss []Setting
	for _, s := range set {
		if s.Active(now) {
			ss = append(ss, s)
		}
	}
	sortSettings(ss)
	if len(ss) > w.limits.MaxTraces {
		w.log.Warn("smtp trace: more traces than --trace-max-traces; the newest are ignored",
			"component", w.component, "traces", len(ss), "max", w.limits.MaxTraces)
		ss = ss[:w.limits.MaxTraces]
	}
	out := make([]compiled, 0, len(ss))
	for _, s := range ss {
		if c, err := compile(s); err == nil {
			out = append(out, c)
		}
	}
	w.snap.Store(&out)
}

// Option adjusts one Wrap.
type Option func(*wrapOpts)

type wrapOpts struct{ session string }

// SessionID sets the session id the records carry (the ingress's own
// session or queue id); by default Wrap makes one.
func SessionID(id string) Option { return func(o *wrapOpts) { o.session = id } }

// Wrap returns conn unchanged when no running trace matches the peer, and
// otherwise a conn that records the SMTP dialog passing through it in both
// directions. side is Ingress (peerAddr is the client's address, matched by
// --client) or Delivery (peerName the next hop's host name and peerAddr its
// address, matched by --destination). Wrap the plaintext conn: the raw TCP
// conn for SMTP with STARTTLS (the recorder notes the upgrade and stops at
// the ciphertext; see TLSConfig and Continue), the *tls.Conn for implicit TLS.
func (w *Watcher) Wrap(conn net.Conn, side Side, peerAddr, peerName string, opts ...Option) net.Conn {
	if w == nil || conn == nil {
		return conn
	}
	c, ok := w.match(side, peerAddr, peerName)
	if !ok {
		return conn
	}
	if w.sessions.Add(1) > int64(w.limits.MaxTracedSessions) {
		w.sessions.Add(-1)
		if w.skipped.Add(1)%1000 == 1 {
			w.record(slog.LevelWarn, "smtp trace: matching session not traced (--trace-max-traced-sessions)",
				"component", w.component, "trace", c.ID, "skipped", w.skipped.Load())
		}
		return conn
	}
	o := wrapOpts{}
	for _, f := range opts {
		f(&o)
	}
	if o.session == "" {
		o.session = xid.New().String()
	}
	r := newRecorder(w, c.Setting, side, o.session, peerAddr, peerName)
	return &tracedConn{Conn: conn, r: r}
}

// record logs one record if the process's byte budget allows it.
func (w *Watcher) record(level slog.Level, msg string, args ...any) bool {
	n := len(msg) + 64
	for _, a := range args {
		if s, ok := a.(string); ok {
			n += len(s)
		}
	}
	n = min(n, w.rate.Burst()) // a record longer than the burst would never pass
	if !w.rate.AllowN(w.now(), n) {
		w.dropped.Add(1)
		return false
	}
	w.log.Log(context.Background(), level, msg, args...)
	return true
}
