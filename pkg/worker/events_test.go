package worker

import (
	"context"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// eventsOf starts a publisher on the rig's queue and returns it with a
// function that lists the stored events of recipient rcpt.
func (r *rig) events() (*events.Publisher, func(rcpt string) []events.Event) {
	r.t.Helper()
	p := events.NewPublisher(events.PublisherConfig{Source: "worker"})
	if err := r.q.StartEvents(p, 0); err != nil {
		r.t.Fatal(err)
	}
	st, err := r.q.EventStream(r.ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	return p, func(rcpt string) []events.Event {
		var out []events.Event
		err := events.Follow(r.ctx, st, events.Filter{}, events.FollowOptions{All: true, Stop: true}, func(s events.Stored) error {
			if s.Recipient == rcpt {
				out = append(out, s.Event)
			}
			return nil
		})
		if err != nil {
			r.t.Fatal(err)
		}
		return out
	}
}

// A held domain's mail, mail past the queue-return time, and mail that
// ends in the failed state each get their event.
func TestHeldExpiredAndFailedEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{OnRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "Mailbox busy"}
	}})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	pub, stored := r.events()
	r.run(Config{Events: pub, QueueReturn: time.Nanosecond, Held: func(d string) bool { return d == "held.test" }}, nil, nil)

	r.message(sender, testBody("held"), map[string][]string{"held.test": {"h@held.test"}})
	r.message(sender, testBody("exp"), map[string][]string{"exp.test": {"x@exp.test"}})
	want := map[string]events.Type{"h@held.test": events.Held, "x@exp.test": events.Expired}
	for rcpt, typ := range want {
		var got []events.Event
		waitFor(t, ctx, "the "+string(typ)+" event of "+rcpt, func() bool {
			got = stored(rcpt)
			return len(got) > 0
		})
		ev := got[0]
		if ev.Type != typ || ev.Sender != sender || ev.QueueID == "" || ev.MessageID == "" {
			t.Errorf("%s: %+v, want a %s event with the message's facts", rcpt, ev, typ)
		}
		if typ == events.Expired && (ev.DSN != "4.4.7" || ev.Attempt != 1 || ev.Relay == "") {
			t.Errorf("expired event: %+v", ev)
		}
	}
}

func TestFailedStateEvent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{OnRcpt: func(string, int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	pub, stored := r.events()
	// Every DSN fails to be stored: the envelope ends in the failed state.
	store := &failingPuts{BodyStore: r.store}
	w := New(Config{Concurrency: 2, FetchWait: 200 * time.Millisecond, RetryFirst: 100 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		MaxHandlings: 2, RepanicForTests: true, Events: pub}, r.cons, r.q, store, &route.Router{Table: r.table}, r.dc)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = w.Run(runCtx) }()
	r.message(sender, testBody("fail"), map[string][]string{"fail.test": {"b@fail.test"}})
	var got []events.Event
	waitFor(t, ctx, "the failed event", func() bool {
		got = stored("b@fail.test")
		return len(got) > 0 && got[len(got)-1].Type == events.Failed
	})
	if got[0].Type != events.Bounced || got[0].DSN != "5.1.1" {
		t.Errorf("first event %+v, want the bounce", got[0])
	}
	if last := got[len(got)-1]; last.DSN != "5.1.1" || last.Reply == "" {
		t.Errorf("failed event %+v, want the recipient's status and the reason", last)
	}
}
