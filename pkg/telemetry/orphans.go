package telemetry

import "github.com/prometheus/client_golang/prometheus"

// OrphansRemoved registers mailfwd_orphans_removed_total and returns the
// function that counts one removal by kind (body, refs). Call it once.
func (m *Metrics) OrphansRemoved() func(kind string) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailfwd_orphans_removed_total",
		Help: "Bodies and body-refs entries that no envelope referred to, removed by the orphan sweeper, by kind (body, refs).",
	}, []string{"kind"})
	m.reg.MustRegister(c)
	return func(kind string) { c.WithLabelValues(kind).Inc() }
}
