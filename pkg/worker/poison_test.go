package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

const sender = "sender@src.test"

// dsnsTo counts the DSNs (null sender) the sink got for rcpt.
func dsnsTo(s *sink.Server, rcpt string) []sink.Received {
	var out []sink.Received
	for _, m := range s.Messages() {
		if m.From == "" && len(m.Recipients) == 1 && m.Recipients[0] == rcpt {
			out = append(out, m)
		}
	}
	return out
}

// A destination answering a malformed enhanced status (go-smtp parses any
// digits) must end in one DSN with the status clamped to X.0.0, and the
// recipient that got 250 in the same transaction is delivered once, never
// again on a redelivery.
func TestMalformedStatusIsNotRedelivered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{OnRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if rcpt == "b@poison.test" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1234, 1}, Message: "who knows"}
		}
		return nil
	}})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	r.run(Config{RepanicForTests: true}, nil, nil)

	qid := envelope.NewQueueID()
	r.message(sender, testBody(qid), map[string][]string{"poison.test": {"a@poison.test", "b@poison.test"}})

	waitFor(t, ctx, "the DSN for b@poison.test", func() bool { return len(dsnsTo(snk, sender)) > 0 })
	if err := waitStreamEmpty(ctx, r.url); err != nil {
		t.Fatal(err)
	}
	d := dsnsTo(snk, sender)
	if len(d) != 1 {
		t.Errorf("%d DSNs, want 1", len(d))
	}
	if !strings.Contains(string(d[0].Data), "Status: 5.0.0") || !strings.Contains(string(d[0].Data), "Final-Recipient: rfc822; b@poison.test") {
		t.Errorf("DSN lacks the clamped status 5.0.0 for b@poison.test:\n%s", d[0].Data)
	}
	if n := snk.RecipientsDelivered()["a@poison.test"]; n != 1 {
		t.Errorf("a@poison.test delivered %d times, want 1", n)
	}
}

// failingPuts is the real file store with Put failing: every DSN fails to
// be stored (a body store outage for writes).
type failingPuts struct {
	BodyStore
	puts atomic.Int64
}

func (f *failingPuts) Put(context.Context, string, []byte) error {
	f.puts.Add(1)
	return errors.New("injected: body store refuses writes")
}

// A handling that keeps failing after the delivery (here: the DSN cannot be
// stored) must not deliver the 250 recipient again, and after
// MaxHandlings it ends in the terminal failed state, visible in the queue.
func TestRepeatedFailureEndsInFailedState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{OnRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if rcpt == "b@fail.test" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
		}
		return nil
	}})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	store := &failingPuts{BodyStore: r.store}
	w := New(Config{Concurrency: 2, FetchWait: 200 * time.Millisecond, RetryFirst: 100 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		MaxHandlings: 3, RepanicForTests: true}, r.cons, r.q, store, &route.Router{Table: r.table}, r.dc)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = w.Run(runCtx) }()

	qid := r.message(sender, testBody("fail"), map[string][]string{"fail.test": {"a@fail.test", "b@fail.test"}})

	var failed []queue.Entry
	waitFor(t, ctx, "the envelope in the failed state", func() bool {
		failed = r.entries(queue.StateFailed)
		return len(failed) == 1
	})
	e := failed[0].Env
	if e == nil || e.QueueID != qid || e.FailedAt.IsZero() || !strings.Contains(e.LastError, "injected") {
		t.Errorf("failed entry = %+v, want queue id %s, a failure time and the cause", e, qid)
	}
	if e != nil && (len(e.Recipients) != 1 || e.Recipients[0].Addr != "b@fail.test" || e.Recipients[0].Status != "5.1.1" ||
		!strings.Contains(e.Recipients[0].LastError, "No such user")) {
		t.Errorf("failed entry recipients = %+v, want only b@fail.test (a@fail.test was delivered)", e.Recipients)
	}
	if n := snk.RecipientsDelivered()["a@fail.test"]; n != 1 {
		t.Errorf("a@fail.test delivered %d times, want 1", n)
	}
	if got := len(r.entries(queue.StateReady)) + len(r.entries(queue.StateDeferred)); got != 0 {
		t.Errorf("%d envelopes still ready or deferred besides the failed one", got)
	}
	// The handlings stopped: MaxHandlings DSN attempts plus the last one at the end.
	if p := store.puts.Load(); p > 4 {
		t.Errorf("%d DSN store attempts, want at most MaxHandlings+1 = 4", p)
	}
}

// panicky panics while routing one domain.
type panicky struct {
	Router
	hits atomic.Int64
}

func (p *panicky) Route(ctx context.Context, domain string) ([]delivery.Hop, error) {
	if domain == "boom.test" {
		p.hits.Add(1)
		panic("injected panic in the router")
	}
	return p.Router.Route(ctx, domain)
}

// A message whose handling panics every time ends in the failed state with
// a DSN to its sender after MaxHandlings, instead of being redelivered forever.
func TestPanicEndsInFailedState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	pr := &panicky{Router: &route.Router{Table: r.table}}
	metrics := telemetry.NewMetrics()
	r.run(Config{MaxHandlings: 3, Metrics: metrics}, pr, nil)

	qid := envelope.NewQueueID()
	r.message(sender, testBody(qid), map[string][]string{"boom.test": {"x@boom.test"}})

	waitFor(t, ctx, "the DSN for x@boom.test", func() bool { return len(dsnsTo(snk, sender)) > 0 })
	waitFor(t, ctx, "the failed entry", func() bool { return len(r.entries(queue.StateFailed)) == 1 })
	if h := pr.hits.Load(); h != 3 {
		t.Errorf("routed %d times, want MaxHandlings = 3", h)
	}
	rec := httptest.NewRecorder()
	metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "mailfwd_worker_failed_total 1") {
		t.Errorf("metrics lack mailfwd_worker_failed_total 1:\n%s", grep(rec.Body.String(), "mailfwd_worker"))
	}
	d := dsnsTo(snk, sender)[0]
	for _, want := range []string{"Final-Recipient: rfc822; x@boom.test", "Action: failed"} {
		if !strings.Contains(string(d.Data), want) {
			t.Errorf("DSN lacks %q:\n%s", want, d.Data)
		}
	}
}

// An envelope near max_payload must still be deferable: the last error is
// bounded and stored once, not once more per recipient.
func TestDeferNearMaxPayload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // connection refused: every recipient gets the same temporary error
	r.route(".", dead)
	r.run(Config{RepanicForTests: true, RetryFirst: time.Hour, RetryMax: time.Hour}, nil, nil)

	qid := envelope.NewQueueID()
	var rcpts []string
	for i := range 11000 {
		rcpts = append(rcpts, fmt.Sprintf("recipient-%05d-with-a-rather-long-local-part@big.test", i))
	}
	r.message(sender, testBody(qid), map[string][]string{"big.test": rcpts})

	var def []queue.Entry
	waitFor(t, ctx, "the deferred envelope", func() bool {
		def = r.entries(queue.StateDeferred)
		return len(def) == 1
	})
	e := def[0].Env
	if e.Attempts != 1 || len(e.Recipients) != len(rcpts) || !strings.Contains(e.LastError, "Connection refused") {
		t.Errorf("deferred envelope: attempts %d, %d recipients, last error %q", e.Attempts, len(e.Recipients), e.LastError)
	}
	if n := len(r.entries(queue.StateFailed)); n != 0 {
		t.Errorf("%d failed entries, want 0", n)
	}
}
