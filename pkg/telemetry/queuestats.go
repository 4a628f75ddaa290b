package telemetry

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfwd/mailfwd/pkg/queue"
)

// The queue metrics are computed once for the fleet: every worker runs a
// QueueStats, and the one holding the "queue-metrics" lease (a NATS KV
// entry, see queue.TryLease) reads the stream's subject counts and the few
// envelopes that date each state (queue.StatsTop) every Interval and
// exports the result; the others export only mailfwd_queue_stats_leader 0.
// Queries aggregate with max (or sum) over the pods: at most one pod has
// the series, except for one interval after a hand-over.

// QueueSource is what the queue metrics read (*queue.Queue has it).
type QueueSource interface {
	StatsTop(ctx context.Context, topK int) (*queue.Stats, error)
	TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	DropLease(ctx context.Context, name, holder string) error
}

// QueueStats computes the fleet's queue metrics while it holds the lease.
type QueueStats struct {
	Source   QueueSource
	Holder   string        // this process's name in the lease (pod name)
	Interval time.Duration // default 15s; the lease lasts 3 intervals
	TopK     int           // destinations with series of their own; default DefaultTopDestinations
	Log      *slog.Logger

	snap   atomic.Pointer[queueSnapshot]
	leader atomic.Bool
}

type queueSnapshot struct {
	s  *queue.Stats
	at time.Time
}

// QueueLease is the name of the lease the queue metrics are computed under.
const QueueLease = "queue-metrics"

var (
	descLeader = prometheus.NewDesc("mailfwd_queue_stats_leader",
		"1 on the one process of the fleet that computes and exports the mailfwd_queue_* metrics, 0 on the others.", nil, nil)
	descUpdated = prometheus.NewDesc("mailfwd_queue_stats_timestamp_seconds",
		"When the exported queue metrics were computed (Unix time).", nil, nil)
	descMessages = prometheus.NewDesc("mailfwd_queue_messages",
		"Envelopes in the queue by state (ready, deferred, held, failed): one per recipient domain of a message.", []string{"state"}, nil)
	descOldest = prometheus.NewDesc("mailfwd_queue_oldest_age_seconds",
		"Age of the state's oldest envelope, measured from its arrival (the 250), however often it was deferred or moved since; 0 when the state is empty.", []string{"state"}, nil)
	descDestMessages = prometheus.NewDesc("mailfwd_queue_destination_messages",
		"Envelopes by destination (the destinations with the most queued mail; the rest summed as \"other\") and state.", []string{"destination", "state"}, nil)
	descDestOldest = prometheus.NewDesc("mailfwd_queue_destination_oldest_age_seconds",
		"Age since arrival of the oldest envelope by destination (as mailfwd_queue_destination_messages; \"other\" only when its oldest is older than every listed destination's) and state.", []string{"destination", "state"}, nil)
)

// Describe implements prometheus.Collector.
func (q *QueueStats) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descUpdated, descMessages, descOldest, descDestMessages, descDestOldest} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: ages are taken at scrape time.
func (q *QueueStats) Collect(ch chan<- prometheus.Metric) {
	leader := 0.0
	if q.leader.Load() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	sn := q.snap.Load()
	if leader == 0 || sn == nil {
		return
	}
	now := time.Now()
	age := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return max(now.Sub(t).Seconds(), 0)
	}
	s := sn.s
	ch <- prometheus.MustNewConstMetric(descUpdated, prometheus.GaugeValue, float64(sn.at.UnixNano())/1e9)
	topK := q.topK()
	for _, st := range queue.AllStates {
		state := string(st)
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.GaugeValue, float64(s.ByState[st]), state)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, age(s.Oldest[st]), state)
		other, listedOldest := s.ByState[st], time.Time{}
		for _, dc := range s.ByDomain[:min(topK, len(s.ByDomain))] {
			other -= dc.Counts[st]
			ch <- prometheus.MustNewConstMetric(descDestMessages, prometheus.GaugeValue, float64(dc.Counts[st]), dc.Domain, state)
			if t, ok := dc.Oldest[st]; ok && dc.Counts[st] > 0 {
				ch <- prometheus.MustNewConstMetric(descDestOldest, prometheus.GaugeValue, age(t), dc.Domain, state)
				if listedOldest.IsZero() || t.Before(listedOldest) {
					listedOldest = t
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(descDestMessages, prometheus.GaugeValue, float64(other), OtherLabel, state)
		if t := s.Oldest[st]; other > 0 && !t.IsZero() && (listedOldest.IsZero() || t.Before(listedOldest)) {
			ch <- prometheus.MustNewConstMetric(descDestOldest, prometheus.GaugeValue, age(t), OtherLabel, state)
		}
	}
}

func (q *QueueStats) topK() int {
	if q.TopK > 0 {
		return q.TopK
	}
	return DefaultTopDestinations
}

// RegisterQueueStats adds q's metrics to the process's /metrics. Call
// q.Run to compute them.
func (m *Metrics) RegisterQueueStats(q *QueueStats) {
	if m != nil {
		m.reg.MustRegister(q)
	}
}

// Run takes or renews the lease every Interval and, while it has it,
// computes the queue metrics; it gives the lease up when ctx ends.
func (q *QueueStats) Run(ctx context.Context) {
	interval := q.Interval
	if interval <= 0 {
		interval = 15 * time.Second
	}
	defer func() {
		if q.leader.Load() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = q.Source.DropLease(dctx, QueueLease, q.Holder)
		}
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		q.tick(ctx, interval)
		t.Reset(interval)
	}
}

func (q *QueueStats) tick(ctx context.Context, interval time.Duration) {
	cctx, cancel := context.WithTimeout(ctx, interval)
	defer cancel()
	ok, err := q.Source.TryLease(cctx, QueueLease, q.Holder, 3*interval)
	if err != nil && q.Log != nil {
		q.Log.Warn("queue metrics: lease", "err", err)
	}
	if q.leader.Swap(ok) != ok && q.Log != nil {
		q.Log.Info("queue metrics: lease changed", "leader", ok, "holder", q.Holder)
	}
	if !ok {
		q.snap.Store(nil)
		return
	}
	s, err := q.Source.StatsTop(cctx, q.topK())
	if err != nil {
		// Stale figures would hide the outage; mailfwd_dependency_up shows it.
		q.snap.Store(nil)
		if q.Log != nil {
			q.Log.Warn("queue metrics: stats", "err", err)
		}
		return
	}
	q.snap.Store(&queueSnapshot{s: s, at: time.Now()})
}
