package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/daemon"
)

// TestTraceDestination: mailfwdctl trace --destination makes the running
// worker record the SMTP dialog of its deliveries to that next hop (and of
// no other), with the message body redacted; trace stop ends it.
func TestTraceDestination(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs"})
	e.mustCtl(t, "trace", "--destination", "mx.alpha.test", "--for", "5m", "--id", "probe")
	traceLines := func() []string {
		var out []string
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(l, "trace=probe") {
				out = append(out, l)
			}
		}
		return out
	}
	// The worker's watcher sees the setting within moments; mail sent before
	// it does is delivered untraced, so send until a delivery is traced.
	const marker = "BODY-MARKER-1f0c"
	for i := 0; i < 20 && len(traceLines()) == 0; i++ {
		if res := send(e.smtp, "", "sender@origin.test", []string{"x@alpha.test", "y@beta.test"},
			message("traced", "x@alpha.test", marker+"\r\n"), nil); res.FinalCode != 250 {
			t.Fatalf("send: %d %v", res.FinalCode, res.Err)
		}
		waitFor(t, "delivery", 30*time.Second, func() bool {
			return strings.Count(e.logs.String(), "stat=Sent") >= 2*(i+1)
		})
		time.Sleep(200 * time.Millisecond)
	}
	lines := traceLines()
	all := strings.Join(lines, "\n")
	for _, want := range []string{"side=delivery", "from=client line=\"MAIL FROM:<sender@origin.test>", "from=server line=\"250",
		"from=client line=\"RCPT TO:<x@alpha.test>", "smtp trace: session start"} {
		if !strings.Contains(all, want) {
			t.Errorf("trace has no %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, marker) {
		t.Errorf("the message body is in the trace without --with-bodies:\n%s", all)
	}
	if strings.Contains(all, "y@beta.test") {
		t.Errorf("a delivery to another next hop (mx2.beta.test) was traced:\n%s", all)
	}

	e.mustCtl(t, "trace", "stop", "probe")
	before := len(traceLines())
	// Wait until a delivery after the stop happened with no new trace line
	// from a new session (a session open at the stop notes its end).
	time.Sleep(500 * time.Millisecond)
	sent := strings.Count(e.logs.String(), "stat=Sent")
	if res := send(e.smtp, "", "sender@origin.test", []string{"z@alpha.test"}, message("after", "z@alpha.test", "x\r\n"), nil); res.FinalCode != 250 {
		t.Fatalf("send after stop: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "delivery after stop", 30*time.Second, func() bool { return strings.Count(e.logs.String(), "stat=Sent") > sent })
	for _, l := range traceLines()[before:] {
		if strings.Contains(l, "z@alpha.test") {
			t.Errorf("delivery after trace stop was traced: %s", l)
		}
	}
}

// traceRecords returns the log records of trace id.
func traceRecords(e *env, id string) []string {
	var out []string
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, "trace="+id+" ") {
			out = append(out, l)
		}
	}
	return out
}

// Issue 21: a trace of a destination records a connect its next hop
// refuses (there is no dialog, but there is an address and an error), not
// only the sessions that got as far as a greeting. mx1.beta.test
// (127.0.0.9) refuses connections; mx2.beta.test takes the mail.
func TestTraceRecordsRefusedConnect(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs"})
	e.mustCtl(t, "trace", "--destination", ".beta.test", "--for", "5m", "--id", "refused")
	sent := 0
	deliver := func(subject string) {
		t.Helper()
		if res := send(e.smtp, "", "sender@origin.test", []string{"y@beta.test"},
			message(subject, "y@beta.test", "x\r\n"), nil); res.FinalCode != 250 {
			t.Fatalf("send: %d %v", res.FinalCode, res.Err)
		}
		sent++
		waitFor(t, "delivery", 30*time.Second, func() bool { return strings.Count(e.logs.String(), "stat=Sent") >= sent })
	}
	// The worker's watcher sees the setting within moments: send until a
	// delivery to mx2 is traced (that part worked before).
	for i := 0; i < 20 && !strings.Contains(strings.Join(traceRecords(e, "refused"), "\n"), "peer_name=mx2.beta.test"); i++ {
		deliver("until traced")
		time.Sleep(200 * time.Millisecond)
	}
	// Let the worker's memory of the failed connect (--host-down-ttl 1s in
	// this environment) lapse, so the next delivery dials mx1 again.
	time.Sleep(1500 * time.Millisecond)
	deliver("refused first")

	all := strings.Join(traceRecords(e, "refused"), "\n")
	want := `msg="smtp trace: connect failed" component=worker trace=refused`
	var rec string
	for _, l := range traceRecords(e, "refused") {
		if strings.Contains(l, want) && strings.Contains(l, "peer_name=mx1.beta.test") {
			rec = l
		}
	}
	if rec == "" {
		t.Fatalf("the refused connect to mx1.beta.test is not in the trace:\n%s", all)
	}
	for _, want := range []string{fmt.Sprintf("peer=127.0.0.9:%d", e.port), "connection refused", "side=delivery"} {
		if !strings.Contains(rec, want) {
			t.Errorf("the connect record lacks %q: %s", want, rec)
		}
	}
	if strings.Contains(all, "peer_name=mx.alpha.test") {
		t.Errorf("another destination was traced:\n%s", all)
	}
}

// Issue 21: a delivery over a connection that was already open (pooled)
// when the trace started is recorded, from its transaction on, and marked
// as over a reused connection; so is every later transaction on it.
func TestTraceRecordsPooledConnection(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", workerSetup: func(w *daemon.Worker) {
		// The pooled connection must outlive a slow test machine's loop.
		w.Delivery.IdleTimeout = 10 * time.Minute
	}})
	sent := 0
	deliver := func(from string) {
		t.Helper()
		if res := send(e.smtp, "", from, []string{"x@alpha.test"},
			message("pooled", "x@alpha.test", "BODY-MARKER-77a1\r\n"), nil); res.FinalCode != 250 {
			t.Fatalf("send: %d %v", res.FinalCode, res.Err)
		}
		sent++
		waitFor(t, "delivery", 30*time.Second, func() bool { return strings.Count(e.logs.String(), "stat=Sent") >= sent })
	}
	connects := func() int { return strings.Count(e.logs.String(), "msg=connected component=delivery") }
	// Before the trace: the worker opens a connection to mx.alpha.test and
	// keeps it in its pool.
	deliver("before@origin.test")
	if n := connects(); n != 1 {
		t.Fatalf("%d connections opened, want 1", n)
	}

	e.mustCtl(t, "trace", "--destination", "mx.alpha.test", "--for", "5m", "--id", "pool")
	traced := func() string { return strings.Join(traceRecords(e, "pool"), "\n") }
	for i := 0; i < 20 && !strings.Contains(traced(), "MAIL FROM:<"); i++ {
		deliver(fmt.Sprintf("during%d@origin.test", i))
		time.Sleep(200 * time.Millisecond)
	}
	if n := connects(); n != 1 {
		t.Fatalf("%d connections opened, want 1 (the deliveries reuse the pooled one)", n)
	}
	all := traced()
	for _, want := range []string{
		`msg="smtp trace: session start" component=worker trace=pool`,
		"reused=true",
		`msg="smtp trace: reusing a pooled connection"`,
		`from=client line="MAIL FROM:<during`,
		`from=client line="RCPT TO:<x@alpha.test>`,
		`from=client line="BDAT `, // the sinks offer CHUNKING
		`from=client line="[redacted: message body, `,
		`from=server line="250 2.0.0 `,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("trace lacks %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "BODY-MARKER-77a1") {
		t.Errorf("the body is in the trace without --with-bodies:\n%s", all)
	}

	// The next transaction on the same (now traced) connection is in the
	// same session, marked again.
	starts := strings.Count(all, "smtp trace: session start")
	marks := strings.Count(all, "reusing a pooled connection")
	deliver("next@origin.test")
	waitFor(t, "the next transaction traced", 30*time.Second, func() bool {
		return strings.Contains(traced(), `line="MAIL FROM:<next@origin.test>`)
	})
	all = traced()
	if n := strings.Count(all, "smtp trace: session start"); n != starts {
		t.Errorf("%d session starts, want %d (one connection):\n%s", n, starts, all)
	}
	if n := strings.Count(all, "reusing a pooled connection"); n != marks+1 {
		t.Errorf("%d reuse marks, want %d:\n%s", n, marks+1, all)
	}
	if n := connects(); n != 1 {
		t.Errorf("%d connections opened, want 1", n)
	}
}
