package ctl_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// eventExamples are the events command lines the help texts show.
func eventExamples(t *testing.T) []string {
	t.Helper()
	root := ctl.NewRoot(&bytes.Buffer{}, &bytes.Buffer{})
	var out []string
	for _, path := range [][]string{{"events", "tail"}, {"events", "webhook"}} {
		cmd, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(cmd.Example, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}

// Every events example in --help is in the README and docs/events.md, and
// runs: against a real NATS with events in it (the webhook against a
// loopback receiver instead of hooks.example.com).
func TestEventsExamplesRun(t *testing.T) {
	examples := eventExamples(t)
	if len(examples) != 3 {
		t.Fatalf("examples: %q", examples)
	}
	for _, doc := range []string{"../../README.md", "../../docs/events.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range examples {
			if !strings.Contains(string(b), ex) {
				t.Errorf("%s does not show the example %q", doc, ex)
			}
		}
	}

	n := testenv.StartNATS(t)
	bootstrap(t, n.URL(), 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	pub := events.NewPublisher(events.PublisherConfig{Source: "test"})
	if err := q.StartEvents(pub, 0); err != nil {
		t.Fatal(err)
	}
	const qid = "dcb9gghksdudshfsg7r0"
	emit := func() {
		pub.Emit(events.Event{Type: events.Delivered, QueueID: "other", Recipient: "a@example.com", Destination: "example.com", DSN: "2.0.0"})
		pub.Emit(events.Event{Type: events.Deferred, QueueID: qid, Recipient: "b@example.com", Destination: "example.com", DSN: "4.4.1", Reply: "451 4.4.1 later"})
		pub.Emit(events.Event{Type: events.Bounced, QueueID: "q3", Recipient: "c@mx.example.com", Destination: "mx.example.com", DSN: "5.1.1", Reply: "550 5.1.1 unknown"})
		pub.Emit(events.Event{Type: events.Expired, QueueID: "q4", Recipient: "d@example.org", Destination: "example.org", DSN: "4.4.7"})
		fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
		defer fcancel()
		pub.Close(fctx)
		pub = events.NewPublisher(events.PublisherConfig{Source: "test"})
		if err := q.StartEvents(pub, 0); err != nil {
			t.Fatal(err)
		}
	}

	var got sync.Map
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get(events.EventIDHeader), r.Header.Get(events.SignatureHeader))
		w.WriteHeader(http.StatusOK)
	}))
	defer receiver.Close()

	for _, ex := range examples {
		t.Run(ex, func(t *testing.T) {
			args := []string{"--nats-url", n.URL()}
			for _, f := range strings.Fields(ex) {
				switch {
				case strings.HasPrefix(f, "MAILFWD_WEBHOOK_SECRET="):
					t.Setenv("MAILFWD_WEBHOOK_SECRET", strings.TrimPrefix(f, "MAILFWD_WEBHOOK_SECRET="))
				case f == "mailfwdctl":
				case strings.HasPrefix(f, "https://hooks.example.com/"):
					args = append(args, receiver.URL+"/mail")
				default:
					args = append(args, f)
				}
			}
			out, errOut := &lockedBuffer{}, &lockedBuffer{}
			rctx, rcancel := context.WithCancel(ctx)
			defer rcancel()
			done := make(chan int, 1)
			go func() { done <- ctl.Execute(rctx, args, out, errOut) }()
			var want []string
			switch {
			case strings.Contains(ex, "--no-follow"):
				emit()
				want = []string{`"queue_id":"` + qid + `"`}
			case strings.Contains(ex, "webhook"):
				waitUntil(t, "the forwarder's consumer", func() bool { return strings.Contains(errOut.String(), "forwarding events") })
				emit()
				waitUntil(t, "2 events posted", func() bool {
					c := 0
					got.Range(func(_, sig any) bool {
						if strings.HasPrefix(sig.(string), "sha256=") {
							c++
						}
						return true
					})
					return c == 2
				})
			default: // follows: new events appear
				waitUntil(t, "the header (printed once its consumer exists)", func() bool { return strings.Contains(out.String(), "QUEUE ID") })
				emit()
				want = []string{qid, "q3"}
			}
			waitUntil(t, "the output", func() bool {
				for _, w := range want {
					if !strings.Contains(out.String(), w) {
						return false
					}
				}
				return true
			})
			if !strings.Contains(ex, "--no-follow") {
				rcancel()
			}
			if code := <-done; code != 0 {
				t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
			}
			if strings.Contains(out.String(), "other") || strings.Contains(out.String(), "q4") {
				t.Errorf("the filters let other events through:\n%s", out.String())
			}
		})
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
