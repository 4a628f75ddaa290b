package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/maillog"
)

// AuditLogConsumer is the durable consumer the workers share to write the
// operators' actions into the fleet's logs, each once.
const AuditLogConsumer = "audit-log"

// AuditLogConsumerConfig selects the operator events: actions, and the
// messages they bounced, purged or released.
func AuditLogConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:     AuditLogConsumer,
		Description: "workers log operator actions (one worker each)",
		FilterSubjects: []string{
			Prefix + "." + string(Audit) + ".>",
			Prefix + "." + string(OperatorBounced) + ".>",
			Prefix + "." + string(OperatorPurged) + ".>",
			Prefix + "." + string(Released) + ".>",
		},
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           30 * time.Second,
		MaxAckPending:     256,
		InactiveThreshold: 0,
	}
}

// LogOperatorEvents writes each operator event c delivers as one log line
// until ctx ends: an action as "audit: …", a message an operator bounced,
// purged or released as a line under its own queue id, in sendmail's form
// ("QID: to=<…>, delay=…, stat=Bounced by operator …"), so that its last
// line says what became of it.
func LogOperatorEvents(ctx context.Context, c jetstream.Consumer, log *slog.Logger) {
	for ctx.Err() == nil {
		m, err := c.Next(jetstream.FetchMaxWait(time.Second))
		switch {
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrNoMessages):
			continue
		case err != nil:
			if ctx.Err() == nil {
				log.Debug("operator events: fetch failed", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		_ = decode(m.Data(), nil, func(_ []byte, ev *Event) error {
			LogOperatorEvent(ctx, log, ev)
			return nil
		})
		_ = m.Ack()
	}
}

// LogOperatorEvent writes one operator event as a log line (Line).
func LogOperatorEvent(ctx context.Context, log *slog.Logger, ev *Event) {
	if ev.Type == Audit {
		log.LogAttrs(ctx, slog.LevelInfo, ev.Line(),
			slog.String("action", ev.Action), slog.String("actor", ev.Actor), slog.String("target", ev.Target), slog.Int("matched", ev.Matched))
		return
	}
	log.LogAttrs(ctx, slog.LevelInfo, ev.Line(),
		slog.String("queue_id", ev.QueueID), slog.String("to", ev.Recipient), slog.String("event", string(ev.Type)), slog.String("actor", ev.Actor))
}

// Line is an operator event as a log line: an action as "audit:
// action=… actor=… target=… matched=N", a message's event in sendmail's
// form under its queue id, "QID: to=<…>, delay=…, stat=<Reply>".
func (ev *Event) Line() string {
	if ev.Type == Audit {
		d := ""
		if ev.Detail != "" {
			d = fmt.Sprintf(" detail=%q", ev.Detail)
		}
		return fmt.Sprintf("audit: action=%s actor=%s target=%q matched=%d%s", ev.Action, ev.Actor, ev.Target, ev.Matched, d)
	}
	stat := ev.Reply
	if stat == "" {
		stat = string(ev.Type) + " by " + ev.Actor
	}
	delay := time.Duration(0)
	if !ev.Arrived.IsZero() {
		delay = ev.Time.Sub(ev.Arrived)
	}
	line := fmt.Sprintf("%s: to=<%s>, delay=%s, stat=%s", ev.QueueID, ev.Recipient, maillog.Delay(delay), stat)
	if ev.DSNQueueID != "" {
		line += ", dsn_queue_id=" + ev.DSNQueueID // the DSN sent to the sender
	}
	return line
}
