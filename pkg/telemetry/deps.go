package telemetry

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DependencyCheckTimeout bounds each dependency check a scrape runs.
const DependencyCheckTimeout = 3 * time.Second

var descUp = prometheus.NewDesc("mailfwd_dependency_up",
	"1 if the dependency answered its readiness check during this scrape, 0 if not (dependency: queue = NATS JetStream, blob = the body store).",
	[]string{"dependency"}, nil)

// dependencies runs the readiness checks (/readyz's) at scrape time.
type dependencies map[string]func(context.Context) error

func (d dependencies) Describe(ch chan<- *prometheus.Desc) { ch <- descUp }

func (d dependencies) Collect(ch chan<- prometheus.Metric) {
	var wg sync.WaitGroup
	for name, check := range d {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), DependencyCheckTimeout)
			defer cancel()
			up := 1.0
			if check(ctx) != nil {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, name)
		}()
	}
	wg.Wait()
}

// RegisterDependencies exports mailfwd_dependency_up for each named check
// (the checks behind /readyz).
func RegisterDependencies[F ~func(context.Context) error](m *Metrics, checks map[string]F) {
	if m == nil || len(checks) == 0 {
		return
	}
	d := dependencies{}
	for name, c := range checks {
		d[name] = c
	}
	m.reg.MustRegister(d)
}
