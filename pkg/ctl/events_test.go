package ctl_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func tailJSON(t *testing.T, url string, args ...string) []events.Event {
	t.Helper()
	r := mustCtl(t, 0, append([]string{"--nats-url", url, "events", "tail", "--all", "--no-follow", "-o", "json"}, args...)...)
	var out []events.Event
	sc := bufio.NewScanner(strings.NewReader(r.out))
	for sc.Scan() {
		var ev events.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("events tail -o json printed %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

// Defect 4 of issue 20: after `queue bounce` the original queue id's last
// line was still stat=Deferred, and no operator action left a trace. Now the
// bounce ends with a line under the original queue id, an audit line
// names the actor and what matched, and both are events on the stream.
func TestBounceLeavesAFinalLineAndAuditEvents(t *testing.T) {
	n := testenv.StartNATS(t)
	bootstrap(t, n.URL(), 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	e := &envelope.Envelope{QueueID: envelope.NewQueueID(), From: "s@src.test", Domain: "dst.test",
		Recipients: []envelope.Recipient{{Addr: "r@dst.test", Attempts: 3}}, Body: []byte("Subject: x\r\n\r\nx\r\n"), Size: 17, Parts: 1,
		Arrived: time.Now().UTC().Add(-time.Hour), Attempts: 3}
	if err := q.Defer(ctx, e, time.Now().Add(time.Hour), "t1"); err != nil {
		t.Fatal(err)
	}

	r := mustCtl(t, 0, "--nats-url", n.URL(), "queue", "bounce", "-I", e.QueueID, "--yes",
		"--blob-store", "file://"+t.TempDir(), "--hostname", "mx.test")
	lines := strings.Split(strings.TrimSpace(r.errOut), "\n")
	var last string
	for _, l := range lines {
		if strings.HasPrefix(l, e.QueueID+": ") {
			last = l
		}
	}
	if !strings.Contains(last, "to=<r@dst.test>") || !strings.Contains(last, "stat=Bounced by operator") {
		t.Fatalf("the last line under %s is %q, want a bounce by the operator:\n%s", e.QueueID, last, r)
	}
	if !strings.Contains(r.errOut, "audit: action=queue.bounce actor=") || !strings.Contains(r.errOut, "matched=1") {
		t.Fatalf("no audit line for the bounce:\n%s", r)
	}

	evs := tailJSON(t, n.URL(), "--qid", e.QueueID)
	if len(evs) != 1 || evs[0].Type != events.OperatorBounced || evs[0].Recipient != "r@dst.test" ||
		evs[0].Sender != "s@src.test" || evs[0].Actor == "" || evs[0].Schema != events.Schema {
		t.Fatalf("events of %s: %+v, want one operator_bounced for r@dst.test with an actor", e.QueueID, evs)
	}
	// It names the DSN the bounce queued, whose own events are under that id.
	if d := evs[0].DSNQueueID; d == "" || d == e.QueueID || !strings.Contains(last, "dsn_queue_id="+d) {
		t.Fatalf("the bounce does not name its DSN: event %+v, line %q", evs[0], last)
	}
	ql := mustCtl(t, 0, "--nats-url", n.URL(), "queue", "list", "-I", evs[0].DSNQueueID)
	if !strings.Contains(ql.out, evs[0].DSNQueueID) || !strings.Contains(ql.out, "s@src.test") {
		t.Fatalf("the DSN %s is not in the queue:\n%s", evs[0].DSNQueueID, ql)
	}
	audits := tailJSON(t, n.URL(), "--outcome", "audit")
	if len(audits) != 1 || audits[0].Action != "queue.bounce" || audits[0].Matched != 1 ||
		!strings.Contains(audits[0].Target, "qid="+e.QueueID) || audits[0].Actor == "" {
		t.Fatalf("audit events: %+v, want one queue.bounce that matched 1", audits)
	}
}

// A policy write is an audit line naming who made it and what changed, and
// an audit event when a NATS URL is given.
func TestPolicyWriteAudited(t *testing.T) {
	t.Setenv("MAILFWD_POLICY_DIR", "")
	n := testenv.StartNATS(t)
	bootstrap(t, n.URL(), 30*time.Second)
	dir := t.TempDir()
	src := dir + "/access.in"
	if err := os.WriteFile(src, []byte("Connect:10.0.0.0/8 RELAY\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustCtl(t, 0, "--nats-url", n.URL(), "policy", "set", "access", "-f", src, "--dir", dir+"/policy")
	if !strings.Contains(r.errOut, "audit: action=policy.set actor=local:") || !strings.Contains(r.errOut, "keys=access") {
		t.Fatalf("no audit line for the policy write:\n%s", r)
	}
	audits := tailJSON(t, n.URL(), "--outcome", "audit")
	if len(audits) != 1 || audits[0].Action != "policy.set" || !strings.HasPrefix(audits[0].Actor, "local:") ||
		!strings.Contains(audits[0].Target, "keys=access") {
		t.Fatalf("audit events: %+v", audits)
	}
	// Without a NATS URL the line is still written; nothing is published.
	r = mustCtl(t, 0, "policy", "add", "access", "Connect:192.0.2.0/24 RELAY", "--dir", dir+"/policy")
	if !strings.Contains(r.errOut, "audit: action=policy.add") {
		t.Fatalf("no audit line:\n%s", r)
	}
}

// The event stream's retention is configuration, applied at bootstrap and
// changed by the next one.
func TestBootstrapEventsRetention(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		age   string
		bytes string
		want  time.Duration
	}{{"1h", "1048576", time.Hour}, {"48h", "2097152", 48 * time.Hour}} {
		r := mustCtl(t, 0, "--nats-url", n.URL(), "bootstrap", "--events-max-age", c.age, "--events-max-bytes", c.bytes)
		if !strings.Contains(r.out, "events: stream EVENTS ready") {
			t.Fatalf("bootstrap output:\n%s", r)
		}
		q, err := queue.Connect(ctx, queue.Config{URL: n.URL()})
		if err != nil {
			t.Fatal(err)
		}
		st, err := q.EventStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		q.Close()
		if cfg.MaxAge != c.want || fmt.Sprint(cfg.MaxBytes) != c.bytes || cfg.Discard.String() != "DiscardOld" {
			t.Fatalf("EVENTS after bootstrap --events-max-age %s: max_age %s, max_bytes %d, discard %s", c.age, cfg.MaxAge, cfg.MaxBytes, cfg.Discard)
		}
	}
}
