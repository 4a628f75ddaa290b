package ingress_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"log/slog"
	"net"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// The users of these tests: app1 may send as anyone at app.test and as
// alerts@ops.test; nobody relays without AUTH (loopback is not a relay
// network here: no open relay either way).
const (
	authAccess = "To:local.test RELAY\n"
	goodPass   = "correct horse battery staple"
)

type authFixture struct {
	*fixture
	tlsAddr string // implicit TLS (the 465-style listener)
	ca      *testenv.CA
	logs    *lockedBuffer
	pol     *atomic.Pointer[policy.Policy] // the policy in force; setPolicy swaps it (a reload)
}

// setPolicy puts new policy files in force, as a reload does.
func (f *authFixture) setPolicy(files map[string]string) {
	f.tb.Helper()
	m := map[string][]byte{}
	for k, v := range files {
		m[k] = []byte(v)
	}
	pol, err := policy.Parse(m)
	if err != nil {
		f.tb.Fatal(err)
	}
	f.pol.Store(pol)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startAuth(t testing.TB, withUsers bool, maxFailures int, mutate ...func(*ingress.Config)) *authFixture {
	t.Helper()
	files := map[string][]byte{"access": []byte(authAccess)}
	if withUsers {
		h, err := smtpauth.HashBcrypt(goodPass, smtpauth.MinBcryptCost)
		if err != nil {
			t.Fatal(err)
		}
		files["users"] = []byte("app1 " + h + " app.test,alerts@ops.test\n")
	}
	parsed, err := policy.Parse(files)
	if err != nil {
		t.Fatal(err)
	}
	pol := &atomic.Pointer[policy.Policy]{}
	pol.Store(parsed)
	budget, err := smtpauth.NewFailureBudget(smtpauth.BudgetConfig{MaxFailures: maxFailures})
	if err != nil {
		t.Fatal(err)
	}
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "mx.test", "localhost")
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	f := start(t, func(c *ingress.Config) {
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		c.Policy = &ingress.SendmailPolicy{Current: pol.Load}
		c.Auth = &smtpauth.Authenticator{Verifier: smtpauth.NewVerifier(2), Budget: budget, Log: log.With("component", "ingress")}
		c.Users = func() *smtpauth.Users { return pol.Load().Users }
		c.Logger = log
		for _, m := range mutate {
			m(c)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go f.srv.ServeTLS(ln)
	return &authFixture{fixture: f, tlsAddr: ln.Addr().String(), ca: ca, logs: logs, pol: pol}
}

// startTLS runs STARTTLS on c, checking the certificate against the CA.
func (f *authFixture) startTLS(c *client) {
	c.tb.Helper()
	c.expect(220, "STARTTLS")
	tc := tls.Client(c.conn, &tls.Config{ServerName: "mx.test", RootCAs: f.ca.Pool(), MinVersion: tls.VersionTLS12})
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.tb.Fatalf("TLS handshake: %v", err)
	}
	c.conn, c.tp = tc, textproto.NewConn(tc)
}

func plainAuth(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
}

func authLine(r reply) string {
	for _, l := range r.Lines {
		if strings.HasPrefix(l, "AUTH") {
			return l
		}
	}
	return ""
}

func TestAuthOfferedOnlyOverTLS(t *testing.T) {
	f := startAuth(t, true, 5)
	c := dial(t, f.addr)
	r := c.expect(250, "EHLO client.test")
	if a := authLine(r); a != "" {
		t.Fatalf("AUTH offered before TLS: %q", r.Lines)
	}
	c.expect(538, "%s", plainAuth("app1", goodPass)) // 538 5.7.11, even with the right password
	f.startTLS(c)
	r = c.expect(250, "EHLO client.test")
	if a := authLine(r); a != "AUTH PLAIN LOGIN" {
		t.Fatalf("EHLO over TLS offers %q, want AUTH PLAIN LOGIN: %q", a, r.Lines)
	}
}

func TestAuthBeforeTLSIs538(t *testing.T) {
	f := startAuth(t, true, 5)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	r := c.cmd("AUTH LOGIN")
	if r.Code != 538 || !strings.HasPrefix(r.Text(), "5.7.11 ") {
		t.Fatalf("AUTH LOGIN before TLS: %v, want 538 5.7.11", r)
	}
}

func TestNoUsersNoAuth(t *testing.T) {
	f := startAuth(t, false, 5)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	f.startTLS(c)
	r := c.expect(250, "EHLO client.test")
	if a := authLine(r); a != "" {
		t.Fatalf("AUTH offered without users: %q", r.Lines)
	}
	c.expect(503, "%s", plainAuth("app1", goodPass))
	// And no open relay: loopback is not a relay network in this policy.
	c.expect(250, "MAIL FROM:<x@app.test>")
	if r := c.cmd("RCPT TO:<u@elsewhere.test>"); r.Code != 550 || !strings.Contains(r.Text(), "Relaying denied") {
		t.Fatalf("RCPT to a foreign domain without AUTH: %v, want 550 Relaying denied", r)
	}
}

func TestAuthRelaysAndChecksSender(t *testing.T) {
	f := startAuth(t, true, 5)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	f.startTLS(c)
	c.expect(250, "EHLO client.test")
	// Before AUTH: no relay.
	c.expect(250, "MAIL FROM:<app@app.test>")
	if r := c.cmd("RCPT TO:<u@elsewhere.test>"); r.Code != 550 {
		t.Fatalf("RCPT before AUTH: %v, want 550", r)
	}
	c.expect(250, "RSET")
	c.expect(235, "%s", plainAuth("app1", goodPass))
	// A sender the user may not use.
	for _, from := range []string{"app@other.test", "bob@ops.test", "x@sub.app.test", ""} {
		if r := c.cmd("MAIL FROM:<%s>", from); r.Code != 553 || !strings.HasPrefix(r.Text(), "5.7.1 ") {
			t.Fatalf("MAIL FROM:<%s> as app1: %v, want 553 5.7.1", from, r)
		}
	}
	c.expect(250, "MAIL FROM:<alerts@ops.test>")
	c.expect(250, "RCPT TO:<u@elsewhere.test>")
	qid := queueID(t, c.sendData("From: alerts@ops.test\r\nSubject: auth relay\r\n\r\nhi\r\n"))
	jobs := f.fetch(1, 10*time.Second)
	if len(jobs) != 1 || jobs[0].Env.QueueID != qid || jobs[0].Env.Domain != "elsewhere.test" {
		t.Fatalf("queued %v, want one envelope %s for elsewhere.test", jobs, qid)
	}
	// The user's access still goes through the access map.
	c.expect(250, "MAIL FROM:<a@app.test>")
	c.expect(250, "RCPT TO:<u@local.test>")
	c.expect(221, "QUIT")
	if !strings.Contains(f.logs.String(), `msg="SMTP AUTH succeeded" component=ingress client=127.0.0.1 mechanism=PLAIN user=app1`) {
		t.Errorf("no success log line:\n%s", f.logs.String())
	}
}

func TestAuthFailureBudget(t *testing.T) {
	f := startAuth(t, true, 3)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	f.startTLS(c)
	c.expect(250, "EHLO client.test")
	for i := 0; i < 2; i++ {
		if r := c.cmd("%s", plainAuth("app1", "wrong")); r.Code != 535 || !strings.HasPrefix(r.Text(), "5.7.8 ") {
			t.Fatalf("wrong password #%d: %v, want 535 5.7.8", i+1, r)
		}
	}
	// LOGIN, unknown user: the third failure spends the budget.
	c.expect(334, "AUTH LOGIN")
	c.expect(334, "%s", base64.StdEncoding.EncodeToString([]byte("nobody")))
	if r := c.cmd("%s", base64.StdEncoding.EncodeToString([]byte("x"))); r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0 ") {
		t.Fatalf("failure that spends the budget: %v, want 421 4.7.0", r)
	}
	c.expectClosed()
	// The budget is per client, across sessions: the next AUTH is refused
	// at once, even with the right password.
	c2 := dialTLS(t, f, f.tlsAddr)
	c2.expect(250, "EHLO client.test")
	if r := c2.cmd("%s", plainAuth("app1", goodPass)); r.Code != 421 {
		t.Fatalf("AUTH with the budget spent: %v, want 421", r)
	}
	c2.expectClosed()
	logs := f.logs.String()
	re := regexp.MustCompile(strings.ReplaceAll(smtpauth.Fail2banRegexText, "<HOST>", `(127\.0\.0\.1)`))
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		if m := re.FindStringSubmatch(l); m != nil && m[1] == "127.0.0.1" {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d fail2ban-matchable lines, want 3:\n%s", n, logs)
	}
}

func TestImplicitTLSListener(t *testing.T) {
	f := startAuth(t, true, 5)
	c := dialTLS(t, f, f.tlsAddr)
	r := c.expect(250, "EHLO client.test")
	if slices.Contains(r.Lines, "STARTTLS") {
		t.Errorf("STARTTLS offered inside implicit TLS: %q", r.Lines)
	}
	if a := authLine(r); a != "AUTH PLAIN LOGIN" {
		t.Fatalf("implicit TLS EHLO offers %q: %q", a, r.Lines)
	}
	c.expect(235, "%s", plainAuth("app1", goodPass))
	c.expect(250, "MAIL FROM:<me@app.test>")
	c.expect(250, "RCPT TO:<u@elsewhere.test>")
	qid := queueID(t, c.sendData("From: me@app.test\r\nSubject: 465\r\n\r\nhi\r\n"))
	body, err := f.store.Get(context.Background(), qid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), " with ESMTPSA id "+qid) {
		t.Errorf("Received: does not say ESMTPSA (RFC 3848: TLS and AUTH): %q", body)
	}
}

// dialTLS connects to the implicit-TLS listener and checks the greeting
// (the configured one, as on the plain port).
func dialTLS(t *testing.T, f *authFixture, addr string) *client {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: "mx.test", RootCAs: f.ca.Pool(), MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("dial TLS %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &client{tb: t, conn: conn, tp: textproto.NewConn(conn)}
	if r := c.read(); r.Code != 220 || !strings.HasPrefix(r.Text(), "mx.test mailfwd ESMTP ready") {
		t.Fatalf("greeting over implicit TLS = %v", r)
	}
	return c
}
