package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// checkArrived asserts that sink got exactly one message from from to rcpts
// whose bytes are one Received: header followed by exactly body.
func checkArrived(t *testing.T, s *sink.Server, from string, rcpts []string, body []byte) sink.Received {
	t.Helper()
	var found []sink.Received
	for _, m := range s.Messages() {
		if bytes.HasSuffix(m.Data, body) && slices.Equal(sortedCopy(m.Recipients), sortedCopy(rcpts)) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one copy of the message to %v at the destination, got %d (destination has %d messages)", rcpts, len(found), len(s.Messages()))
	}
	m := found[0]
	if m.From != from {
		t.Errorf("MAIL FROM = %q, want %q", m.From, from)
	}
	prefix := m.Data[:len(m.Data)-len(body)]
	if !bytes.HasPrefix(prefix, []byte("Received: from client.test ([127.0.0.1])\r\n\tby mx.mailfwd.test (mailfwd) with ESMTP id ")) {
		t.Errorf("added header is not the expected Received: line:\n%q", prefix)
	}
	if n := bytes.Count(prefix, []byte("\r\n")); n != 3 && n != 2 {
		t.Errorf("expected only the Received: header (2-3 lines) before the original bytes, got %d lines:\n%q", n, prefix)
	}
	return m
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func TestEndToEndMultiDomain(t *testing.T) {
	e := newEnv(t, envOptions{})
	alpha, beta, gamma := e.sinks["127.0.0.2"], e.sinks["127.0.0.3"], e.sinks["127.0.0.4"]

	// 1. One message, three domains, several recipients, an MMS address, 8-bit text,
	// lines that need dot-stuffing, no final CRLF issues.
	mms := "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs"
	rcpts := []string{"a1@alpha.test", "b1@beta.test", "a2@alpha.test", "g1@gamma.test", mms}
	body := message("multi", "multi@origin.test", "Grüße aus Kopenhagen — 8-bit\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n")
	res := send(e.smtp, "", "sender@origin.test", rcpts, body, &smtp.MailOptions{Body: smtp.Body8BitMIME})
	if res.Err != nil || res.FinalCode != 250 || res.QueueID == "" {
		t.Fatalf("send: code %d qid %q err %v", res.FinalCode, res.QueueID, res.Err)
	}

	// 2. Near the size limit (2 MB): 1.9 MB of 76-character lines.
	var big bytes.Buffer
	for big.Len() < 1_900_000 {
		fmt.Fprintf(&big, "%075d\r\n", big.Len())
	}
	bigBody := message("big", "big@origin.test", big.String())
	res2 := send(e.smtp, "", "sender@origin.test", []string{"big@gamma.test"}, bigBody, nil)
	if res2.Err != nil || res2.FinalCode != 250 {
		t.Fatalf("send big: code %d err %v", res2.FinalCode, res2.Err)
	}

	// 3. Null sender.
	bounceBody := message("dsn", "dsn@origin.test", "a bounce\r\n")
	res3 := send(e.smtp, "", "", []string{"a3@alpha.test"}, bounceBody, nil)
	if res3.Err != nil || res3.FinalCode != 250 {
		t.Fatalf("send null sender: code %d err %v", res3.FinalCode, res3.Err)
	}

	waitFor(t, "all deliveries", 60*time.Second, func() bool {
		return alpha.Count() >= 3 && beta.Count() >= 1 && gamma.Count() >= 2
	})
	// alpha.test and the MMS domain (MX mx.alpha.test) are separate envelopes to the same host.
	checkArrived(t, alpha, "sender@origin.test", []string{"a1@alpha.test", "a2@alpha.test"}, body)
	checkArrived(t, alpha, "sender@origin.test", []string{mms}, body)
	checkArrived(t, alpha, "", []string{"a3@alpha.test"}, bounceBody)
	// beta.test: first MX (127.0.0.9) refuses connections; second MX got it.
	checkArrived(t, beta, "sender@origin.test", []string{"b1@beta.test"}, body)
	// gamma.test has no MX: implicit MX on its A record.
	checkArrived(t, gamma, "sender@origin.test", []string{"g1@gamma.test"}, body)
	checkArrived(t, gamma, "sender@origin.test", []string{"big@gamma.test"}, bigBody)

	// Delivery log lines in sendmail format, one per recipient.
	logs := e.logs.String()
	for _, r := range rcpts {
		want := res.QueueID + ": to=<" + r + ">, delay="
		if !strings.Contains(logs, want) {
			t.Errorf("no delivery log line %q", want)
		}
	}
	if !strings.Contains(logs, "relay=mx2.beta.test. [127.0.0.3], tls=none, verify=NONE, dsn=2.0.0, stat=Sent (") {
		t.Errorf("no stat=Sent line for beta via its second MX in logs")
	}
	if !strings.Contains(logs, res.QueueID+": from=<sender@origin.test>, size=") {
		t.Errorf("no ingress from= line for %s", res.QueueID)
	}

	// Bodies are deleted once every recipient is final.
	store, err := blob.Open(context.Background(), e.blobURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, qid := range []string{res.QueueID, res2.QueueID, res3.QueueID} {
		waitFor(t, "body "+qid+" deleted", 20*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := store.Get(ctx, qid)
			return errors.Is(err, blob.ErrNotFound)
		})
	}

	// Trace: the worker's delivery span continues the ingress's trace (context
	// carried in NATS headers).
	var recvTrace, deliverTraces = "", map[string]bool{}
	for _, s := range e.spans.GetSpans() {
		for _, a := range s.Attributes {
			if string(a.Key) == "mailfwd.queue_id" && a.Value.AsString() == res.QueueID {
				switch s.Name {
				case "smtp.receive":
					recvTrace = s.SpanContext.TraceID().String()
				case "mail.deliver":
					deliverTraces[s.SpanContext.TraceID().String()] = true
				}
			}
		}
	}
	if recvTrace == "" || len(deliverTraces) != 1 || !deliverTraces[recvTrace] {
		t.Errorf("delivery spans not joined to the receive trace: receive %q, deliver %v", recvTrace, deliverTraces)
	}
	// The destination's answers are on the smtp.send spans of that trace,
	// one status per recipient tried.
	var dsns []string
	for _, s := range e.spans.GetSpans() {
		if s.Name == "smtp.send" && s.SpanContext.TraceID().String() == recvTrace {
			for _, a := range s.Attributes {
				if a.Key == "mailfwd.dsn" {
					dsns = append(dsns, a.Value.AsString())
				}
			}
		}
	}
	if got := strings.Split(strings.Join(dsns, ","), ","); len(dsns) == 0 || len(got) != len(rcpts) || strings.Trim(strings.Join(got, ""), "2.0") != "" {
		t.Errorf("smtp.send spans: mailfwd.dsn %q, want 2.0.0 for each of the %d recipients", dsns, len(rcpts))
	}
}

func TestRetryAfterTemporaryFailure(t *testing.T) {
	var refusals atomic.Int32
	e := newEnv(t, envOptions{blob: "fs", onRcpt: func(rcpt string, seen int) *smtp.SMTPError {
		// "later@" is refused twice with 451, then accepted; "perm@" always 550.
		switch {
		case strings.HasPrefix(rcpt, "later@") && seen < 2:
			refusals.Add(1)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}
		case strings.HasPrefix(rcpt, "perm@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
		}
		return nil
	}})
	alpha := e.sinks["127.0.0.2"]
	body := message("retry", "retry@origin.test", "try again\r\n")
	res := send(e.smtp, "", "sender@origin.test", []string{"now@alpha.test", "later@alpha.test", "perm@alpha.test"}, body, nil)
	if res.Err != nil || res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "retried recipient delivered", 30*time.Second, func() bool {
		return alpha.RecipientsDelivered()["later@alpha.test"] >= 1
	})
	// Give a wrong extra retry a chance to show up.
	time.Sleep(1500 * time.Millisecond)
	got := alpha.RecipientsDelivered()
	if got["now@alpha.test"] != 1 || got["later@alpha.test"] != 1 || got["perm@alpha.test"] != 0 {
		t.Fatalf("per-recipient deliveries = %v; want now=1 (not re-sent on retry), later=1, perm=0", got)
	}
	if refusals.Load() != 2 {
		t.Errorf("later@ was refused %d times, want 2", refusals.Load())
	}
	logs := e.logs.String()
	for _, want := range []string{
		"to=<later@alpha.test>", "dsn=4.3.1, stat=Deferred: 451 4.3.1 Insufficient system storage",
		"to=<perm@alpha.test>", "dsn=5.1.1, stat=Failed: 550 5.1.1 User unknown",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
	if n := strings.Count(logs, "to=<perm@alpha.test>"); n != 1 {
		t.Errorf("permanent failure attempted %d times, want 1", n)
	}
}

func TestIngressRejects(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", maxSize: 100_000, relayDomains: []string{"alpha.test"},
		ingressSetup: func(in *daemon.Ingress) { in.SMTP.MaxDataLineLength = 20_000 }})
	body := message("r", "r@origin.test", "x\r\n")

	t.Run("relay denied from a non-allowed client", func(t *testing.T) {
		res := send(e.smtp, "127.0.0.5", "sender@origin.test", []string{"b@beta.test", "a@alpha.test", "x@sub.alpha.test"}, body, nil)
		se := res.RcptErrs["b@beta.test"]
		if se == nil || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(se.Message, "Relaying denied") {
			t.Fatalf("beta.test from 127.0.0.5: got %v, want 550 5.7.1 Relaying denied", se)
		}
		if res.RcptErrs["a@alpha.test"] != nil || res.RcptErrs["x@sub.alpha.test"] != nil {
			t.Fatalf("relay domain (and subdomain) refused: %v", res.RcptErrs)
		}
		if res.FinalCode != 250 {
			t.Fatalf("message to the allowed recipients not accepted: %d %v", res.FinalCode, res.Err)
		}
		waitFor(t, "delivery to the allowed recipients", 30*time.Second, func() bool {
			d := e.sinks["127.0.0.2"].RecipientsDelivered()
			return d["a@alpha.test"] == 1 && d["x@sub.alpha.test"] == 0 || d["a@alpha.test"] == 1
		})
		if n := e.sinks["127.0.0.3"].RecipientsDelivered()["b@beta.test"]; n != 0 {
			t.Fatalf("denied recipient was delivered %d times", n)
		}
	})
	t.Run("oversize", func(t *testing.T) {
		big := message("big", "big@origin.test", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 2000))
		res := send(e.smtp, "", "sender@origin.test", []string{"a@alpha.test"}, big, nil)
		if res.FinalCode != 552 {
			t.Fatalf("oversize DATA: got %d %v, want 552", res.FinalCode, res.Err)
		}
		res = send(e.smtp, "", "sender@origin.test", []string{"a@alpha.test"}, body, &smtp.MailOptions{Size: 200_000})
		var se *smtp.SMTPError
		if !errors.As(res.Err, &se) || se.Code != 552 {
			t.Fatalf("MAIL SIZE over the limit: got %v, want 552", res.Err)
		}
	})
	t.Run("malformed addresses", func(t *testing.T) {
		for _, bad := range []string{"no-at-sign", "a..b@alpha.test", "user@", "@alpha.test", "user@nodots", `"unterminated@alpha.test`} {
			res := send(e.smtp, "", "sender@origin.test", []string{bad}, body, nil)
			se := res.RcptErrs[bad]
			if se == nil || se.Code/100 != 5 {
				t.Errorf("RCPT TO:<%s>: got %v (err %v), want a 5xx", bad, se, res.Err)
			}
		}
		res := send(e.smtp, "", "bad..sender@origin.test", []string{"a@alpha.test"}, body, nil)
		var se *smtp.SMTPError
		if !errors.As(res.Err, &se) || se.Code/100 != 5 {
			t.Errorf("malformed MAIL FROM: got %v, want a 5xx", res.Err)
		}
	})
	t.Run("line too long", func(t *testing.T) {
		// Message lines may be long (generated HTML): 3,000 characters go
		// through; one over --max-data-line-length (20,000 here) is refused
		// for good.
		ok := message("long", "long-ok@x", strings.Repeat("x", 3000)+"\r\n")
		if res := send(e.smtp, "", "sender@origin.test", []string{"a@alpha.test"}, ok, nil); res.Err != nil {
			t.Fatalf("a 3000-character line: %v", res.Err)
		}
		long := message("long", "long@x", strings.Repeat("x", 30_000)+"\r\n")
		res := send(e.smtp, "", "sender@origin.test", []string{"a@alpha.test"}, long, nil)
		var se *smtp.SMTPError
		if !errors.As(res.Err, &se) || se.Code != 500 || se.EnhancedCode != (smtp.EnhancedCode{5, 5, 2}) {
			t.Fatalf("a 30,000-character line: got %v, want 500 5.5.2 (permanent, not a retry)", res.Err)
		}
	})
	t.Run("too many recipients", func(t *testing.T) {
		var rcpts []string
		for i := range 25 {
			rcpts = append(rcpts, fmt.Sprintf("r%d@alpha.test", i))
		}
		res := send(e.smtp, "", "sender@origin.test", rcpts, body, nil)
		if len(res.RcptErrs) != 5 {
			t.Fatalf("got %d refused recipients, want 5 over the limit of 20: %v", len(res.RcptErrs), res.RcptErrs)
		}
		for r, se := range res.RcptErrs {
			if se.Code != 452 {
				t.Errorf("%s: %v, want 452", r, se)
			}
		}
	})
}

// TestBackendsDown: while NATS or the body store is down, DATA gets a 4xx
// and never a 250; once it is back, 250 again and the mail is delivered.
func TestBackendsDown(t *testing.T) {
	e := newEnv(t, envOptions{})
	alpha := e.sinks["127.0.0.2"]
	try := func(name string) sendResult {
		return send(e.smtp, "", "sender@origin.test", []string{name + "@alpha.test"}, message(name, name+"@origin.test", name+"\r\n"), nil)
	}
	accepted := map[string]bool{}
	sendUntil250 := func(name string) {
		t.Helper()
		waitFor(t, name+" accepted", 60*time.Second, func() bool {
			res := try(name)
			if res.FinalCode == 250 {
				accepted[name] = true
				return true
			}
			return false
		})
	}

	t.Run("body store down", func(t *testing.T) {
		e.minio.Stop()
		res := try("during-s3-outage")
		if res.FinalCode/100 != 4 {
			t.Fatalf("with MinIO down: got %d %v, want a 4xx", res.FinalCode, res.Err)
		}
		e.minio.Start()
		sendUntil250("after-s3-outage")
	})
	t.Run("nats down", func(t *testing.T) {
		e.nats.Stop()
		res := try("during-nats-outage")
		if res.FinalCode/100 != 4 {
			t.Fatalf("with NATS down: got %d %v, want a 4xx", res.FinalCode, res.Err)
		}
		e.nats.Start()
		sendUntil250("after-nats-outage")
	})
	waitFor(t, "accepted mail delivered", 60*time.Second, func() bool {
		d := alpha.RecipientsDelivered()
		return d["after-s3-outage@alpha.test"] >= 1 && d["after-nats-outage@alpha.test"] >= 1
	})
	for _, never := range []string{"during-s3-outage", "during-nats-outage"} {
		if res := alpha.RecipientsDelivered()[never+"@alpha.test"]; res != 0 && !accepted[never] {
			t.Errorf("%s was answered 4xx but delivered %d times (the client will retry it: a duplicate)", never, res)
		}
	}
}

// TestInlineBodies: with --inline-body-max, a small single-domain message
// rides in its JetStream envelope (the body store stays empty) and is
// delivered byte for byte, also after a deferral; multi-domain and large
// messages still go through the body store.
func TestInlineBodies(t *testing.T) {
	var refused atomic.Bool
	e := newEnv(t, envOptions{blob: "fs", inlineMax: 4096, onRcpt: func(rcpt string, seen int) *smtp.SMTPError {
		if rcpt == "retry@alpha.test" && seen == 0 {
			refused.Store(true)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}
		}
		return nil
	}})
	bodyDir := strings.TrimPrefix(e.blobURL, "file://")
	countBodies := func() int {
		n := 0
		_ = filepath.WalkDir(bodyDir, func(_ string, d fs.DirEntry, _ error) error {
			if d != nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "~") {
				n++
			}
			return nil
		})
		return n
	}
	small := message("small", "small@x", "Grüße, inline\r\n.dot\r\n")
	for _, r := range []string{"one@alpha.test", "retry@alpha.test"} {
		if res := send(e.smtp, "", "s@origin.test", []string{r}, small, nil); res.FinalCode != 250 {
			t.Fatalf("send %s: %d %v", r, res.FinalCode, res.Err)
		}
	}
	if n := countBodies(); n != 0 {
		t.Fatalf("small single-domain messages wrote %d bodies to the store", n)
	}
	alpha := e.sinks["127.0.0.2"]
	waitFor(t, "inline messages delivered (one after a retry)", 30*time.Second, func() bool {
		d := alpha.RecipientsDelivered()
		return d["one@alpha.test"] == 1 && d["retry@alpha.test"] == 1
	})
	if !refused.Load() {
		t.Fatal("the retry case was never refused")
	}
	checkArrived(t, alpha, "s@origin.test", []string{"one@alpha.test"}, small)
	checkArrived(t, alpha, "s@origin.test", []string{"retry@alpha.test"}, small)

	// Two domains: the body is stored once, in the body store.
	if res := send(e.smtp, "", "s@origin.test", []string{"two@alpha.test", "two@beta.test"}, small, nil); res.FinalCode != 250 {
		t.Fatalf("send multi-domain: %v", res.Err)
	}
	// Larger than the limit: body store.
	big := message("big", "big@x", strings.Repeat(strings.Repeat("x", 70)+"\r\n", 80))
	if res := send(e.smtp, "", "s@origin.test", []string{"big@gamma.test"}, big, nil); res.FinalCode != 250 {
		t.Fatalf("send big: %v", res.Err)
	}
	waitFor(t, "store-backed messages delivered", 30*time.Second, func() bool {
		return alpha.RecipientsDelivered()["two@alpha.test"] == 1 && e.sinks["127.0.0.3"].RecipientsDelivered()["two@beta.test"] == 1 &&
			e.sinks["127.0.0.4"].RecipientsDelivered()["big@gamma.test"] == 1
	})
	checkArrived(t, e.sinks["127.0.0.4"], "s@origin.test", []string{"big@gamma.test"}, big)
	if !strings.Contains(e.logs.String(), "size=") {
		t.Fatal("no receipt log lines")
	}
	waitFor(t, "stored bodies deleted after delivery", 10*time.Second, func() bool { return countBodies() == 0 })
}
