package tests

import (
	"context"
	"net/textproto"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// Issue 19 item 1, end to end: the ingress signs only what an authorised
// sender submits. A stranger sending to a To: RELAY domain, and an AUTH
// user whose allowed senders do not cover the From: address, are delivered
// unsigned; the user's own From:, and a Connect: RELAY client (the default
// --dkim-signing-networks relay), are delivered signed and verify.
func TestDKIMSignsOnlyAuthorisedSenders(t *testing.T) {
	s := newSubmissionEnv(t, false, 20)
	h, err := smtpauth.HashBcrypt(subPass, smtpauth.MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	// app1 may send only as invoices@app.test; alpha.test takes mail from
	// anyone (the MMS gateway's inbound case); loopback is no relay client.
	s.writePolicy("users", subUser+" "+h+" invoices@app.test\n")
	s.applyAccess(t, "Connect:127.0.0.1 OK\nTo:alpha.test RELAY\n", true)

	send := func(subject string, args ...string) {
		t.Helper()
		out := s.swaks(t, args[0], append(args[1:], "--to", "u@alpha.test", "--header", "Subject: "+subject)...)
		wantAll(t, out, "queued as")
	}
	auth := []string{"submission", "--tls", "--auth", "PLAIN", "--auth-user", subUser, "--auth-password", subPass}
	send("stranger", "smtp", "--from", "ceo@app.test", "--header", "From: ceo@app.test")
	send("user-other-from", append(auth, "--from", "invoices@app.test", "--header", "From: ceo@app.test")...)
	send("user-own-from", append(auth, "--from", "invoices@app.test", "--header", "From: Invoices <invoices@app.test>")...)
	s.applyAccess(t, "Connect:127.0.0.1 RELAY\n", false)
	send("relay-client", "smtp", "--from", "ceo@app.test", "--header", "From: ceo@app.test")
	waitFor(t, "delivery", 30*time.Second, func() bool { return s.sink().Count() == 4 })

	c := &dnsquery.Client{Servers: []string{s.dns.Addr}, Timeout: 5 * time.Second}
	opts := &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.TXT(ctx, name)
	}}
	want := map[string]bool{"stranger": false, "user-other-from": false, "user-own-from": true, "relay-client": true}
	for _, m := range s.sink().Messages() {
		data := string(m.Data)
		subject := ""
		for name := range want {
			if strings.Contains(data, "\r\nSubject: "+name+"\r\n") {
				subject = name
			}
		}
		signed, ok := want[subject]
		if !ok {
			t.Fatalf("unexpected message:\n%.600s", data)
		}
		delete(want, subject)
		if !signed {
			if strings.Contains(data, "DKIM-Signature:") {
				t.Errorf("%s: delivered signed:\n%.600s", subject, data)
			}
			continue
		}
		vs, err := msgdkim.VerifyWithOptions(strings.NewReader(data), opts)
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "app.test" {
			t.Errorf("%s: verification %+v %v", subject, vs, err)
		}
	}
	if len(want) != 0 {
		t.Errorf("not delivered: %v", want)
	}
}

// applyAccess writes the access map and waits until the ingress applies
// it: loopback without AUTH gets 250 for RCPT to alpha.test (toAlpha) or,
// as a relay client, to elsewhere.test. Files written before it are in
// force too (a reload reads the whole directory).
func (s *submissionEnv) applyAccess(t *testing.T, access string, toAlpha bool) {
	t.Helper()
	s.writePolicy("access", access)
	probe := "u@alpha.test"
	if !toAlpha {
		probe = "u@elsewhere.test" // only a relay client may send there
	}
	waitFor(t, "the access map in force", 30*time.Second, func() bool {
		tp, err := textproto.Dial("tcp", s.listen["smtp"])
		if err != nil {
			return false
		}
		defer tp.Close()
		code := 0
		for _, cmd := range []string{"", "EHLO probe.test", "MAIL FROM:<probe@probe.test>", "RCPT TO:<" + probe + ">"} {
			if cmd != "" {
				if err := tp.PrintfLine("%s", cmd); err != nil {
					return false
				}
			}
			if code, _, err = tp.ReadResponse(0); err != nil && code == 0 {
				return false
			}
		}
		_ = tp.PrintfLine("QUIT")
		return code == 250
	})
}
