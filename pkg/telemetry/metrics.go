package telemetry

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are a process's Prometheus metrics, on its own registry (served
// at /metrics on the health port). Every method is safe on a nil *Metrics,
// so code under test can run without them.
type Metrics struct {
	reg *prometheus.Registry

	policyReloads *prometheus.CounterVec
	policyOK      prometheus.Gauge
	messages      *prometheus.CounterVec
	recipients    *prometheus.CounterVec
	deliveries    *prometheus.CounterVec
	handBacks     prometheus.Counter
	held          prometheus.Counter
	dsns          *prometheus.CounterVec
	sessions      prometheus.Gauge
	failed        prometheus.Counter
	eventsDropped prometheus.Counter
	obs           *observe
}

// NewMetrics registers mailfwd's metrics and the Go/process collectors.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{reg: reg, obs: newObserve(reg)}
	m.policyReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailfwd_policy_reloads_total", Help: "Policy loads, by result (ok, failed: the last good policy stays in force).",
	}, []string{"result"})
	m.policyOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mailfwd_policy_last_reload_ok", Help: "1 if the last policy change was applied, 0 if it was refused as invalid.",
	})
	m.messages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailfwd_ingress_messages_total", Help: "Messages at the end of DATA, by result (accepted, tempfail, rejected, discarded).",
	}, []string{"result"})
	m.recipients = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailfwd_ingress_recipients_total", Help: "RCPT TO commands, by result (accepted, rejected).",
	}, []string{"result"})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailfwd_delivery_recipients_total", Help: "Recipient delivery attempts, by result (sent, deferred, failed, expired).",
	}, []string{"result"})
	m.handBacks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mailfwd_worker_congested_handbacks_total", Help: "Envelopes handed back to the queue because their domain was congested or rate limited.",
	})
	m.held = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mailfwd_worker_held_total", Help: "Envelopes moved aside because their domain is on hold.",
	})
	m.dsns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailfwd_dsn_total", Help: "Delivery status notifications queued, by kind (failed, delayed).",
	}, []string{"kind"})
	m.sessions = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mailfwd_ingress_sessions", Help: "Open SMTP sessions (a scaling signal for the ingress; compare with --max-sessions).",
	})
	m.failed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mailfwd_worker_failed_total", Help: "Envelopes moved to the terminal failed state after too many failed handlings (mailfwdctl queue list --state failed).",
	})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mailfwd_events_dropped_total", Help: "Delivery events given up because the EVENTS stream did not take them while the retry buffer was full (--events-buffer); mail is not affected.",
	})
	// Every result at 0 from the start: rules and panels have series.
	for _, r := range DeliveryResults {
		m.deliveries.WithLabelValues(r)
	}
	for _, r := range []string{"accepted", "tempfail", "rejected", "discarded"} {
		m.messages.WithLabelValues(r)
	}
	for _, r := range []string{"accepted", "rejected"} {
		m.recipients.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.policyReloads.WithLabelValues(r)
	}
	for _, k := range []string{"failed", "delayed"} {
		m.dsns.WithLabelValues(k)
	}
	for _, c := range []prometheus.Collector{m.eventsDropped, m.failed, m.sessions, m.policyReloads, m.policyOK, m.messages, m.recipients, m.deliveries, m.handBacks, m.held, m.dsns} {
		f(c)
	}
	return m
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// PolicyReload records a policy load.
func (m *Metrics) PolicyReload(ok bool, _ string) {
	if m == nil {
		return
	}
	if ok {
		m.policyReloads.WithLabelValues("ok").Inc()
		m.policyOK.Set(1)
		return
	}
	m.policyReloads.WithLabelValues("failed").Inc()
	m.policyOK.Set(0)
}

// Message records the end of a DATA transaction.
func (m *Metrics) Message(result string) {
	if m != nil {
		m.messages.WithLabelValues(result).Inc()
	}
}

// Recipient records a RCPT TO decision.
func (m *Metrics) Recipient(result string) {
	if m != nil {
		m.recipients.WithLabelValues(result).Inc()
	}
}

// Delivery records one recipient attempt (result: one of DeliveryResults).
func (m *Metrics) Delivery(result string, a Attempt) {
	if m != nil {
		m.deliveries.WithLabelValues(result).Inc()
		m.attempted(result, a)
	}
}

// HandBack records a congested hand-back.
func (m *Metrics) HandBack() {
	if m != nil {
		m.handBacks.Inc()
	}
}

// Held records an envelope moved aside by a hold.
func (m *Metrics) Held() {
	if m != nil {
		m.held.Inc()
	}
}

// Failed records an envelope moved to the terminal failed state.
func (m *Metrics) Failed() {
	if m != nil {
		m.failed.Inc()
	}
}

// EventDropped records a delivery event that was given up.
func (m *Metrics) EventDropped() {
	if m != nil {
		m.eventsDropped.Inc()
	}
}

// DSN records a queued notification.
func (m *Metrics) DSN(kind string) {
	if m != nil {
		m.dsns.WithLabelValues(kind).Inc()
	}
}

// Sessions sets the number of open SMTP sessions.
func (m *Metrics) Sessions(n int) {
	if m != nil {
		m.sessions.Set(float64(n))
	}
}
