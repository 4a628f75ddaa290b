package tests

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// Issue 12, inbound: SMTP AUTH on the submission (587, STARTTLS) and
// implicit-TLS (465) listeners and the plain port, driven by swaks; DKIM
// signing checked by go-msgauth's verifier against the loopback DNS.

const (
	subUser = "app1"
	subPass = "s3cret-Submission-pw"
)

type submissionEnv struct {
	*env
	listen map[string]string // kind → address
	ca     *testenv.CA
	key    dkim.Key
}

func swaksPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("swaks")
	if err != nil {
		if os.Getenv("MAILFWD_REQUIRE_SWAKS") == "1" {
			t.Fatal("swaks not installed (make mail-clients installs it) [MAILFWD_REQUIRE_SWAKS=1]")
		}
		t.Skip("swaks not installed (make mail-clients)")
	}
	return p
}

// newSubmissionEnv: a policy with no relay for loopback (alpha.test is
// reachable only by AUTH users), users (unless noUsers) and a DKIM key for
// app.test whose TXT record the loopback DNS serves.
func newSubmissionEnv(t *testing.T, noUsers bool, maxFailures int, setup ...func(*daemon.Ingress)) *submissionEnv {
	t.Helper()
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "mx.mailfwd.test")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := dkim.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	key := dkim.Key{Domain: "app.test", Selector: "s1", Signer: signer}
	keyLine, err := key.Line()
	if err != nil {
		t.Fatal(err)
	}
	zone, err := key.ZoneLine()
	if err != nil {
		t.Fatal(err)
	}
	policy := map[string]string{
		"access": "Connect:127.0.0.1 OK\n", // nothing relays without AUTH
		"dkim":   keyLine + "\n",
	}
	if !noUsers {
		h, err := smtpauth.HashBcrypt(subPass, smtpauth.MinBcryptCost)
		if err != nil {
			t.Fatal(err)
		}
		policy["users"] = subUser + " " + h + " app.test,alerts@ops.test\n"
	}
	var mu sync.Mutex
	listen := map[string]string{}
	e := newEnv(t, envOptions{
		blob:   "fs",
		policy: policy,
		zones:  "\n" + zone + "\n",
		ingressSetup: func(in *daemon.Ingress) {
			in.TLSCert, in.TLSKey = certFile, keyFile
			in.SubmissionListen, in.SMTPSListen = "127.0.0.1:0", "127.0.0.1:0"
			in.AuthBudget.MaxFailures = maxFailures
			in.OnListen = func(kind, addr string) {
				mu.Lock()
				listen[kind] = addr
				mu.Unlock()
			}
			for _, f := range setup {
				f(in)
			}
		},
	})
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []string{"smtp", "submission", "smtps"} {
		if listen[k] == "" {
			t.Fatalf("no %s listener: %v", k, listen)
		}
	}
	return &submissionEnv{env: e, listen: listen, ca: ca, key: key}
}

// swaks runs one transaction and returns its dialog (the exit code varies
// with the failure; the dialog is what is checked).
func (s *submissionEnv) swaks(t *testing.T, kind string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"--server", s.listen[kind], "--helo", "client.test", "--timeout", "20"}, args...)
	out, err := exec.CommandContext(ctx, swaksPath(t), full...).CombinedOutput()
	if len(out) == 0 {
		t.Fatalf("swaks %q printed nothing: %v", full, err)
	}
	return string(out)
}

func wantAll(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(out, sub) {
			t.Fatalf("swaks dialog lacks %q:\n%s", sub, out)
		}
	}
}

func wantNone(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if strings.Contains(out, sub) {
			t.Fatalf("swaks dialog has %q:\n%s", sub, out)
		}
	}
}

func (s *submissionEnv) sink() *sink.Server { return s.sinks["127.0.0.2"] } // mx.alpha.test

func TestSubmissionAuthSwaks(t *testing.T) {
	s := newSubmissionEnv(t, false, 3)
	auth := []string{"--auth", "PLAIN", "--auth-user", subUser, "--auth-password", subPass}

	// Before TLS: no AUTH in EHLO (swaks refuses to authenticate), and no relay.
	out := s.swaks(t, "submission", append([]string{"--from", "a@app.test", "--to", "u@alpha.test", "--quit-after", "AUTH"}, auth...)...)
	wantAll(t, out, "250-STARTTLS")
	wantNone(t, out, "250-AUTH", "250 AUTH", "235 ")
	out = s.swaks(t, "submission", "--from", "a@app.test", "--to", "u@alpha.test", "--quit-after", "RCPT")
	wantAll(t, out, "530 5.7.0") // MAIL before AUTH on a submission port

	// The right password over STARTTLS relays, on every listener, and the
	// message is delivered.
	for i, kind := range []string{"submission", "smtp"} {
		out = s.swaks(t, kind, append([]string{"--tls", "--from", "a@app.test", "--to", "u@alpha.test",
			"--header", "Subject: submission " + kind}, auth...)...)
		wantAll(t, out, "250-AUTH PLAIN LOGIN", "235 2.0.0", "250 2.0.0 Ok: queued as ")
		waitFor(t, "delivery of the "+kind+" message", 30*time.Second, func() bool { return s.sink().Count() == i+1 })
	}
	// LOGIN over implicit TLS (465).
	out = s.swaks(t, "smtps", "--tlsc", "--from", "alerts@ops.test", "--to", "u@alpha.test", "--header", "Subject: smtps",
		"--auth", "LOGIN", "--auth-user", subUser, "--auth-password", subPass)
	wantAll(t, out, "220 mx.mailfwd.test", "250-AUTH PLAIN LOGIN", "235 2.0.0", "250 2.0.0 Ok: queued as ")
	wantNone(t, out, "STARTTLS")
	waitFor(t, "delivery of the smtps message", 30*time.Second, func() bool { return s.sink().Count() == 3 })

	// A sender the user may not use: refused at MAIL, nothing queued.
	out = s.swaks(t, "submission", append([]string{"--tls", "--from", "boss@other.test", "--to", "u@alpha.test"}, auth...)...)
	wantAll(t, out, "235 2.0.0", "553 5.7.1")
	wantNone(t, out, "queued as")

	// Wrong passwords: 535 until the budget (3) is spent, then 421 and
	// close; the right password is refused too while it is spent.
	bad := []string{"--tls", "--from", "a@app.test", "--to", "u@alpha.test", "--quit-after", "AUTH", "--auth", "PLAIN", "--auth-user", subUser, "--auth-password", "wrong"}
	wantAll(t, s.swaks(t, "submission", bad...), "535 5.7.8")
	wantAll(t, s.swaks(t, "smtps", append([]string{"--tlsc"}, bad[1:]...)...), "535 5.7.8")
	wantAll(t, s.swaks(t, "submission", bad...), "421 4.7.0")
	wantAll(t, s.swaks(t, "submission", append([]string{"--tls", "--from", "a@app.test", "--to", "u@alpha.test", "--quit-after", "AUTH"}, auth...)...), "421 4.7.0")
	if n := strings.Count(s.logs.String(), `msg="SMTP AUTH failed from [127.0.0.1]"`); n != 3 {
		t.Fatalf("%d fail2ban lines, want 3", n)
	}
}

func TestSubmissionNoUsersNoAuth(t *testing.T) {
	s := newSubmissionEnv(t, true, 3)
	out := s.swaks(t, "submission", "--tls", "--from", "a@app.test", "--to", "u@alpha.test", "--quit-after", "RCPT")
	wantAll(t, out, "220 2.0.0", "530 5.7.0") // STARTTLS done; no AUTH offered, so no MAIL
	wantNone(t, out, "AUTH PLAIN")
	out = s.swaks(t, "smtps", "--tlsc", "--from", "a@app.test", "--to", "u@alpha.test", "--quit-after", "RCPT",
		"--auth", "PLAIN", "--auth-user", subUser, "--auth-password", subPass)
	wantNone(t, out, "AUTH PLAIN", "235 ")
}

// Issue 19 item 7: the submission ports (587, 465) want AUTH before MAIL,
// even from a network the policy lets relay; port 25 is unchanged, and
// --submission-auth-exceptions lets listed networks through.
func TestSubmissionPortsRequireAuth(t *testing.T) {
	s := newSubmissionEnv(t, false, 3, func(in *daemon.Ingress) {
		in.SubmissionAuthExceptions = []string{"127.0.0.7"}
	})
	s.writePolicy("access", "Connect:127.0.0.1 RELAY\nConnect:127.0.0.7 RELAY\n")
	waitFor(t, "policy reload", 30*time.Second, func() bool { return strings.Count(s.logs.String(), `msg="policy loaded"`) >= 2 })
	mail := []string{"--from", "a@app.test", "--to", "u@alpha.test", "--header", "Subject: no auth"}
	out := s.swaks(t, "submission", mail...)
	wantAll(t, out, "530 5.7.0 Authentication required")
	wantNone(t, out, "queued as")
	out = s.swaks(t, "submission", append([]string{"--tls"}, mail...)...)
	wantAll(t, out, "530 5.7.0 Authentication required")
	out = s.swaks(t, "smtps", append([]string{"--tlsc"}, mail...)...)
	wantAll(t, out, "530 5.7.0 Authentication required")
	out = s.swaks(t, "smtp", mail...)
	wantAll(t, out, "queued as")
	out = s.swaks(t, "submission", append([]string{"--local-interface", "127.0.0.7"}, mail...)...)
	wantAll(t, out, "queued as")
	waitFor(t, "delivery", 30*time.Second, func() bool { return s.sink().Count() == 2 })
}

// AUTH before TLS is answered 538 5.7.11 (swaks does not send AUTH when it
// is not offered, so a raw client sends it).
func TestSubmissionAuthBeforeTLS(t *testing.T) {
	s := newSubmissionEnv(t, false, 3)
	conn, err := net.DialTimeout("tcp", s.listen["submission"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	if err := tp.PrintfLine("EHLO client.test"); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := tp.ReadResponse(250); err != nil || strings.Contains(msg, "AUTH") {
		t.Fatalf("EHLO: %q %v (AUTH must not be offered before TLS)", msg, err)
	}
	_ = tp.PrintfLine("AUTH PLAIN AGFwcDEAczNjcmV0LVN1Ym1pc3Npb24tcHc=")
	code, msg, _ := tp.ReadResponse(0)
	if code != 538 || !strings.HasPrefix(msg, "5.7.11") {
		t.Fatalf("AUTH before TLS: %d %s, want 538 5.7.11", code, msg)
	}
}

// DKIM: an authenticated submission from app.test reaches the destination
// signed; the signature verifies against the TXT record in the loopback DNS,
// and fails once the body is changed in transit.
func TestSubmissionDKIMSigned(t *testing.T) {
	s := newSubmissionEnv(t, false, 3)
	body := strings.Repeat("a line of the body that is long enough\r\n", 4000) // > the ingress's peek: streamed
	bodyFile := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(bodyFile, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, b := range []string{"short body\r\n", "@" + bodyFile} {
		out := s.swaks(t, "submission", "--tls", "--auth", "PLAIN", "--auth-user", subUser, "--auth-password", subPass,
			"--from", "a@app.test", "--to", "u@alpha.test", "--header", "From: App <a@app.test>", "--header", "Subject: dkim",
			"--body", b)
		wantAll(t, out, "queued as")
		waitFor(t, "delivery", 30*time.Second, func() bool { return s.sink().Count() == i+1 })
	}
	// Mail from a domain without a key is delivered unsigned.
	out := s.swaks(t, "submission", "--tls", "--auth", "PLAIN", "--auth-user", subUser, "--auth-password", subPass,
		"--from", "alerts@ops.test", "--to", "u@alpha.test", "--header", "From: alerts@ops.test")
	wantAll(t, out, "queued as")
	waitFor(t, "delivery", 30*time.Second, func() bool { return s.sink().Count() == 3 })

	c := &dnsquery.Client{Servers: []string{s.dns.Addr}, Timeout: 5 * time.Second}
	opts := &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.TXT(ctx, name)
	}}
	msgs := s.sink().Messages()
	for i, m := range msgs[:2] {
		data := string(m.Data)
		if !strings.HasPrefix(data, "DKIM-Signature:") || strings.Count(data, "DKIM-Signature:") != 1 {
			t.Fatalf("message %d does not start with one DKIM-Signature:\n%.600s", i, data)
		}
		if !strings.Contains(data, "\r\nReceived: from client.test") {
			t.Fatalf("message %d lacks the ingress's Received: header:\n%.600s", i, data)
		}
		vs, err := msgdkim.VerifyWithOptions(strings.NewReader(data), opts)
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "app.test" {
			t.Fatalf("message %d: verification %+v %v", i, vs, err)
		}
		changed := strings.Replace(data, "\r\n\r\n", "\r\n\r\nX", 1)
		vs, err = msgdkim.VerifyWithOptions(strings.NewReader(changed), opts)
		if err != nil || len(vs) != 1 || vs[0].Err == nil {
			t.Fatalf("message %d changed in transit still verifies: %+v %v", i, vs, err)
		}
	}
	if strings.Contains(string(msgs[2].Data), "DKIM-Signature:") {
		t.Fatalf("mail from a domain without a key was signed:\n%.600s", msgs[2].Data)
	}
}
