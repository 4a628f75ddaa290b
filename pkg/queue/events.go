package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/events"
)

// Defaults of the event stream's retention.
const (
	DefaultEventsMaxAge   = 7 * 24 * time.Hour
	DefaultEventsMaxBytes = 1 << 30
)

// EventsStreamConfig is the event stream: its own stream, so that its
// retention (age and size, the oldest events go first) never touches mail.
func (q *Queue) EventsStreamConfig() jetstream.StreamConfig {
	maxAge, maxBytes := q.cfg.EventsMaxAge, q.cfg.EventsMaxBytes
	if maxAge == 0 {
		maxAge = DefaultEventsMaxAge
	}
	if maxBytes == 0 {
		maxBytes = DefaultEventsMaxBytes
	}
	return jetstream.StreamConfig{
		Name:        q.cfg.EventsStream,
		Description: "mailfwd delivery and operator events (schema: docs/events.md)",
		Subjects:    []string{events.Prefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      maxAge,
		MaxBytes:    maxBytes,
		MaxMsgSize:  64 << 10,
		Storage:     jetstream.FileStorage,
		Replicas:    q.cfg.Replicas,
		Duplicates:  2 * time.Minute,
	}
}

// BootstrapEvents creates the event stream, or updates its retention.
func (q *Queue) BootstrapEvents(ctx context.Context) error {
	want := q.EventsStreamConfig()
	st, err := q.js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if _, err := q.js.CreateStream(ctx, want); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("queue: create stream %s: %w", want.Name, err)
		}
		return q.auditLogConsumer(ctx)
	case err != nil:
		return fmt.Errorf("queue: stream %s: %w", want.Name, err)
	}
	if err := q.auditLogConsumer(ctx); err != nil {
		return err
	}
	have := st.CachedInfo().Config
	if have.Replicas > want.Replicas {
		want.Replicas = have.Replicas // never lowered here
	}
	if have.MaxAge != want.MaxAge || have.MaxBytes != want.MaxBytes || have.Replicas != want.Replicas ||
		have.MaxMsgSize != want.MaxMsgSize || have.Duplicates != want.Duplicates {
		if _, err := q.js.UpdateStream(ctx, want); err != nil {
			return fmt.Errorf("queue: update stream %s: %w", want.Name, err)
		}
	}
	return nil
}

// StartEvents connects p to this queue's NATS connection: events are
// published on the same connection as envelopes, so an event emitted before
// an envelope's publish reaches the server before it.
func (q *Queue) StartEvents(p *events.Publisher, maxPending int) error {
	js, err := events.NewJS(q.nc, maxPending, p)
	if err != nil {
		return fmt.Errorf("queue: events: %w", err)
	}
	p.Start(js)
	return nil
}

// EventStream is the event stream, for readers (events tail, the webhook
// forwarder).
func (q *Queue) EventStream(ctx context.Context) (jetstream.Stream, error) {
	st, err := q.js.Stream(ctx, q.cfg.EventsStream)
	if err != nil {
		return nil, fmt.Errorf("queue: event stream %s: %w (run mailfwdctl bootstrap)", q.cfg.EventsStream, err)
	}
	return st, nil
}

// Identity is the NATS user this connection is, as the server reports it
// ($SYS.REQ.USER.INFO), for the audit trail; else the configured user or
// credentials file; "anonymous" when there is none.
func (q *Queue) Identity(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if m, err := q.nc.RequestWithContext(ctx, "$SYS.REQ.USER.INFO", nil); err == nil {
		var r struct {
			Data struct {
				User    string `json:"user"`
				Account string `json:"account"`
			} `json:"data"`
		}
		if json.Unmarshal(m.Data, &r) == nil && r.Data.User != "" {
			return r.Data.User
		}
	}
	switch {
	case q.cfg.User != "":
		return q.cfg.User
	case q.cfg.CredsFile != "":
		return "creds:" + filepath.Base(q.cfg.CredsFile)
	}
	return "anonymous"
}

// auditLogConsumer creates the workers' consumer of operator events.
func (q *Queue) auditLogConsumer(ctx context.Context) error {
	want := events.AuditLogConsumerConfig()
	if c, err := q.js.Consumer(ctx, q.cfg.EventsStream, want.Durable); err == nil && consumerConfigured(c.CachedInfo().Config, want) {
		return nil
	}
	if _, err := q.js.CreateOrUpdateConsumer(ctx, q.cfg.EventsStream, want); err != nil {
		return fmt.Errorf("queue: consumer %s: %w", want.Durable, err)
	}
	return nil
}

// LogOperatorEvents writes the operators' actions into this process's log
// until ctx ends, from the consumer the workers share (each event is logged
// by one worker). Without the consumer (not bootstrapped) it returns at once.
func (q *Queue) LogOperatorEvents(ctx context.Context, log *slog.Logger) error {
	c, err := q.js.Consumer(ctx, q.cfg.EventsStream, events.AuditLogConsumer)
	if err != nil {
		return fmt.Errorf("queue: consumer %s: %w", events.AuditLogConsumer, err)
	}
	events.LogOperatorEvents(ctx, c, log)
	return nil
}
