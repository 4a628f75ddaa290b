package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Webhook request headers.
const (
	SignatureHeader = "X-Mailfwd-Signature" // "sha256=" + hex HMAC-SHA256(secret, timestamp + "." + body)
	TimestampHeader = "X-Mailfwd-Timestamp" // unix seconds of this request (a retry has a new one)
	EventIDHeader   = "X-Mailfwd-Event-Id"  // the event's id: the same on every retry
)

// Sign is the signature header's value for body sent at ts.
func Sign(secret []byte, ts int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(ts, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a request's signature (for receivers written in Go, and
// the tests); maxSkew bounds the age of its timestamp.
func Verify(secret []byte, sig, ts string, body []byte, now time.Time, maxSkew time.Duration) error {
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("events: bad timestamp")
	}
	if d := now.Sub(time.Unix(t, 0)); d > maxSkew || d < -maxSkew {
		return errors.New("events: timestamp too old or in the future")
	}
	if !hmac.Equal([]byte(sig), []byte(Sign(secret, t, body))) {
		return errors.New("events: bad signature")
	}
	return nil
}

// Forwarder posts every event matching Filter to URL, one at a time in
// stream order (so each message's events arrive in the order they were
// stored), from a durable consumer that keeps its place across restarts.
// An event is acked only after a 2xx; until then it is posted again with
// backoff, for as long as it takes. Events are lost only if the stream's
// retention (--events-max-age/-bytes) removes them first.
type Forwarder struct {
	URL        string
	Secret     []byte
	Durable    string // consumer name; one per endpoint (default "webhook")
	Filter     Filter
	Client     *http.Client  // default: 10s timeout
	MinBackoff time.Duration // default 1s
	MaxBackoff time.Duration // default 5m
	// MaxBodyBytes bounds what is read of an endpoint's answer (default 4 KiB).
	MaxBodyBytes int64
	Logger       *slog.Logger
	Now          func() time.Time
}

func (f *Forwarder) defaults() {
	if f.Durable == "" {
		f.Durable = "webhook"
	}
	if f.Client == nil {
		f.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if f.MinBackoff <= 0 {
		f.MinBackoff = time.Second
	}
	if f.MaxBackoff <= 0 {
		f.MaxBackoff = 5 * time.Minute
	}
	if f.MaxBodyBytes <= 0 {
		f.MaxBodyBytes = 4 << 10
	}
	if f.Logger == nil {
		f.Logger = slog.New(slog.DiscardHandler)
	}
	if f.Now == nil {
		f.Now = time.Now
	}
}

// ConsumerConfig is the durable consumer the forwarder reads: one event
// outstanding at a time, which is what keeps the order.
func (f *Forwarder) ConsumerConfig() jetstream.ConsumerConfig {
	f.defaults()
	return jetstream.ConsumerConfig{
		Durable:        f.Durable,
		Description:    "mailfwdctl events webhook → " + f.URL,
		FilterSubjects: f.Filter.Subjects(),
		DeliverPolicy:  jetstream.DeliverNewPolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        time.Minute,
		MaxAckPending:  1,
		MaxDeliver:     -1,
	}
}

// Run forwards until ctx ends. It returns nil then, or the error that
// stopped it (the consumer could not be made).
func (f *Forwarder) Run(ctx context.Context, st jetstream.Stream) error {
	f.defaults()
	c, err := st.CreateOrUpdateConsumer(ctx, f.ConsumerConfig())
	if err != nil {
		return fmt.Errorf("events: webhook consumer %s: %w", f.Durable, err)
	}
	f.Logger.Info("forwarding events", "url", f.URL, "consumer", f.Durable)
	for ctx.Err() == nil {
		m, err := c.Next(jetstream.FetchMaxWait(time.Second))
		switch {
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrNoMessages):
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			f.Logger.Warn("events webhook: cannot fetch; retrying", "err", err)
			sleep(ctx, f.MinBackoff)
			continue
		}
		// Each event of the stream message (several recipients' events
		// are stored together) is posted on its own, in order; events not
		// for this endpoint, and messages that are not events, are acked.
		var last string
		if decode(m.Data(), &f.Filter, func(raw []byte, ev *Event) error {
			if last != "" {
				_ = m.InProgress() // a long group keeps the message ours (AckWait)
			}
			if !f.deliver(ctx, m, raw, ev) {
				return ctx.Err()
			}
			last = ev.ID
			return nil
		}) != nil {
			// Stopped: the message goes back at once for the next
			// forwarder (a killed one's comes back after AckWait); the
			// events of it already posted are posted again.
			_ = m.Nak()
			return nil
		}
		if err := m.DoubleAck(ctx); err != nil && ctx.Err() == nil {
			// The ack may be lost: the events can be posted once more. The
			// receiver deduplicates by X-Mailfwd-Event-Id.
			f.Logger.Warn("events webhook: ack failed; the events may be posted again", "event_id", last, "err", err)
		}
	}
	return nil
}

// deliver posts raw, the JSON of ev (an event of m), until the endpoint
// answers 2xx; false when ctx ended.
func (f *Forwarder) deliver(ctx context.Context, m jetstream.Msg, raw []byte, ev *Event) bool {
	wait := f.MinBackoff
	for attempt := 1; ; attempt++ {
		err := f.post(ctx, raw, ev.ID)
		if err == nil {
			if attempt > 1 {
				f.Logger.Info("events webhook: delivered after retries", "event_id", ev.ID, "attempts", attempt)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		f.Logger.Warn("events webhook: post failed; retrying", "event_id", ev.ID, "queue_id", ev.QueueID,
			"attempt", attempt, "retry_in", wait, "err", err)
		_ = m.InProgress() // keep it ours while we wait
		if !sleepInProgress(ctx, wait, m) {
			return false
		}
		wait = min(2*wait, f.MaxBackoff)
	}
}

func (f *Forwarder) post(ctx context.Context, body []byte, id string) error {
	ts := f.Now().Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "mailfwd-events-webhook/1")
	req.Header.Set(TimestampHeader, strconv.FormatInt(ts, 10))
	req.Header.Set(EventIDHeader, id)
	if len(f.Secret) > 0 {
		req.Header.Set(SignatureHeader, Sign(f.Secret, ts, body))
	}
	resp, err := f.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, f.MaxBodyBytes))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("endpoint answered %s", resp.Status)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// sleepInProgress waits d, telling the server every 20s that m is still
// being worked on (AckWait is a minute).
func sleepInProgress(ctx context.Context, d time.Duration, m jetstream.Msg) bool {
	end := time.Now().Add(d)
	for {
		left := time.Until(end)
		if left <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(min(left, 20*time.Second)):
			_ = m.InProgress()
		}
	}
}
