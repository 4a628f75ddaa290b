package delivery_test

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
)

// Two host names sharing one address: what is logged names the host this
// delivery tried, never the other domain's (a dead mx.dead.test logged as
// "Connection refused by mx1.backup.test.").
func TestSharedAddressNamesTheHostTried(t *testing.T) {
	c := newClient(t, func(cfg *delivery.Config) { cfg.HostDownTTL = time.Minute })
	dead := closedPort(t)
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx1.backup.test", dead)}, msg(testBody, "r@backup.test"))
	if got := out.Statuses[0].Text; got != "Connection refused by mx1.backup.test." {
		t.Fatalf("first status %q", got)
	}
	// The address is now marked down; the next delivery skips it.
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.dead.test", dead)}, msg(testBody, "r@dead.test"))
	if got := out.Statuses[0].Text; got != "Connection refused by mx.dead.test." {
		t.Errorf("status %q, want it to name mx.dead.test", got)
	}
	if out.Tried.Name != "mx.dead.test" {
		t.Errorf("Outcome.Tried = %+v, want mx.dead.test (the log's relay=)", out.Tried)
	}

	// A pooled connection reused for another host name of the same address.
	addr := startFake(t, &fakeBackend{}, func(s *smtp.Server) { s.MaxMessageBytes = 10 })
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.one.test", addr)}, msg(testBody, "r@one.test"))
	if got := out.Statuses[0].Text; !strings.Contains(got, "mx.one.test") {
		t.Fatalf("first status %q", got)
	}
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.two.test", addr)}, msg(testBody, "r@two.test"))
	if got := out.Statuses[0].Text; !strings.Contains(got, "mx.two.test") {
		t.Errorf("status %q over a pooled connection, want it to name mx.two.test", got)
	}
}
