package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/xid"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestObserveMetrics(t *testing.T) {
	m := NewMetrics()
	before := scrape(t, m)
	// Every label value an alert or panel names exists at 0 from the start.
	for _, want := range []string{
		`mailfwd_ingress_limit_refusals_total{limit="error_budget"} 0`,
		`mailfwd_ingress_auth_failures_total{reason="bad_credentials"} 0`,
		`mailfwd_ingress_replies_total{class="4xx"} 0`,
		`mailfwd_delivery_recipients_total{result="sent"} 0`,
		`mailfwd_delivery_tls_total{tls="none"} 0`,
	} {
		if !strings.Contains(before, want) {
			t.Errorf("a fresh /metrics lacks %q", want)
		}
	}
	m.LimitRefused("hops")
	m.AuthFailed("budget_spent")
	m.Reply(451)
	m.Reply(250)
	m.StartTLS(nil)
	m.StartTLS(errors.New("bad record MAC"))
	m.DataAccepted(time.Now().Add(-time.Second))
	m.Transaction(2*time.Second, "tls=TLSv1.3 verified=yes")
	m.Transaction(time.Second, "tls=none")
	arrived := time.Now().Add(-time.Hour)
	for i := range 25 { // more destinations than have a label of their own
		m.Delivery("sent", Attempt{Destination: fmt.Sprintf("d%d.test", i), NextHop: "[mx.d.test.]", Arrived: arrived, Ended: time.Now()})
	}
	m.Delivery("deferred", Attempt{Destination: "d0.test"})
	out := scrape(t, m)
	for _, want := range []string{
		`mailfwd_ingress_limit_refusals_total{limit="hops"} 1`,
		`mailfwd_ingress_auth_failures_total{reason="budget_spent"} 1`,
		`mailfwd_ingress_replies_total{class="4xx"} 1`,
		`mailfwd_ingress_replies_total{class="2xx"} 1`,
		`mailfwd_ingress_starttls_total{result="ok"} 1`,
		`mailfwd_ingress_starttls_total{result="failed"} 1`,
		`mailfwd_ingress_data_duration_seconds_count 1`,
		`mailfwd_delivery_attempt_duration_seconds_count 2`,
		`mailfwd_delivery_tls_total{tls="verified"} 1`,
		`mailfwd_delivery_tls_total{tls="none"} 1`,
		`mailfwd_delivery_recipients_total{result="sent"} 25`,
		`mailfwd_delivery_destination_recipients_total{destination="d0.test",result="deferred"} 1`,
		`mailfwd_delivery_destination_recipients_total{destination="other",result="sent"} 5`,
		`mailfwd_delivery_next_hop_recipients_total{next_hop="mx.d.test",result="sent"} 25`,
		`mailfwd_delivery_next_hop_recipients_total{next_hop="none",result="deferred"} 1`,
		`mailfwd_delivery_time_to_final_seconds_count{result="sent"} 25`,
		`mailfwd_delivery_time_to_final_seconds_bucket{result="sent",le="900"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	dests := map[string]bool{}
	for _, mm := range regexp.MustCompile(`mailfwd_delivery_destination_recipients_total\{destination="([^"]+)"`).FindAllStringSubmatch(out, -1) {
		dests[mm[1]] = true
	}
	if len(dests) != DefaultTopDestinations+1 {
		t.Errorf("%d destination label values, want %d and other", len(dests), DefaultTopDestinations)
	}
}

// Two workers: exactly one computes the queue metrics, with ages from
// arrival; the other takes over when the first gives the lease up.
func TestQueueStatsOneLeader(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	arrived := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	e := &envelope.Envelope{QueueID: xid.NewWithTime(arrived).String(), From: "s@src.test", Domain: "slow.test",
		Recipients: []envelope.Recipient{{Addr: "r@slow.test"}}, Body: []byte("x\r\n"), Size: 3, Parts: 1, Arrived: arrived}
	if err := q.Defer(ctx, e, time.Now().Add(time.Hour), "1"); err != nil {
		t.Fatal(err)
	}
	ms := []*Metrics{NewMetrics(), NewMetrics()}
	qs := []*QueueStats{{Source: q, Holder: "a", TopK: 5}, {Source: q, Holder: "b", TopK: 5}}
	for i := range qs {
		ms[i].RegisterQueueStats(qs[i])
		qs[i].tick(ctx, time.Minute)
	}
	a, b := scrape(t, ms[0]), scrape(t, ms[1])
	if !strings.Contains(a, "mailfwd_queue_stats_leader 1") || !strings.Contains(b, "mailfwd_queue_stats_leader 0") {
		t.Fatalf("want a the leader, b not:\n%s\n---\n%s", a, b)
	}
	if strings.Contains(b, "mailfwd_queue_messages") {
		t.Errorf("the second worker exports queue figures too:\n%s", b)
	}
	for _, want := range []string{`mailfwd_queue_messages{state="deferred"} 1`, `mailfwd_queue_messages{state="ready"} 0`,
		`mailfwd_queue_destination_messages{destination="slow.test",state="deferred"} 1`,
		`mailfwd_queue_destination_messages{destination="other",state="deferred"} 0`} {
		if !strings.Contains(a, want) {
			t.Errorf("leader lacks %q:\n%s", want, a)
		}
	}
	for _, re := range []string{`mailfwd_queue_oldest_age_seconds\{state="deferred"\} (\S+)`,
		`mailfwd_queue_destination_oldest_age_seconds\{destination="slow.test",state="deferred"\} (\S+)`} {
		mm := regexp.MustCompile(re).FindStringSubmatch(a)
		if mm == nil {
			t.Fatalf("leader lacks %s:\n%s", re, a)
		}
		if age, _ := strconv.ParseFloat(mm[1], 64); age < 3*3600 {
			t.Errorf("%s = %v, want at least 3h (the age since arrival)", re, age)
		}
	}
	if err := q.DropLease(ctx, QueueLease, "a"); err != nil {
		t.Fatal(err)
	}
	qs[1].tick(ctx, time.Minute)
	qs[0].tick(ctx, time.Minute)
	if !strings.Contains(scrape(t, ms[1]), "mailfwd_queue_stats_leader 1") || !strings.Contains(scrape(t, ms[0]), "mailfwd_queue_stats_leader 0") {
		t.Error("b did not take over the dropped lease")
	}
}
