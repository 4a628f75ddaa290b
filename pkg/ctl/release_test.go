package ctl_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/queue"
)

// A worker that has not yet seen the hold go parks the released envelope
// again; the release's second pass releases it once more. The count is of
// envelopes, not of moves: one message released is "1 envelopes".
func TestReleaseCountsAnEnvelopeParkedAgainOnce(t *testing.T) {
	n, q, ctx := startQueue(t, "stale-worker", 60*time.Second)
	if _, err := q.SetHold(ctx, "held.test", "maintenance"); err != nil {
		t.Fatal(err)
	}
	e := smallMessage("held.test")
	if err := q.MoveToHeld(ctx, e, "1"); err != nil {
		t.Fatal(err)
	}

	// The stale worker: the first ready copy it sees goes back to held.
	cons, err := q.Consumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var reparked atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = cons.Fetch(1, 200*time.Millisecond, func(j *queue.Job) {
				if reparked.Load() == 0 && j.Env != nil {
					if err := q.MoveToHeld(ctx, j.Env, j.Key()); err == nil {
						reparked.Add(1)
						_ = j.Ack(ctx)
						return
					}
				}
				_ = j.Nak(time.Minute) // leave later copies alone
			})
		}
	}()

	r := mustCtl(t, 0, "--nats-url", n.URL(), "queue", "release", "--domain", "held.test", "--queue-return", "1h")
	close(stop)
	<-done
	if reparked.Load() != 1 {
		t.Fatalf("the stale worker parked %d copies again; the test needs 1", reparked.Load())
	}
	if !strings.Contains(r.out, "released held.test: 1 envelopes due now") {
		t.Fatalf("release of one message parked again during the release:\n%s", r)
	}
}
