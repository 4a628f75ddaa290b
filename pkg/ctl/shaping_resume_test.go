package ctl_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// Lifting a destination's suspension is an operator action like the
// others: an audit line and an audit event (matched 1, or 0 when it was
// not suspended).
func TestShapingResumeAudited(t *testing.T) {
	n, q, ctx := startQueue(t, "test-worker", time.Minute)
	b, err := q.ShapingBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := json.Marshal(shaping.Suspension{Dest: "d.dest.test", Until: time.Now().Add(time.Hour).UTC(), Why: "421 4.7.0 try again later", By: "worker-1"})
	if _, err := b.Create(ctx, "s.d.dest.test", sp, time.Hour); err != nil {
		t.Fatal(err)
	}
	r := mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "shaping", "resume", "dest.test")
	mustContain(t, "resume", r.out, "resumed dest.test")
	mustContain(t, "resume audit line", r.errOut, "audit: action=shaping.resume actor=", `target="dest.test"`, "matched=1")
	r = mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "shaping", "resume", "dest.test")
	mustContain(t, "resume of nothing", r.out, "was not suspended")
	mustContain(t, "resume of nothing audited", r.errOut, "matched=0")
	audits := tailJSON(t, n.URL(), "--outcome", "audit")
	if len(audits) != 2 || audits[0].Action != "shaping.resume" || audits[0].Target != "dest.test" || audits[0].Matched != 1 ||
		audits[0].Actor == "" || audits[1].Matched != 0 {
		t.Fatalf("audit events: %+v, want two shaping.resume", audits)
	}
}
