// Package queue is mailfwd's durable queue on NATS JetStream.
//
// Layout (one stream, work-queue retention):
//
//	mail.ready.<domain>              envelopes due now; the "workers" consumer reads these
//	mail.deferred.<domain>.<qid>     scheduled retries (Nats-Schedule @at → mail.ready.<domain>)
//	mail.held.<domain>.<qid>         moved aside while an operator holds the domain
//
// <domain> is the recipient domain as reversed A-labels (address.SubjectToken),
// so "mail.ready.com.example.>" selects example.com's subdomains. Deferred
// mail waits in the stream, not in the consumer: it takes no worker capacity
// and is not counted in the consumer's pending work (what autoscaling reads).
// Bodies shared by several envelopes are reference-counted in a KV bucket.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// Subject prefixes.
const (
	ReadyPrefix    = "mail.ready"
	DeferredPrefix = "mail.deferred"
	HeldPrefix     = "mail.held"
)

// Config says where the queue is and how it is laid out.
type Config struct {
	URL       string // nats://host:4222[,nats://…]
	CredsFile string // NATS .creds file, optional
	// User and Password authenticate with a NATS user/password (instead of
	// CredsFile). With a user, the connection's reply inboxes are
	// _INBOX_<user>.>, so that server permissions can confine every user's
	// replies to itself (see deploy/quickstart/nats.yaml).
	User, Password string
	// Logger receives the connection's asynchronous errors (a permissions
	// violation, a slow consumer), which otherwise go unseen; nil drops them.
	Logger      *slog.Logger
	ClientName  string        // shown in NATS monitoring
	Stream      string        // default "MAIL"
	Consumer    string        // default "workers"
	RefsBucket  string        // default "MAIL_REFS"
	HoldsBucket string        // default "MAIL_HOLDS"
	Replicas    int           // default 1
	AckWait     time.Duration // default 2m; workers heartbeat with InProgress during long sends
	// MaxAckPending bounds the messages handed out and not yet acked across all workers.
	MaxAckPending int           // default 20000
	PublishWait   time.Duration // how long Enqueue waits for PubAcks, default 10s
	Propagator    propagation.TextMapPropagator
}

func (c *Config) setDefaults() {
	if c.Stream == "" {
		c.Stream = "MAIL"
	}
	if c.Consumer == "" {
		c.Consumer = "workers"
	}
	if c.RefsBucket == "" {
		c.RefsBucket = "MAIL_REFS"
	}
	if c.HoldsBucket == "" {
		c.HoldsBucket = "MAIL_HOLDS"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.AckWait == 0 {
		c.AckWait = 2 * time.Minute
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 20000
	}
	if c.PublishWait == 0 {
		c.PublishWait = 10 * time.Second
	}
	if c.Propagator == nil {
		c.Propagator = propagation.TraceContext{}
	}
}

// Queue is a connection to the mail stream.
type Queue struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
}

// Connect dials NATS. It keeps reconnecting forever in the background, so a
// NATS restart shows as failed publishes (a 4xx at the ingress), not a crash.
func Connect(ctx context.Context, cfg Config) (*Queue, error) {
	cfg.setDefaults()
	if cfg.URL == "" {
		return nil, errors.New("queue: no NATS URL (set --nats-url)")
	}
	opts := []nats.Option{
		nats.Name(cfg.ClientName),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1), // fail publishes while disconnected instead of buffering them
	}
	auth, err := cfg.authOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	if cfg.Logger != nil {
		log := cfg.Logger
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("NATS error", "component", "queue", "subject", sub.Subject, "err", err)
				return
			}
			log.Error("NATS error", "component", "queue", "err", err)
		}))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("queue: connect %s: %w", RedactURL(cfg.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("queue: %w", err)
	}
	return &Queue{cfg: cfg, nc: nc, js: js}, nil
}

// Close drains and closes the connection.
func (q *Queue) Close() {
	if err := q.nc.Drain(); err != nil {
		q.nc.Close()
	}
}

// Bootstrap creates or updates the stream, the workers' consumer and the
// KV buckets. It is idempotent and safe from several pods; what already has
// the wanted configuration is left untouched (no write on every pod start).
func (q *Queue) Bootstrap(ctx context.Context) error {
	want := jetstream.StreamConfig{
		Name:              q.cfg.Stream,
		Description:       "mailfwd envelopes: ready and scheduled (deferred) per recipient domain",
		Subjects:          []string{ReadyPrefix + ".>", DeferredPrefix + ".>", HeldPrefix + ".>"},
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          q.cfg.Replicas,
		Duplicates:        2 * time.Minute,
		AllowMsgSchedules: true,
		AllowDirect:       true,
	}
	if st, err := q.js.Stream(ctx, q.cfg.Stream); err != nil || !streamConfigured(st.CachedInfo().Config, want) {
		if _, err := q.js.CreateOrUpdateStream(ctx, want); err != nil {
			return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
		}
	}
	wantC := jetstream.ConsumerConfig{
		Durable:       q.cfg.Consumer,
		Description:   "mailfwd workers: ready envelopes",
		FilterSubject: ReadyPrefix + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       q.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: q.cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if c, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.Consumer); err != nil || !consumerConfigured(c.CachedInfo().Config, wantC) {
		if _, err := q.js.CreateOrUpdateConsumer(ctx, q.cfg.Stream, wantC); err != nil {
			return fmt.Errorf("queue: consumer %s: %w", q.cfg.Consumer, err)
		}
	}
	for _, kv := range []jetstream.KeyValueConfig{
		{Bucket: q.cfg.RefsBucket, Description: "mailfwd: recipient domains still pending per multi-domain message",
			Storage: jetstream.FileStorage, Replicas: q.cfg.Replicas},
		{Bucket: q.cfg.HoldsBucket, Description: "mailfwd: recipient domains on hold (mailfwdctl queue hold)",
			Storage: jetstream.FileStorage, Replicas: q.cfg.Replicas, History: 5},
	} {
		if _, err := q.js.KeyValue(ctx, kv.Bucket); err == nil {
			continue
		}
		if _, err := q.js.CreateOrUpdateKeyValue(ctx, kv); err != nil {
			return fmt.Errorf("queue: kv %s: %w", kv.Bucket, err)
		}
	}
	return nil
}

func streamConfigured(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Retention == want.Retention && have.Storage == want.Storage &&
		have.Replicas == want.Replicas && have.Duplicates == want.Duplicates &&
		have.AllowMsgSchedules == want.AllowMsgSchedules && have.AllowDirect == want.AllowDirect
}

func consumerConfigured(have, want jetstream.ConsumerConfig) bool {
	return have.FilterSubject == want.FilterSubject && have.AckPolicy == want.AckPolicy && have.AckWait == want.AckWait &&
		have.MaxDeliver == want.MaxDeliver && have.MaxAckPending == want.MaxAckPending && have.DeliverPolicy == want.DeliverPolicy
}

// Check reports whether the queue can take mail now (readiness).
func (q *Queue) Check(ctx context.Context) error {
	if !q.nc.IsConnected() {
		return fmt.Errorf("queue: not connected to NATS (%s)", q.nc.Status())
	}
	if _, err := q.js.Stream(ctx, q.cfg.Stream); err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	}
	return nil
}

// ReadySubject is where an envelope for domain waits for a worker.
func ReadySubject(domain string) string {
	return ReadyPrefix + "." + address.SubjectToken(domain)
}

// HeldSubject is where an envelope waits while its domain is held.
func HeldSubject(domain, qid string) string {
	return HeldPrefix + "." + address.SubjectToken(domain) + "." + qid
}

// DeferredSubject is the schedule subject of one deferred envelope.
func DeferredSubject(domain, qid string) string {
	return DeferredPrefix + "." + address.SubjectToken(domain) + "." + qid
}

// Enqueue publishes every envelope of one message and waits for all PubAcks.
// It returns nil only when JetStream has stored every envelope; the message
// id (queue id + domain) makes a retried publish a no-op, not a second copy.
// Trace context from ctx travels in the message headers.
func (q *Queue) Enqueue(ctx context.Context, envs []*envelope.Envelope) error {
	if len(envs) > 1 {
		doms := make([]string, len(envs))
		for i, e := range envs {
			doms[i] = e.Domain
		}
		b, _ := json.Marshal(doms)
		kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
		if err != nil {
			return fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
		}
		if _, err := kv.Put(ctx, envs[0].QueueID, b); err != nil {
			return fmt.Errorf("queue: body refs for %s: %w", envs[0].QueueID, err)
		}
	}
	futs := make([]jetstream.PubAckFuture, 0, len(envs))
	for _, e := range envs {
		m, err := q.newMsg(ctx, ReadySubject(e.Domain), e)
		if err != nil {
			return err
		}
		f, err := q.js.PublishMsgAsync(m, jetstream.WithMsgID(e.QueueID+"."+address.SubjectToken(e.Domain)))
		if err != nil {
			return fmt.Errorf("queue: publish %s: %w", m.Subject, err)
		}
		futs = append(futs, f)
	}
	timer := time.NewTimer(q.cfg.PublishWait)
	defer timer.Stop()
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("queue: publish %s: %w", f.Msg().Subject, err)
		case <-ctx.Done():
			return fmt.Errorf("queue: waiting for publish ack: %w", ctx.Err())
		case <-timer.C:
			return fmt.Errorf("queue: no publish ack for %s within %s", f.Msg().Subject, q.cfg.PublishWait)
		}
	}
	return nil
}

func (q *Queue) newMsg(ctx context.Context, subject string, e *envelope.Envelope) (*nats.Msg, error) {
	b, err := e.Marshal()
	if err != nil {
		return nil, fmt.Errorf("queue: encode envelope %s: %w", e.QueueID, err)
	}
	m := nats.NewMsg(subject)
	m.Data = b
	q.cfg.Propagator.Inject(ctx, HeaderCarrier(m.Header))
	return m, nil
}

// Defer schedules e to be ready again at time at. The schedule is replaced if
// one exists for the same envelope. The caller acks the current delivery only
// after Defer returned nil. dedupe identifies this deferral (the stream
// sequence of the copy being deferred): a retried Defer with the same key is
// not stored twice, and a later deferral of a new copy never collides.
func (q *Queue) Defer(ctx context.Context, e *envelope.Envelope, at time.Time, dedupe string) error {
	e.NextAttempt = at
	m, err := q.newMsg(ctx, DeferredSubject(e.Domain, e.QueueID), e)
	if err != nil {
		return err
	}
	_, err = q.js.PublishMsg(ctx, m,
		jetstream.WithScheduleAt(at),
		jetstream.WithScheduleTarget(ReadySubject(e.Domain)),
		jetstream.WithMsgID(e.QueueID+"."+address.SubjectToken(e.Domain)+".d"+dedupe),
	)
	if err != nil {
		return fmt.Errorf("queue: defer %s: %w", e.QueueID, err)
	}
	return nil
}

// ReleaseBody records that envelope e is final. It reports whether e was the
// last pending envelope of its message, in which case the caller deletes the
// body. Envelopes of single-domain messages are always the last.
func (q *Queue) ReleaseBody(ctx context.Context, e *envelope.Envelope) (last bool, err error) {
	if e.Parts <= 1 {
		return true, nil
	}
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return false, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	for range 20 {
		doms, rev, err := pendingDomains(ctx, kv, e.QueueID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		doms = slices.DeleteFunc(doms, func(d string) bool { return d == e.Domain })
		if len(doms) == 0 {
			err = kv.Delete(ctx, e.QueueID, jetstream.LastRevision(rev))
			if err == nil {
				return true, nil
			}
		} else {
			b, _ := json.Marshal(doms)
			_, err = kv.Update(ctx, e.QueueID, b, rev)
			if err == nil {
				return false, nil
			}
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return false, fmt.Errorf("queue: body refs %s: %w", e.QueueID, err)
		}
	}
	return false, fmt.Errorf("queue: body refs %s: too much contention", e.QueueID)
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// PartDone reports whether envelope e of a multi-domain message was already
// completed (a redelivery after a worker died between release and ack).
func (q *Queue) PartDone(ctx context.Context, e *envelope.Envelope) (bool, error) {
	if e.Parts <= 1 {
		return false, nil
	}
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return false, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	doms, _, err := pendingDomains(ctx, kv, e.QueueID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return !slices.Contains(doms, e.Domain), nil
}

// pendingDomains reads the recipient domains of message qid that are not
// final yet, with the entry's revision for a compare-and-set.
func pendingDomains(ctx context.Context, kv jetstream.KeyValue, qid string) ([]string, uint64, error) {
	ent, err := kv.Get(ctx, qid)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, err
	}
	if err != nil {
		return nil, 0, fmt.Errorf("queue: body refs %s: %w", qid, err)
	}
	var doms []string
	if err := json.Unmarshal(ent.Value(), &doms); err != nil {
		return nil, 0, fmt.Errorf("queue: body refs %s: %w", qid, err)
	}
	return doms, ent.Revision(), nil
}

// HeaderCarrier adapts NATS headers for OpenTelemetry propagation.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key.
func (h HeaderCarrier) Get(key string) string { return nats.Header(h).Get(key) }

// Set sets key.
func (h HeaderCarrier) Set(key, value string) { nats.Header(h).Set(key, value) }

// Keys lists the keys.
func (h HeaderCarrier) Keys() []string {
	out := make([]string, 0, len(h))
	for k := range h {
		out = append(out, k)
	}
	return out
}
