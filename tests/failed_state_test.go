package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/blob"
)

// TestFailedStateInMailfwdctl: a deferred message whose body disappears
// from the store is not dropped silently: its sender gets a DSN, and the
// envelope waits in the terminal failed state, which mailfwdctl queue
// stats/list/show display and purge removes.
func TestFailedStateInMailfwdctl(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", retryFirst: time.Second, onRcpt: func(rcpt string, seen int) *smtp.SMTPError {
		if rcpt == "lost@alpha.test" && seen == 0 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "Try again later"}
		}
		return nil
	}})
	res := send(e.smtp, "", "author@gamma.test", []string{"lost@alpha.test"}, message("lost body", "lost@origin.test", "hello\r\n"), nil)
	if res.FinalCode != 250 || res.QueueID == "" {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "the deferral", 20*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"deferred": 1`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := blob.Open(ctx, e.blobURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, res.QueueID); err != nil {
		t.Fatal(err)
	}
	gamma := e.sinks["127.0.0.4"]
	waitFor(t, "the DSN to the sender", 30*time.Second, func() bool { return gamma.Count() >= 1 })
	if d := string(gamma.Messages()[0].Data); !strings.Contains(d, "Final-Recipient: rfc822; lost@alpha.test") || !strings.Contains(d, "Action: failed") {
		t.Errorf("DSN:\n%s", d)
	}
	waitFor(t, "the failed state", 20*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"failed": 1`)
	})
	if out := e.mustCtl(t, "queue", "stats"); !strings.Contains(out, "FAILED") || !strings.Contains(out, "failed") {
		t.Errorf("stats do not show the failed state:\n%s", out)
	}
	if out := e.mustCtl(t, "queue", "list", "--state", "failed"); !strings.Contains(out, res.QueueID) || !strings.Contains(out, "lost@alpha.test") {
		t.Errorf("list --state failed:\n%s", out)
	}
	if out := e.mustCtl(t, "queue", "show", res.QueueID); !strings.Contains(out, "Failed:") || !strings.Contains(out, "body missing") {
		t.Errorf("show:\n%s", out)
	}
	e.mustCtl(t, "queue", "purge", "--state", "failed", "-I", res.QueueID, "--yes", "--blob-store", e.blobURL)
	if out, _ := e.ctlRun("queue", "stats", "-o", "json"); !strings.Contains(out, `"total": 0`) {
		t.Errorf("after purge:\n%s", out)
	}
	if n := e.sinks["127.0.0.2"].Count(); n != 0 {
		t.Errorf("%d messages delivered without a body", n)
	}
}
