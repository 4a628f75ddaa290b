// Package worker consumes ready envelopes, routes them (static route or MX),
// delivers them over SMTP and records the per-recipient outcome: delivered
// and permanently failed recipients are final; temporarily failed ones are
// scheduled for a retry with backoff; the body is deleted when every
// recipient of the message is final.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/semaphore"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/bounce"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/dsn"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/maillog"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Source hands out ready jobs.
type Source interface {
	Fetch(n int, wait time.Duration, fn func(*queue.Job)) error
}

// Queue is what the worker needs of the queue besides the jobs.
type Queue interface {
	Defer(ctx context.Context, e *envelope.Envelope, at time.Time, dedupe string) error
	ReleaseBody(ctx context.Context, e *envelope.Envelope) (last bool, err error)
	PartDone(ctx context.Context, e *envelope.Envelope) (bool, error)
	MoveToHeld(ctx context.Context, e *envelope.Envelope, dedupe string) error
	Publish(ctx context.Context, e *envelope.Envelope) error
	Fail(ctx context.Context, e *envelope.Envelope, reason, dedupe string) error
	Flush(ctx context.Context) error
}

// BodyStore streams, writes (DSNs) and deletes bodies.
type BodyStore interface {
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	Put(ctx context.Context, key string, data []byte) error
	Delete(ctx context.Context, key string) error
}

// Router finds the hops for a domain.
type Router interface {
	Route(ctx context.Context, domain string) ([]delivery.Hop, error)
}

// senderRouter also routes by the sender (route.Router with senderroutes);
// why names the rule that chose the hops.
type senderRouter interface {
	RouteFor(ctx context.Context, req route.Request) (hops []delivery.Hop, why string, err error)
}

// Deliverer runs SMTP transactions.
type Deliverer interface {
	Deliver(ctx context.Context, hops []delivery.Hop, msg *delivery.Message) *delivery.Outcome
}

// Config tunes the worker.
type Config struct {
	Concurrency    int           // envelopes in flight in this process, default 64
	FetchWait      time.Duration // long-poll for new work, default 1s
	AttemptTimeout time.Duration // one delivery attempt, default 15m; keep AckWait larger or heartbeats on
	Heartbeat      time.Duration // InProgress interval during an attempt, default 30s
	RetryFirst     time.Duration // first retry delay, default 5m
	RetryFactor    float64       // default 2
	RetryMax       time.Duration // default 1h
	QueueReturn    time.Duration // give up after this long in the queue, default 5 days
	DrainTimeout   time.Duration // on shutdown, let in-flight deliveries finish this long, default 25s
	WarnAfter      time.Duration // send a delay-warning DSN after this long (0: never)
	Hostname       string        // Reporting-MTA of DSNs, default "localhost"
	// DKIM returns the signing keys in force (nil func or no keys: DSNs
	// go unsigned): a DSN is signed with the key of its From: domain,
	// MAILER-DAEMON@Hostname (Hostname's own key, else its nearest parent's).
	DKIM func() *dkim.Keys
	// LocalNames and LocalAddrs are this mail system's own host names and
	// listening addresses (the ingress's): a route whose next hop is one of
	// them is a mail loop (5.4.6). An address with an unspecified IP
	// (":25") stands for every address of this host on that port.
	LocalNames []string
	LocalAddrs []netip.AddrPort
	// ReturnPath maps an envelope sender to where its DSN goes (nil: the
	// sender itself); the daemon reverses its own SRS addresses with it.
	ReturnPath func(from string) string
	// DomainConcurrency caps deliveries in flight per recipient domain in
	// this process (default 20); DomainLimits override it by domain.
	DomainConcurrency int
	DomainLimits      map[string]DomainLimit
	// Shaper, when set, keeps domain and next-hop limits for the whole
	// fleet (concurrency and rate); Shaping returns the rules in force
	// (the policy's shaping key over DomainLimits; nil: DomainLimits).
	Shaper  *shaping.Shaper
	Shaping func() *shaping.Rules
	// HopConcurrency is the deliveries one next hop (address) may hold in
	// this process (the delivery pool's MaxConnsPerHost, default 10):
	// beyond it mail waits in its lane, not for a connection.
	HopConcurrency int
	// StallAfter: a domain whose running deliveries have all been stuck this
	// long is congested, and its waiting mail goes back to the queue (default 10s).
	StallAfter time.Duration
	// CongestedConcurrency caps the deliveries all congested next hops
	// together may hold (default Concurrency/4): the rest of the worker
	// stays free for healthy mail. Deliveries beyond it are preempted and
	// handed back.
	CongestedConcurrency int
	// BusyDelay is how long mail handed back from a congested domain waits
	// (±50%, default 30s); it does not count as an attempt.
	BusyDelay time.Duration
	// MaxHandlings bounds the failed handlings of one envelope (errors
	// recording an outcome, panics, redeliveries after an ack deadline)
	// before it goes to the terminal failed state with a DSN (default 10).
	MaxHandlings int
	// MaxBodyBytesInFlight bounds the body bytes being transferred to
	// destinations at once in this process (default 256 MiB); a body counts
	// from the remote's DATA go-ahead to the end of its transfer.
	MaxBodyBytesInFlight int64
	Metrics              *telemetry.Metrics // nil: none
	ShapingMetrics       *telemetry.ShapingMetrics
	// Events receives one event per recipient state change (nil: none).
	Events events.Emitter
	// Held reports whether a domain is on hold (nil: no holds).
	Held            func(domain string) bool
	Logger          *slog.Logger
	TracerProvider  trace.TracerProvider
	Now             func() time.Time
	RepanicForTests bool
}

func (c *Config) setDefaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.FetchWait <= 0 {
		c.FetchWait = time.Second
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = 15 * time.Minute
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 30 * time.Second
	}
	if c.RetryFirst <= 0 {
		c.RetryFirst = 5 * time.Minute
	}
	if c.RetryFactor < 1 {
		c.RetryFactor = 2
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Hour
	}
	if c.QueueReturn <= 0 {
		c.QueueReturn = 5 * 24 * time.Hour
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 25 * time.Second
	}
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if c.DomainConcurrency <= 0 {
		c.DomainConcurrency = 20
	}
	if c.HopConcurrency <= 0 {
		c.HopConcurrency = 10
	}
	if c.StallAfter <= 0 {
		c.StallAfter = 10 * time.Second
	}
	if c.CongestedConcurrency <= 0 {
		c.CongestedConcurrency = max(c.Concurrency/4, 1)
	}
	if c.BusyDelay <= 0 {
		c.BusyDelay = 30 * time.Second
	}
	if c.MaxBodyBytesInFlight <= 0 {
		c.MaxBodyBytesInFlight = 256 << 20
	}
	if c.MaxHandlings <= 0 {
		c.MaxHandlings = 10
	}
	if c.Held == nil {
		c.Held = func(string) bool { return false }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TracerProvider == nil {
		c.TracerProvider = noop.NewTracerProvider()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Worker is one worker process's delivery engine.
type Worker struct {
	cfg     Config
	src     Source
	q       Queue
	bodies  BodyStore
	router  Router
	deliver Deliverer
	log     *slog.Logger
	tracer  trace.Tracer
	work    context.Context // deliveries run under this; cancelled after the drain timeout
	sched   *scheduler      // set by Run
	self    *self
	// inflight is the budget of body bytes being transferred (MaxBodyBytesInFlight).
	inflight  *semaphore.Weighted
	flagRules *shaping.Rules // DomainLimits as rules
}

// New builds a worker.
func New(cfg Config, src Source, q Queue, bodies BodyStore, router Router, d Deliverer) *Worker {
	cfg.setDefaults()
	return &Worker{
		cfg: cfg, src: src, q: q, bodies: bodies, router: router, deliver: d,
		log:       cfg.Logger.With("component", "worker"),
		inflight:  semaphore.NewWeighted(cfg.MaxBodyBytesInFlight),
		self:      newSelf(cfg.LocalNames, cfg.LocalAddrs),
		tracer:    cfg.TracerProvider.Tracer("github.com/mailfwd/mailfwd/pkg/worker"),
		flagRules: shaping.NewRules().Merge(cfg.DomainLimits),
	}
}

// Run fetches and processes jobs until ctx is cancelled, then drains: no new
// fetches, waiting jobs go straight back to the queue, in-flight deliveries
// get DrainTimeout to finish, and whatever still runs after that is
// cancelled and handed back too.
func (w *Worker) Run(ctx context.Context) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	w.work = work
	s := newScheduler(w)
	w.sched = s
	hb := time.NewTicker(w.cfg.Heartbeat)
	defer hb.Stop()
	go func() {
		for {
			select {
			case <-work.Done():
				return
			case <-hb.C:
				s.heartbeat()
			}
		}
	}()
	errWait := 100 * time.Millisecond
	for ctx.Err() == nil {
		room := s.room()
		if room <= 0 {
			select {
			case <-s.changed:
			case <-ctx.Done():
			}
			continue
		}
		err := w.src.Fetch(room, w.cfg.FetchWait, s.add)
		if err != nil {
			w.log.Warn("fetch failed; retrying", "err", err, "wait", errWait)
			select {
			case <-time.After(errWait):
			case <-ctx.Done():
			}
			errWait = min(errWait*2, 5*time.Second)
			continue
		}
		errWait = 100 * time.Millisecond
	}
	s.drainWaiting()
	deadline := time.After(w.cfg.DrainTimeout)
	for !s.idle() {
		select {
		case <-s.changed:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			w.log.Warn("drain timeout; cancelling in-flight deliveries, they go back to the queue")
			cancelWork()
			deadline = nil
		}
	}
	return nil
}

// busyDelay is how long mail handed back for the n-th time in a row waits:
// BusyDelay doubling per hand-back, at most RetryMax, ±50%.
func (w *Worker) busyDelay(n int) time.Duration {
	d := float64(w.cfg.BusyDelay)
	for i := 1; i < n && d < float64(w.cfg.RetryMax); i++ {
		d *= 2
	}
	d = min(d, float64(max(w.cfg.RetryMax, w.cfg.BusyDelay)))
	return time.Duration(d * (0.5 + rand.Float64()))
}

// handBack defers a job without counting an attempt (congested domain or
// next hop); the delay grows with the hand-backs in a row.
func (w *Worker) handBack(j *queue.Job, why string) { w.handBackUntil(j, why, time.Time{}) }

// handBackUntil is handBack with the mail due at until (zero: the busy
// delay), e.g. the end of a suspension.
func (w *Worker) handBackUntil(j *queue.Job, why string, until time.Time) {
	if j.Env == nil {
		w.process(w.work, j)
		return
	}
	e := *j.Env
	e.Handbacks++
	delay := w.busyDelay(e.Handbacks)
	if !until.IsZero() {
		delay = time.Until(until) + time.Duration(rand.Int64N(int64(time.Second)))
	}
	ctx, cancel := context.WithTimeout(w.work, 30*time.Second)
	defer cancel()
	if err := w.q.Defer(ctx, &e, time.Now().Add(delay), j.Key()); err != nil {
		w.log.Warn("could not hand back a congested envelope; it returns to the queue", "queue_id", e.QueueID, "err", err)
		_ = j.Nak(delay)
		return
	}
	if err := j.Ack(ctx); err != nil {
		w.log.Warn("ack after hand-back failed; a duplicate may follow", "queue_id", e.QueueID, "err", err)
	}
	w.cfg.Metrics.HandBack()
	w.log.Debug("handed back to the queue", "queue_id", e.QueueID, "domain", e.Domain, "reason", why, "delay", delay, "handbacks", e.Handbacks)
}

// setAside defers a job for a suspended destination until the suspension
// ends, not counting an attempt. The fleet state is asked first: a
// suspension lifted a moment ago (shaping resume, then queue flush) that
// this worker's watch has not brought yet sets nothing aside for its old
// end; the mail is due now.
func (w *Worker) setAside(j *queue.Job, sp shaping.Suspension) {
	until := sp.Until
	ctx, cancel := context.WithTimeout(w.work, shaping.DefaultOpTimeout)
	if !w.cfg.Shaper.Confirm(ctx, sp) {
		until = time.Now()
	}
	cancel()
	w.handBackUntil(j, "destination "+sp.Name()+" suspended: "+sp.Why, until)
}

func (w *Worker) process(ctx context.Context, j *queue.Job) {
	if j.DecodeErr != nil {
		w.log.Error("undecodable envelope dropped", "subject", j.Subject, "err", j.DecodeErr)
		_ = j.Term("undecodable envelope")
		return
	}
	e := j.Env
	log := w.log.With("queue_id", e.QueueID, "domain", e.Domain)
	// Failed handlings before this one: those carried in the envelope and
	// the redeliveries of this copy (a nak, a panic, an ack deadline missed).
	handled := e.Failures + int(max(j.Delivered, 1)) - 1
	if handled >= w.cfg.MaxHandlings {
		w.giveUp(ctx, j, e, fmt.Sprintf("redelivered %d times without a recorded outcome", handled), handled, log)
		return
	}
	if !w.cfg.RepanicForTests {
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic processing envelope", "subject", j.Subject, "panic", p, "stack", string(debug.Stack()))
				w.failedHandling(ctx, j, e, handled, fmt.Errorf("panic: %v", p), log)
			}
		}()
	}
	ctx, span := w.tracer.Start(j.Context(ctx), "mail.deliver", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("mailfwd.queue_id", e.QueueID),
			attribute.String("mailfwd.domain", e.Domain),
			attribute.Int("mailfwd.recipients", len(e.Recipients)),
			attribute.Int("mailfwd.attempt", e.Attempts+1),
		))
	defer span.End()

	if err := w.handle(ctx, j, e, handled, log); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		w.failedHandling(ctx, j, e, handled, err, log)
	}
}

// failedHandling returns a job whose outcome could not be recorded to the
// queue, or ends it in the failed state once MaxHandlings is reached.
func (w *Worker) failedHandling(ctx context.Context, j *queue.Job, e *envelope.Envelope, handled int, err error, log *slog.Logger) {
	if handled+1 >= w.cfg.MaxHandlings {
		w.giveUp(ctx, j, e, err.Error(), handled+1, log)
		return
	}
	delay := w.backoff(handled + 1)
	log.Error("could not record delivery outcome; envelope returns to the queue", "err", err,
		"failed_handlings", handled+1, "max_handlings", w.cfg.MaxHandlings, "retry_in", delay)
	_ = j.Nak(delay)
}

// giveUp ends e in the terminal failed state: a DSN to the sender where
// possible, the envelope kept on the failed subject for an operator, an
// error log and a metric.
func (w *Worker) giveUp(ctx context.Context, j *queue.Job, e *envelope.Envelope, cause string, handlings int, log *slog.Logger) {
	log.Error(e.QueueID+": giving up", "failed_handlings", handlings, "err", cause)
	w.terminal(ctx, j, e, fmt.Sprintf("Gave up after %d failed handlings: %s", handlings, cause), "5.3.0", log)
}

// terminal ends e in the failed state for reason; recipients without a
// known permanent status are reported with status.
func (w *Worker) terminal(ctx context.Context, j *queue.Job, e *envelope.Envelope, reason, status string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	log.Error(e.QueueID + ": failed: " + reason)
	dsnQID, err := w.giveUpDSN(ctx, e, reason, status, log)
	if err != nil {
		log.Error("no DSN for the failed envelope", "err", err)
	}
	if err := w.q.Fail(ctx, e, reason, j.Key()); err != nil {
		log.Error("could not move the envelope to the failed state; it returns to the queue", "err", err)
		_ = j.Nak(w.cfg.RetryMax)
		return
	}
	w.cfg.Metrics.Failed()
	for _, r := range e.Recipients {
		st := r.Status // a recipient's own permanent status, else the envelope's
		if st == "" {
			st = status
		}
		w.emit(e, r.Addr, events.Event{Type: events.Failed, DSN: st, Reply: envelope.TruncateError(reason), DSNQueueID: dsnQID})
	}
	_ = j.Ack(ctx)
}

// emitAll sends one event like ev per recipient of e.
func (w *Worker) emitAll(e *envelope.Envelope, ev events.Event) {
	if w.cfg.Events == nil {
		return
	}
	evs := make([]events.Event, len(e.Recipients))
	for i, r := range e.Recipients {
		evs[i] = w.event(e, r.Addr, ev)
	}
	w.cfg.Events.EmitAll(evs)
}

// emit sends ev about recipient rcpt of e.
func (w *Worker) emit(e *envelope.Envelope, rcpt string, ev events.Event) {
	if w.cfg.Events == nil {
		return
	}
	w.cfg.Events.Emit(w.event(e, rcpt, ev))
}

// event is ev about recipient rcpt of e.
func (w *Worker) event(e *envelope.Envelope, rcpt string, ev events.Event) events.Event {
	ev.QueueID, ev.MessageID, ev.Sender, ev.Recipient, ev.Destination = e.QueueID, e.MsgID, e.From, rcpt, e.Domain
	ev.Arrived, ev.Size = e.Arrived, e.Size
	return ev
}

// giveUpDSN reports every recipient of e as failed (a panic here is an error).
func (w *Worker) giveUpDSN(ctx context.Context, e *envelope.Envelope, reason, status string, log *slog.Logger) (qid string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic building the DSN: %v", p)
		}
	}()
	now := w.cfg.Now()
	var rcpts []dsn.Recipient
	for _, r := range e.Recipients {
		st, diag := r.Status, e.RcptError(r)
		if st == "" {
			st, diag = status, reason
		}
		rcpts = append(rcpts, dsn.Recipient{Final: r.Addr, Action: dsn.Failed, Status: st, Diagnostic: diag, LastAttempt: now})
	}
	return w.notify(ctx, e, w.headerOf(ctx, e), rcpts, reason, log)
}

// dsnHeaderMax bounds what is read of a stored body for a DSN (which
// returns the original's header block only).
const dsnHeaderMax = 256 << 10

// headerOf returns the start of e's body for a DSN (nil if unavailable),
// at most dsnHeaderMax bytes of it.
func (w *Worker) headerOf(ctx context.Context, e *envelope.Envelope) []byte {
	if e.Body != nil {
		return e.Body
	}
	rc, _, err := w.bodies.Open(ctx, e.BodyKey)
	if err != nil {
		return nil
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, dsnHeaderMax))
	if err != nil {
		return nil
	}
	return b
}

// persist records the progress of an attempt whose outcome could not be
// completed (e.g. the DSN could not be queued): p holds only the recipients
// not delivered, and replaces the current copy. Recipients that got 250 are
// thereby never delivered again.
func (w *Worker) persist(ctx context.Context, j *queue.Job, p *envelope.Envelope, handled int, cause error, log *slog.Logger) error {
	p.Failures = handled + 1
	p.Recipients = ownErrors(p)
	p.LastError = envelope.TruncateError("handling failed: " + cause.Error())
	if p.Failures >= w.cfg.MaxHandlings {
		w.giveUp(ctx, j, p, cause.Error(), p.Failures, log)
		return nil
	}
	delay := w.backoff(p.Failures)
	log.Error("could not record the whole outcome; the undelivered recipients are kept and retried", "err", cause,
		"failed_handlings", p.Failures, "max_handlings", w.cfg.MaxHandlings, "retry_in", delay)
	if err := w.q.Defer(ctx, p, w.cfg.Now().Add(delay), j.Key()+"p"); err != nil {
		return errors.Join(cause, err)
	}
	return j.Ack(ctx)
}

// result of one attempt for one recipient.
type rcptResult struct {
	rcpt   envelope.Recipient
	status delivery.RcptStatus
	known  bool // a permanent failure from an earlier attempt, only to be reported
}

func (w *Worker) handle(ctx context.Context, j *queue.Job, e *envelope.Envelope, handled int, log *slog.Logger) error {
	if w.cfg.Held(e.Domain) {
		// Moved aside until an operator releases the domain; no attempt, no expiry.
		if err := w.q.MoveToHeld(ctx, e, j.Key()); err != nil {
			return err
		}
		log.Info(e.QueueID + ": held: domain " + e.Domain + " is on hold")
		w.emitAll(e, events.Event{Type: events.Held, Reply: "domain " + e.Domain + " is on hold"})
		w.cfg.Metrics.Held()
		return j.Ack(ctx)
	}
	if j.Delivered > 1 && e.Parts > 1 {
		done, err := w.q.PartDone(ctx, e)
		if err != nil {
			return err
		}
		if done {
			log.Info("redelivered envelope was already completed; dropping the duplicate")
			return j.Ack(ctx)
		}
	}
	// Recipients whose permanent failure is known wait only for their DSN.
	var try []string
	for _, r := range e.Recipients {
		if r.Status == "" {
			try = append(try, r.Addr)
		}
	}
	started := w.cfg.Now()
	actx, cancel := context.WithTimeout(ctx, w.cfg.AttemptTimeout)
	defer cancel()
	stopHB := w.heartbeat(actx, j)
	defer stopHB()

	var out *delivery.Outcome
	var rerr error
	if sh := w.cfg.Shaper; sh != nil && len(try) > 0 {
		// Suspended while this job waited or started (another worker's
		// reply rule): not attempted.
		if sp, ok := sh.SuspendedDomain(e.Domain); ok {
			w.setAside(j, sp)
			return nil
		}
	}
	if len(try) > 0 {
		var hops []delivery.Hop
		if sr, ok := w.router.(senderRouter); ok {
			// senderroutes: a relay chosen by the sender or AUTH user.
			var why string
			hops, why, rerr = sr.RouteFor(actx, route.Request{Domain: e.Domain, Sender: e.From, AuthUser: e.AuthUser})
			if strings.HasPrefix(why, "senderroutes") {
				log = log.With("route", why)
				trace.SpanFromContext(ctx).SetAttributes(attribute.String("mailfwd.route", why))
			}
		} else {
			hops, rerr = w.router.Route(actx, e.Domain)
		}
		if rerr == nil {
			hops, rerr = w.self.notSelf(hops)
		}
		if rerr == nil {
			msg := &delivery.Message{QueueID: e.QueueID, From: e.From, Recipients: try, Body: signedInline(e),
				EightBit: e.EightBit, UTF8: e.UTF8}
			if w.sched != nil {
				w.sched.bind(j, hops)
				msg.Activity = w.sched.activity(j)
				msg.DataStarted = w.sched.dataStarted(j)
			}
			var body *streamedBody
			if e.Body == nil {
				// Streamed from the store at DATA time, never loaded whole.
				rc, size, err := w.bodies.Open(actx, e.BodyKey)
				switch {
				case errors.Is(err, blob.ErrNotFound):
					if e.Parts == 1 && j.Delivered > 1 {
						log.Info("body already deleted: redelivered envelope was completed; dropping the duplicate")
						return j.Ack(ctx)
					}
					log.Error("body missing from the store; the sender gets a DSN", "body", e.BodyKey)
					w.terminal(ctx, j, e, "Message body missing from the store; the message cannot be delivered", "5.3.0", log)
					return nil
				case err != nil:
					rerr = &route.Error{Enhanced: "4.3.0", Msg: "Body store unavailable", Err: err}
				default:
					rc, size = signedStream(e, rc, size) // the ingress's DKIM-Signature, if any
					body = &streamedBody{w: w, ctx: actx, rc: rc, size: size}
					msg.Open, msg.Size = body.open, size
				}
			}
			if rerr == nil {
				_, dspan := w.tracer.Start(actx, "smtp.send", trace.WithSpanKind(trace.SpanKindClient))
				msg.MaxMsgsPerConn = w.msgsPerConn(e.Domain, hops)
				if w.sched != nil && w.sched.slotted(j) {
					// A pooled idle connection would be a session the
					// destination's fleet concurrency does not count.
					msg.MaxMsgsPerConn = 1
				}
				out = w.deliver.Deliver(withDialDest(actx, e.Domain, hops), hops, msg)
				dspan.SetAttributes(attribute.String("mailfwd.relay", out.Hop.Name))
				spanStatuses(dspan, out)
				if out.TLS != "" {
					// What protected the hop: "tls=TLSv1.3 verified=yes", verify=OK.
					dspan.SetAttributes(attribute.String("mailfwd.tls", out.TLS), attribute.String("mailfwd.tls.verify", out.Verify))
				}
				dspan.End()
			}
			if body != nil {
				_ = body.Close()
			}
		}
	}
	if w.sched != nil && out != nil && ctx.Err() == nil {
		w.sched.feedback(e.Domain, destinationAnswered(out), congestionSignal(out))
	}
	if ctx.Err() == nil {
		w.replyRules(ctx, e.Domain, out)
	}
	if errors.Is(context.Cause(ctx), errCongested) && (out == nil || !anyDelivered(out)) {
		// Preempted: the next hop is congested and holds its share of the
		// worker already. Not an attempt; the mail waits and comes back.
		log.Info("delivery preempted: its next hop is not responding; the envelope goes back to the queue")
		w.handBack(j, "next hop not responding")
		return nil
	}
	if ctx.Err() != nil {
		// Shutting down past the drain timeout: hand the envelope to another
		// worker now rather than counting this as a failed attempt.
		log.Info("delivery interrupted by shutdown; envelope returns to the queue")
		return j.Nak(0)
	}
	ended := w.cfg.Now()
	results := make([]rcptResult, len(e.Recipients))
	k := 0 // index into out.Statuses (the recipients tried)
	for i, r := range e.Recipients {
		results[i].rcpt = r
		if r.Status != "" {
			results[i].known = true
			results[i].status = delivery.RcptStatus{Rcpt: r.Addr, Code: 550, Enhanced: r.Status, Text: e.RcptError(r)}
			continue
		}
		if out != nil && k < len(out.Statuses) {
			results[i].status = out.Statuses[k]
			k++
			continue
		}
		st := delivery.RcptStatus{Rcpt: r.Addr, Code: 451, Enhanced: "4.4.3", Text: "Deferred"}
		var re *route.Error
		if errors.As(rerr, &re) {
			st.Enhanced, st.Text = re.Enhanced, re.Msg
			if re.Permanent {
				st.Code = 550
			}
		} else if rerr != nil {
			st.Text = rerr.Error()
		}
		results[i].status = st
	}

	// Log every recipient attempt, decide what remains.
	deadline := e.Deadline(w.cfg.QueueReturn)
	expired := !ended.Before(deadline)
	var remaining, undone []envelope.Recipient // deferred; not delivered (deferred + failed)
	var failed, delayed []dsn.Recipient
	remote := ""
	if out != nil {
		remote = strings.Trim(out.Hop.Name, "[]")
	}
	w.cfg.Metrics.Transaction(ended.Sub(started), outcomeTLS(out))
	// The attempt's events go out when the handling ends, with the queue
	// id of the DSN it sent (bounce or delay warning), if any.
	type rcptEvent struct {
		rcpt string
		ev   events.Event
	}
	var evs []rcptEvent
	linkDSN := func(qid string, types ...events.Type) {
		for i := range evs {
			if slices.Contains(types, evs[i].ev.Type) {
				evs[i].ev.DSNQueueID = qid
			}
		}
	}
	defer func() {
		if w.cfg.Events == nil {
			return
		}
		out := make([]events.Event, len(evs))
		for i, x := range evs {
			out[i] = w.event(e, x.rcpt, x.ev)
		}
		w.cfg.Events.EmitAll(out) // the recipients with the same outcome are stored together
	}()
	for _, r := range results {
		st := r.status
		if r.known {
			failed = append(failed, dsn.Recipient{Final: r.rcpt.Addr, Action: dsn.Failed, Status: st.Enhanced,
				Diagnostic: st.Text, LastAttempt: ended})
			undone = append(undone, r.rcpt)
			continue
		}
		a := maillog.Attempt{
			QueueID: e.QueueID, To: r.rcpt.Addr, Arrived: e.Arrived, Started: started, Ended: ended,
			Size: e.Size, NRcpts: len(e.Recipients), Attempts: r.rcpt.Attempts + 1, DSN: st.Enhanced,
		}
		if out != nil {
			// The host the transaction ran on, else the last one tried (as
			// sendmail names it: "relay=mx.dead.test. [192.0.2.1]").
			h := out.Hop
			if h.Name == "" {
				h = out.Tried
			}
			if h.Name != "" {
				a.RelayHost, a.RelayAddr = h.Name, h.Addr.Addr().String()
			}
			a.TLS, a.Verify = out.TLS, out.Verify
		}
		diag := envelope.TruncateError(replyText(st))
		dr := dsn.Recipient{Final: r.rcpt.Addr, Status: st.Enhanced, RemoteMTA: remote, Diagnostic: diag, LastAttempt: ended}
		next := r.rcpt
		next.Attempts++
		next.LastError = diag
		obs := telemetry.Attempt{Destination: e.Domain, NextHop: a.RelayHost, Arrived: e.Arrived, Ended: ended}
		switch {
		case st.Delivered():
			w.cfg.Metrics.Delivery("sent", obs)
			text := out.Reply
			if text == "" {
				text = st.Text
			}
			a.Stat = "Sent (" + text + ")"
		case st.Permanent():
			w.cfg.Metrics.Delivery("failed", obs)
			a.Stat = fmt.Sprintf("Failed: %s", replyText(st))
			dr.Action = dsn.Failed
			failed = append(failed, dr)
			next.Status = st.Enhanced
			undone = append(undone, next)
		case expired:
			w.cfg.Metrics.Delivery("expired", obs)
			a.Stat = fmt.Sprintf("Failed: Cannot send message for %s: %s", humanDuration(ended.Sub(e.Arrived)), replyText(st))
			a.DSN = "4.4.7"
			dr.Action, dr.Status = dsn.Failed, "4.4.7"
			failed = append(failed, dr)
			next.Status = "4.4.7"
			undone = append(undone, next)
		default:
			w.cfg.Metrics.Delivery("deferred", obs)
			a.Stat = "Deferred: " + replyText(st)
			remaining = append(remaining, next)
			undone = append(undone, next)
			dr.Action, dr.WillRetryUntil = dsn.Delayed, deadline
			delayed = append(delayed, dr)
		}
		maillog.LogAttempt(ctx, log, a)
		evs = append(evs, rcptEvent{r.rcpt.Addr, attemptEvent(a, st, deadline, w.backoff(e.Attempts+1))})
	}

	if len(failed) > 0 {
		reason := failed[0].Diagnostic
		if expired {
			reason = "Cannot send message for " + humanDuration(ended.Sub(e.Arrived))
		}
		qid, err := w.notify(ctx, e, w.headerOf(ctx, e), failed, reason, log)
		if err != nil {
			// Keep what this attempt learnt: delivered recipients leave the
			// envelope, failed ones keep their status and wait for the DSN.
			p := *e
			p.Recipients = shareError(&p, undone)
			if len(try) > 0 {
				p.Attempts = e.Attempts + 1
			}
			return w.persist(ctx, j, &p, handled, err, log)
		}
		linkDSN(qid, events.Bounced, events.Expired)
	}
	if len(remaining) > 0 {
		d := *e
		d.Attempts = e.Attempts + 1
		d.Failures = 0
		d.Handbacks = 0
		d.Recipients = shareError(&d, remaining)
		if w.cfg.WarnAfter > 0 && !e.Warned && ended.Sub(e.Arrived) >= w.cfg.WarnAfter {
			reason := "Warning: message still undelivered after " + humanDuration(ended.Sub(e.Arrived))
			if qid, err := w.notify(ctx, e, w.headerOf(ctx, e), delayed, reason, log); err != nil {
				log.Warn("could not queue the delay warning; it is tried again at the next attempt", "err", err)
			} else {
				d.Warned = true
				linkDSN(qid, events.Deferred)
			}
		}
		at := ended.Add(w.backoff(d.Attempts))
		if at.After(deadline) {
			at = deadline // one last attempt at the deadline, then the bounce
		}
		if err := w.q.Defer(ctx, &d, at, j.Key()); err != nil {
			return err
		}
		return j.Ack(ctx)
	}
	last, err := w.q.ReleaseBody(ctx, e)
	if err != nil {
		return err
	}
	if !last || e.BodyKey == "" {
		return j.Ack(ctx)
	}
	// The ack is stored (on one node: on disk) before the body goes: a crash
	// in between leaves an orphan body for the sweeper, never an envelope
	// that comes back without its body (and bounces as "body missing").
	if err := j.AckSync(ctx); err != nil {
		return err
	}
	if err := w.q.Flush(ctx); err != nil {
		log.Warn("could not flush the ack of a completed message; its body stays for the orphan sweeper", "body", e.BodyKey, "err", err)
		return nil
	}
	if err := w.bodies.Delete(ctx, e.BodyKey); err != nil {
		// The envelope is final; an orphaned body is a leak, not a loss.
		log.Warn("could not delete body of completed message", "body", e.BodyKey, "err", err)
	}
	return nil
}

// msgsPerConn is the transactions a connection of a delivery to domain
// over hops may carry: the lower of its domain rule's msgs-per-conn and
// its first next hop's (0: the delivery client's --max-msgs-per-conn).
func (w *Worker) msgsPerConn(domain string, hops []delivery.Hop) int {
	rules := w.rules()
	n := 0
	if d, ok := rules.Domain(domain); ok {
		n = d.Limit.MsgsPerConn
	}
	if len(hops) > 0 && rules.HasHosts() {
		if h, ok := rules.Host(hops[0].Name, hops[0].Addr.Addr()); ok && h.Limit.MsgsPerConn > 0 && (n == 0 || h.Limit.MsgsPerConn < n) {
			n = h.Limit.MsgsPerConn
		}
	}
	return n
}

// ownErrors gives every recipient its own last error again (before the
// envelope's LastError is replaced).
func ownErrors(e *envelope.Envelope) []envelope.Recipient {
	out := append([]envelope.Recipient(nil), e.Recipients...)
	for i := range out {
		out[i].LastError = e.RcptError(out[i])
	}
	return out
}

// shareError stores the most common recipient error once, as e's
// LastError, and keeps per-recipient errors only where they differ: an
// error shared by every recipient is not stored once per recipient.
func shareError(e *envelope.Envelope, rcpts []envelope.Recipient) []envelope.Recipient {
	out := append([]envelope.Recipient(nil), rcpts...)
	if len(out) == 0 {
		return out
	}
	e.LastError = out[0].LastError
	for i := range out {
		if out[i].LastError == e.LastError {
			out[i].LastError = ""
		}
	}
	return out
}

// destinationAnswered: the destination took or refused the message
// (a 2xx or 5xx for a recipient): it works.
func destinationAnswered(out *delivery.Outcome) bool {
	for _, st := range out.Statuses {
		if st.Delivered() || st.Permanent() {
			return true
		}
	}
	return false
}

// congestionSignal: no connection could be made, or the destination said
// it is busy (421, 4.7.x).
func congestionSignal(out *delivery.Outcome) bool {
	if destinationAnswered(out) {
		return false
	}
	if out.Hop.Name == "" {
		return true
	}
	for _, st := range out.Statuses {
		if st.Code == 421 || strings.HasPrefix(st.Enhanced, "4.7.") {
			return true
		}
	}
	return false
}

func anyDelivered(out *delivery.Outcome) bool {
	for _, st := range out.Statuses {
		if st.Delivered() {
			return true
		}
	}
	return false
}

func isPermanent(err error) bool {
	var re *route.Error
	return errors.As(err, &re) && re.Permanent
}

// humanDuration says "5 days", "4 hours", "12 minutes" as sendmail does.
func humanDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	}
	return fmt.Sprintf("%d seconds", int(d.Seconds()))
}

// notify sends a DSN about e to its sender through the queue. Mail from the
// null sender (DSNs themselves) never gets one.
func (w *Worker) notify(ctx context.Context, e *envelope.Envelope, body []byte, rcpts []dsn.Recipient, reason string, log *slog.Logger) (string, error) {
	bs := bounce.Sender{Hostname: w.cfg.Hostname, Bodies: w.bodies, Queue: w.q, ReturnPath: w.cfg.ReturnPath}
	if w.cfg.DKIM != nil {
		bs.DKIM = w.cfg.DKIM()
	}
	qid, err := bs.Send(ctx, e, body, rcpts, reason, w.cfg.Now())
	if errors.Is(err, bounce.ErrNotReturnable) {
		log.Info(e.QueueID + ": no DSN for the null sender: " + reason)
		return "", nil
	}
	if err != nil {
		return "", err
	}
	kind := "DSN"
	if rcpts[0].Action == dsn.Delayed {
		kind = "delay warning"
	}
	w.cfg.Metrics.DSN(string(rcpts[0].Action))
	log.Info(fmt.Sprintf("%s: %s: sender notify: %s", e.QueueID, qid, reason), "dsn_queue_id", qid, "kind", kind)
	return qid, nil
}

// attemptEvent is the event of one recipient's attempt, from its log line.
func attemptEvent(a maillog.Attempt, st delivery.RcptStatus, deadline time.Time, backoff time.Duration) events.Event {
	ev := events.Event{Time: a.Ended, Attempt: a.Attempts, Relay: a.RelayHost, RelayAddr: a.RelayAddr, DSN: a.DSN,
		Reply: envelope.TruncateError(replyText(st)), TLSVerify: a.Verify}
	if a.TLS != "" {
		ev.TLS = maillog.TLSVersion(a.TLS)
	}
	switch {
	case st.Delivered():
		ev.Type = events.Delivered
	case st.Permanent():
		ev.Type = events.Bounced
	case a.DSN == "4.4.7" && strings.HasPrefix(a.Stat, "Failed"):
		ev.Type = events.Expired
	default:
		ev.Type = events.Deferred
		ev.NextAttempt = a.Ended.Add(backoff)
		if ev.NextAttempt.After(deadline) {
			ev.NextAttempt = deadline
		}
	}
	return ev
}

func replyText(st delivery.RcptStatus) string {
	if st.Code == 0 {
		return st.Text
	}
	return fmt.Sprintf("%d %s %s", st.Code, st.Enhanced, st.Text)
}

// backoff is the delay before attempt n+1 (n ≥ 1 attempts made): RetryFirst·
// RetryFactor^(n-1), capped at RetryMax, ±20% jitter so that a backlog that
// failed together does not retry together.
func (w *Worker) backoff(n int) time.Duration {
	d := float64(w.cfg.RetryFirst)
	for i := 1; i < n && d < float64(w.cfg.RetryMax); i++ {
		d *= w.cfg.RetryFactor
	}
	d = min(d, float64(w.cfg.RetryMax))
	d *= 0.8 + 0.4*rand.Float64()
	return time.Duration(d)
}

// heartbeat keeps the job's ack deadline ahead of a long attempt.
func (w *Worker) heartbeat(ctx context.Context, j *queue.Job) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(w.cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = j.InProgress()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// spanStatuses records what the destination answered on the smtp.send span:
// mailfwd.dsn, the enhanced status of each recipient tried in order
// ("2.0.0,4.2.2"), how many of them were delivered, and an error status
// when none was.
func spanStatuses(span trace.Span, out *delivery.Outcome) {
	enh := make([]string, len(out.Statuses))
	delivered := 0
	for i, st := range out.Statuses {
		enh[i] = st.Enhanced
		if st.Delivered() {
			delivered++
		}
	}
	span.SetAttributes(attribute.String("mailfwd.dsn", strings.Join(enh, ",")),
		attribute.Int("mailfwd.delivered", delivered), attribute.Int("mailfwd.recipients", len(out.Statuses)))
	if delivered == 0 && len(out.Statuses) > 0 {
		span.SetStatus(codes.Error, "not delivered: "+out.Statuses[0].Enhanced)
	}
}
