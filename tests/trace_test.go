package tests

import (
	"strings"
	"testing"
	"time"
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
