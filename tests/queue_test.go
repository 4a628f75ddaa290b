package tests

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/daemon"
)

// ctlRun runs mailfwdctl in-process against the env's NATS.
func (e *env) ctlRun(args ...string) (string, int) {
	var out, errOut bytes.Buffer
	full := append([]string{"--nats-url", e.nats.URL()}, args...)
	code := ctl.Execute(context.Background(), full, &out, &errOut)
	return out.String() + errOut.String(), code
}

func (e *env) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, code := e.ctlRun(args...)
	if code != 0 {
		t.Fatalf("mailfwdctl %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// TestDestinationDownThenFlushByDomain: alpha.test refuses with 4xx, its mail
// is deferred (retry timer one hour away); once alpha is back, a flush by
// domain (sendmail -qR alpha.test) delivers it at once, and beta's deferred
// mail stays deferred.
func TestDestinationDownThenFlushByDomain(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	e := newEnv(t, envOptions{blob: "fs", retryFirst: time.Hour, onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if down.Load() {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Service not available"}
		}
		return nil
	}})
	for _, r := range []string{"x@alpha.test", "y@alpha.test", "z@beta.test"} {
		if res := send(e.smtp, "", "sender@origin.test", []string{r}, message("down", r, "hello\r\n"), nil); res.FinalCode != 250 {
			t.Fatalf("send to %s: %d %v", r, res.FinalCode, res.Err)
		}
	}
	waitFor(t, "three deferred envelopes", 30*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"deferred": 3`)
	})
	list := e.mustCtl(t, "queue", "list", "--state", "deferred")
	for _, want := range []string{"x@alpha.test", "y@alpha.test", "z@beta.test", "421 4.4.2 Service not available", "Total: 3 envelopes"} {
		if !strings.Contains(list, want) {
			t.Errorf("queue list lacks %q:\n%s", want, list)
		}
	}
	down.Store(false)
	if out := e.mustCtl(t, "queue", "flush", "--domain", "alpha.test", "--dry-run"); !strings.Contains(out, "matched 2 deferred envelopes, made 0 due now (dry run)") {
		t.Fatalf("dry run: %s", out)
	}
	out := e.mustCtl(t, "queue", "flush", "--domain", "alpha.test")
	if !strings.Contains(out, "matched 2 deferred envelopes, made 2 due now") {
		t.Fatalf("flush: %s", out)
	}
	alpha := e.sinks["127.0.0.2"]
	waitFor(t, "alpha mail delivered after the flush", 30*time.Second, func() bool {
		d := alpha.RecipientsDelivered()
		return d["x@alpha.test"] == 1 && d["y@alpha.test"] == 1
	})
	time.Sleep(time.Second)
	if n := e.sinks["127.0.0.3"].RecipientsDelivered()["z@beta.test"]; n != 0 {
		t.Fatalf("beta mail was delivered by a flush of alpha only")
	}
	if out := e.mustCtl(t, "queue", "list", "-o", "json"); !strings.Contains(out, "z@beta.test") || strings.Contains(out, "alpha.test") {
		t.Fatalf("queue after flush: %s", out)
	}
	// Negated flush: everything except alpha (sendmail -q!R alpha) releases beta.
	if out := e.mustCtl(t, "queue", "flush", "--not-recipient", "alpha"); !strings.Contains(out, "made 1 due now") {
		t.Fatalf("negated flush: %s", out)
	}
	waitFor(t, "beta delivered", 30*time.Second, func() bool { return e.sinks["127.0.0.3"].RecipientsDelivered()["z@beta.test"] == 1 })
}

// TestHoldReleaseAfterDeadline is the seed's moved-queue case: a domain held
// for longer than the queue-return time must not lose its mail; releasing
// with --extend delivers it.
func TestHoldReleaseAfterDeadline(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", queueReturn: 4 * time.Second})
	if out := e.mustCtl(t, "queue", "hold", "--domain", "beta.test", "--reason", "operator down"); !strings.Contains(out, "holding beta.test") {
		t.Fatalf("hold: %s", out)
	}
	waitFor(t, "workers see the hold", 10*time.Second, func() bool { return strings.Contains(e.logs.String(), "domains on hold") })
	res := send(e.smtp, "", "sender@alpha.test", []string{"held@beta.test"}, message("held", "held@x", "wait for me\r\n"), nil)
	if res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "message parked as held", 20*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"held": 1`)
	})
	stats := e.mustCtl(t, "queue", "stats")
	if !strings.Contains(stats, "beta.test") || !strings.Contains(stats, "operator down") {
		t.Errorf("stats do not show the hold:\n%s", stats)
	}
	time.Sleep(5 * time.Second) // past the 4s queue-return deadline
	if n := e.sinks["127.0.0.3"].Count(); n != 0 {
		t.Fatalf("held mail was delivered while held")
	}
	out := e.mustCtl(t, "queue", "release", "--domain", "beta.test", "--extend", "1m", "--queue-return", "4s")
	if !strings.Contains(out, "released beta.test: 1 envelopes due now") {
		t.Fatalf("release: %s", out)
	}
	waitFor(t, "released mail delivered", 30*time.Second, func() bool {
		return e.sinks["127.0.0.3"].RecipientsDelivered()["held@beta.test"] == 1
	})
	if strings.Contains(e.logs.String(), "sender notify") {
		t.Fatalf("a DSN was sent for mail that was held, not lost:\n%s", e.logs.String())
	}
	if n := e.sinks["127.0.0.2"].Count(); n != 0 {
		t.Fatalf("the sender's domain got %d messages (a bounce?)", n)
	}
}

// TestPermanentFailureDSN: a 5xx destination produces an RFC 3464 DSN that
// reaches the sender's domain; mail from the null sender gets none.
func TestPermanentFailureDSN(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if strings.HasPrefix(rcpt, "gone@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
		}
		return nil
	}})
	orig := message("original subject", "orig@origin.test", "the body must not come back\r\n")
	if res := send(e.smtp, "", "author@gamma.test", []string{"gone@alpha.test"}, orig, nil); res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	if res := send(e.smtp, "", "", []string{"gone@beta.test"}, orig, nil); res.FinalCode != 250 {
		t.Fatalf("send null sender: %d %v", res.FinalCode, res.Err)
	}
	gamma := e.sinks["127.0.0.4"]
	waitFor(t, "DSN at the sender's domain", 30*time.Second, func() bool { return gamma.Count() >= 1 })
	m := gamma.Messages()[0]
	if m.From != "" || len(m.Recipients) != 1 || m.Recipients[0] != "author@gamma.test" {
		t.Fatalf("DSN envelope: from %q to %v", m.From, m.Recipients)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	if msg.Header.Get("Auto-Submitted") == "" || !strings.Contains(msg.Header.Get("Subject"), "Returned mail") {
		t.Errorf("headers: %v", msg.Header)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types []string
	var status, headers string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types = append(types, ct)
		switch ct {
		case "message/delivery-status":
			status = string(b)
		case "text/rfc822-headers":
			headers = string(b)
		}
	}
	if strings.Join(types, ",") != "text/plain,message/delivery-status,text/rfc822-headers" {
		t.Fatalf("parts %v", types)
	}
	tp := textproto.NewReader(bufio.NewReader(strings.NewReader(status)))
	perMsg, err := tp.ReadMIMEHeader()
	if err != nil || !strings.HasPrefix(perMsg.Get("Reporting-MTA"), "dns;") {
		t.Fatalf("per-message fields %v: %v", perMsg, err)
	}
	perRcpt, err := tp.ReadMIMEHeader()
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"Final-Recipient": "rfc822; gone@alpha.test", "Action": "failed", "Status": "5.1.1", "Diagnostic-Code": "smtp; 550 5.1.1 User unknown"} {
		if got := perRcpt.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(headers, "Subject: original subject") || strings.Contains(headers, "must not come back") {
		t.Errorf("returned headers part: %q", headers)
	}
	time.Sleep(time.Second)
	if n := gamma.Count() + e.sinks["127.0.0.3"].Count(); n != 1 {
		t.Fatalf("got %d messages in all, want only the one DSN (none for the null sender)", n)
	}
	if !strings.Contains(e.logs.String(), "no DSN for the null sender") {
		t.Errorf("no log line for the suppressed DSN")
	}
}

// TestDeadDomainDoesNotSlowOthers: a destination that accepts connections and
// never answers gets a backlog; mail to healthy domains keeps flowing, and the
// dead domain's mail ends up deferred (out of the workers' consumer), not
// occupying workers.
func TestDeadDomainDoesNotSlowOthers(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", retryFirst: time.Minute, workerSetup: func(w *daemon.Worker) {
		w.Delivery.CommandTimeout = 3 * time.Second
		w.Engine.StallAfter = time.Second
		w.Engine.BusyDelay = 20 * time.Second
		w.Engine.DomainConcurrency = 5
	}})
	const dead = 300
	c, err := smtp.Dial(e.smtp)
	if err != nil {
		t.Fatal(err)
	}
	for i := range dead {
		r := "u" + strconv.Itoa(i) + "@dead.test"
		if err := c.SendMail("sender@origin.test", []string{r}, bytes.NewReader(message("dead", r, "x\r\n"))); err != nil {
			t.Fatalf("send %s: %v", r, err)
		}
	}
	c.Close()
	alpha := e.sinks["127.0.0.2"]
	for i := range 20 {
		if res := send(e.smtp, "", "sender@origin.test", []string{"live" + strconv.Itoa(i) + "@alpha.test"}, message("live", "live"+strconv.Itoa(i), "x\r\n"), nil); res.FinalCode != 250 {
			t.Fatalf("send live: %d %v", res.FinalCode, res.Err)
		}
	}
	// Healthy mail arrives although hundreds of dead-domain envelopes were ahead of it.
	liveSent := time.Now()
	defer func() {
		t.Logf("healthy domain: 20 messages delivered %s after sending", alpha.Messages()[19].At.Sub(liveSent).Round(time.Millisecond))
	}()
	waitFor(t, "healthy domain delivered despite the dead backlog", 30*time.Second, func() bool { return alpha.Count() >= 20 })
	// The dead domain's mail leaves the workers' consumer: deferred, not ready.
	waitFor(t, "dead-domain mail parked as deferred", 60*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"deferred": `+strconv.Itoa(dead)) && strings.Contains(out, `"consumer_pending": 0`) && strings.Contains(out, `"consumer_ack_pending": 0`)
	})
	t.Logf("dead domain: %d envelopes handed back while congested, %d attempts logged as deferred",
		strings.Count(e.logs.String(), "handed back to the queue"), strings.Count(e.logs.String(), "@dead.test>, delay="))
}

// TestDelayWarningThenExpiry: a destination that keeps answering 4xx; the
// sender first gets a delay warning, then after the queue-return time the
// "Cannot send message" DSN, and the message leaves the queue.
func TestDelayWarningThenExpiry(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", retryFirst: 500 * time.Millisecond, warnAfter: time.Second, queueReturn: 4 * time.Second,
		onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
			if strings.HasSuffix(rcpt, "@alpha.test") {
				return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Out of disk space"}
			}
			return nil
		}})
	res := send(e.smtp, "", "author@gamma.test", []string{"stuck@alpha.test"}, message("stuck", "stuck@x", "never\r\n"), nil)
	if res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	gamma := e.sinks["127.0.0.4"]
	waitFor(t, "warning and bounce at the sender's domain", 30*time.Second, func() bool { return gamma.Count() >= 2 })
	msgs := gamma.Messages()
	warn, bounce := string(msgs[0].Data), string(msgs[1].Data)
	for _, want := range []string{"Subject: Warning: could not send message", "Action: delayed", "Status: 4.3.1", "Will-Retry-Until:"} {
		if !strings.Contains(warn, want) {
			t.Errorf("delay warning lacks %q:\n%s", want, warn)
		}
	}
	for _, want := range []string{"Subject: Returned mail: see transcript for details", "Action: failed", "Status: 4.4.7", "Cannot send message for"} {
		if !strings.Contains(bounce, want) {
			t.Errorf("expiry DSN lacks %q:\n%s", want, bounce)
		}
	}
	if !strings.Contains(e.logs.String(), res.QueueID+": to=<stuck@alpha.test>") || !strings.Contains(e.logs.String(), "dsn=4.4.7, stat=Failed: Cannot send message for") {
		t.Errorf("no sendmail-style expiry line in the logs")
	}
	waitFor(t, "queue empty after the bounce", 10*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"total": 0`)
	})
	time.Sleep(time.Second)
	if gamma.Count() != 2 {
		t.Errorf("sender got %d notifications, want exactly 2 (one warning, one bounce)", gamma.Count())
	}
}

// TestQueueShowBouncePurge: inspect one message, bounce one domain's
// deferred mail to its senders, purge another's, with --dry-run first.
func TestQueueShowBouncePurge(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", retryFirst: time.Hour, onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if !strings.HasPrefix(rcpt, "author@") {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Try later"}
		}
		return nil
	}})
	a := send(e.smtp, "", "author@gamma.test", []string{"one@alpha.test"}, message("to be bounced", "b@x", "x\r\n"), nil)
	b := send(e.smtp, "", "author@gamma.test", []string{"two@beta.test"}, message("to be purged", "p@x", "x\r\n"), nil)
	if a.FinalCode != 250 || b.FinalCode != 250 {
		t.Fatalf("send: %v %v", a.Err, b.Err)
	}
	waitFor(t, "both deferred", 30*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"deferred": 2`)
	})
	show := e.mustCtl(t, "queue", "show", a.QueueID, "--blob-store", e.blobURL)
	for _, want := range []string{"Queue ID:", a.QueueID, "State:", "deferred", "to=<one@alpha.test>", "attempts=1", "421 4.4.2 Try later", "Subject: to be bounced"} {
		if !strings.Contains(show, want) {
			t.Errorf("queue show lacks %q:\n%s", want, show)
		}
	}
	if out, code := e.ctlRun("queue", "show", "nosuchid"); code != 4 {
		t.Errorf("show of an unknown id: exit %d\n%s", code, out)
	}
	if out, code := e.ctlRun("queue", "purge", "--domain", "beta.test", "--blob-store", e.blobURL); code != 2 || !strings.Contains(out, "--yes") {
		t.Errorf("purge without --yes and without a terminal: exit %d\n%s", code, out)
	}
	if out := e.mustCtl(t, "queue", "purge", "--domain", "beta.test", "--dry-run"); !strings.Contains(out, "would purge "+b.QueueID) {
		t.Errorf("purge dry run: %s", out)
	}
	if out := e.mustCtl(t, "queue", "purge", "--domain", "beta.test", "--blob-store", e.blobURL, "--yes"); !strings.Contains(out, "matched 1 envelopes, purged 1") {
		t.Errorf("purge: %s", out)
	}
	if out := e.mustCtl(t, "queue", "bounce", "--domain", "alpha.test", "--blob-store", e.blobURL, "--yes", "--reason", "Operator gave up"); !strings.Contains(out, "matched 1 envelopes, bounced 1") {
		t.Errorf("bounce: %s", out)
	}
	gamma := e.sinks["127.0.0.4"]
	waitFor(t, "bounce at the sender's domain", 30*time.Second, func() bool { return gamma.Count() >= 1 })
	dsnText := string(gamma.Messages()[0].Data)
	for _, want := range []string{"Final-Recipient: rfc822; one@alpha.test", "Action: failed", "Operator gave up", "Subject: to be bounced"} {
		if !strings.Contains(dsnText, want) {
			t.Errorf("bounce DSN lacks %q", want)
		}
	}
	waitFor(t, "queue empty after bounce and purge (the DSN itself delivered)", 10*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"total": 0`)
	})
	if n := gamma.Count(); n != 1 {
		t.Errorf("the purged message produced a notification (%d messages)", n)
	}
}

// TestDomainLimits: --domain-limit caps one domain's concurrency and
// messages per connection, and paces another (mail beyond what the rate
// allows waits in the queue, not in the worker); everything is delivered.
func TestDomainLimits(t *testing.T) {
	var inData, peak atomic.Int32
	e := newEnv(t, envOptions{blob: "fs", dataDelay: func() time.Duration {
		// Deliveries in their DATA phase at once; 20 ms each, so an
		// uncapped domain fed 30 messages in a row overlaps.
		now := inData.Add(1)
		for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		inData.Add(-1)
		return 0
	}, workerSetup: func(w *daemon.Worker) {
		w.Limits = []string{"alpha.test:concurrency=1,msgs-per-conn=3", "beta.test:rate=10/s"}
		w.Engine.StallAfter = 500 * time.Millisecond
		w.Engine.BusyDelay = 300 * time.Millisecond
	}})
	sendN := func(domain string, n int) {
		c, err := smtp.Dial(e.smtp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range n {
			r := "r" + strconv.Itoa(i) + "@" + domain
			if err := c.SendMail("s@origin.test", []string{r}, bytes.NewReader(message("lim", r, "x\r\n"))); err != nil {
				t.Fatal(err)
			}
		}
	}
	const n = 30
	alpha, beta := e.sinks["127.0.0.2"], e.sinks["127.0.0.3"]
	sendN("alpha.test", n)
	waitFor(t, "capped domain delivered", 60*time.Second, func() bool { return alpha.Count() >= n })
	if p := peak.Load(); p != 1 {
		t.Errorf("%d deliveries to alpha.test ran at once, want 1 (concurrency=1)", p)
	}
	if got := alpha.Connections(); got < n/3 {
		t.Errorf("%d connections for %d messages, want at least %d (msgs-per-conn=3)", got, n, n/3)
	}
	sendN("beta.test", n)
	waitFor(t, "rate-limited domain delivered", 60*time.Second, func() bool { return beta.Count() >= n })
	if !strings.Contains(e.logs.String(), `reason="domain rate limit`) {
		t.Errorf("no envelope was handed back by the rate limit (30 messages at 10/s with 0.5 s of waiting allowed)")
	}
}
