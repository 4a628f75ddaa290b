package daemon

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// QueueMetricsConfig is the worker's part in the fleet's queue metrics
// (mailfwd_queue_*): one worker at a time computes them (telemetry.QueueStats).
type QueueMetricsConfig struct {
	Interval time.Duration // --queue-metrics-interval; 0 disables
	Top      int           // --queue-metrics-top
}

func (c *QueueMetricsConfig) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.Interval, "queue-metrics-interval", 15*time.Second, "how often the one worker holding the queue-metrics lease computes mailfwd_queue_* (counts and ages by state and destination) for the fleet; 0: this worker never does")
	fs.IntVar(&c.Top, "queue-metrics-top", telemetry.DefaultTopDestinations, "destinations with queue series of their own (the most queued mail); the rest are \"other\"")
}

func (c *QueueMetricsConfig) validate() error {
	if c.Interval < 0 {
		return errors.New("--queue-metrics-interval must not be negative")
	}
	if c.Top < 1 || c.Top > 1000 {
		return errors.New("--queue-metrics-top must be 1-1000")
	}
	return nil
}

// start runs the queue metrics in g unless they are disabled.
func (c *QueueMetricsConfig) start(g *errgroup.Group, gctx context.Context, src telemetry.QueueSource, m *telemetry.Metrics, log *slog.Logger) {
	if c.Interval <= 0 || m == nil {
		return
	}
	host, _ := os.Hostname()
	qs := &telemetry.QueueStats{Source: src, Holder: host + "/" + strconv.Itoa(os.Getpid()), Interval: c.Interval, TopK: c.Top, Log: log}
	m.RegisterQueueStats(qs)
	g.Go(func() error { qs.Run(gctx); return nil })
}
