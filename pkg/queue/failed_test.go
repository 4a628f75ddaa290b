package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// A failed envelope is kept on mail.failed.<domain>.<qid>, off the
// workers' consumer, and shows in Scan and Stats as the failed state.
func TestFailKeepsEnvelopeVisible(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, _ := queue.BootstrapTest(t, ctx, queue.Config{ClientName: t.Name()})
	e := &envelope.Envelope{QueueID: envelope.NewQueueID(), From: "s@src.test", Domain: "sub.example.com", BodyKey: "k", Parts: 1,
		Arrived: time.Now().UTC(), LastError: "shared error",
		Recipients: []envelope.Recipient{{Addr: "a@sub.example.com"}, {Addr: "b@sub.example.com", LastError: "own error", Status: "5.1.1"}}}
	if err := q.Fail(ctx, e, "gave up: "+strings.Repeat("x", 2000), "1"); err != nil {
		t.Fatalf("Fail: %v", err)
	}
	var got []queue.Entry
	if err := q.Scan(ctx, queue.Filter{States: []queue.State{queue.StateFailed}, Domains: []string{"example.com"}}, func(en queue.Entry) error {
		got = append(got, en)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Subject != queue.FailedSubject("sub.example.com", e.QueueID) || got[0].Env == nil {
		t.Fatalf("failed entries = %+v", got)
	}
	f := got[0].Env
	if f.FailedAt.IsZero() || len(f.LastError) > envelope.MaxErrorLen || !strings.HasPrefix(f.LastError, "gave up") {
		t.Errorf("failed envelope: at %v, last error %d bytes %q…", f.FailedAt, len(f.LastError), f.LastError[:10])
	}
	if f.Recipients[0].LastError != "shared error" || f.Recipients[1].LastError != "own error" || f.Recipients[1].Status != "5.1.1" {
		t.Errorf("recipient errors not kept: %+v", f.Recipients)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ByState[queue.StateFailed] != 1 || st.Pending != 0 {
		t.Errorf("stats: failed %d, consumer pending %d; want 1 failed, nothing for the workers", st.ByState[queue.StateFailed], st.Pending)
	}
}

// An envelope too large for max_payload with its per-recipient errors is
// still kept in the failed state, without them (never a Fail that keeps
// failing).
func TestFailOversizedEnvelope(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, _ := queue.BootstrapTest(t, ctx, queue.Config{ClientName: t.Name()})
	e := &envelope.Envelope{QueueID: envelope.NewQueueID(), From: "s@src.test", Domain: "big.test", BodyKey: "k", Parts: 1, Arrived: time.Now().UTC()}
	for i := range 3000 {
		e.Recipients = append(e.Recipients, envelope.Recipient{Addr: fmt.Sprintf("user%04d@big.test", i),
			LastError: envelope.TruncateError(fmt.Sprintf("451 4.2.0 %04d %s", i, strings.Repeat("y", 600)))})
	}
	if err := q.Fail(ctx, e, "gave up", "1"); err != nil {
		t.Fatalf("Fail: %v", err)
	}
	var got []queue.Entry
	if err := q.Scan(ctx, queue.Filter{States: []queue.State{queue.StateFailed}}, func(en queue.Entry) error {
		got = append(got, en)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Env == nil || len(got[0].Env.Recipients) != 3000 || got[0].Env.Recipients[0].LastError != "" {
		t.Fatalf("failed entries: %d", len(got))
	}
}
