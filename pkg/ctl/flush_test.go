package ctl_test

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/xid"

	"github.com/mailfwd/mailfwd/pkg/ctl"
)

// Issue 20 defect 5: flush on a held domain said "matched 0 deferred
// envelopes" and exited 0; nothing said the mail is held. It now says how
// many are held and how to release them, and exits 1 (nothing was flushed).
func TestFlushOnHeldDomainSaysItIsHeld(t *testing.T) {
	n, q, ctx := startQueue(t, t.Name(), 30*time.Second)
	if _, err := q.SetHold(ctx, "held.test", "maintenance"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		e := smallMessage("held.test")
		if err := q.MoveToHeld(ctx, e, strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	r := mustCtl(t, ctl.ExitFailure, "--nats-url", n.URL(), "queue", "flush", "--domain", "held.test")
	for _, want := range []string{
		"matched 0 deferred envelopes, made 0 due now",
		"2 matching envelopes are held (held.test)",
		"mailfwdctl queue release --domain held.test",
	} {
		if !strings.Contains(r.out+r.errOut, want) {
			t.Errorf("flush on a held domain lacks %q:\n%s", want, r)
		}
	}
	// A domain with nothing held and nothing deferred: nothing to say, exit 0.
	r = mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "flush", "--domain", "other.test")
	if strings.Contains(r.out+r.errOut, "held") {
		t.Errorf("flush of an empty domain mentions held mail:\n%s", r)
	}
}

// Issue 20 defect 1, as the operator sees it: a message that arrived three
// hours ago and was deferred again and again shows its arrival as the
// oldest, not its last deferral.
func TestQueueStatsOldestSinceArrival(t *testing.T) {
	n, q, ctx := startQueue(t, t.Name(), 30*time.Second)
	arrived := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	e := smallMessage("slow.test")
	e.QueueID, e.Arrived = xid.NewWithTime(arrived).String(), arrived
	// Deferred just now (the stream message is seconds old), arrived three
	// hours ago. (Each deferral is a new stream message; the worker removes
	// the copy it moved, so deferring here more than once would leave copies.)
	if err := q.Defer(ctx, e, time.Now().Add(time.Hour), "4.4.1 no answer"); err != nil {
		t.Fatal(err)
	}
	r := mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "stats", "-o", "json")
	var s struct {
		Oldest map[string]time.Time `json:"oldest"`
	}
	if err := json.Unmarshal([]byte(r.out), &s); err != nil {
		t.Fatalf("%v\n%s", err, r.out)
	}
	if got := s.Oldest["deferred"]; !got.Equal(arrived) {
		t.Errorf("queue stats: oldest deferred %v, want the arrival %v", got, arrived)
	}
	// The table shows three hours, not seconds.
	r = mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "stats")
	if !regexp.MustCompile(`(?m)^deferred\s+1\s+03:0\d:\d\d`).MatchString(r.out) {
		t.Errorf("queue stats table does not show the age since arrival (3 h):\n%s", r.out)
	}
}
