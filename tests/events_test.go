package tests

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// Every per-recipient state change of a message is an event on the EVENTS
// stream, each recipient's received before its outcome.
func TestDeliveryEvents(t *testing.T) {
	var refusals atomic.Int32
	e := newEnv(t, envOptions{blob: "fs",
		ingressSetup: func(in *daemon.Ingress) { in.Events.Enabled = true },
		workerSetup:  func(wk *daemon.Worker) { wk.Events.Enabled = true },
		onRcpt: func(rcpt string, seen int) *smtp.SMTPError {
			switch {
			case strings.HasPrefix(rcpt, "later@") && seen < 1:
				refusals.Add(1)
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}
			case strings.HasPrefix(rcpt, "perm@"):
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
			}
			return nil
		}})
	alpha := e.sinks["127.0.0.2"]
	res := send(e.smtp, "", "sender@origin.test", []string{"now@alpha.test", "later@alpha.test", "perm@alpha.test"},
		message("events", "ev1@origin.test", "hello\r\n"), nil)
	if res.Err != nil || res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "the deferred recipient delivered", 30*time.Second, func() bool {
		return alpha.RecipientsDelivered()["later@alpha.test"] >= 1
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: e.nats.URL(), ClientName: "events-reader"})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	st, err := q.EventStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]events.Type{
		"now@alpha.test":   {events.Received, events.Delivered},
		"later@alpha.test": {events.Received, events.Deferred, events.Delivered},
		"perm@alpha.test":  {events.Received, events.Bounced},
	}
	var got map[string][]events.Event
	waitFor(t, "every event stored", 30*time.Second, func() bool {
		got = map[string][]events.Event{}
		err := events.Follow(ctx, st, events.Filter{Domains: []string{"alpha.test"}}, events.FollowOptions{All: true, Stop: true},
			func(s events.Stored) error {
				got[s.Recipient] = append(got[s.Recipient], s.Event)
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		for r, w := range want {
			if len(got[r]) < len(w) {
				return false
			}
		}
		return true
	})
	for r, w := range want {
		var types []events.Type
		for _, ev := range got[r] {
			types = append(types, ev.Type)
			if ev.Schema != events.Schema || ev.QueueID != res.QueueID || ev.Sender != "sender@origin.test" ||
				ev.MessageID != "<ev1@origin.test>" || ev.Destination != "alpha.test" || ev.Arrived.IsZero() {
				t.Errorf("%s: event lacks the message's facts: %+v", r, ev)
			}
			switch ev.Type {
			case events.Deferred:
				if !strings.Contains(ev.Reply, "451 4.3.1 Insufficient system storage") || ev.DSN != "4.3.1" || ev.Attempt != 1 ||
					ev.NextAttempt.IsZero() || ev.Relay == "" {
					t.Errorf("deferred event: %+v", ev)
				}
			case events.Delivered:
				if ev.DSN[0] != '2' || ev.Relay == "" || ev.RelayAddr == "" || ev.TLS == "" {
					t.Errorf("delivered event: %+v", ev)
				}
			case events.Bounced:
				if ev.DSN != "5.1.1" || !strings.Contains(ev.Reply, "User unknown") {
					t.Errorf("bounced event: %+v", ev)
				}
				if ev.DSNQueueID == "" || ev.DSNQueueID == ev.QueueID {
					t.Errorf("bounced event without the DSN's queue id: %+v", ev)
				}
			}
		}
		if !equalTypes(types, w) {
			t.Errorf("%s: events %v, want %v in this order", r, types, w)
		}
	}
	// The DSN's own events are under the queue id the bounce names.
	bounced := got["perm@alpha.test"][len(got["perm@alpha.test"])-1]
	if bounced.DSNQueueID == "" {
		t.FailNow()
	}
	var dsnEvents []events.Event
	waitFor(t, "the DSN's events", 30*time.Second, func() bool {
		dsnEvents = nil
		err := events.Follow(ctx, st, events.Filter{QueueIDs: []string{bounced.DSNQueueID}}, events.FollowOptions{All: true, Stop: true},
			func(s events.Stored) error {
				dsnEvents = append(dsnEvents, s.Event)
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		return len(dsnEvents) > 0
	})
	if ev := dsnEvents[0]; ev.Sender != "" || ev.Recipient != "sender@origin.test" {
		t.Errorf("the DSN's event: %+v", ev)
	}
}

func equalTypes(a, b []events.Type) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Defect 4 of issue 20, in the fleet's logs: after `queue bounce` and
// `queue purge` the original queue id's last log line says what the
// operator did (it was stat=Deferred), and the action is logged once with
// its actor.
func TestOperatorActionsInTheWorkersLog(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", retryFirst: time.Hour, onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try later"}
	}})
	var qids []string
	for _, rcpt := range []string{"bounce@alpha.test", "purge@alpha.test"} {
		res := send(e.smtp, "", "", []string{rcpt}, message("stuck", "", "x\r\n"), nil) // null sender: no DSN traffic
		if res.Err != nil || res.FinalCode != 250 {
			t.Fatalf("send: %d %v", res.FinalCode, res.Err)
		}
		qids = append(qids, res.QueueID)
		waitFor(t, "the first attempt deferred", 30*time.Second, func() bool {
			return strings.Contains(e.logs.String(), res.QueueID+": to=<"+rcpt+">") && strings.Contains(e.logs.String(), "stat=Deferred")
		})
	}
	e.mustCtl(t, "queue", "bounce", "-I", qids[0], "--yes", "--blob-store", e.blobURL)
	e.mustCtl(t, "queue", "purge", "-I", qids[1], "--yes", "--blob-store", e.blobURL)

	want := map[string]string{qids[0]: "stat=Bounced by operator", qids[1]: "stat=Purged by operator"}
	waitFor(t, "the operator's lines in the workers' log", 30*time.Second, func() bool {
		logs := e.logs.String()
		return strings.Count(logs, "audit: action=queue.bounce") >= 1 && strings.Count(logs, "audit: action=queue.purge") >= 1 &&
			strings.Contains(logs, want[qids[0]]) && strings.Contains(logs, want[qids[1]])
	})
	logs := e.logs.String()
	for qid, w := range want {
		var last string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, `msg="`+qid+": ") {
				last = l
			}
		}
		if !strings.Contains(last, w) {
			t.Errorf("the last line under %s is %q, want %q", qid, last, w)
		}
	}
	for _, a := range []string{"queue.bounce", "queue.purge"} {
		if n := strings.Count(logs, "audit: action="+a+" "); n != 1 {
			t.Errorf("%s logged %d times, want once", a, n)
		}
	}
}
