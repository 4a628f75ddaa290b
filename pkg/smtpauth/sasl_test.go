package smtpauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// testBackend is the smallest go-smtp backend that offers AUTH through an
// Authenticator, mapping *Error to *smtp.SMTPError as the ingress's error
// boundary will.
type testBackend struct {
	a     *Authenticator
	users *Users
	mu    sync.Mutex
	authd []string
}

type testSession struct {
	b    *testBackend
	conn *smtp.Conn
}

func (b *testBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &testSession{b: b, conn: c}, nil
}

func toSMTP(err error) error {
	var ae *Error
	if errors.As(err, &ae) {
		return &smtp.SMTPError{Code: ae.Reply.Code, EnhancedCode: enh(ae.Reply.Enhanced), Message: ae.Reply.Text}
	}
	return err
}

func enh(s string) smtp.EnhancedCode {
	var e smtp.EnhancedCode
	for i, p := range strings.SplitN(s, ".", 3) {
		for _, c := range p {
			e[i] = e[i]*10 + int(c-'0')
		}
	}
	return e
}

type mappedServer struct{ s sasl.Server }

func (m mappedServer) Next(r []byte) ([]byte, bool, error) {
	c, d, err := m.s.Next(r)
	return c, d, toSMTP(err)
}

func (s *testSession) AuthMechanisms() []string { return Mechanisms }
func (s *testSession) Auth(mech string) (sasl.Server, error) {
	_, isTLS := s.conn.TLSConnectionState()
	addr := s.conn.Conn().RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	srv, err := s.b.a.Server(context.Background(), Attempt{Client: addr, TLS: isTLS, Mechanism: mech, Users: s.b.users,
		Success: func(u *User) { s.b.mu.Lock(); s.b.authd = append(s.b.authd, u.Name); s.b.mu.Unlock() }})
	if err != nil {
		return nil, toSMTP(err)
	}
	return mappedServer{srv}, nil
}
func (s *testSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *testSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *testSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }
func (s *testSession) Reset()                               {}
func (s *testSession) Logout() error                        { return nil }

func startSMTP(t *testing.T, b *testBackend, implicitTLS bool) string {
	return startSMTPMode(t, b, implicitTLS, false)
}

// startSMTPMode: implicit TLS (465 style), or plain with STARTTLS offered
// when startTLS is set (587 style), or plain only.
func startSMTPMode(t *testing.T, b *testBackend, implicitTLS, startTLS bool) string {
	t.Helper()
	srv := smtp.NewServer(b)
	if startTLS {
		srv.TLSConfig = testenv.TLSConfig(t)
	}
	srv.Domain = "mx.test"
	srv.AllowInsecureAuth = true // the Authenticator answers 538 itself
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	var ln net.Listener
	var err error
	if implicitTLS {
		ln, err = tls.Listen("tcp", "127.0.0.1:0", testenv.TLSConfig(t))
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

func TestAuthenticatorOverSMTP(t *testing.T) {
	u, err := ParseUserLine("app1 " + mustArgon2(t, "good-pw") + " example.com")
	if err != nil {
		t.Fatal(err)
	}
	users, _ := NewUsers([]User{u})
	budget, _ := NewFailureBudget(BudgetConfig{MaxFailures: 3})
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	b := &testBackend{users: users, a: &Authenticator{Verifier: NewVerifier(2), Budget: budget,
		Log: slog.New(slog.NewTextHandler(&lockedWriter{w: &logBuf, mu: &logMu}, nil))}}
	tlsAddr := startSMTP(t, b, true)
	plainAddr := startSMTP(t, b, false)
	clientTLS := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // test server's self-signed certificate

	auth := func(addr string, useTLS bool, a sasl.Client) error {
		t.Helper()
		var c *smtp.Client
		var err error
		if useTLS {
			c, err = smtp.DialTLS(addr, clientTLS)
		} else {
			c, err = smtp.Dial(addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		return c.Auth(a)
	}

	// Before TLS: 538 5.7.11, and no failure is counted.
	if err := auth(plainAddr, false, sasl.NewPlainClient("", "app1", "good-pw")); code(err) != 538 {
		t.Fatalf("AUTH without TLS: %v", err)
	}
	if err := auth(tlsAddr, true, sasl.NewPlainClient("", "app1", "good-pw")); err != nil {
		t.Fatalf("PLAIN: %v", err)
	}
	if err := auth(tlsAddr, true, sasl.NewLoginClient("APP1", "good-pw")); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	if err := auth(tlsAddr, true, sasl.NewPlainClient("someone-else", "app1", "good-pw")); code(err) != 535 {
		t.Fatalf("PLAIN with another authorization identity: %v", err)
	}
	if err := auth(tlsAddr, true, sasl.NewLoginClient("nobody", "good-pw")); code(err) != 535 {
		t.Fatalf("unknown user: %v", err)
	}
	// Third failure spends the budget: 421, and so is the next attempt,
	// even with the right password, from a new connection.
	if err := auth(tlsAddr, true, sasl.NewPlainClient("", "app1", "bad")); code(err) != 421 {
		t.Fatalf("failure that spends the budget: %v", err)
	}
	if err := auth(tlsAddr, true, sasl.NewPlainClient("", "app1", "good-pw")); code(err) != 421 {
		t.Fatalf("after the budget: %v", err)
	}
	b.mu.Lock()
	if strings.Join(b.authd, ",") != "app1,app1" {
		t.Errorf("authenticated: %v", b.authd)
	}
	b.mu.Unlock()
	logMu.Lock()
	lines := strings.Count(logBuf.String(), `msg="SMTP AUTH failed from [127.0.0.1]"`)
	logMu.Unlock()
	if lines != 3 {
		t.Errorf("%d failure log lines, want 3:\n%s", lines, logBuf.String())
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestLoginServerBounds(t *testing.T) {
	s := &loginServer{check: func(u, p string) error { return nil }}
	if _, _, err := s.Next(bytes.Repeat([]byte("a"), maxLoginField+1)); err == nil {
		t.Error("oversized LOGIN field accepted")
	}
	s = &loginServer{check: func(u, p string) error {
		if u != "u" || p != "p" {
			return errors.New("wrong")
		}
		return nil
	}}
	// With an initial response (AUTH LOGIN dQ==).
	if c, done, err := s.Next([]byte("u")); string(c) != "Password:" || done || err != nil {
		t.Fatalf("%q %v %v", c, done, err)
	}
	if _, done, err := s.Next([]byte("p")); !done || err != nil {
		t.Fatalf("%v %v", done, err)
	}
	if _, _, err := s.Next(nil); err == nil {
		t.Error("Next after the end succeeded")
	}
}

// TestAuthenticatorSwaks drives AUTH with swaks (the Debian package the
// Makefile installs), over STARTTLS as on a submission port.
func TestAuthenticatorSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		if os.Getenv("MAILFWD_REQUIRE_SWAKS") == "1" {
			t.Fatal("swaks not installed (make test installs it) [MAILFWD_REQUIRE_SWAKS=1]")
		}
		t.Skip("swaks not installed")
	}
	u, err := ParseUserLine("app1 " + mustArgon2(t, "good-pw") + " example.com")
	if err != nil {
		t.Fatal(err)
	}
	users, _ := NewUsers([]User{u})
	budget, _ := NewFailureBudget(BudgetConfig{MaxFailures: 2})
	b := &testBackend{users: users, a: &Authenticator{Verifier: NewVerifier(1), Budget: budget}}
	addr := startSMTPMode(t, b, false, true)
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		full := append([]string{"--server", addr, "--from", "a@example.com", "--to", "b@example.net", "--quit-after", "AUTH", "--timeout", "20"}, args...)
		out, _ := exec.CommandContext(ctx, swaks, full...).CombinedOutput() // exit code varies by failure; the dialog is checked
		return string(out)
	}
	want := func(out string, subs ...string) {
		t.Helper()
		for _, s := range subs {
			if !strings.Contains(out, s) {
				t.Fatalf("swaks output lacks %q:\n%s", s, out)
			}
		}
	}
	want(run("--auth", "PLAIN", "--auth-user", "app1", "--auth-password", "good-pw"), "538 5.7.11")
	want(run("--tls", "--auth", "PLAIN", "--auth-user", "app1", "--auth-password", "good-pw"), "235 2.0.0")
	want(run("--tls", "--auth", "LOGIN", "--auth-user", "app1", "--auth-password", "good-pw"), "235 2.0.0")
	want(run("--tls", "--auth", "LOGIN", "--auth-user", "app1", "--auth-password", "nope"), "535 5.7.8")
	want(run("--tls", "--auth", "PLAIN", "--auth-user", "app1", "--auth-password", "nope"), "421 4.7.0")
	want(run("--tls", "--auth", "PLAIN", "--auth-user", "app1", "--auth-password", "good-pw"), "421 4.7.0")
}
