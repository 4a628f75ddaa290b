package tests

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// providerRelay is an upstream provider's submission service (SES-style):
// STARTTLS, then AUTH PLAIN, then mail; it records what it got.
type providerRelay struct {
	user, pass string

	mu    sync.Mutex
	auths []string
	mails []string
	data  []string
}

type providerSession struct {
	r    *providerRelay
	conn *smtp.Conn
	user string
}

func (r *providerRelay) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &providerSession{r: r, conn: c}, nil
}
func (s *providerSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *providerSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		s.r.mu.Lock()
		defer s.r.mu.Unlock()
		if user != s.r.user || pass != s.r.pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication Credentials Invalid"}
		}
		_, tlsOn := s.conn.TLSConnectionState()
		s.user = user
		s.r.auths = append(s.r.auths, fmt.Sprintf("%s:%s tls=%v", user, pass, tlsOn))
		return nil
	}), nil
}
func (s *providerSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	s.r.mu.Lock()
	s.r.mails = append(s.r.mails, from+" user="+s.user)
	s.r.mu.Unlock()
	return nil
}
func (s *providerSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *providerSession) Data(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	s.r.mu.Lock()
	s.r.data = append(s.r.data, string(b))
	s.r.mu.Unlock()
	return err
}
func (s *providerSession) Reset()        {}
func (s *providerSession) Logout() error { return nil }

func (r *providerRelay) start(t *testing.T, cert tls.Certificate) int {
	t.Helper()
	srv := smtp.NewServer(r)
	srv.Domain = "email-smtp.eu-west-1.amazonaws.com"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func (r *providerRelay) got() (auths, mails, data []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auths...), append([]string(nil), r.mails...), append([]string(nil), r.data...)
}

// The README's SES example through the real processes: the mailertable
// sends everything to [email-smtp.eu-west-1.amazonaws.com]:PORT, tls_policy
// says secure, authinfo holds the credentials, --tls-ca-file the test CA.
// The provider gets the message authenticated over verified TLS, the
// delivery log line and the smtp.send span say so; a relay presenting a
// certificate for another name is refused and the mail deferred.
func TestRelayhostSES(t *testing.T) {
	const ses = "email-smtp.eu-west-1.amazonaws.com"
	ca := testenv.NewCA(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	good := &providerRelay{user: "AKIAIOSFODNN7EXAMPLE", pass: "BExample/Smtp+Password"}
	port := good.start(t, ca.Issue(t, ses))
	impostor := &providerRelay{user: "AKIAIOSFODNN7EXAMPLE", pass: "BExample/Smtp+Password"}
	impPort := impostor.start(t, ca.Issue(t, "smtp.attacker.example"))

	e := newEnv(t, envOptions{blob: "fs", policy: map[string]string{
		"access":      "Connect:127.0.0.1 RELAY\n",
		"mailertable": fmt.Sprintf(".\tsmtp:[%s]:%d\nimpostor.test\tsmtp:[%s]:%d\n", ses, port, ses, impPort),
		"tls_policy":  fmt.Sprintf("[%s]:%d\tsecure\n[%s]:%d\tsecure\n.\tmay\n", ses, port, ses, impPort),
		"authinfo": fmt.Sprintf("[%s]:%d\tAKIAIOSFODNN7EXAMPLE:BExample/Smtp+Password\n[%s]:%d\tAKIAIOSFODNN7EXAMPLE:BExample/Smtp+Password\n",
			ses, port, ses, impPort),
	}, workerSetup: func(w *daemon.Worker) {
		w.TLS.CAFile = caFile
		w.Delivery.MaxMsgsPerConn = 1 // every message authenticates anew
	}})
	e.dns.Set(zones + "\n" + ses + ". 60 IN A 127.0.0.1\n")

	body := message("via SES", "<ses-1@customer.example>", "Hello through the provider.\r\n")
	if res := send(e.smtp, "", "alerts@customer.example", []string{"ops@example.net"}, body, nil); res.Err != nil || len(res.RcptErrs) > 0 {
		t.Fatalf("submit: %+v", res)
	}
	waitFor(t, "the provider to get the message", 30*time.Second, func() bool { _, _, d := good.got(); return len(d) == 1 })
	auths, mails, data := good.got()
	if len(auths) != 1 || auths[0] != "AKIAIOSFODNN7EXAMPLE:BExample/Smtp+Password tls=true" {
		t.Errorf("provider saw AUTH %q, want the authinfo credentials over TLS", auths)
	}
	if len(mails) != 1 || mails[0] != "alerts@customer.example user=AKIAIOSFODNN7EXAMPLE" || !strings.Contains(data[0], "Hello through the provider.") {
		t.Errorf("provider got MAIL %q data %q", mails, data)
	}
	var line string
	waitFor(t, "the delivery log line", 10*time.Second, func() bool {
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(l, "to=<ops@example.net>") && strings.Contains(l, "stat=Sent") {
				line = l
				return true
			}
		}
		return false
	})
	if !strings.Contains(line, "relay="+ses+". [127.0.0.1], tls=TLSv1.3 verified=yes, verify=OK, dsn=2.0.0") {
		t.Errorf("delivery log line does not say what protected the hop:\n%s", line)
	}
	var spanTLS, spanVerify string
	for _, s := range e.spans.GetSpans() {
		if s.Name != "smtp.send" {
			continue
		}
		for _, a := range s.Attributes {
			switch a.Key {
			case "mailfwd.tls":
				spanTLS = a.Value.AsString()
			case "mailfwd.tls.verify":
				spanVerify = a.Value.AsString()
			}
		}
	}
	if spanTLS != "tls=TLSv1.3 verified=yes" || spanVerify != "OK" {
		t.Errorf("smtp.send span: mailfwd.tls=%q mailfwd.tls.verify=%q", spanTLS, spanVerify)
	}

	// The provider rotates the password; until authinfo follows, mail is
	// deferred (4.7.8), not bounced and not sent unauthenticated. The new
	// authinfo is picked up by the hot reload.
	good.mu.Lock()
	good.pass = "Rotated/Password"
	good.mu.Unlock()
	body = message("after rotation", "<ses-3@customer.example>", "After the rotation.\r\n")
	if res := send(e.smtp, "", "alerts@customer.example", []string{"rotated@example.net"}, body, nil); res.Err != nil || len(res.RcptErrs) > 0 {
		t.Fatalf("submit: %+v", res)
	}
	waitFor(t, "the deferral with the old password", 30*time.Second, func() bool {
		return strings.Contains(e.logs.String(), "to=<rotated@example.net>") && strings.Contains(e.logs.String(), "dsn=4.7.8, stat=Deferred")
	})
	reloads := strings.Count(e.logs.String(), `msg="policy loaded" component=worker`)
	e.writePolicy("authinfo", fmt.Sprintf("[%s]:%d\tAKIAIOSFODNN7EXAMPLE:Rotated/Password\n[%s]:%d\tAKIAIOSFODNN7EXAMPLE:BExample/Smtp+Password\n",
		ses, port, ses, impPort))
	waitFor(t, "the worker to reload the policy", 10*time.Second, func() bool {
		return strings.Count(e.logs.String(), `msg="policy loaded" component=worker`) > reloads
	})
	waitFor(t, "the retry with the new password", 30*time.Second, func() bool { _, _, d := good.got(); return len(d) == 2 })
	if auths, _, _ := good.got(); len(auths) != 2 || auths[1] != "AKIAIOSFODNN7EXAMPLE:Rotated/Password tls=true" {
		t.Errorf("after the rotation the provider saw AUTH %q", auths)
	}

	// The impostor (a certificate for another name): deferred with the
	// reason, and it never sees the credentials.
	body = message("to the impostor", "<ses-2@customer.example>", "Must not arrive.\r\n")
	if res := send(e.smtp, "", "alerts@customer.example", []string{"x@impostor.test"}, body, nil); res.Err != nil || len(res.RcptErrs) > 0 {
		t.Fatalf("submit: %+v", res)
	}
	waitFor(t, "the deferral", 30*time.Second, func() bool {
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(l, "to=<x@impostor.test>") && strings.Contains(l, "stat=Deferred") {
				line = l
				return true
			}
		}
		return false
	})
	if !strings.Contains(line, "dsn=4.7.5") || !strings.Contains(line, "certificate") {
		t.Errorf("deferral does not give the reason:\n%s", line)
	}
	if auths, mails, _ := impostor.got(); len(auths) != 0 || len(mails) != 0 {
		t.Errorf("the impostor got AUTH %q MAIL %q", auths, mails)
	}
}
