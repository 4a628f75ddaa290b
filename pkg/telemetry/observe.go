package telemetry

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values every metric below is created with at start, so that a
// query or alert on one of them has a series (at 0) before the first event.
var (
	// IngressLimits are the ingress limits that refuse something.
	IngressLimits = []string{"sessions", "sessions_per_client", "connection_rate", "error_budget", "in_flight_bytes", "in_flight_bytes_per_client", "hops", "quota", "abandoned_transactions"}
	// AuthFailureReasons are why an AUTH failed.
	AuthFailureReasons = []string{"bad_credentials", "budget_spent", "temporary", "other"}
	// ReplyClasses are the SMTP reply classes the ingress counts.
	ReplyClasses = []string{"2xx", "3xx", "4xx", "5xx"}
	// DeliveryResults are a recipient attempt's results.
	DeliveryResults = []string{"sent", "deferred", "failed", "expired"}
	// TLSOutcomes describe the connection a delivery ran on.
	TLSOutcomes = []string{"verified", "unverified", "none"}
)

// DefaultTopDestinations is how many destinations (and next hops) get a
// label of their own; the rest are "other".
const DefaultTopDestinations = 20

// OtherLabel stands for every destination beyond the top ones.
const OtherLabel = "other"

// observe holds the metrics of issue 20 (latencies, outcomes per
// destination, limits, AUTH, TLS, dependencies).
type observe struct {
	limits       *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	replies      *prometheus.CounterVec
	dataSeconds  prometheus.Histogram
	attempt      prometheus.Histogram
	toFinal      *prometheus.HistogramVec
	byDest       *prometheus.CounterVec
	byHop        *prometheus.CounterVec
	tls          *prometheus.CounterVec
	startTLS     *prometheus.CounterVec
	dests, hops  *boundedLabel
}

// Latency buckets: an SMTP transaction takes milliseconds to minutes; mail
// waits seconds to days in the queue.
var (
	attemptBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	queueBuckets   = []float64{.1, .5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 5 * 86400}
)

func newObserve(reg *prometheus.Registry) *observe {
	o := &observe{
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_ingress_limit_refusals_total",
			Help: "Things an ingress limit refused, by limit (sessions, sessions_per_client, connection_rate, error_budget, in_flight_bytes, in_flight_bytes_per_client, hops, quota: a sender quota, see mailfwd_ingress_quota_refused_total; abandoned_transactions: --max-abandoned-transactions).",
		}, []string{"limit"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_ingress_auth_failures_total",
			Help: "Failed SMTP AUTH attempts, by reason (bad_credentials, budget_spent: the client's failure budget ran out, temporary, other).",
		}, []string{"reason"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_ingress_replies_total",
			Help: "SMTP replies the ingress sent, by class (2xx, 3xx, 4xx, 5xx).",
		}, []string{"class"}),
		dataSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailfwd_ingress_data_duration_seconds",
			Help:    "Time from the DATA command to the 250 of an accepted message (the client's transfer, the body store and the queue).",
			Buckets: attemptBuckets,
		}),
		attempt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailfwd_delivery_attempt_duration_seconds",
			Help:    "One delivery attempt of one envelope: route, connect, SMTP transaction.",
			Buckets: attemptBuckets,
		}),
		toFinal: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailfwd_delivery_time_to_final_seconds",
			Help:    "Time from the ingress's 250 to a recipient's final outcome (sent, failed, expired).",
			Buckets: queueBuckets,
		}, []string{"result"}),
		byDest: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_delivery_destination_recipients_total",
			Help: "Recipient attempts by destination domain (the first ones seen, then \"other\") and result.",
		}, []string{"destination", "result"}),
		byHop: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_delivery_next_hop_recipients_total",
			Help: "Recipient attempts by next hop (the MX or relay host; the first ones seen, then \"other\"; \"none\" when no host was reached) and result.",
		}, []string{"next_hop", "result"}),
		tls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_delivery_tls_total",
			Help: "Delivery transactions by the protection of their connection (verified: TLS with a verified certificate, unverified: TLS without, none).",
		}, []string{"tls"}),
		startTLS: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailfwd_ingress_starttls_total",
			Help: "STARTTLS handshakes with clients, by result (ok, failed).",
		}, []string{"result"}),
		dests: newBoundedLabel(DefaultTopDestinations),
		hops:  newBoundedLabel(DefaultTopDestinations),
	}
	for _, v := range IngressLimits {
		o.limits.WithLabelValues(v)
	}
	for _, v := range AuthFailureReasons {
		o.authFailures.WithLabelValues(v)
	}
	for _, v := range ReplyClasses {
		o.replies.WithLabelValues(v)
	}
	for _, v := range DeliveryResults {
		o.byDest.WithLabelValues(OtherLabel, v)
		o.byHop.WithLabelValues(OtherLabel, v)
		if v != "deferred" {
			o.toFinal.WithLabelValues(v)
		}
	}
	for _, v := range TLSOutcomes {
		o.tls.WithLabelValues(v)
	}
	o.startTLS.WithLabelValues("ok")
	o.startTLS.WithLabelValues("failed")
	reg.MustRegister(o.startTLS, o.limits, o.authFailures, o.replies, o.dataSeconds, o.attempt, o.toFinal, o.byDest, o.byHop, o.tls)
	return o
}

// boundedLabel gives the first max values seen a label of their own and
// maps every later one to "other": a per-process bound on a label's
// cardinality that keeps a value's series stable once it has one.
type boundedLabel struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

func newBoundedLabel(max int) *boundedLabel {
	return &boundedLabel{max: max, seen: map[string]struct{}{}}
}

func (b *boundedLabel) value(v string) string {
	v = strings.ToLower(strings.TrimSuffix(v, "."))
	if v == "" || len(v) > 255 {
		return OtherLabel
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[v]; ok {
		return v
	}
	if len(b.seen) >= b.max {
		return OtherLabel
	}
	b.seen[v] = struct{}{}
	return v
}

// LimitRefused counts one refusal by an ingress limit (one of IngressLimits).
func (m *Metrics) LimitRefused(limit string) {
	if m != nil {
		m.obs.limits.WithLabelValues(limit).Inc()
	}
}

// AuthFailed counts a failed AUTH (reason: one of AuthFailureReasons).
func (m *Metrics) AuthFailed(reason string) {
	if m != nil {
		m.obs.authFailures.WithLabelValues(reason).Inc()
	}
}

// Reply counts an SMTP reply the ingress sent.
func (m *Metrics) Reply(code int) {
	if m == nil || code < 200 || code > 599 {
		return
	}
	m.obs.replies.WithLabelValues(ReplyClasses[code/100-2]).Inc()
}

// StartTLS counts a STARTTLS handshake with a client.
func (m *Metrics) StartTLS(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.obs.startTLS.WithLabelValues("failed").Inc()
		return
	}
	m.obs.startTLS.WithLabelValues("ok").Inc()
}

// DataAccepted observes the time from the DATA command to its 250.
func (m *Metrics) DataAccepted(since time.Time) {
	if m != nil {
		m.obs.dataSeconds.Observe(time.Since(since).Seconds())
	}
}

// Attempt is one recipient's delivery attempt, as the worker logs it.
type Attempt struct {
	Destination string // the recipient domain
	NextHop     string // the host the transaction ran on or was tried ("" none)
	Arrived     time.Time
	Ended       time.Time
}

// attempted records one recipient attempt by destination and next hop,
// and for a final result the time since the 250.
func (m *Metrics) attempted(result string, a Attempt) {
	m.obs.byDest.WithLabelValues(m.obs.dests.value(a.Destination), result).Inc()
	hop := "none"
	if a.NextHop != "" {
		hop = m.obs.hops.value(strings.Trim(a.NextHop, "[]"))
	}
	m.obs.byHop.WithLabelValues(hop, result).Inc()
	if result != "deferred" && !a.Arrived.IsZero() {
		m.obs.toFinal.WithLabelValues(result).Observe(a.Ended.Sub(a.Arrived).Seconds())
	}
}

// Transaction records one delivery attempt of an envelope: its duration
// and its connection's TLS, as delivery.Outcome.TLS describes it
// ("tls=TLSv1.3 verified=yes", "tls=none", "" when no connection was used).
func (m *Metrics) Transaction(d time.Duration, tlsDesc string) {
	if m == nil {
		return
	}
	m.obs.attempt.Observe(d.Seconds())
	switch {
	case tlsDesc == "":
	case strings.Contains(tlsDesc, "verified=yes"):
		m.obs.tls.WithLabelValues("verified").Inc()
	case tlsDesc == "tls=none":
		m.obs.tls.WithLabelValues("none").Inc()
	default:
		m.obs.tls.WithLabelValues("unverified").Inc()
	}
}
