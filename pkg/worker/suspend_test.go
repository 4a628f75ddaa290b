package worker

import (
	"context"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// A suspension lifted in the fleet state (mailfwdctl shaping resume) that
// this worker's view still holds (its watch has not brought the change
// yet) sets nothing aside until the suspension's old end: the mail is due
// at once. (Before, a resume followed at once by queue flush could set the
// flushed mail aside for the rest of the lifted suspension: the flaky
// TestFleetReplyRuleSuspends.)
func TestResumedSuspensionSetsNothingAside(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	b, err := r.q.ShapingBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sh := shaping.New(b, shaping.Config{Owner: "t"}) // not Run: no watch brings the resume
	if _, err := sh.Suspend(ctx, "d.dest.test", 10*time.Minute, "421 4.7.0 try again later"); err != nil {
		t.Fatal(err)
	}
	if ok, err := shaping.Resume(ctx, b, "d.dest.test"); !ok || err != nil {
		t.Fatalf("resume: %v %v", ok, err)
	}
	if _, ok := sh.SuspendedDomain("dest.test"); !ok {
		t.Fatal("the worker's view lost the suspension without a watch; the scenario does not hold")
	}
	snk := sink.New(sink.Config{})
	r.route("dest.test", snk.Start(t, "127.0.0.1:0"))
	r.run(Config{Shaper: sh, RepanicForTests: true}, nil, nil)
	r.message(sender, testBody("after-resume"), map[string][]string{"dest.test": {"u@dest.test"}})
	var due time.Time
	waitFor(t, ctx, "the message delivered or set aside", func() bool {
		if snk.Count() > 0 {
			return true
		}
		if d := r.entries(queue.StateDeferred); len(d) > 0 {
			due = d[0].Env.NextAttempt
			return true
		}
		return false
	})
	if !due.IsZero() && time.Until(due) > time.Minute {
		t.Fatalf("mail for a resumed destination set aside until %s (the lifted suspension's end)", due.Format(time.RFC3339))
	}
}

// A next hop's msgs-per-conn in the shaping key applies to the
// connections to it, as a domain's does: of six messages one after another
// on pooled connections to [127.0.0.1] with msgs-per-conn=2, no connection
// carries more than two. (Before, only a domain rule's was applied: one
// connection carried them all.)
func TestNextHopMsgsPerConn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{})
	r.route("dest.test", snk.Start(t, "127.0.0.1:0"))
	rules := shaping.NewRules()
	if err := rules.Add("[127.0.0.1]", "msgs-per-conn=2", 1); err != nil {
		t.Fatal(err)
	}
	r.run(Config{Shaping: func() *shaping.Rules { return rules }, RepanicForTests: true}, nil, nil)
	for i := range 6 {
		r.message(sender, testBody("m"), map[string][]string{"dest.test": {"u@dest.test"}})
		if err := snk.WaitCount(ctx, i+1); err != nil {
			t.Fatal(err)
		}
	}
	perConn := map[string]int{}
	for _, m := range snk.Messages() {
		perConn[m.RemoteAddr]++
	}
	for addr, n := range perConn {
		if n > 2 {
			t.Errorf("connection %s carried %d messages, want at most 2 (the next hop's msgs-per-conn)", addr, n)
		}
	}
	if len(perConn) >= 6 {
		t.Errorf("no connection was reused (%d for 6 messages): the scenario did not hold", len(perConn))
	}
}
