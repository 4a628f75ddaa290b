// Package bounce queues delivery status notifications: it builds the RFC
// 3464 report (pkg/dsn), stores it as a new body and publishes it with the
// null sender, so DSNs travel through the same queue as any mail.
package bounce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/dsn"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// BodyStore stores the report.
type BodyStore interface {
	Put(ctx context.Context, key string, data []byte) error
}

// Queue publishes the report's envelope.
type Queue interface {
	Publish(ctx context.Context, e *envelope.Envelope) error
}

// ErrNotReturnable is returned for mail that must not get a DSN (null or
// MAILER-DAEMON sender, or a DSN itself): no loops.
var ErrNotReturnable = errors.New("bounce: no DSN for the null sender or a DSN")

// Sender queues DSNs.
type Sender struct {
	Hostname string // Reporting-MTA
	Bodies   BodyStore
	Queue    Queue
	// ReturnPath, when set, maps the envelope sender to the address the DSN
	// goes to: an SRS address of this relay's own SRS domain is reversed
	// here rather than sent round through its own MX.
	ReturnPath func(from string) string
	// DKIM signs the DSN with the key of its From: domain,
	// MAILER-DAEMON@Hostname (Hostname's key, else its nearest parent
	// domain's); nil or no such key: unsigned.
	DKIM *dkim.Keys
}

// Send reports rcpts of envelope e (original message body, may be nil) to
// e's sender and returns the DSN's queue id.
func (s *Sender) Send(ctx context.Context, e *envelope.Envelope, body []byte, rcpts []dsn.Recipient, reason string, now time.Time) (string, error) {
	if e.DSN || !dsn.Returnable(e.From) {
		return "", ErrNotReturnable
	}
	msg, err := dsn.Build(dsn.Report{
		ReportingMTA: s.Hostname, QueueID: e.QueueID, Sender: e.From, Arrival: e.Arrived,
		Recipients: rcpts, Reason: reason, Original: body, ClientHelo: e.ClientHelo, ClientAddr: e.ClientAddr,
	}, now)
	if err != nil {
		return "", fmt.Errorf("bounce: build DSN: %w", err)
	}
	rcpt := e.From
	if s.ReturnPath != nil {
		rcpt = s.ReturnPath(e.From)
	}
	to, err := address.Parse(rcpt)
	if err != nil {
		return "", fmt.Errorf("bounce: sender %q cannot receive a DSN: %w", rcpt, err)
	}
	signature, err := s.sign(msg)
	if err != nil {
		return "", err
	}
	qid := envelope.NewQueueID()
	if err := s.Bodies.Put(ctx, qid, msg); err != nil {
		return "", fmt.Errorf("bounce: store DSN: %w", err)
	}
	n := &envelope.Envelope{
		QueueID: qid, From: "", Domain: to.ASCII, Recipients: []envelope.Recipient{{Addr: rcpt}},
		BodyKey: qid, Size: int64(len(msg)), UTF8: to.UTF8, Arrived: now.UTC(), Parts: 1, DSN: true,
		EightBit:   bytes.ContainsFunc(msg, func(r rune) bool { return r >= 0x80 }),
		ClientHelo: s.Hostname, ClientAddr: "127.0.0.1", DKIMSignature: signature,
	}
	if err := s.Queue.Publish(ctx, n); err != nil {
		return "", fmt.Errorf("bounce: queue DSN: %w", err)
	}
	return qid, nil
}

// sign returns the DSN's DKIM-Signature field ("" when no key applies); as
// with the ingress's signatures, the worker puts it in front of the stored
// body when it delivers.
func (s *Sender) sign(msg []byte) (string, error) {
	if s.DKIM.Len() == 0 {
		return "", nil
	}
	sig := dkim.NewSigner(s.DKIM, dkim.Options{})
	if _, err := sig.Write(msg); err != nil {
		sig.Abort()
		return "", fmt.Errorf("bounce: DKIM-sign DSN: %w", err)
	}
	if err := sig.Close(); err != nil {
		return "", fmt.Errorf("bounce: DKIM-sign DSN: %w", err)
	}
	return sig.Header(), nil
}
