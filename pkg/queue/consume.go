package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
func (q *Queue) Consumer(ctx context.Context) (*Consumer, error) {
	c, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.Consumer)
	if err != nil {
		return nil, fmt.Errorf("queue: consumer %s on %s: %w (run the bootstrap first)", q.cfg.Consumer, q.cfg.Stream, err)
	}
	return &Consumer{q: q, cons: c}, nil
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
