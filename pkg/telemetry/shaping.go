package telemetry

import "github.com/prometheus/client_golang/prometheus"

// ShapingMetrics are the fleet shaping's metrics (one worker's view).
// Destination labels are the names of shaping rules (bounded by the
// policy) or "other"; every method is safe on a nil *ShapingMetrics.
type ShapingMetrics struct {
	throttled *prometheus.CounterVec
	suspended *prometheus.GaugeVec
	lowered   prometheus.Counter
	leases    prometheus.Gauge
	local     prometheus.Counter
}

// Shaping registers the shaping metrics. Call it once.
func (m *Metrics) Shaping() *ShapingMetrics {
	if m == nil {
		return nil
	}
	s := &ShapingMetrics{
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_shaping_throttled_total",
			Help: "Deliveries not started because a destination's fleet-wide limit was reached, by destination (shaping rule or other) and limit (concurrency, rate, suspended).",
		}, []string{"destination", "limit"}),
		suspended: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailfwd_shaping_suspended",
			Help: "1 while a destination is suspended by a reply rule, as this worker last saw it, by destination (shaping rule or other: then the number suspended).",
		}, []string{"destination"}),
		lowered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailfwd_shaping_concurrency_lowered_total",
			Help: "Times a domain's adaptive concurrency was lowered after a congestion signal (no connection, 421, 4.7.x).",
		}),
		leases: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailfwd_shaping_leases",
			Help: "Fleet-wide destination slots this worker holds now.",
		}),
		local: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailfwd_shaping_local_fallbacks_total",
			Help: "Times the fleet shaping state could not be reached and the worker fell back to a local share of each limit.",
		}),
	}
	for _, c := range []prometheus.Collector{s.throttled, s.suspended, s.lowered, s.leases, s.local} {
		m.reg.MustRegister(c)
	}
	return s
}

// Throttled counts a refused admission.
func (s *ShapingMetrics) Throttled(destination, limit string) {
	if s != nil {
		s.throttled.WithLabelValues(destination, limit).Inc()
	}
}

// Suspended sets the suspensions seen: rule destinations by name, the
// rest summed under "other".
func (s *ShapingMetrics) Suspended(byDest map[string]float64) {
	if s == nil {
		return
	}
	s.suspended.Reset()
	for d, v := range byDest {
		s.suspended.WithLabelValues(d).Set(v)
	}
}

// Lowered counts a concurrency decrease.
func (s *ShapingMetrics) Lowered() {
	if s != nil {
		s.lowered.Inc()
	}
}

// Leases sets the slots held.
func (s *ShapingMetrics) Leases(n int) {
	if s != nil {
		s.leases.Set(float64(n))
	}
}

// LocalFallback counts a switch to local shares.
func (s *ShapingMetrics) LocalFallback() {
	if s != nil {
		s.local.Inc()
	}
}
