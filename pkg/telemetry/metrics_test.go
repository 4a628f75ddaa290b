package telemetry

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMetricsExposition(t *testing.T) {
	m := NewMetrics()
	m.Sessions(3)
	m.Message("accepted")
	m.Message("accepted")
	m.Recipient("rejected")
	m.Delivery("deferred", Attempt{Destination: "example.com"})
	m.PolicyReload(true, "v1")
	m.PolicyReload(false, "")
	m.HandBack()
	m.Held()
	m.DSN("failed")
	m.EventDropped()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"mailfwd_ingress_sessions 3",
		`mailfwd_ingress_messages_total{result="accepted"} 2`,
		`mailfwd_ingress_recipients_total{result="rejected"} 1`,
		`mailfwd_delivery_recipients_total{result="deferred"} 1`,
		`mailfwd_policy_reloads_total{result="failed"} 1`,
		"mailfwd_policy_last_reload_ok 0",
		"mailfwd_worker_congested_handbacks_total 1",
		"mailfwd_worker_held_total 1",
		`mailfwd_dsn_total{kind="failed"} 1`,
		"mailfwd_events_dropped_total 1",
		"go_goroutines",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	var nilM *Metrics
	nilM.Sessions(1) // a nil *Metrics is a no-op, not a panic
	nilM.Message("accepted")
	nilM.EventDropped()
}

func TestConfigured(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none"}, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
	} {
		if got := Configured(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("Configured(%v) = %v, want %v", tc.env, got, tc.want)
		}
	}
}
