package smtptrace

import (
	"context"
	"crypto/tls"
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
	o := wrapOpts{}
	for _, f := range opts {
		f(&o)
	}
	r := w.begin(c, side, o.session, peerAddr, peerName, 0, false)
	if r == nil {
		return conn
	}
	t := &tap{}
	t.r.Store(r)
	return &tracedConn{Conn: conn, t: t}
}

// begin starts a recorder for a session that c matches, within
// --trace-max-traced-sessions (nil beyond it). session "" makes an id.
func (w *Watcher) begin(c compiled, side Side, session, peerAddr, peerName string, layer int, midSession bool, extra ...any) *recorder {
	if w.sessions.Add(1) > int64(w.limits.MaxTracedSessions) {
		w.sessions.Add(-1)
		if w.skipped.Add(1)%1000 == 1 {
			w.record(slog.LevelWarn, "smtp trace: matching session not traced (--trace-max-traced-sessions)",
				"component", w.component, "trace", c.ID, "skipped", w.skipped.Load())
		}
		return nil
	}
	if session == "" {
		session = xid.New().String()
	}
	return newRecorder(w, c.Setting, side, session, peerAddr, peerName, layer, midSession, extra...)
}

// Tap wraps conn, a new client-side (worker) connection, so that a trace
// can record it from any point of its life on: Attach when it is set up,
// and again at each reuse from a pool. Traced or not, it costs one atomic
// load per read and write. Continue keeps the result tappable inside TLS.
func Tap(conn net.Conn) net.Conn {
	if conn == nil {
		return nil
	}
	return &tracedConn{Conn: conn, t: &tap{}}
}

// Attach records the delivery session over conn (made by Tap, or by
// Continue over it) when a running trace matches the next hop (peerAddr,
// peerName), from now on. Call it when the connection is new (reuse 0:
// before the greeting is read), and each time a pooled connection is taken
// for another transaction (reuse: the number of that transaction on the
// connection, 2 or more; between transactions, with no reply pending):
//
//   - a session already recorded by a trace that still matches goes on,
//     with the note "smtp trace: reusing a pooled connection";
//   - a session a trace started recording when the connection was already
//     open starts with "session start" reused=true, then the same note;
//     over TLS, the TLS state is noted too;
//   - a recording whose trace ended, or that no longer matches this hop,
//     ends ("session end").
//
// A no-op for a nil w or a conn not made by Tap.
func (w *Watcher) Attach(conn net.Conn, peerAddr, peerName string, reuse int) {
	if w == nil {
		return
	}
	t := traced(conn)
	if t == nil {
		return
	}
	ip := peerIP(peerAddr)
	cur := t.t.r.Load()
	if cur != nil && cur.live() {
		if c, ok := w.find(cur.s.ID); ok && c.matches(Delivery, ip, peerName) {
			if reuse > 0 {
				cur.note("smtp trace: reusing a pooled connection", "transaction", reuse)
			}
			return
		}
	}
	if cur != nil {
		cur.close()
		t.t.r.CompareAndSwap(cur, nil)
	}
	c, ok := w.match(Delivery, peerAddr, peerName)
	if !ok {
		return
	}
	var extra []any
	if reuse > 0 {
		extra = []any{"reused", true, "transactions_before", reuse - 1}
	}
	r := w.begin(c, Delivery, "", peerAddr, peerName, t.layer, reuse > 0, extra...)
	if r == nil {
		return
	}
	t.t.r.Store(r)
	if reuse > 0 {
		if tc, ok := t.Conn.(*tls.Conn); ok {
			r.tls(tc.ConnectionState())
		}
		r.note("smtp trace: reusing a pooled connection", "transaction", reuse)
	}
}

// find returns the running trace id.
func (w *Watcher) find(id string) (compiled, bool) {
	now := w.now()
	for _, c := range *w.snap.Load() {
		if c.ID == id && c.Active(now) {
			return c, true
		}
	}
	return compiled{}, false
}

// ConnectFailed records, in the trace that matches the next hop if any, a
// connect that got no session: refused, timed out, unreachable. There is no
// dialog; the record names the address and the error.
func (w *Watcher) ConnectFailed(peerAddr, peerName string, err error) {
	w.unreached("smtp trace: connect failed", peerAddr, peerName, "err", errText(err))
}

// ConnectSkipped records, in the trace that matches the next hop if any, a
// delivery that did not dial the address because a connect to it failed
// moments ago (the worker's --host-down-ttl); err is that failure.
func (w *Watcher) ConnectSkipped(peerAddr, peerName string, err error, until time.Time) {
	w.unreached("smtp trace: not connecting, the address failed a moment ago", peerAddr, peerName,
		"err", errText(err), "retry_after", until.UTC())
}

func (w *Watcher) unreached(msg, peerAddr, peerName string, args ...any) {
	if w == nil {
		return
	}
	c, ok := w.match(Delivery, peerAddr, peerName)
	if !ok {
		return
	}
	w.record(slog.LevelInfo, msg, append([]any{"component", w.component, "trace", c.ID,
		"side", string(Delivery), "peer", peerAddr, "peer_name", peerName}, args...)...)
}

// Failed notes in the session over conn, when it is recorded, why the
// client gives the connection up before or outside a transaction (a TLS
// handshake that failed, TLS required but not offered, a refused EHLO or
// AUTH): status is the delivery status its recipients get.
func Failed(conn net.Conn, status string) {
	if r := recording(conn); r != nil {
		r.note("smtp trace: connection given up", "status", status)
	}
}

// errText bounds an error's text in a record.
func errText(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 500 {
		s = s[:500] + "…"
	}
	return s
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
