package ingress_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// Issue 19: the session rooms (recipient overshoot, long lines, AUTH
// inside a transaction, the AUTH failure budget, submission ports, the
// in-flight budget, users removed by a reload, 465 refusals, the minimum
// data rate). Each test here failed on the code before the fix.

// dialFrom connects from a given loopback address (another client).
func dialFrom(tb testing.TB, local, addr string) *client {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	tb.Cleanup(func() { conn.Close() })
	c := &client{tb: tb, conn: conn, tp: textproto.NewConn(conn)}
	if r := c.read(); r.Code != 220 {
		tb.Fatalf("greeting = %v", r)
	}
	return c
}

// Item 3: a client pipelining 130 recipients against a limit of 100 gets
// 100 × 250 and 30 × 452 4.5.3, the session survives (the 452s do not
// count as errors), DATA goes through for the 100, and the other 30 go in
// the next transaction.
func TestRecipientOvershootKeepsSession(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxRecipients = 100; c.MaxErrorsPerSession = 20 })
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	var b strings.Builder
	b.WriteString("MAIL FROM:<app@src.test>\r\n")
	for i := range 130 {
		fmt.Fprintf(&b, "RCPT TO:<r%03d@dst.test>\r\n", i)
	}
	writeRaw(t, c, b.String())
	if r := c.read(); r.Code != 250 {
		t.Fatalf("MAIL: %v", r)
	}
	for i := range 130 {
		r := c.read()
		switch {
		case i < 100 && r.Code != 250:
			t.Fatalf("RCPT #%d: %v, want 250", i+1, r)
		case i >= 100 && (r.Code != 452 || !strings.HasPrefix(r.Text(), "4.5.3 ")):
			t.Fatalf("RCPT #%d: %v, want 452 4.5.3", i+1, r)
		}
	}
	queueID(t, c.sendData("Subject: many\r\n\r\nx\r\n"))
	c.expect(250, "MAIL FROM:<app@src.test>")
	for i := 100; i < 130; i++ {
		c.expect(250, "RCPT TO:<r%03d@dst.test>", i)
	}
	queueID(t, c.sendData("Subject: many, the rest\r\n\r\nx\r\n"))
	got := map[string]bool{}
	for _, j := range f.fetch(10, 5*time.Second) {
		for _, a := range j.Env.Addrs() {
			got[a] = true
		}
	}
	if len(got) != 130 {
		t.Fatalf("%d distinct recipients queued, want 130", len(got))
	}
}

// Item 3: beyond the overshoot limit, recipients over the limit count as
// errors again (Postfix smtpd_recipient_overshoot_limit).
func TestRecipientOvershootLimit(t *testing.T) {
	f := start(t, func(c *ingress.Config) {
		c.MaxRecipients, c.MaxRecipientOvershoot, c.MaxErrorsPerSession = 2, 3, 2
	})
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<app@src.test>")
	c.expect(250, "RCPT TO:<r1@dst.test>")
	c.expect(250, "RCPT TO:<r2@dst.test>")
	for i := 3; i <= 6; i++ { // three excused, the fourth is error 1
		c.expect(452, "RCPT TO:<r%d@dst.test>", i)
	}
	c.expect(452, "RCPT TO:<r7@dst.test>") // error 2: the budget is spent
	if r, err := c.readReply(); err != nil || r.Code != 421 {
		t.Fatalf("after the overshoot and error limits: %v, %v; want 421", r, err)
	}
	c.expectClosed()
}

// Item 3: body lines longer than 998 (generated HTML) are accepted and
// stored as sent, up to MaxDataLineLength; command lines keep MaxLineLength.
func TestLongBodyLines(t *testing.T) {
	f := start(t, nil) // bodies go to the blob store
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	for _, n := range []int{2000, 20000, 200000} {
		body := "Subject: long line\r\nContent-Type: text/html\r\n\r\n<p>" + strings.Repeat("x", n) + "</p>\r\nend\r\n"
		c.expect(250, "MAIL FROM:<app@src.test>")
		c.expect(250, "RCPT TO:<b@dst.test>")
		qid := queueID(t, c.sendData(body))
		got, err := f.store.Get(context.Background(), qid)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(string(got), "\r\n"+body) {
			t.Fatalf("stored body of the %d-character line differs from what was sent", n)
		}
	}
	// A command line is still bounded by MaxLineLength (2000).
	writeRaw(t, c, "NOOP "+strings.Repeat("y", 3000)+"\r\n")
	if r, err := c.readReply(); err != nil || r.Code != 500 {
		t.Fatalf("a 3000-character command: %v, %v; want 500", r, err)
	}
}

// Item 3: a body line over MaxDataLineLength is refused and the session
// ends; nothing is queued.
func TestBodyLineOverLimit(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxDataLineLength = 30000 })
	c := dial(t, f.addr)
	openData(c)
	writeRaw(t, c, "Subject: too long\r\n\r\n"+strings.Repeat("x", 40000)+"\r\n.\r\n")
	if r, err := c.readReply(); err != nil || r.Code != 500 || !strings.HasPrefix(r.Text(), "5.5.2 ") {
		t.Fatalf("a 40000-character line over a 30000 limit: %v, %v; want 500 5.5.2", r, err)
	}
	c.expectClosed()
	waitIdle(t, f)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued", n)
	}
}

// authTLS connects on the plain listener, runs STARTTLS and EHLO.
func (f *authFixture) authTLS(t *testing.T) *client {
	t.Helper()
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	f.startTLS(c)
	c.expect(250, "EHLO client.test")
	return c
}

// Item 4: AUTH inside a mail transaction is 503 5.5.1 (RFC 4954 §4), so a
// MAIL FROM given before AUTH is never used by the authenticated user.
func TestAuthDuringMailTransaction(t *testing.T) {
	f := startAuth(t, true, 5)
	c := f.authTLS(t)
	c.expect(250, "MAIL FROM:<ceo@bank.example>")
	if r := c.cmd("%s", plainAuth("app1", goodPass)); r.Code != 503 || !strings.HasPrefix(r.Text(), "5.5.1 ") {
		t.Fatalf("AUTH after MAIL: %v, want 503 5.5.1", r)
	}
	c.expect(250, "RSET")
	c.expect(235, "%s", plainAuth("app1", goodPass))
	c.expect(553, "MAIL FROM:<ceo@bank.example>")
}

// Items 4 and 9: the sender is checked against the user in force at RCPT
// and DATA, not only at MAIL: a reload that narrows the user's senders
// applies to an open transaction.
func TestSenderRecheckedAfterReload(t *testing.T) {
	f := startAuth(t, true, 5)
	c := f.authTLS(t)
	c.expect(235, "%s", plainAuth("app1", goodPass))
	c.expect(250, "MAIL FROM:<alerts@ops.test>")
	c.expect(250, "RCPT TO:<u1@elsewhere.test>")
	h, _ := f.pol.Load().Users.Lookup("app1")
	f.setPolicy(map[string]string{"access": authAccess, "users": "app1 " + h.Hash.Encoded + " app.test\n"})
	if r := c.cmd("RCPT TO:<u2@elsewhere.test>"); r.Code != 553 || !strings.HasPrefix(r.Text(), "5.7.1 ") {
		t.Fatalf("RCPT after the sender was taken from the user: %v, want 553 5.7.1", r)
	}
	if r := c.sendData("From: alerts@ops.test\r\n\r\nx\r\n"); r.Code != 553 {
		t.Fatalf("DATA after the sender was taken from the user: %v, want 553", r)
	}
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued", n)
	}
	// The senders still allowed work in the same session.
	c.expect(250, "MAIL FROM:<a@app.test>")
	c.expect(250, "RCPT TO:<u@elsewhere.test>")
	queueID(t, c.sendData("From: a@app.test\r\n\r\nx\r\n"))
}

// Item 9: a user removed (or whose password changed) by a reload loses its
// open sessions: the next MAIL, RCPT or DATA gets 421 4.7.0 and the
// session ends.
func TestRemovedUserSessionEnds(t *testing.T) {
	f := startAuth(t, true, 5)
	c1 := f.authTLS(t)
	c1.expect(235, "%s", plainAuth("app1", goodPass))
	c2 := f.authTLS(t)
	c2.expect(235, "%s", plainAuth("app1", goodPass))
	c2.expect(250, "MAIL FROM:<a@app.test>")
	c2.expect(250, "RCPT TO:<u@elsewhere.test>")
	u, _ := f.pol.Load().Users.Lookup("app1")
	users := u.Hash.Encoded
	f.setPolicy(map[string]string{"access": authAccess})
	if r := c1.cmd("MAIL FROM:<a@app.test>"); r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0 ") {
		t.Fatalf("MAIL after the user was removed: %v, want 421 4.7.0", r)
	}
	c1.expectClosed()
	if r := c2.sendData("From: a@app.test\r\n\r\nx\r\n"); r.Code != 421 {
		t.Fatalf("DATA after the user was removed: %v, want 421", r)
	}
	c2.expectClosed()
	waitFor(t, func() bool { return f.srv.Sessions() == 0 })
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued for a removed user", n)
	}
	// A changed password ends sessions too.
	f.setPolicy(map[string]string{"access": authAccess, "users": "app1 " + users + " app.test\n"})
	c3 := f.authTLS(t)
	c3.expect(235, "%s", plainAuth("app1", goodPass))
	h, err := smtpauth.HashBcrypt("a new password", smtpauth.MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	f.setPolicy(map[string]string{"access": authAccess, "users": "app1 " + h + " app.test\n"})
	if r := c3.cmd("MAIL FROM:<a@app.test>"); r.Code != 421 {
		t.Fatalf("MAIL after the password changed: %v, want 421", r)
	}
	c3.expectClosed()
}

// Item 10: the session-limit refusal on the implicit-TLS listener comes
// inside TLS, after the handshake, never as plain text.
func TestImplicitTLSRefusalAfterHandshake(t *testing.T) {
	f := startAuth(t, true, 5, func(c *ingress.Config) { c.MaxSessions = 1 })
	first := dialTLS(t, f, f.tlsAddr)
	first.expect(250, "EHLO client.test")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f.tlsAddr,
		&tls.Config{ServerName: "mx.test", RootCAs: f.ca.Pool(), MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS handshake with a refused session: %v", err)
	}
	defer conn.Close()
	c := &client{tb: t, conn: conn, tp: textproto.NewConn(conn)}
	if r := c.read(); r.Code != 421 || !strings.HasPrefix(r.Text(), "4.3.2 ") {
		t.Fatalf("refusal over TLS: %v, want 421 4.3.2", r)
	}
	c.expectClosed()
}

// Item 12: a client trickling its body inside the idle timeout is cut off
// once it falls below the minimum data rate: 421 4.4.2, nothing queued.
func TestMinDataRate(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.ReadTimeout = time.Second }) // default rate: 500 bytes/s
	c := dial(t, f.addr)
	openData(c)
	got := make(chan reply, 1)
	go func() {
		r, _ := c.readReply()
		got <- r
	}()
	var r reply
	func() {
		for range 60 { // 60 × 200 ms, 3 bytes each: 15 bytes/s, never idle for a second
			select {
			case r = <-got:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if _, err := c.conn.Write([]byte("x\r\n")); err != nil {
				r = <-got
				return
			}
		}
		_, _ = c.conn.Write([]byte(".\r\n"))
		r = <-got
	}()
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.4.2 ") {
		t.Fatalf("a client at 15 bytes/s got %v, want 421 4.4.2", r)
	}
	waitIdle(t, f)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued from a cut-off client", n)
	}
	if k := f.storedKeys(); len(k) != 0 {
		t.Errorf("bodies stored: %v", k)
	}
}

// Item 8: idle DATA sessions hold what they were sent, not a message's
// worth of buffers up front: a handful of them (DKIM keys in force) no
// longer make everyone else's DATA wait and get 452.
func TestIdleDataSessionsHoldLittle(t *testing.T) {
	keys, _ := testKeys(t, "src.test") // keys in force make each DATA count a signer's header buffer
	f := start(t, func(c *ingress.Config) {
		c.DKIM = func() *dkim.Keys { return keys }
		c.MaxInFlightBytes = 256 << 10 // three messages' read buffers (64 KiB each) taken up front
		c.StoreTimeout = time.Second
	})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialFrom(t, fmt.Sprintf("127.0.1.%d", i+1), f.addr)
			openData(c) // and nothing more
		}()
	}
	wg.Wait()
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<b@dst.test>")
	queueID(t, c.sendData("From: a@src.test\r\nSubject: small\r\n\r\n"+strings.Repeat("y", 1024)+"\r\n"))
}

// Item 8: one client holds at most its share of the in-flight budget
// (MaxInFlightBytes/4 by default); others go on.
func TestInFlightSharePerClient(t *testing.T) {
	f := start(t, func(c *ingress.Config) {
		c.InlineBodyMax = 64 << 10
		c.MaxInFlightBytes = 1 << 20    // a client's share: 256 KiB
		c.DKIMMaxHeaderBytes = 16 << 10 // (a share is at least one message's buffers, a signer's included)
		c.StoreTimeout = 5 * time.Second
	})
	chunk := "Subject: a\r\n\r\n" + strings.Repeat(strings.Repeat("x", 1000)+"\r\n", 100) // 100 KB: past the peek, streaming
	var open []*client
	for range 2 { // 2 × (64 KiB read buffer + 32 KiB store buffer): within the share
		a := dialFrom(t, "127.0.2.1", f.addr)
		openData(a)
		writeRaw(t, a, chunk)
		open = append(open, a)
	}
	waitFor(t, func() bool { return f.srv.InFlightBytes() >= 2*96<<10 })
	third := dialFrom(t, "127.0.2.1", f.addr)
	openData(third)
	if r := third.sendRest(chunk); r.Code != 452 || !strings.HasPrefix(r.Text(), "4.3.1 ") {
		t.Fatalf("a third streaming message from one client: %v, want 452 4.3.1", r)
	}
	other := dialFrom(t, "127.0.2.2", f.addr)
	openData(other)
	queueID(t, other.sendRest(chunk))
	for _, a := range open {
		queueID(t, a.sendRest(""))
	}
}

// Item 7: the submission listener (587) wants AUTH before MAIL, also from
// a relay network; listed networks may be let through.
func TestSubmissionRequiresAuth(t *testing.T) {
	f := start(t, func(c *ingress.Config) {
		c.SubmissionAuthExceptions = []netip.Prefix{netip.MustParsePrefix("127.0.3.0/24")}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go f.srv.ServeSubmission(ln)
	c := dial(t, ln.Addr().String())
	c.expect(250, "EHLO client.test")
	if r := c.cmd("MAIL FROM:<a@src.test>"); r.Code != 530 || !strings.HasPrefix(r.Text(), "5.7.0 ") {
		t.Fatalf("MAIL without AUTH on submission: %v, want 530 5.7.0", r)
	}
	ok := dialFrom(t, "127.0.3.1", ln.Addr().String())
	ok.expect(250, "EHLO client.test")
	ok.expect(250, "MAIL FROM:<a@src.test>")
	ok.expect(250, "RCPT TO:<b@dst.test>")
	queueID(t, ok.sendData("Subject: listed network\r\n\r\nx\r\n"))
	// Port 25 is unchanged: the relay network sends without AUTH.
	p := dial(t, f.addr)
	p.expect(250, "EHLO client.test")
	p.expect(250, "MAIL FROM:<a@src.test>")
}

// Item 5 (a): the failure budget is checked before every password check,
// also for sessions parked at the LOGIN "Password:" prompt before it was
// spent: 20 parked guesses with a budget of 5 get at most 5 checks, and a
// right password coming last is refused.
func TestAuthBudgetParkedLogins(t *testing.T) {
	f := startAuth(t, true, 5)
	const parked = 20
	cs := make([]*client, parked)
	for i := range cs {
		c := dialTLS(t, f, f.tlsAddr)
		c.expect(250, "EHLO client.test")
		c.expect(334, "AUTH LOGIN")
		c.expect(334, "%s", base64.StdEncoding.EncodeToString([]byte("app1")))
		cs[i] = c
	}
	for i, c := range cs[:parked-1] {
		r := c.cmd("%s", base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("guess-%d", i))))
		if r.Code != 535 && r.Code != 421 {
			t.Fatalf("guess %d: %v", i, r)
		}
	}
	if r := cs[parked-1].cmd("%s", base64.StdEncoding.EncodeToString([]byte(goodPass))); r.Code != 421 {
		t.Fatalf("the right password after the budget was spent: %v, want 421", r)
	}
	if n := strings.Count(f.logs.String(), `msg="SMTP AUTH failed from [127.0.0.1]"`); n != 5 {
		t.Fatalf("%d password checks failed, want 5 (the budget)", n)
	}
}

// Item 5 (b): a success does not erase the client's failures: rounds of 4
// wrong guesses and one valid login reach the budget in the second round.
func TestAuthSuccessKeepsClientFailures(t *testing.T) {
	f := startAuth(t, true, 5)
	c := dialTLS(t, f, f.tlsAddr)
	c.expect(250, "EHLO client.test")
	for range 4 {
		c.expect(535, "%s", plainAuth("app1", "wrong"))
	}
	c.expect(235, "%s", plainAuth("app1", goodPass))
	c2 := dialTLS(t, f, f.tlsAddr)
	c2.expect(250, "EHLO client.test")
	if r := c2.cmd("%s", plainAuth("other", "wrong")); r.Code != 421 {
		t.Fatalf("the 5th wrong guess from one client, after a valid login: %v, want 421", r)
	}
	c2.expectClosed()
}

// Item 12: the minimum data rate holds also while the rest of a message
// refused early (here: no room in the in-flight budget) is read and thrown
// away: the trickling client is cut off, not read for as long as it likes.
func TestMinDataRateAfterEarlyRefusal(t *testing.T) {
	f := start(t, func(c *ingress.Config) {
		c.ReadTimeout = time.Second
		c.MaxInFlightBytes = 8 << 10 // less than a message's first buffer: DATA is refused at once
	})
	c := dial(t, f.addr)
	openData(c)
	closed := make(chan error, 1)
	go func() {
		for {
			if _, err := c.readReply(); err != nil {
				closed <- err
				return
			}
		}
	}()
	cut := false
	for range 60 { // 60 × 200 ms, 3 bytes each
		select {
		case <-closed:
			cut = true
		case <-time.After(200 * time.Millisecond):
		}
		if cut {
			break
		}
		if _, err := c.conn.Write([]byte("x\r\n")); err != nil {
			cut = true
			break
		}
	}
	if !cut {
		t.Fatal("a client trickling the rest of a refused message at 15 bytes/s was not cut off")
	}
	waitIdle(t, f)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued", n)
	}
}

// Item 3: a recipient whose alias expansion would pass the limit gets the
// same 452 4.5.3, excused from the error budget the same way.
func TestExpansionOvershootKeepsSession(t *testing.T) {
	pol, err := policy.Parse(map[string][]byte{
		"access":           []byte("To:local.test RELAY\nTo:dst.test RELAY\n"),
		"local-host-names": []byte("local.test\n"),
		"aliases":          []byte("team: a@dst.test, b@dst.test, c@dst.test\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, func(c *ingress.Config) {
		c.MaxRecipients, c.MaxErrorsPerSession = 3, 2
		c.Policy = &ingress.SendmailPolicy{Current: func() *policy.Policy { return pol }, MaxExpansion: 3}
	})
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<x@dst.test>")
	for range 4 {
		if r := c.cmd("RCPT TO:<team@local.test>"); r.Code != 452 || !strings.HasPrefix(r.Text(), "4.5.3 ") {
			t.Fatalf("an alias of 3 on top of 1 with a limit of 3: %v, want 452 4.5.3 (and the session kept)", r)
		}
	}
	c.expect(250, "RCPT TO:<y@dst.test>")
	queueID(t, c.sendData("Subject: v\r\n\r\nx\r\n"))
}
