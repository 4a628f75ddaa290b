package ingress_test

import (
	"io"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// metric returns the value of one exposition line ("name{labels}"), 0 if absent.
func metric(t *testing.T, m *telemetry.Metrics, series string) float64 {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	mm := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(b)
	if mm == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(mm[1]), 64)
	return v
}

// Every ingress limit that refuses something is counted by limit, and
// each reply by class (issue 20).
func TestLimitRefusalsAreCounted(t *testing.T) {
	m := telemetry.NewMetrics()
	f := start(t, func(c *ingress.Config) {
		c.Metrics = m
		c.MaxSessionsPerClient = 1
		c.MaxHops = 2
		c.MaxErrorsPerSession = 2
		c.InlineBodyMax = 0
		c.Policy = &ingress.StaticRelay{Domains: []string{"dst.test"}}
	})
	c := dial(t, f.addr)
	refused := dialRaw(t, f.addr) // a second session from the same client
	if r := refused.read(); r.Code != 421 {
		t.Fatalf("second session got %v, want 421", r)
	}
	openData(c)
	if r := c.sendRest(strings.Repeat("Received: from x.test by y.test; Tue, 1 Dec 2026 10:00:00 +0000\r\n", 3) + "\r\nbody\r\n"); r.Code != 554 {
		t.Fatalf("3 hops with max 2 got %v, want 554", r)
	}
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<b@dst.test>")
	queueID(t, c.sendData("Subject: ok\r\n\r\nbody\r\n"))
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(550, "RCPT TO:<x@elsewhere.test>") // the second error of the session (the hops were the first)
	if r, err := c.readReply(); err != nil || r.Code != 421 {
		t.Fatalf("after the error budget got %v, %v; want 421", r, err)
	}
	for series, want := range map[string]float64{
		`mailfwd_ingress_limit_refusals_total{limit="sessions_per_client"}`: 1,
		`mailfwd_ingress_limit_refusals_total{limit="hops"}`:                1,
		`mailfwd_ingress_limit_refusals_total{limit="error_budget"}`:        1,
		`mailfwd_ingress_limit_refusals_total{limit="connection_rate"}`:     0,
		`mailfwd_ingress_data_duration_seconds_count`:                       1,
		`mailfwd_ingress_replies_total{class="5xx"}`:                        2, // 554, 550
		`mailfwd_ingress_replies_total{class="3xx"}`:                        2, // two 354s
		`mailfwd_ingress_replies_total{class="4xx"}`:                        2, // the refused session's 421, the spent budget's 421
	} {
		if got := metric(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

func TestConnectionRateRefusalIsCounted(t *testing.T) {
	m := telemetry.NewMetrics()
	f := start(t, func(c *ingress.Config) { c.Metrics = m; c.MaxConnectionsPerClientPerMinute = 1 })
	dial(t, f.addr).expect(221, "QUIT")
	c := dialRaw(t, f.addr)
	if r := c.read(); r.Code != 421 {
		t.Fatalf("second connection within a minute got %v, want 421", r)
	}
	if got := metric(t, m, `mailfwd_ingress_limit_refusals_total{limit="connection_rate"}`); got != 1 {
		t.Errorf("connection_rate refusals = %v, want 1", got)
	}
}

// Refusals by the whole in-flight budget are counted (the client's share:
// TestInFlightLimitNames).
func TestInFlightRefusalIsCounted(t *testing.T) {
	for _, tc := range []struct {
		limit, second string // the limit that refuses; the second client's address
		whole         int64
	}{
		{"in_flight_bytes", "127.0.0.2", 150 << 10},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			m := telemetry.NewMetrics()
			f := start(t, func(c *ingress.Config) {
				c.Metrics = m
				c.InlineBodyMax = 64 << 10
				c.MaxInFlightBytes = tc.whole           // 0: the default, far above the share
				c.MaxInFlightBytesPerClient = 150 << 10 // one streaming message fits, a second does not
			})
			body := "Subject: a\r\n\r\n" + strings.Repeat(strings.Repeat("x", 1000)+"\r\n", 100)
			a := dial(t, f.addr)
			openData(a)
			writeRaw(t, a, body)
			waitFor(t, func() bool { return f.srv.InFlightBytes() > 96<<10 })
			b := dialFrom(t, tc.second, f.addr)
			openData(b)
			if r := b.sendRest(body); r.Code != 452 {
				t.Fatalf("over the in-flight budget got %v, want 452", r)
			}
			writeRaw(t, a, ".\r\n")
			queueID(t, a.read())
			for _, l := range []string{"in_flight_bytes", "in_flight_bytes_per_client"} {
				want := 0.0
				if l == tc.limit {
					want = 1
				}
				if got := metric(t, m, `mailfwd_ingress_limit_refusals_total{limit="`+l+`"}`); got != want {
					t.Errorf("%s refusals = %v, want %v", l, got, want)
				}
			}
		})
	}
}

func TestAuthFailuresAndStartTLSAreCounted(t *testing.T) {
	m := telemetry.NewMetrics()
	f := startAuth(t, true, 2, func(c *ingress.Config) { c.Metrics = m })
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	f.startTLS(c)
	c.expect(250, "EHLO client.test")
	c.expect(535, "%s", plainAuth("app1", "wrong"))
	if r := c.cmd("%s", plainAuth("app1", "wrong again")); r.Code != 421 {
		t.Fatalf("the failure that spends the budget got %v, want 421", r)
	}
	for series, want := range map[string]float64{
		`mailfwd_ingress_auth_failures_total{reason="bad_credentials"}`: 1,
		`mailfwd_ingress_auth_failures_total{reason="budget_spent"}`:    1,
		`mailfwd_ingress_starttls_total{result="ok"}`:                   1,
	} {
		if got := metric(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}
