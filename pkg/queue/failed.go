package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// FailedPrefix is where envelopes in the terminal failed state are kept:
// mail.failed.<domain>.<qid>, in the stream but off the workers' consumer,
// until an operator bounces, purges or requeues them (mailfwdctl queue).
const FailedPrefix = "mail.failed"

// FailedSubject is where a failed envelope is kept.
func FailedSubject(domain, qid string) string {
	return FailedPrefix + "." + address.SubjectToken(domain) + "." + qid
}

// payloadHeadroom is kept free below the server's max_payload for headers.
const payloadHeadroom = 4 << 10

// Fail moves e to the terminal failed state with the reason it failed. The
// caller acks the current delivery only after Fail returned nil; dedupe
// identifies this copy (as for Defer). An envelope too large for the
// server's max_payload is kept without its per-recipient errors, and
// without an inline body if that is still too large (the reason says so).
func (q *Queue) Fail(ctx context.Context, e *envelope.Envelope, reason string, dedupe string) error {
	f := *e
	f.FailedAt = time.Now().UTC()
	f.Recipients = append([]envelope.Recipient(nil), f.Recipients...)
	for i := range f.Recipients {
		f.Recipients[i].LastError = e.RcptError(f.Recipients[i])
	}
	f.LastError = envelope.TruncateError(reason)
	m, err := q.newMsg(ctx, FailedSubject(f.Domain, f.QueueID), &f)
	if err != nil {
		return err
	}
	if limit := int(q.nc.MaxPayload()) - payloadHeadroom; limit > 0 && len(m.Data) > limit {
		for i := range f.Recipients {
			f.Recipients[i].LastError = ""
		}
		if m, err = q.newMsg(ctx, FailedSubject(f.Domain, f.QueueID), &f); err != nil {
			return err
		}
		if len(m.Data) > limit && f.Body != nil {
			f.Body = nil
			f.LastError = envelope.TruncateError("inline body dropped (too large to keep); " + reason)
			if m, err = q.newMsg(ctx, FailedSubject(f.Domain, f.QueueID), &f); err != nil {
				return err
			}
		}
	}
	if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID(&f)+".f"+dedupe)); err != nil {
		return fmt.Errorf("queue: fail %s: %w", e.QueueID, err)
	}
	return q.durable(ctx)
}
