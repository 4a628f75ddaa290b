package ctl_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// Operator commands ask for the body store only when they read or remove a
// body (issue 21: `queue bounce -I nosuch` failed with --blob-store is
// required), and `queue show` says when it leaves the headers out for lack of it.
func TestQueueCommandsNeedTheBodyStoreOnlyForBodies(t *testing.T) {
	t.Setenv("MAILFWD_BLOB_STORE", "")
	n, q, ctx := startQueue(t, "test", 60*time.Second)

	for _, verb := range []string{"bounce", "purge"} {
		r := mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", verb, "-I", "nosuch", "--yes")
		mustContain(t, verb+" of nothing", r.out, "matched 0")
	}

	// A held message whose body is in the body store (not inline).
	e := smallMessage("held.test")
	e.Body, e.BodyKey, e.Size = nil, "k1", 300
	if _, err := q.SetHold(ctx, "held.test", "maintenance"); err != nil {
		t.Fatal(err)
	}
	if err := q.MoveToHeld(ctx, e, "1"); err != nil {
		t.Fatal(err)
	}
	r := mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "show", e.QueueID)
	mustContain(t, "show without a body store", r.out, "Headers: not shown", "--blob-store")
	r = mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "show", e.QueueID, "-o", "json")
	mustContain(t, "show -o json without a body store", r.out, `"headers_omitted"`)

	// Bouncing it does need the store (the DSN and the body live there): a
	// usage error that says so, and the message stays.
	r = mustCtl(t, ctl.ExitUsage, "--nats-url", n.URL(), "queue", "bounce", "-I", e.QueueID, "--yes")
	mustContain(t, "bounce of a stored body", r.errOut, "--blob-store")
	r = mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "list")
	mustContain(t, "still queued", r.out, e.QueueID)
}

// Without a policy directory and without any Kubernetes here, commands that
// read the policy say so in one plain line (issue 21: a client-go error
// about KUBERNETES_MASTER).
func TestNoPolicySourceSaidPlainly(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("MAILFWD_POLICY_DIR", "")
	r := mustCtl(t, ctl.ExitUsage, "policy", "get", "access")
	mustContain(t, "policy get", r.errOut, "no policy directory", "--policy-dir")
	if strings.Contains(r.errOut, "KUBERNETES_MASTER") || strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 {
		t.Errorf("want one plain line, got %q", r.errOut)
	}
	r = runCtl(t, "doctor", "--nats-url", "nats://127.0.0.1:1", "--check-timeout", "1s", "-o", "json")
	if strings.Contains(r.out, "KUBERNETES_MASTER") || strings.Contains(r.out, "kubeconfig:") {
		t.Errorf("doctor without Kubernetes: %s", r)
	}
	mustContain(t, "doctor policy check", r.out, "no policy directory")
}

// `queue list` on an empty queue says so, as mailq does, and never prints
// a line of blanks (the table's separator padded by the tab writer).
func TestQueueListEmptyAndNoBlankPaddedLines(t *testing.T) {
	n, q, ctx := startQueue(t, "test", 60*time.Second)
	r := mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "list")
	mustContain(t, "empty queue", r.out, "Mail queue is empty")
	noBlankPadded(t, r.out)
	if err := q.Enqueue(ctx, []*envelope.Envelope{smallMessage("alpha.test")}); err != nil {
		t.Fatal(err)
	}
	r = mustCtl(t, ctl.ExitOK, "--nats-url", n.URL(), "queue", "list")
	mustContain(t, "one message", r.out, "Total: 1 envelopes")
	noBlankPadded(t, r.out)
}

func noBlankPadded(t *testing.T, out string) {
	t.Helper()
	for i, line := range strings.Split(out, "\n") {
		if line != "" && strings.TrimSpace(line) == "" {
			t.Fatalf("line %d is only blanks: %q\n%s", i+1, line, out)
		}
	}
}
