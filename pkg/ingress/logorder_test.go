package ingress_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/ingress"
)

// lines records log messages in the order they are written.
type lines struct {
	mu  sync.Mutex
	msg []string
}

func (l *lines) Enabled(context.Context, slog.Level) bool { return true }
func (l *lines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msg = append(l.msg, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *lines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lines) WithGroup(string) slog.Handler      { return l }

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msg...)
}

// instantWorker is the fastest worker there could be: the moment the
// queue holds an envelope, its recipients are delivered and logged.
type instantWorker struct {
	ingress.Queue
	log *slog.Logger
}

func (w instantWorker) Enqueue(ctx context.Context, envs []*envelope.Envelope) error {
	if err := w.Queue.Enqueue(ctx, envs); err != nil {
		return err
	}
	for _, e := range envs {
		for _, r := range e.Recipients {
			w.log.Info(e.QueueID + ": to=<" + r.Addr + ">, stat=Sent (ok)")
		}
	}
	return nil
}

// Defect 2 of issue 20: the receipt line (from=… nrcpts=) was logged after
// the envelope was published, so a fast worker's "to=… stat=Sent" line came
// first. The receipt is logged before any envelope can be delivered.
func TestReceiptLoggedBeforeDelivery(t *testing.T) {
	rec := &lines{}
	log := slog.New(rec)
	f := startWith(t, func(c *ingress.Config) { c.Logger = log },
		func(q ingress.Queue) ingress.Queue { return instantWorker{Queue: q, log: log} })
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.example")
	c.expect(250, "MAIL FROM:<alice@src.test>")
	c.expect(250, "RCPT TO:<bob@dst.test>")
	qid := queueID(t, c.sendData("Subject: order\r\n\r\nbody\r\n"))

	from, sent := -1, -1
	for i, m := range rec.all() {
		switch {
		case strings.HasPrefix(m, qid+": from=<alice@src.test>") && from < 0:
			from = i
		case strings.HasPrefix(m, qid+": to=<bob@dst.test>") && sent < 0:
			sent = i
		}
	}
	if from < 0 || sent < 0 {
		t.Fatalf("want both a receipt and a delivery line for %s: %q", qid, rec.all())
	}
	if from > sent {
		t.Fatalf("delivery line (#%d) logged before the receipt line (#%d): %q", sent, from, rec.all())
	}
}

// refusingQueue stands for a queue that does not take the envelopes.
type refusingQueue struct{ ingress.Queue }

func (refusingQueue) Enqueue(context.Context, []*envelope.Envelope) error {
	return errors.New("injected: the queue refuses")
}

// A message whose envelopes the queue refused has its "received" event
// followed by "not_queued", and the client gets a 4xx.
func TestEventsOfAMessageNotQueued(t *testing.T) {
	pub := events.NewPublisher(events.PublisherConfig{Source: "ingress"})
	f := startWith(t, func(c *ingress.Config) { c.Events = pub }, func(q ingress.Queue) ingress.Queue { return refusingQueue{q} })
	if err := f.q.StartEvents(pub, 0); err != nil {
		t.Fatal(err)
	}
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.example")
	c.expect(250, "MAIL FROM:<alice@src.test>")
	c.expect(250, "RCPT TO:<bob@dst.test>")
	if r := c.sendData("Subject: x\r\n\r\nbody\r\n"); r.Code/100 != 4 {
		t.Fatalf("reply %v, want 4xx", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pub.Close(ctx)
	st, err := f.q.EventStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []events.Type
	if err := events.Follow(ctx, st, events.Filter{}, events.FollowOptions{All: true, Stop: true}, func(s events.Stored) error {
		if s.Recipient == "bob@dst.test" && s.Sender == "alice@src.test" {
			got = append(got, s.Type)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != events.Received || got[1] != events.NotQueued {
		t.Fatalf("events %v, want received then not_queued", got)
	}
}
