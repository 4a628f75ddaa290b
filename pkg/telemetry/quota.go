package telemetry

import "github.com/prometheus/client_golang/prometheus"

// QuotaMetrics are the ingress's sender quota metrics. Quota labels are
// rule names ("example.com", "user:alice", "*", "user:*"): the first
// DefaultTopDestinations seen, then "other". Every method is safe on a nil
// *QuotaMetrics.
type QuotaMetrics struct {
	m       *Metrics
	refused *prometheus.CounterVec
	local   prometheus.Counter
	rules   *boundedLabel
}

// Quotas registers the sender quota metrics. Call it once.
func (m *Metrics) Quotas() *QuotaMetrics {
	if m == nil {
		return nil
	}
	q := &QuotaMetrics{m: m,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_ingress_quota_refused_total",
			Help: "MAIL commands refused (450 4.7.1) because a sender quota of the fleet was spent, by quota (the rule: a sender domain, user:NAME, * or user:*; other beyond the first 20).",
		}, []string{"quota"}),
		local: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailfwd_ingress_quota_local_fallbacks_total",
			Help: "Times the fleet's quota state (NATS KV MAIL_QUOTAS) could not be reached and this ingress fell back to a local share of each quota.",
		}),
		rules: newBoundedLabel(DefaultTopDestinations),
	}
	q.refused.WithLabelValues(OtherLabel)
	m.reg.MustRegister(q.refused, q.local)
	return q
}

// Refused counts a refusal by quota rule, also as the ingress limit "quota".
func (q *QuotaMetrics) Refused(rule string) {
	if q == nil {
		return
	}
	q.refused.WithLabelValues(q.rules.value(rule)).Inc()
	q.m.LimitRefused("quota")
}

// LocalFallback counts a switch to local shares.
func (q *QuotaMetrics) LocalFallback() {
	if q != nil {
		q.local.Inc()
	}
}
