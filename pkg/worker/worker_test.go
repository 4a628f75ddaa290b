package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

func TestBackoff(t *testing.T) {
	type step struct {
		n    int
		base time.Duration // delay before jitter
	}
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{
			name: "defaults: 5m doubling, capped at 1h",
			cfg:  Config{},
			steps: []step{
				{1, 5 * time.Minute}, {2, 10 * time.Minute}, {3, 20 * time.Minute},
				{4, 40 * time.Minute}, {5, time.Hour}, {6, time.Hour}, {50, time.Hour},
			},
		},
		{
			name: "growth and cap",
			cfg:  Config{RetryFirst: time.Second, RetryFactor: 3, RetryMax: 20 * time.Second},
			steps: []step{
				{1, time.Second}, {2, 3 * time.Second}, {3, 9 * time.Second},
				{4, 20 * time.Second}, {10, 20 * time.Second}, {1000, 20 * time.Second},
			},
		},
		{
			name:  "factor 1 keeps the first delay",
			cfg:   Config{RetryFirst: 200 * time.Millisecond, RetryFactor: 1, RetryMax: time.Hour},
			steps: []step{{1, 200 * time.Millisecond}, {2, 200 * time.Millisecond}, {30, 200 * time.Millisecond}},
		},
		{
			name:  "first delay above the cap is capped",
			cfg:   Config{RetryFirst: 2 * time.Hour, RetryMax: time.Hour},
			steps: []step{{1, time.Hour}, {2, time.Hour}},
		},
		{
			name:  "factor below 1 falls back to 2",
			cfg:   Config{RetryFirst: time.Minute, RetryFactor: 0.5, RetryMax: time.Hour},
			steps: []step{{1, time.Minute}, {2, 2 * time.Minute}, {3, 4 * time.Minute}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := New(tt.cfg, nil, nil, nil, nil, nil)
			for _, s := range tt.steps {
				lo := time.Duration(float64(s.base) * 0.8)
				hi := time.Duration(float64(s.base) * 1.2)
				seen := map[time.Duration]bool{}
				for range 200 {
					d := w.backoff(s.n)
					if d < lo || d > hi {
						t.Fatalf("backoff(%d) = %v, want within [%v, %v]", s.n, d, lo, hi)
					}
					seen[d] = true
				}
				// Jitter: a backlog that failed together must not retry together.
				if len(seen) < 10 {
					t.Errorf("backoff(%d): only %d distinct delays in 200 draws; no jitter", s.n, len(seen))
				}
			}
		})
	}
}

// rcptCounter records how often the sink saw each RCPT TO.
type rcptCounter struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *rcptCounter) add(rcpt string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[rcpt]++
}

func (c *rcptCounter) get(rcpt string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[rcpt]
}

func TestRunDeliversRetriesAndCleansUp(t *testing.T) {
	ctx, cancelTest := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelTest()

	n, q := bootstrapped(t, ctx)
	cons, err := q.Consumer(ctx)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	store, err := blob.NewFS(t.TempDir(), false)
	if err != nil {
		t.Fatalf("blob store: %v", err)
	}

	const (
		okA      = "a@one.test"
		flaky    = "flaky@one.test" // 451 the first time
		okC      = "c@two.test"
		rejected = "nobody@two.test" // always 550
	)
	counts := &rcptCounter{seen: map[string]int{}}
	snk := sink.New(sink.Config{
		OnRcpt: func(rcpt string, seen int) *smtp.SMTPError {
			counts.add(rcpt)
			switch {
			case rcpt == flaky && seen == 0:
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "Try again later"}
			case rcpt == rejected:
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
			}
			return nil
		},
	})
	sinkAddr := snk.Start(t, "127.0.0.1:0")
	_, port, err := net.SplitHostPort(sinkAddr)
	if err != nil {
		t.Fatalf("sink address %q: %v", sinkAddr, err)
	}
	table := route.NewTable()
	if err := table.Add(".", "smtp:[127.0.0.1]:"+port); err != nil {
		t.Fatalf("route: %v", err)
	}
	dc, err := delivery.New(delivery.Config{HeloName: "worker.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("delivery: %v", err)
	}
	t.Cleanup(func() { _ = dc.Close() })

	w := New(Config{
		Concurrency:     4,
		FetchWait:       200 * time.Millisecond,
		AttemptTimeout:  20 * time.Second,
		RetryFirst:      200 * time.Millisecond,
		RetryMax:        time.Second,
		DrainTimeout:    5 * time.Second,
		RepanicForTests: true,
	}, cons, q, store, &route.Router{Table: table}, dc)

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(runCtx) }()

	// One message, two recipient domains: body first, then the envelopes.
	qid := envelope.NewQueueID()
	body := []byte("Received: from client.test\r\nMessage-ID: <" + qid + "@client.test>\r\nSubject: worker test\r\n\r\nHello.\r\n")
	if err := store.Put(ctx, qid, body); err != nil {
		t.Fatalf("put body: %v", err)
	}
	now := time.Now().UTC()
	mk := func(domain string, rcpts ...string) *envelope.Envelope {
		e := &envelope.Envelope{
			QueueID: qid, From: "sender@src.test", Domain: domain, BodyKey: qid,
			Size: int64(len(body)), Parts: 2, Arrived: now, MsgID: "<" + qid + "@client.test>",
		}
		for _, r := range rcpts {
			e.Recipients = append(e.Recipients, envelope.Recipient{Addr: r})
		}
		return e
	}
	if err := q.Enqueue(ctx, []*envelope.Envelope{mk("one.test", okA, flaky), mk("two.test", okC, rejected)}); err != nil {
		t.Fatalf("enqueue: %v", err)
	}

	// Both domains delivered at once (minus the 451 and the 550 recipient),
	// then the retry for the 451 recipient.
	// Plus the DSN for the 550 recipient, sent back to the sender (routed to
	// the same sink by the catch-all route).
	if err := snk.WaitCount(ctx, 4); err != nil {
		t.Fatalf("%v; delivered so far: %v", err, snk.RecipientsDelivered())
	}

	// The body goes when every recipient is final.
	var gerr error
	for range 200 {
		if _, gerr = store.Get(ctx, qid); errors.Is(gerr, blob.ErrNotFound) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !errors.Is(gerr, blob.ErrNotFound) {
		t.Fatalf("body still in the store after all recipients were final (Get err = %v)", gerr)
	}

	// Nothing may still be pending: the work queue (ready and scheduled) is empty.
	if err := waitStreamEmpty(ctx, n.URL()); err != nil {
		t.Fatal(err)
	}

	got := snk.RecipientsDelivered()
	want := map[string]int{okA: 1, flaky: 1, okC: 1, "sender@src.test": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivered recipients = %v, want %v", got, want)
	}
	if c := counts.get(rejected); c != 1 {
		t.Errorf("550 recipient was tried %d times, want exactly 1 (permanent failures are not retried)", c)
	}
	if c := counts.get(flaky); c != 2 {
		t.Errorf("451 recipient was tried %d times, want 2 (one failure, one retry)", c)
	}
	if c := counts.get(okA); c != 1 {
		t.Errorf("delivered recipient %s was offered %d times, want 1", okA, c)
	}
	msgs := snk.Messages()
	var retry *sink.Received
	var bounces int
	for i, m := range msgs {
		if m.From == "" && slices.Equal(m.Recipients, []string{"sender@src.test"}) {
			bounces++
			for _, want := range []string{"Content-Type: multipart/report; report-type=delivery-status", "Final-Recipient: rfc822; " + rejected, "Action: failed", "Status: 5.1.1", "Subject: worker test"} {
				if !strings.Contains(string(m.Data), want) {
					t.Errorf("DSN lacks %q:\n%s", want, m.Data)
				}
			}
			continue
		}
		if m.From != "sender@src.test" {
			t.Errorf("message %d from %q", i, m.From)
		}
		if string(m.Data) != string(body) {
			t.Errorf("message %d body = %q, want %q", i, m.Data, body)
		}
		if slices.Equal(m.Recipients, []string{flaky}) {
			retry = &msgs[i]
		}
	}
	if bounces != 1 {
		t.Errorf("got %d DSNs to the sender, want 1", bounces)
	}
	if retry == nil {
		t.Errorf("no separate retry transaction for %s; messages: %+v", flaky, msgs)
	} else if !retry.At.After(msgs[0].At) {
		t.Errorf("retry arrived before the first delivery")
	}

	stopRun()
	select {
	case err := <-runDone:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

// waitStreamEmpty polls the MAIL stream until it holds no message (nothing
// ready, nothing scheduled), for at most 10s.
func waitStreamEmpty(ctx context.Context, url string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	var msgs uint64
	for range 100 {
		s, err := js.Stream(ctx, "MAIL")
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return fmt.Errorf("stream info: %w", err)
		}
		if msgs = info.State.Msgs; msgs == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("stream MAIL still holds %d messages after every recipient was final", msgs)
}
