// Package queue is mailfwd's durable queue on NATS JetStream.
//
// Layout (one stream, work-queue retention):
//
//	mail.ready.<domain>              envelopes due now; the "workers" consumer reads these
//	mail.deferred.<domain>.<qid>     waiting for a retry; the "deferrals" consumer hands
//	                                 them to the workers, who make them ready when due
//	mail.held.<domain>.<qid>         moved aside while an operator holds the domain
//	mail.accept.<qid>                one accepted message with several recipient domains:
//	                                 every envelope in one record, fanned out to
//	                                 mail.ready.<domain> by the "accepts" consumer
//
// <domain> is the recipient domain as reversed A-labels (address.SubjectToken),
// so "mail.ready.com.example.>" selects example.com's subdomains. Deferred
// mail waits in the stream and in its own consumer, not in the workers':
// it takes no worker capacity and is not counted in the "workers"
// consumer's pending work (what autoscaling reads). Bodies shared by
// several envelopes are reference-counted in a KV bucket.
//
// The stream refuses roll-up headers, purges, message TTLs and schedules
// (checkStreamSafe), so a daemon's right to publish is never a right to
// remove or multiply mail (docs/nats-security.md).
package queue

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/syncfs"
)

// Subject prefixes.
const (
	ReadyPrefix    = "mail.ready"
	DeferredPrefix = "mail.deferred"
	HeldPrefix     = "mail.held"
	AcceptPrefix   = "mail.accept"
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
	Logger     *slog.Logger
	ClientName string // shown in NATS monitoring
	Stream     string // default "MAIL"
	Consumer   string // default "workers"
	// AcceptConsumer fans accept records out to the ready subjects.
	AcceptConsumer string        // default "accepts"
	RefsBucket     string        // default "MAIL_REFS"
	HoldsBucket    string        // default "MAIL_HOLDS"
	Replicas       int           // default 1
	AckWait        time.Duration // default 2m; workers heartbeat with InProgress during long sends
	// MaxAckPending bounds the messages handed out and not yet acked across all workers.
	MaxAckPending int           // default 20000
	PublishWait   time.Duration // how long Enqueue waits for PubAcks, default 10s
	Propagator    propagation.TextMapPropagator
	// LocalStore is the store_dir of the nats-server this queue talks to,
	// when that server runs on this machine with one replica and its
	// default sync interval (the single-node setup). With it, every write
	// that must survive a crash of the machine (an accepted message, a
	// deferral, a move to another state, a fan-out) is followed by a flush
	// of the filesystem holding LocalStore (syncfs(2), group-committed with
	// every concurrent caller) before the call returns: Postfix's
	// durability (on disk before the 250), at one flush per group of
	// messages instead of nats-server's sync_interval: always fsync per
	// write, one at a time.
	//
	// Why it is enough: for a stream with one replica nats-server writes
	// each message to its block file with write(2) before it sends the
	// PubAck (its file store flushes in place when the stream has no raft
	// log; see nats-server's stream.go, AsyncFlush only with replicas > 1),
	// so a flush started after the PubAck finds the message in the page
	// cache and puts it on disk. Bootstrap refuses a replicated or
	// async-persist stream with LocalStore, and CheckLocalStore that the
	// directory holds the stream.
	LocalStore string
	// EventsStream holds the delivery and operator events (default
	// "EVENTS"); EventsMaxAge and EventsMaxBytes are its retention
	// (defaults 7 days, 1 GiB; the oldest events go first).
	EventsStream   string
	EventsMaxAge   time.Duration
	EventsMaxBytes int64

	// DeferConsumer hands deferred envelopes to the workers' mover, which
	// makes each ready when due; default "deferrals".
	DeferConsumer string
}

func (c *Config) setDefaults() {
	c.Stream = cmp.Or(c.Stream, "MAIL")
	c.Consumer = cmp.Or(c.Consumer, "workers")
	c.AcceptConsumer = cmp.Or(c.AcceptConsumer, "accepts")
	c.DeferConsumer = cmp.Or(c.DeferConsumer, "deferrals")
	c.RefsBucket = cmp.Or(c.RefsBucket, "MAIL_REFS")
	c.HoldsBucket = cmp.Or(c.HoldsBucket, "MAIL_HOLDS")
	c.Replicas = cmp.Or(c.Replicas, 1)
	c.AckWait = cmp.Or(c.AckWait, 2*time.Minute)
	c.MaxAckPending = cmp.Or(c.MaxAckPending, 20000)
	c.PublishWait = cmp.Or(c.PublishWait, 10*time.Second)
	c.EventsStream = cmp.Or(c.EventsStream, events.DefaultStream)
	if c.Propagator == nil {
		c.Propagator = propagation.TraceContext{}
	}
}

// Queue is a connection to the mail stream.
type Queue struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	bodies BodyDeleter // optional: removes the body of an accept that failed

	fanMu  sync.Mutex
	fanout jetstream.ConsumeContext // the accept records' fan-out, once started
	mover  jetstream.ConsumeContext // the deferred envelopes' mover (moveDue)

	// rawInline: envelopes with an inline body are written in the raw
	// form (every worker reads it); else as base64 JSON.
	rawInline atomic.Bool

	// flush is LocalStore's group commit; nil without LocalStore. Its
	// directory stays open for the process's life (a fan-out still running
	// after Close may flush).
	flush *syncfs.Group
}

// BodyDeleter removes a stored message body (blob.Store has this method).
type BodyDeleter interface {
	Delete(ctx context.Context, key string) error
}

// DeleteBodiesOfFailedAccepts makes Enqueue remove the stored body of a
// message whose envelopes were certainly not queued (the ingress answers
// 4xx and the client sends it again under a new queue id). When the outcome
// is unknown (the commit's PubAck never came), the body stays: the envelopes
// may be stored, and the orphan sweeper removes it later if they are not.
func (q *Queue) DeleteBodiesOfFailedAccepts(b BodyDeleter) { q.bodies = b }

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
	q := &Queue{cfg: cfg, nc: nc, js: js}
	if cfg.LocalStore != "" {
		if err := q.openLocalStore(); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return q, nil
}

// Close drains and closes the connection.
func (q *Queue) Close() {
	q.fanMu.Lock()
	if q.fanout != nil {
		q.fanout.Stop()
	}
	if q.mover != nil {
		q.mover.Stop()
	}
	q.fanMu.Unlock()
	if err := q.nc.Drain(); err != nil {
		q.nc.Close()
	}
}

// ErrUnsafeStream marks a Bootstrap refusal: the existing stream's settings
// would lose mail (or lower its replicas). Retrying does not help; an
// operator must fix the stream or the flags.
var ErrUnsafeStream = errors.New("unsafe stream settings")

// DedupeWindow is how long the stream remembers a message id: longer than
// the ack wait, so that a publish retried after a redelivery (one ack wait
// later, by another worker) is still recognised as a duplicate.
func DedupeWindow(ackWait time.Duration) time.Duration {
	return max(2*ackWait, 2*time.Minute)
}

// Bootstrap creates or updates the stream, the workers' consumer and the
// KV buckets. It is idempotent and safe from several pods; what already has
// the wanted configuration is left untouched (no write on every pod start).
// It refuses an existing stream whose limits would make JetStream drop
// queued mail on its own, and never lowers an existing stream's replicas.
func (q *Queue) Bootstrap(ctx context.Context) error {
	x := q.Expected()
	want := x.Stream
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if _, err := q.js.CreateStream(ctx, want); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("queue: create stream %s: %w", q.cfg.Stream, err)
		}
	case err != nil:
		return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	default:
		have := st.CachedInfo().Config
		if err := checkStreamKeepsMail(have); err != nil {
			return err
		}
		if bad := checkStreamSafe(have); len(bad) > 0 {
			return unsafeStreamError(have, bad)
		}
		if have.Replicas > want.Replicas {
			return fmt.Errorf("queue: %w: stream %s has %d replicas; refusing to lower them to %d (set --replicas %d, "+
				"or lower them deliberately with `nats stream edit %s --replicas N`)",
				ErrUnsafeStream, have.Name, have.Replicas, want.Replicas, have.Replicas, have.Name)
		}
		if !streamConfigured(have, want) {
			if _, err := q.js.UpdateStream(ctx, want); err != nil {
				return fmt.Errorf("queue: update stream %s: %w", q.cfg.Stream, err)
			}
		}
	}
	// Accept records have their own consumer: a worker of an older release
	// never sees one (it could not decode it), and a record waits in the
	// stream until a worker that fans it out runs.
	for _, want := range []jetstream.ConsumerConfig{x.Consumer, x.AcceptConsumer, x.DeferConsumer} {
		if c, err := q.js.Consumer(ctx, q.cfg.Stream, want.Durable); err != nil || !consumerConfigured(c.CachedInfo().Config, want) {
			if _, err := q.js.CreateOrUpdateConsumer(ctx, q.cfg.Stream, want); err != nil {
				return fmt.Errorf("queue: consumer %s: %w", want.Durable, err)
			}
		}
	}
	for _, kv := range x.Buckets {
		if b, err := q.js.KeyValue(ctx, kv.Bucket); err == nil {
			if s, err := b.Status(ctx); err == nil {
				if r := kvReplicas(s); r > kv.Replicas {
					return fmt.Errorf("queue: %w: kv %s has %d replicas; refusing to lower them to %d (set --replicas %d)",
						ErrUnsafeStream, kv.Bucket, r, kv.Replicas, r)
				}
			}
		} else if _, err := q.js.CreateOrUpdateKeyValue(ctx, kv); err != nil {
			return fmt.Errorf("queue: kv %s: %w", kv.Bucket, err)
		}
		if kv.Bucket == q.cfg.RefsBucket || kv.Bucket == shaping.BucketName || kv.Bucket == shaping.QuotaBucketName {
			if err := q.withoutRollup(ctx, kv.Bucket); err != nil {
				return err
			}
		}
	}
	if err := q.BootstrapEvents(ctx); err != nil {
		return err
	}
	return q.CheckLocalStore(ctx)
}

// withoutRollup turns roll-ups off on a bucket the workers write (a KV
// bucket is created with them on): one roll-up on the refs would remove
// every multi-domain message's pending domains, one on the shaping state
// every destination's slots and suspensions, one on the quotas every
// sender's count. Nothing mailfwd does needs them
// (it deletes keys; it never purges them). Turning them off is always
// allowed, so a bucket of an earlier release is fixed in place.
func (q *Queue) withoutRollup(ctx context.Context, bucket string) error {
	name := "KV_" + bucket
	st, err := q.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("queue: kv %s: %w", bucket, err)
	}
	c := st.CachedInfo().Config
	if refsSafe(c) {
		return nil
	}
	// nats-server keeps roll-ups on while the stream leaves delete markers
	// for expired keys (a bucket made with LimitMarkerTTL). The shaping
	// state needs per-key TTLs (AllowMsgTTL, kept) but not the markers: a
	// suspension carries its end in its value.
	c.AllowRollup, c.SubjectDeleteMarkerTTL = false, 0
	if _, err := q.js.UpdateStream(ctx, c); err != nil {
		return fmt.Errorf("queue: kv %s: turn roll-ups off: %w", bucket, err)
	}
	return nil
}

// unsafeStreamError refuses a stream whose settings let a publisher remove
// or multiply mail, and says how to fix it: an edit where nats-server
// allows one, else the migration to a new stream (nats-server can turn
// neither schedules nor message TTLs off again).
func unsafeStreamError(c jetstream.StreamConfig, bad []string) error {
	fix := fmt.Sprintf("fix it with `nats stream edit %s --no-allow-rollup --deny-purge`", c.Name)
	if c.AllowMsgSchedules || c.AllowMsgTTL {
		fix = fmt.Sprintf("nats-server cannot turn schedules or message TTLs off: move the queue to a new stream with "+
			"`mailfwdctl bootstrap --migrate` (stream %s made by a release before the deferrals consumer; see docs/nats-security.md)", c.Name)
	}
	return fmt.Errorf("queue: %w: stream %s lets any publisher remove or multiply mail: %s; %s",
		ErrUnsafeStream, c.Name, strings.Join(bad, "; "), fix)
}

func kvReplicas(s jetstream.KeyValueStatus) int {
	if b, ok := s.(*jetstream.KeyValueBucketStatus); ok {
		return b.StreamInfo().Config.Replicas
	}
	return 0
}

// checkStreamKeepsMail refuses stream settings under which JetStream removes
// envelopes by itself (an age limit, a size or count limit that discards
// the oldest, retention other than work queue): mail that was answered 250
// would vanish without a trace, no DSN, no log line.
func checkStreamKeepsMail(c jetstream.StreamConfig) error {
	var bad []string
	if c.Retention != jetstream.WorkQueuePolicy {
		bad = append(bad, fmt.Sprintf("retention %s (want workqueue)", c.Retention))
	}
	if c.MaxAge > 0 {
		bad = append(bad, fmt.Sprintf("max_age %s deletes queued mail older than that", c.MaxAge))
	}
	discardsOld := c.Discard != jetstream.DiscardNew
	if c.MaxMsgs > 0 && discardsOld {
		bad = append(bad, fmt.Sprintf("max_msgs %d with discard old deletes the oldest mail when full", c.MaxMsgs))
	}
	if c.MaxBytes > 0 && discardsOld {
		bad = append(bad, fmt.Sprintf("max_bytes %d with discard old deletes the oldest mail when full", c.MaxBytes))
	}
	if c.MaxMsgsPerSubject > 0 && !(c.Discard == jetstream.DiscardNew && c.DiscardNewPerSubject) {
		bad = append(bad, fmt.Sprintf("max_msgs_per_subject %d deletes the oldest mail of a domain", c.MaxMsgsPerSubject))
	}
	if c.Sealed {
		bad = append(bad, "sealed (refuses all new mail)")
	}
	if c.NoAck {
		bad = append(bad, "no_ack (publishes are never confirmed)")
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("queue: %w: stream %s would lose or refuse mail: %s; fix it with `nats stream edit %s` "+
		"(or remove the stream and let the bootstrap create it)", ErrUnsafeStream, c.Name, strings.Join(bad, "; "), c.Name)
}

// DurabilityWarning says, for a stream with one replica, what a 250 does not
// promise: JetStream answers the PubAck before the write reaches the disk
// unless nats-server syncs every write, so a crash of the NATS node (not
// just of nats-server) can lose acknowledged mail. It is empty for
// replicated streams, whose PubAck waits for a quorum of nodes.
func (q *Queue) DurabilityWarning(ctx context.Context) string {
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil || st.CachedInfo().Config.Replicas > 1 {
		return ""
	}
	return fmt.Sprintf("stream %s has 1 replica: accepted mail survives a crash of the NATS node only if nats-server "+
		"fsyncs every write (jetstream { sync_interval: always }); its default syncs every 2 minutes. "+
		"Run a 3-node cluster with --replicas 3, or set sync_interval: always", q.cfg.Stream)
}

// Check reports whether the queue can take mail now (readiness).
func (q *Queue) Check(ctx context.Context) error {
	if !q.nc.IsConnected() {
		return fmt.Errorf("queue: not connected to NATS (%s)", q.nc.Status())
	}
	if q.flush != nil {
		if err := q.flush.Err(); err != nil {
			return fmt.Errorf("queue: flush of the local NATS store %s failed; no mail is accepted until restarted: %w", q.cfg.LocalStore, err)
		}
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

// MaxEnvelopesPerMessage is how many envelopes (recipient domains) one
// message may have: nats-server's default limit of messages in one atomic
// batch. The ingress's recipient limit keeps messages far below it.
const MaxEnvelopesPerMessage = 1000

// msgID is the dedupe id of the first copy of envelope e, and the stem of
// every later copy's. With the envelope's nonce in it (set by Enqueue), no
// one who cannot read the envelope can publish first under its id.
func msgID(e *envelope.Envelope) string {
	id := e.QueueID + "." + address.SubjectToken(e.Domain)
	if e.Nonce != "" {
		id += "." + e.Nonce
	}
	return id
}

// newNonce returns 16 random hex digits (envelope.Envelope.Nonce).
func newNonce() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Enqueue stores every envelope of one message, all or nothing, and returns
// nil only when JetStream has stored every one of them (and, with sync
// always or replicas, made them durable). A message with one recipient
// domain is one envelope, one publish. A message with several is one
// accept record carrying every envelope (one publish, one write, like a
// single-domain message), which the workers' accepts consumer fans out to
// the per-domain ready subjects (see fanOut); a record too large for one
// NATS message is sent as one JetStream atomic batch of its envelopes
// instead. Either way a failed accept (answered 4xx, sent again by the
// client under a new queue id) never leaves a domain that would be
// delivered twice. On a failure that certainly stored nothing, Enqueue
// also removes what it stored besides (the refs entry of a batch) and (see
// DeleteBodiesOfFailedAccepts) the body. When the outcome is unknown (no
// PubAck within PublishWait), the record or batch is sent again with the
// same message ids: JetStream's dedupe then answers for the first one.
// Trace context from ctx travels in the headers.
func (q *Queue) Enqueue(ctx context.Context, envs []*envelope.Envelope) error {
	if len(envs) == 0 {
		return errors.New("queue: enqueue of a message without envelopes")
	}
	if len(envs) > MaxEnvelopesPerMessage {
		return q.failedAccept(ctx, envs, false, fmt.Errorf("queue: %d recipient domains in message %s; at most %d can be queued together",
			len(envs), envs[0].QueueID, MaxEnvelopesPerMessage))
	}
	nonce := newNonce()
	for _, e := range envs {
		if e.Nonce == "" {
			e.Nonce = nonce
		}
	}
	msgs := make([]*nats.Msg, len(envs))
	for i, e := range envs {
		m, err := q.newMsg(ctx, ReadySubject(e.Domain), e)
		if err != nil {
			return q.failedAccept(ctx, envs, false, err)
		}
		m.Header.Set(jetstream.MsgIDHeader, msgID(e))
		// Checked before anything is sent: a batch cut short by the client
		// would hold one of the stream's in-flight batch slots until the
		// server's batch timeout.
		if size := len(m.Data) + headerBytes(m.Header) + batchHeaderBytes; int64(size) > q.nc.MaxPayload() {
			return q.failedAccept(ctx, envs, false, fmt.Errorf("queue: envelope %s for %s is %d bytes, over the server's max_payload %d",
				e.QueueID, e.Domain, size, q.nc.MaxPayload()))
		}
		msgs[i] = m
	}
	if len(envs) == 1 {
		unknown, err := q.publishAtomically(ctx, msgs)
		if err != nil {
			return q.failedAccept(ctx, envs, unknown, err)
		}
		return q.durable(ctx)
	}
	if rec := q.acceptRecord(ctx, envs, msgs); rec != nil {
		unknown, err := q.publishAtomically(ctx, []*nats.Msg{rec})
		if err != nil {
			return q.failedAccept(ctx, envs, unknown, err)
		}
		return q.durable(ctx)
	}
	parts, err := q.acceptParts(ctx, envs, msgs)
	if err != nil {
		return q.failedAccept(ctx, envs, false, err)
	}
	unknown, err := q.publishAtomically(ctx, parts)
	if err != nil {
		return q.failedAccept(ctx, envs, unknown, err)
	}
	return q.durable(ctx)
}

func domainsOf(envs []*envelope.Envelope) []string {
	doms := make([]string, len(envs))
	for i, e := range envs {
		doms[i] = e.Domain
	}
	return doms
}

func domainsJSON(doms []string) []byte {
	b, _ := json.Marshal(doms)
	return b
}

// failedAccept removes the body of a failed Enqueue (see
// DeleteBodiesOfFailedAccepts), unless the envelopes may have been stored
// after all (unknown): then it stays for the deliveries (or, if nothing was
// stored, for the orphan sweeper).
func (q *Queue) failedAccept(ctx context.Context, envs []*envelope.Envelope, unknown bool, err error) error {
	if unknown || len(envs) == 0 {
		return err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	e := envs[0]
	if q.bodies != nil && e.BodyKey != "" {
		if derr := q.bodies.Delete(cctx, e.BodyKey); derr != nil {
			return errors.Join(err, fmt.Errorf("queue: remove body of failed accept %s: %w", e.QueueID, derr))
		}
	}
	return err
}

// AcceptSubject is where the accept record of message qid waits for its
// fan-out.
func AcceptSubject(qid string) string { return AcceptPrefix + "." + qid }

// acceptRecord is every envelope of one multi-domain message in one stream
// message. qid and body are at the top, as in an envelope, so the orphan
// sweeper sees the body and refs a pending record refers to.
//
// A message whose record would not fit in one NATS message is queued as
// one part record per recipient domain, all in one atomic batch: each
// carries one envelope and the message's full list of domains (Domains),
// from which the fan-out creates the refs entry. So the ingress never
// writes the refs bucket (it has no right to: docs/nats-security.md).
type acceptRecord struct {
	QueueID   string            `json:"qid"`
	BodyKey   string            `json:"body,omitempty"`
	Envelopes []json.RawMessage `json:"envelopes"`
	Domains   []string          `json:"domains,omitempty"` // part records: every domain of the message
}

// acceptRecord builds the record of envs (msgs are their encoded
// envelopes), or returns nil if it would not fit in one NATS message.
func (q *Queue) acceptRecord(ctx context.Context, envs []*envelope.Envelope, msgs []*nats.Msg) *nats.Msg {
	r := acceptRecord{QueueID: envs[0].QueueID, BodyKey: envs[0].BodyKey, Envelopes: make([]json.RawMessage, len(msgs))}
	for i, m := range msgs {
		r.Envelopes[i] = m.Data
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil
	}
	m := nats.NewMsg(AcceptSubject(r.QueueID))
	m.Data = b
	q.cfg.Propagator.Inject(ctx, HeaderCarrier(m.Header))
	m.Header.Set(jetstream.MsgIDHeader, r.QueueID+".accept."+envs[0].Nonce)
	if int64(len(m.Data)+headerBytes(m.Header)) > q.nc.MaxPayload() {
		return nil
	}
	return m
}

// acceptParts builds the part records of a message too large for one
// accept record (see acceptRecord), one per envelope (msgs are their
// encoded envelopes), on mail.accept.<qid>.<domain>.
func (q *Queue) acceptParts(ctx context.Context, envs []*envelope.Envelope, msgs []*nats.Msg) ([]*nats.Msg, error) {
	doms := domainsOf(envs)
	parts := make([]*nats.Msg, len(envs))
	for i, e := range envs {
		b, err := json.Marshal(acceptRecord{QueueID: e.QueueID, BodyKey: e.BodyKey, Envelopes: []json.RawMessage{msgs[i].Data}, Domains: doms})
		if err != nil {
			return nil, fmt.Errorf("queue: encode accept part %s/%s: %w", e.QueueID, e.Domain, err)
		}
		m := nats.NewMsg(AcceptSubject(e.QueueID) + "." + address.SubjectToken(e.Domain))
		m.Data = b
		q.cfg.Propagator.Inject(ctx, HeaderCarrier(m.Header))
		m.Header.Set(jetstream.MsgIDHeader, msgID(e)+".part")
		if size := len(m.Data) + headerBytes(m.Header) + batchHeaderBytes; int64(size) > q.nc.MaxPayload() {
			return nil, fmt.Errorf("queue: accept part %s for %s is %d bytes, over the server's max_payload %d",
				e.QueueID, e.Domain, size, q.nc.MaxPayload())
		}
		parts[i] = m
	}
	return parts, nil
}

// Batch headers (ADR-50); the stream needs AllowAtomicPublish.
const (
	hdrBatchID       = "Nats-Batch-Id"
	hdrBatchSeq      = "Nats-Batch-Sequence"
	hdrBatchCommit   = "Nats-Batch-Commit"
	batchHeaderBytes = 128 // room for the batch headers in the size check
)

// JetStream error codes that say the batch was not stored and trying again
// may succeed.
const (
	errCodeAtomicDisabled     = 10174
	errCodeBatchIncomplete    = 10176
	errCodeBatchDuplicate     = 10201
	errCodeBatchTooManyFlight = 10210
	errCodeStreamTooManyReqs  = 10077
)

func headerBytes(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

type pubAckResponse struct {
	Error  *jetstream.APIError `json:"error,omitempty"`
	Stream string              `json:"stream"`
	Seq    uint64              `json:"seq"`
	Count  int                 `json:"count,omitempty"`
}

// publishAtomically publishes msgs as one atomic batch (one message: a plain
// publish) and waits for the PubAck, trying again within PublishWait while
// the server says nothing was stored or may have been. unknown reports, on
// error, that a copy may have been stored anyway.
func (q *Queue) publishAtomically(ctx context.Context, msgs []*nats.Msg) (unknown bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.PublishWait)
	defer cancel()
	wait := 10 * time.Millisecond
	incomplete := 0
	for {
		// Half the budget per attempt: an unanswered commit (a connection
		// cut, a leader change) leaves time to send the batch again.
		actx, acancel := context.WithTimeout(ctx, q.cfg.PublishWait/2)
		res, perr := q.publishBatchOnce(actx, msgs)
		acancel()
		switch {
		case perr == nil && res.Error == nil:
			return false, nil
		case perr == nil && res.Error.ErrorCode == errCodeBatchDuplicate:
			// Every message id of a batch is stored together: this one was
			// committed by an earlier attempt whose PubAck was lost.
			return false, nil
		case perr == nil && res.Error.ErrorCode == errCodeAtomicDisabled:
			return unknown, fmt.Errorf("queue: publish %s: %w (stream %s predates atomic batches: run the bootstrap, "+
				"e.g. mailfwdctl bootstrap)", msgs[0].Subject, res.Error, q.cfg.Stream)
		case perr == nil && !retryableBatchError(res.Error.ErrorCode):
			return unknown, fmt.Errorf("queue: publish %s: %w", msgs[0].Subject, res.Error)
		case perr == nil && res.Error.ErrorCode == errCodeBatchIncomplete && incomplete >= maxIncompleteBatches:
			// A message lost on its way (a leader change) heals with a resend;
			// one the stream refuses every time (its size limit) does not.
			return unknown, fmt.Errorf("queue: publish %s: %w (the stream refused a message of the batch %d times)",
				msgs[0].Subject, res.Error, incomplete+1)
		case perr != nil && !errors.Is(perr, nats.ErrNoResponders) && !errors.Is(perr, errNotSent):
			// No answer: the batch may or may not be stored.
			unknown = true
			err = perr
		case perr != nil:
			err = perr // no stream listening, or the batch never left: nothing was stored
		default:
			err = res.Error
			if res.Error.ErrorCode == errCodeBatchIncomplete {
				incomplete++
			}
		}
		if ctx.Err() != nil {
			return unknown, fmt.Errorf("queue: no publish ack for %s within %s: %w", msgs[0].Subject, q.cfg.PublishWait, err)
		}
		select {
		case <-ctx.Done():
			return unknown, fmt.Errorf("queue: no publish ack for %s within %s: %w", msgs[0].Subject, q.cfg.PublishWait, err)
		case <-time.After(wait/2 + rand.N(wait)):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// maxIncompleteBatches is how many times a batch the server found
// incomplete is sent again before the accept fails for good.
const maxIncompleteBatches = 3

// errNotSent: a batch message could not be sent, so no commit followed and
// nothing of the batch is stored.
var errNotSent = errors.New("batch not sent")

func retryableBatchError(code jetstream.ErrorCode) bool {
	switch code {
	case errCodeBatchIncomplete, errCodeBatchTooManyFlight, errCodeStreamTooManyReqs:
		return true
	}
	return false
}

// publishBatchOnce sends msgs with fresh batch headers, the last one as the
// commit, and returns the server's answer to the commit.
func (q *Queue) publishBatchOnce(ctx context.Context, msgs []*nats.Msg) (*pubAckResponse, error) {
	var last *nats.Msg
	if len(msgs) == 1 {
		last = msgs[0]
		last.Header.Del(hdrBatchID)
		last.Header.Del(hdrBatchSeq)
		last.Header.Del(hdrBatchCommit)
	} else {
		id := envelope.NewQueueID()
		for i, m := range msgs {
			m.Header.Set(hdrBatchID, id)
			m.Header.Set(hdrBatchSeq, strconv.Itoa(i+1))
			if i == len(msgs)-1 {
				m.Header.Set(hdrBatchCommit, "1")
				last = m
				break
			}
			m.Header.Del(hdrBatchCommit)
			if err := q.nc.PublishMsg(m); err != nil {
				return nil, fmt.Errorf("%w: %w", errNotSent, err)
			}
		}
	}
	resp, err := q.nc.RequestMsgWithContext(ctx, last)
	if err != nil {
		return nil, err
	}
	var r pubAckResponse
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("queue: undecodable publish ack %q: %w", resp.Data, err)
	}
	if r.Error == nil && r.Stream == "" {
		return nil, fmt.Errorf("queue: publish ack without stream: %q", resp.Data)
	}
	return &r, nil
}

func (q *Queue) newMsg(ctx context.Context, subject string, e *envelope.Envelope) (*nats.Msg, error) {
	marshal := e.Marshal
	if e.Body != nil && !q.rawInline.Load() {
		marshal = e.MarshalBase64 // a worker may not read the raw form (WatchEnvelopeReaders)
	}
	b, err := marshal()
	if err != nil {
		return nil, fmt.Errorf("queue: encode envelope %s: %w", e.QueueID, err)
	}
	m := nats.NewMsg(subject)
	m.Data = b
	q.cfg.Propagator.Inject(ctx, HeaderCarrier(m.Header))
	return m, nil
}

// Defer parks e on its deferred subject until time at: the workers' mover
// (moveDue, on the deferrals consumer) makes it ready then. A later Defer
// of the same envelope replaces this one (the mover keeps only the last
// copy on the subject). The caller acks the current delivery only after
// Defer returned nil. dedupe identifies this deferral (the stream sequence
// of the copy being deferred): a retried Defer with the same key is not
// stored twice, and a later deferral of a new copy never collides.
//
// The deferred envelope is a plain message: the stream allows no
// schedules (see checkStreamSafe), so no publish right can multiply mail.
func (q *Queue) Defer(ctx context.Context, e *envelope.Envelope, at time.Time, dedupe string) error {
	e.NextAttempt = at
	m, err := q.newMsg(ctx, DeferredSubject(e.Domain, e.QueueID), e)
	if err != nil {
		return err
	}
	_, err = q.js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID(e)+".d"+dedupe))
	if err != nil {
		return fmt.Errorf("queue: defer %s: %w", e.QueueID, err)
	}
	return q.durable(ctx)
}

// ReleaseBody records that envelope e is final. It reports whether e was the
// last pending envelope of its message, in which case the caller deletes the
// body. Envelopes of single-domain messages are always the last.
//
// The pending domains are one KV entry updated by compare-and-set. Under
// contention (many domains of one message finishing together) a conflict is
// retried after a jittered, growing pause, for as long as ctx lasts: a
// give-up would hand the whole domain back for another delivery.
func (q *Queue) ReleaseBody(ctx context.Context, e *envelope.Envelope) (last bool, err error) {
	if e.Parts <= 1 {
		return true, nil
	}
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return false, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	pause := 2 * time.Millisecond
	for conflicts := 0; ; conflicts++ {
		doms, rev, err := pendingDomains(ctx, kv, e.QueueID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if !slices.Contains(doms, e.Domain) {
			return false, nil // released before (a redelivery); not the last now
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
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("queue: body refs %s: %d conflicting updates: %w", e.QueueID, conflicts+1, ctx.Err())
		case <-time.After(pause/2 + rand.N(pause)):
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
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
