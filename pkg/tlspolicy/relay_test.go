package tlspolicy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// relay is a go-smtp server that, like SES, requires STARTTLS and AUTH
// before it takes mail, and records what it got.
type relay struct {
	mu       sync.Mutex
	authUser string
	authPass string
	from     string
	data     string
	tlsSeen  bool
}

type relaySession struct {
	r    *relay
	conn *smtp.Conn
	user string
}

func (r *relay) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &relaySession{r: r, conn: c}, nil
}

func (s *relaySession) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }
func (s *relaySession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != "AKIAEXAMPLE" || pass != "pa:ss word" {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		s.user = user
		s.r.mu.Lock()
		s.r.authUser, s.r.authPass = user, pass
		_, s.r.tlsSeen = s.conn.TLSConnectionState()
		s.r.mu.Unlock()
		return nil
	}), nil
}
func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	s.r.mu.Lock()
	s.r.from = from
	s.r.mu.Unlock()
	return nil
}
func (s *relaySession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *relaySession) Data(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	s.r.mu.Lock()
	s.r.data = string(b)
	s.r.mu.Unlock()
	return err
}
func (s *relaySession) Reset()        {}
func (s *relaySession) Logout() error { return nil }

func startRelay(t *testing.T, cert tls.Certificate) (*relay, string) {
	t.Helper()
	r := &relay{}
	return r, serveRelay(t, r, "email-smtp.eu-west-1.amazonaws.com", cert)
}

// serveRelay serves be as a relay host named domain that offers STARTTLS
// with cert, on loopback until the test ends, and returns its address.
func serveRelay(t *testing.T, be smtp.Backend, domain string, cert tls.Certificate) string {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = domain
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	return testenv.ServeSMTP(t, srv)
}

// send does what the delivery client will: STARTTLS under the decision's
// configuration, AUTH with its credentials (an OAuth2 token from tokens),
// one message.
func send(t *testing.T, b *Builder, d Decision, tokens *Tokens, host, addr string) error {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	// Before TLS the credentials are refused by the decision itself.
	if _, err := d.SASL(false, "PLAIN LOGIN", nil); !errors.Is(err, ErrAuthWithoutTLS) {
		t.Fatalf("SASL before TLS: %v", err)
	}
	cfg, err := b.Config(d, host)
	if err != nil {
		return err
	}
	c, err := smtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	// go-smtp's STARTTLS does not handshake: the handshake (and its
	// verification error) happens on the next command, and Extension
	// swallows errors. Hello surfaces it; TLSConnectionState's ok is true
	// even before the handshake, so check HandshakeComplete.
	if err := c.Hello("mailfwd.test"); err != nil {
		return err
	}
	if cs, _ := c.TLSConnectionState(); !cs.HandshakeComplete {
		return errors.New("no TLS after STARTTLS")
	}
	_, mechs := c.Extension("AUTH")
	a, err := d.SASL(true, mechs, tokens)
	if err != nil {
		return err
	}
	if err := c.Auth(a); err != nil {
		return err
	}
	if err := c.SendMail("alerts@customer.example", []string{"ops@example.net"}, strings.NewReader("Subject: t\r\n\r\nhello\r\n")); err != nil {
		return err
	}
	return c.Quit()
}

func TestRelayhostSTARTTLSAndAUTH(t *testing.T) {
	ca := testenv.NewCA(t)
	p := mustPolicy(t, map[string]string{"[email-smtp.eu-west-1.amazonaws.com]:587": "secure"},
		map[string]string{"[email-smtp.eu-west-1.amazonaws.com]:587": "AKIAEXAMPLE:pa:ss word"})
	hop := Hop{Domain: "example.net", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 587}
	d := p.Lookup(hop)
	b := &Builder{Roots: ca.Pool()}

	r, addr := startRelay(t, ca.Issue(t, "email-smtp.eu-west-1.amazonaws.com"))
	if err := send(t, b, d, nil, "email-smtp.eu-west-1.amazonaws.com", addr); err != nil {
		t.Fatalf("relay delivery: %v", err)
	}
	r.mu.Lock()
	if r.authUser != "AKIAEXAMPLE" || r.authPass != "pa:ss word" || !r.tlsSeen || r.from != "alerts@customer.example" || !strings.Contains(r.data, "hello") {
		t.Errorf("relay got user %q pass %q tls %v from %q data %q", r.authUser, r.authPass, r.tlsSeen, r.from, r.data)
	}
	r.mu.Unlock()

	// A relay with a certificate for another name: the handshake fails
	// and the credentials are never sent.
	imp, impAddr := startRelay(t, ca.Issue(t, "smtp.attacker.example"))
	err := send(t, b, d, nil, "email-smtp.eu-west-1.amazonaws.com", impAddr)
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("impostor relay: %v, want a *VerifyError", err)
	}
	imp.mu.Lock()
	if imp.authUser != "" {
		t.Error("credentials reached the impostor")
	}
	imp.mu.Unlock()

	if a, err := (Decision{}).SASL(true, "PLAIN", nil); a != nil || err != nil {
		t.Errorf("no credentials: %v %v", a, err)
	}
	if _, err := d.SASL(true, "CRAM-MD5", nil); !errors.Is(err, ErrNoCommonMechanism) {
		t.Errorf("no common mechanism: %v", err)
	}
	if a, err := d.SASL(true, "login", nil); err != nil || a == nil {
		t.Errorf("LOGIN only: %v", err)
	}
}
