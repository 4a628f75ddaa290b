package daemon

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Events is the event stream's settings, shared by both daemons.
type Events struct {
	Enabled    bool
	MaxAge     time.Duration
	MaxBytes   int64
	MaxPending int
	Buffer     int
	// Linger gathers a worker's events for this long and publishes them
	// together (events.PublisherConfig.Linger); the ingress never lingers.
	Linger time.Duration
	// Types are the event types published (empty: all).
	Types config.StringList
}

func (e *Events) register(fs *flag.FlagSet) {
	fs.BoolVar(&e.Enabled, "events", true, "publish delivery events to the EVENTS stream (docs/events.md); mail never waits for them")
	fs.DurationVar(&e.MaxAge, "events-max-age", queue.DefaultEventsMaxAge, "retention of the EVENTS stream by age (set at bootstrap)")
	fs.Int64Var(&e.MaxBytes, "events-max-bytes", queue.DefaultEventsMaxBytes, "retention of the EVENTS stream by size; the oldest events go first (set at bootstrap)")
	fs.IntVar(&e.MaxPending, "events-max-pending", 4096, "event publishes awaiting their ack at once")
	fs.IntVar(&e.Buffer, "events-buffer", 8192, "event messages (an event, or one envelope's events stored together) kept for another try while the stream does not take them; beyond it their events are dropped, counted and logged")
	fs.Var(&e.Types, "events-types", "publish only these event types (comma-separated, repeatable; default all): with deferred,bounced,expired,failed,not_queued nothing is published for mail delivered at once (docs/events.md)")
}

// types checks --events-types.
func (e *Events) types() (map[events.Type]bool, error) {
	if len(e.Types) == 0 {
		return nil, nil
	}
	f := events.Filter{}
	for _, t := range e.Types {
		f.Types = append(f.Types, events.Type(strings.ToLower(strings.TrimSpace(t))))
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("--events-types: %w", err)
	}
	set := map[events.Type]bool{}
	for _, t := range f.Types {
		set[t] = true
	}
	return set, nil
}

// registerLinger adds the workers' --events-linger.
func (e *Events) registerLinger(fs *flag.FlagSet) {
	fs.DurationVar(&e.Linger, "events-linger", 10*time.Millisecond,
		"gather events for this long and publish them together: far less CPU per event, events at most this much later (0: at once)")
}

// start connects a publisher to q; nil when events are off. Dropped
// events are counted in m (mailfwd_events_dropped_total).
func (e *Events) start(q *queue.Queue, source string, log *slog.Logger, m *telemetry.Metrics) (*events.Publisher, error) {
	if !e.Enabled {
		return nil, nil
	}
	types, err := e.types()
	if err != nil {
		return nil, err
	}
	p := events.NewPublisher(events.PublisherConfig{Source: source, MaxPending: e.MaxPending, RetryBuffer: e.Buffer, Logger: log,
		Dropped: m.EventDropped, Linger: e.Linger, Types: types})
	if err := q.StartEvents(p, e.MaxPending); err != nil {
		return nil, err
	}
	return p, nil
}

// stop flushes what is pending for up to five seconds.
func stopEvents(p *events.Publisher) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Close(ctx)
}
