package queue

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/mailfwd/mailfwd/pkg/control"
)

// WatchEnvelopeReaders decides, until ctx ends, how this process writes
// envelopes with an inline body: in the raw form (the body's bytes after
// the JSON, pkg/envelope) once every worker that answers on the control
// subject lists control.FormatRawInline, else as base64 JSON, which every
// release reads. A worker of an earlier release drops an envelope it cannot
// decode; during a rolling upgrade (old workers still running) mail is
// therefore written in the old form, and a worker of an earlier release
// that appears later (a rollback) is seen within the interval. It asks
// every second while it writes base64, every interval after.
func (q *Queue) WatchEnvelopeReaders(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	for ctx.Err() == nil {
		raw, workers, old, err := q.probeReaders(ctx)
		if err != nil {
			log.Debug("cannot ask the workers which envelope forms they read; writing base64", "component", "queue", "err", err)
		}
		if prev := q.rawInline.Swap(raw); prev != raw {
			if raw {
				log.Info("inline bodies are written as raw bytes: every worker reads that form", "component", "queue", "workers", workers)
			} else {
				log.Info("inline bodies are written as base64 JSON: a worker of an earlier release is running, or none answered", "component", "queue",
					"workers", workers, "earlier_workers", old)
			}
		}
		wait := interval
		if !raw {
			wait = min(interval, time.Second)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// RawInline reports whether envelopes with an inline body are written in
// the raw form now.
func (q *Queue) RawInline() bool { return q.rawInline.Load() }

// probeReaders asks every pod on the control subject what it reads: raw is
// true when at least one worker answered and every worker lists the raw
// form; old names the ones that do not.
func (q *Queue) probeReaders(ctx context.Context) (raw bool, workers int, old []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second) // the request's flush needs a deadline
	defer cancel()
	builds, err := control.Gather(ctx, q.nc, control.VersionSubject, time.Second, 0)
	if err != nil {
		return false, 0, nil, err
	}
	for _, b := range builds {
		if b.Component != "mailfwd-worker" {
			continue
		}
		workers++
		if !slices.Contains(b.Formats, control.FormatRawInline) {
			old = append(old, b.Host+" "+b.Version)
		}
	}
	return workers > 0 && len(old) == 0, workers, old, nil
}
