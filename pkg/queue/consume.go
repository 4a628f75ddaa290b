package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// Job is one envelope handed to a worker. Exactly one of Ack, Nak or Term
// ends it; until then the worker calls InProgress during long sends.
type Job struct {
	msg jetstream.Msg
	q   *Queue
	// Env is nil when the message could not be decoded (DecodeErr says why).
	Env       *envelope.Envelope
	DecodeErr error
	// Delivered counts deliveries of this message by the consumer (1 the first time).
	Delivered uint64
	// Seq is the stream sequence of this copy (unique, used to dedupe its successors).
	Seq     uint64
	Subject string
}

// Context returns ctx carrying the trace context from the message headers.
func (j *Job) Context(ctx context.Context) context.Context {
	return j.q.cfg.Propagator.Extract(ctx, HeaderCarrier(j.msg.Headers()))
}

// Ack ends the job: the envelope leaves the ready queue. The ack is not
// confirmed by the server: if it is lost, the envelope is redelivered after
// the ack wait, and the worker recognises a completed one (its body is gone,
// or its domain is no longer pending) and drops it; a waited-for ack would
// end in the same redelivery, one round trip later.
func (j *Job) Ack(context.Context) error { return j.msg.Ack() }

// AckSync acks and waits until the server has stored the ack.
func (j *Job) AckSync(ctx context.Context) error { return j.msg.DoubleAck(ctx) }

// Nak returns the job to the queue for another worker after delay.
func (j *Job) Nak(delay time.Duration) error {
	if delay <= 0 {
		return j.msg.Nak()
	}
	return j.msg.NakWithDelay(delay)
}

// Term drops a poison message (one that no worker can ever process).
func (j *Job) Term(reason string) error { return j.msg.TermWithReason(reason) }

// InProgress extends the ack deadline.
func (j *Job) InProgress() error { return j.msg.InProgress() }

// Key is a dedupe key for what this job publishes next.
func (j *Job) Key() string { return strconv.FormatUint(j.Seq, 10) }

// Header returns the message headers.
func (j *Job) Header() nats.Header { return j.msg.Headers() }

// Consumer reads ready envelopes.
type Consumer struct {
	q    *Queue
	cons jetstream.Consumer
}

// Consumer binds to the workers' durable consumer (created by Bootstrap).
// It also starts, once per Queue, the fan-out of accept records (see
// fanOut) on the accepts consumer: whoever consumes envelopes also makes
// the envelopes of multi-domain messages ready. It stops when the Queue is
// closed.
func (q *Queue) Consumer(ctx context.Context) (*Consumer, error) {
	c, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.Consumer)
	if err != nil {
		return nil, fmt.Errorf("queue: consumer %s on %s: %w (run the bootstrap first)", q.cfg.Consumer, q.cfg.Stream, err)
	}
	if err := q.startFanOut(ctx); err != nil {
		return nil, err
	}
	return &Consumer{q: q, cons: c}, nil
}

func (q *Queue) startFanOut(ctx context.Context) error {
	q.fanMu.Lock()
	defer q.fanMu.Unlock()
	if q.fanout != nil {
		return nil
	}
	c, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.AcceptConsumer)
	if err != nil {
		return fmt.Errorf("queue: consumer %s on %s: %w (run the bootstrap first)", q.cfg.AcceptConsumer, q.cfg.Stream, err)
	}
	dc, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.DeferConsumer)
	if err != nil {
		return fmt.Errorf("queue: consumer %s on %s: %w (run the bootstrap first)", q.cfg.DeferConsumer, q.cfg.Stream, err)
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	}
	cc, err := c.Consume(q.fanOut, jetstream.PullMaxMessages(64))
	if err != nil {
		return fmt.Errorf("queue: consume %s: %w", q.cfg.AcceptConsumer, err)
	}
	mc, err := dc.Consume(func(m jetstream.Msg) { q.moveDue(st, m) }, jetstream.PullMaxMessages(256))
	if err != nil {
		cc.Stop()
		return fmt.Errorf("queue: consume %s: %w", q.cfg.DeferConsumer, err)
	}
	q.fanout, q.mover = cc, mc
	return nil
}

// moveDue makes one deferred envelope ready when it is due. The deferrals
// consumer hands every deferred envelope to some worker's mover; one not
// yet due goes back with a nak delayed until its NextAttempt (the server
// keeps the timer, durably, in the consumer's state), one that is due is
// published to its ready subject and then acked. It is idempotent: the
// ready copy's Nats-Msg-Id is derived from the deferred copy's sequence, so
// a redelivery after a lost ack is dropped as a duplicate.
//
// A deferred copy that is not the last on its subject was replaced by a
// later Defer of the same envelope and is dropped (what a schedule's
// implicit roll-up did, without roll-ups on the stream).
func (q *Queue) moveDue(st jetstream.Stream, m jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.PublishWait)
	defer cancel()
	md, err := m.Metadata()
	if err != nil {
		_ = m.NakWithDelay(time.Second)
		return
	}
	e, err := envelope.Unmarshal(m.Data())
	if err != nil {
		_ = m.TermWithReason("undecodable deferred envelope: " + err.Error())
		return
	}
	last, err := st.GetLastMsgForSubject(ctx, m.Subject())
	switch {
	case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
		_ = m.NakWithDelay(time.Second)
		return
	case err == nil && last.Sequence > md.Sequence.Stream:
		_ = m.DoubleAck(ctx) // replaced by a later deferral of the same envelope
		return
	}
	if wait := time.Until(e.NextAttempt); wait > 0 {
		_ = m.NakWithDelay(wait)
		return
	}
	pm := readyCopy(m, e.Domain, m.Data(), msgID(e)+".u"+strconv.FormatUint(md.Sequence.Stream, 10))
	if _, err := q.js.PublishMsg(ctx, pm); err != nil {
		_ = m.NakWithDelay(time.Second)
		return
	}
	// The ready copy must be on disk before the deferred one goes.
	q.ackWhenDurable(ctx, m)
}

// readyCopy is a message to domain's ready subject with data, m's headers
// but NATS's own (the trace context goes on), and the message id id.
func readyCopy(m jetstream.Msg, domain string, data []byte, id string) *nats.Msg {
	pm := nats.NewMsg(ReadySubject(domain))
	pm.Data = data
	for k, vs := range m.Headers() {
		if !strings.HasPrefix(k, "Nats-") {
			pm.Header[k] = vs
		}
	}
	pm.Header.Set(jetstream.MsgIDHeader, id)
	return pm
}

// ackWhenDurable acks m once what was published for it is on disk
// (LocalStore), and has it redelivered in a second if that fails.
// Unconfirmed, a lost ack redelivers m: handled again, idempotently, but a
// round of work for nothing.
func (q *Queue) ackWhenDurable(ctx context.Context, m jetstream.Msg) {
	if err := q.durable(ctx); err != nil {
		_ = m.NakWithDelay(time.Second)
		return
	}
	_ = m.DoubleAck(ctx)
}

// fanOut publishes the envelopes of one accept record to their ready
// subjects and then acks the record. It is idempotent, so a record
// redelivered after a crash, a cut connection or a lost ack is fanned out
// again without a second copy of any domain:
//
//   - the refs entry (pending domains) is created before any envelope is
//     published, so no release can find it missing while domains are
//     pending; a redelivered record whose refs entry is gone (deleted when
//     the last domain was final) is done and only acked; one whose entry is
//     live publishes only the domains still pending;
//   - every envelope carries the same Nats-Msg-Id on every attempt
//     (msgID: qid.domain.nonce), so JetStream drops the copies an earlier attempt stored
//     within the dedupe window (twice the ack wait, the redelivery delay);
//   - the record is acked (and the ack confirmed) only after every PubAck.
//
// A failure leaves the record for a redelivery (nak with a pause).
func (q *Queue) fanOut(m jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.PublishWait)
	defer cancel()
	var rec acceptRecord
	if err := json.Unmarshal(m.Data(), &rec); err != nil || rec.QueueID == "" || len(rec.Envelopes) == 0 {
		// No worker can ever read it; it stays visible in the stream's
		// advisories (and the consumer's terminated count).
		_ = m.TermWithReason("undecodable accept record")
		return
	}
	if len(rec.Envelopes) > MaxEnvelopesPerMessage {
		_ = m.TermWithReason(fmt.Sprintf("accept record %s: %d envelopes, at most %d", rec.QueueID, len(rec.Envelopes), MaxEnvelopesPerMessage))
		return
	}
	if len(rec.Domains) > MaxEnvelopesPerMessage {
		_ = m.TermWithReason(fmt.Sprintf("accept part %s: %d domains, at most %d", rec.QueueID, len(rec.Domains), MaxEnvelopesPerMessage))
		return
	}
	envs := make([]*envelope.Envelope, len(rec.Envelopes))
	seen := make(map[string]bool, len(rec.Envelopes))
	for i, raw := range rec.Envelopes {
		e, err := envelope.Unmarshal(raw)
		if err == nil && (e.QueueID != rec.QueueID || seen[e.Domain] || (len(rec.Domains) > 0 && !slices.Contains(rec.Domains, e.Domain))) {
			err = fmt.Errorf("queue id %s or domain %s does not belong in it", e.QueueID, e.Domain)
		}
		if err != nil {
			_ = m.TermWithReason(fmt.Sprintf("accept record %s: envelope %d: %v", rec.QueueID, i, err))
			return
		}
		seen[e.Domain] = true
		envs[i] = e
	}
	redelivered := false
	if md, err := m.Metadata(); err == nil {
		redelivered = md.NumDelivered > 1
	}
	doms := rec.Domains
	if len(doms) == 0 {
		doms = domainsOf(envs)
	}
	pending, err := q.fanOutRefs(ctx, rec.QueueID, doms, envs, redelivered)
	if err != nil {
		_ = m.NakWithDelay(time.Second)
		return
	}
	futures := make([]jetstream.PubAckFuture, 0, len(pending))
	for _, e := range pending {
		f, err := q.js.PublishMsgAsync(readyCopy(m, e.Domain, rec.Envelopes[slices.Index(envs, e)], msgID(e)))
		if err != nil {
			_ = m.NakWithDelay(time.Second)
			return
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case <-f.Err():
			_ = m.NakWithDelay(time.Second)
			return
		case <-ctx.Done():
			_ = m.NakWithDelay(time.Second)
			return
		}
	}
	// The envelopes must be on disk before the record goes.
	q.ackWhenDurable(ctx, m)
}

// fanOutRefs makes sure the refs entry of message qid (its domains doms)
// exists and returns the envelopes of envs still to publish: all of them on
// a first delivery of a record (the first part of a message), those
// whose domain is still pending on a redelivery, none when the message is
// already complete.
func (q *Queue) fanOutRefs(ctx context.Context, qid string, doms []string, envs []*envelope.Envelope, redelivered bool) ([]*envelope.Envelope, error) {
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	if redelivered {
		// The last word on the key, a delete or purge marker included
		// (kv.Get hides those, and kv.Create writes over them).
		st, err := q.js.Stream(ctx, "KV_"+q.cfg.RefsBucket)
		if err != nil {
			return nil, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
		}
		raw, err := st.GetLastMsgForSubject(ctx, "$KV."+q.cfg.RefsBucket+"."+qid)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			// never created: a first attempt that stopped before it
		case err != nil:
			return nil, fmt.Errorf("queue: body refs %s: %w", qid, err)
		case raw.Header.Get("KV-Operation") != "":
			return nil, nil // deleted when the last domain was final: complete
		default:
			return pendingOf(raw.Data, envs, qid)
		}
	}
	_, err = kv.Create(ctx, qid, domainsJSON(doms))
	if errors.Is(err, jetstream.ErrKeyExists) {
		ent, gerr := kv.Get(ctx, qid)
		if gerr != nil {
			return nil, fmt.Errorf("queue: body refs %s: %w", qid, gerr)
		}
		return pendingOf(ent.Value(), envs, qid)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: body refs %s: %w", qid, err)
	}
	return envs, nil
}

func pendingOf(refs []byte, envs []*envelope.Envelope, qid string) ([]*envelope.Envelope, error) {
	var doms []string
	if err := json.Unmarshal(refs, &doms); err != nil {
		return nil, fmt.Errorf("queue: body refs %s: %w", qid, err)
	}
	var out []*envelope.Envelope
	for _, e := range envs {
		if slices.Contains(doms, e.Domain) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Fetch asks for up to n jobs, waiting at most wait, and calls fn for each
// as it arrives. It returns when the batch is complete or wait has passed.
func (c *Consumer) Fetch(n int, wait time.Duration, fn func(*Job)) error {
	batch, err := c.cons.Fetch(n, jetstream.FetchMaxWait(wait))
	if err != nil {
		return fmt.Errorf("queue: fetch: %w", err)
	}
	for m := range batch.Messages() {
		j := &Job{msg: m, q: c.q, Subject: m.Subject()}
		if md, err := m.Metadata(); err == nil {
			j.Delivered = md.NumDelivered
			j.Seq = md.Sequence.Stream
		}
		j.Env, j.DecodeErr = envelope.Unmarshal(m.Data())
		fn(j)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		return fmt.Errorf("queue: fetch: %w", err)
	}
	return nil
}
