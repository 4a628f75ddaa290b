package delivery_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/mtasts"
	"github.com/mailfwd/mailfwd/pkg/testenv"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// relayServer is a go-smtp server that records what it got. With a
// certificate it offers STARTTLS; with requireAuth it takes MAIL only from
// an authenticated session (AUTH PLAIN and LOGIN, offered only over TLS
// unless insecureAuth), as SES and other providers do.
type relayServer struct {
	user, pass   string
	requireAuth  bool
	insecureAuth bool
	mechs        []string // offered AUTH mechanisms (nil: PLAIN LOGIN)
	endlessLogin bool     // LOGIN asks "Password:" forever (hostile)
	challenges   int      // LOGIN challenges answered by the client

	mu      sync.Mutex
	conns   int
	auths   []string // "user:pass tls=true" per successful AUTH
	authTry int      // AUTH attempts, successful or not
	mails   []string // "from tls=… user=…" per MAIL FROM accepted
	data    []string
}

type relaySession struct {
	r    *relayServer
	conn *smtp.Conn
	user string
}

func (r *relayServer) NewSession(c *smtp.Conn) (smtp.Session, error) {
	// go-smtp starts a new session after STARTTLS: count TCP connections.
	if _, tlsOn := c.TLSConnectionState(); !tlsOn {
		r.mu.Lock()
		r.conns++
		r.mu.Unlock()
	}
	return &relaySession{r: r, conn: c}, nil
}

func (s *relaySession) AuthMechanisms() []string {
	if s.r.mechs != nil {
		return s.r.mechs
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *relaySession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		s.r.mu.Lock()
		defer s.r.mu.Unlock()
		s.r.authTry++
		if user != s.r.user || pass != s.r.pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
		}
		_, tlsOn := s.conn.TLSConnectionState()
		s.user = user
		s.r.auths = append(s.r.auths, fmt.Sprintf("%s:%s tls=%v", user, pass, tlsOn))
		return nil
	}
	if mech == sasl.Login {
		return &loginServer{check: check, r: s.r}, nil
	}
	if mech == "XOAUTH2" {
		// "user=U\x01auth=Bearer TOKEN\x01\x01"; the token is the password.
		return saslFunc(func(resp []byte) ([]byte, bool, error) {
			parts := strings.Split(string(resp), "\x01")
			if len(parts) != 4 || !strings.HasPrefix(parts[0], "user=") || !strings.HasPrefix(parts[1], "auth=Bearer ") {
				return nil, false, &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "bad XOAUTH2"}
			}
			return nil, true, check(strings.TrimPrefix(parts[0], "user="), strings.TrimPrefix(parts[1], "auth=Bearer "))
		}), nil
	}
	return sasl.NewPlainServer(func(_, u, p string) error { return check(u, p) }), nil
}

func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	if s.r.requireAuth && s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	_, tlsOn := s.conn.TLSConnectionState()
	s.r.mu.Lock()
	s.r.mails = append(s.r.mails, fmt.Sprintf("%s tls=%v user=%s", from, tlsOn, s.user))
	s.r.mu.Unlock()
	return nil
}
func (s *relaySession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *relaySession) Data(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	s.r.mu.Lock()
	s.r.data = append(s.r.data, string(b))
	s.r.mu.Unlock()
	return err
}
func (s *relaySession) Reset()        {}
func (s *relaySession) Logout() error { return nil }

func (r *relayServer) snapshot() (conns int, auths, mails []string, authTry int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, append([]string(nil), r.auths...), append([]string(nil), r.mails...), r.authTry
}

// start serves r on loopback; cert nil: no STARTTLS.
func (r *relayServer) start(t *testing.T, cert *tls.Certificate) string {
	t.Helper()
	return r.startWith(t, cert, nil)
}

// startWith is start with a change to the server's TLS configuration.
func (r *relayServer) startWith(t *testing.T, cert *tls.Certificate, mod func(*tls.Config)) string {
	t.Helper()
	srv := smtp.NewServer(r)
	srv.Domain = "relay.test"
	srv.AllowInsecureAuth = r.insecureAuth
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
		if mod != nil {
			mod(srv.TLSConfig)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// policy builds a tls_policy/authinfo from Postfix-style lines.
func tlsPolicy(t *testing.T, tlsLines, authLines map[string]string) *tlspolicy.Policy {
	t.Helper()
	p := tlspolicy.New()
	for k, v := range tlsLines {
		key, err := tlspolicy.ParseKey(k)
		if err != nil {
			t.Fatal(err)
		}
		e, err := tlspolicy.ParseEntry(v)
		if err != nil {
			t.Fatal(err)
		}
		p.AddTLS(key, e)
	}
	for k, v := range authLines {
		key, err := tlspolicy.ParseKey(k)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tlspolicy.ParseCredentials(v)
		if err != nil {
			t.Fatal(err)
		}
		p.AddAuth(key, c)
	}
	return p
}

// relayHop is the mailertable route ". smtp:[name]:port" to addr.
func relayHop(t *testing.T, name, addr string, port uint16) delivery.Hop {
	h := hopFor(t, name, addr)
	h.Policy = tlspolicy.Hop{Domain: "example.net", Relay: name, Literal: true, Port: port}
	return h
}

const sesName = "email-smtp.eu-west-1.amazonaws.com"

// The SES case: a relay that requires STARTTLS and AUTH gets the message
// with the authinfo credentials, over verified TLS (secure), and the
// outcome says what protected the hop.
func TestRelayhostAUTHOverSecureTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, sesName)
	r := &relayServer{user: "AKIAEXAMPLE", pass: "pa:ss word", requireAuth: true}
	addr := r.start(t, &cert)
	pol := tlsPolicy(t, map[string]string{"[" + sesName + "]:587": "secure"},
		map[string]string{"[" + sesName + "]:587": "AKIAEXAMPLE:pa:ss word"})
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
		cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
	})
	out := c.Deliver(testCtx(t), []delivery.Hop{relayHop(t, sesName, addr, 587)}, msg(testBody, "ops@example.net"))
	if !out.Statuses[0].Delivered() {
		t.Fatalf("status %+v", out.Statuses[0])
	}
	_, auths, mails, _ := r.snapshot()
	if len(auths) != 1 || auths[0] != "AKIAEXAMPLE:pa:ss word tls=true" {
		t.Errorf("relay saw AUTH %q, want the authinfo credentials over TLS", auths)
	}
	if len(mails) != 1 || mails[0] != "a@example.com tls=true user=AKIAEXAMPLE" {
		t.Errorf("relay saw MAIL %q", mails)
	}
	if r.data[0] != testBody {
		t.Errorf("relay got body %q", r.data[0])
	}
	if !strings.HasPrefix(out.TLS, "tls=TLSv1.") || !strings.HasSuffix(out.TLS, " verified=yes") || out.Verify != "OK" {
		t.Errorf("outcome TLS %q verify %q, want tls=TLSv1.x verified=yes, OK", out.TLS, out.Verify)
	}

	// Wrong password: deferred (4.7.8), never a permanent failure, and the
	// message is not sent unauthenticated.
	bad := tlsPolicy(t, map[string]string{"[" + sesName + "]:587": "secure"},
		map[string]string{"[" + sesName + "]:587": "AKIAEXAMPLE:wrong"})
	c2 := newClient(t, func(cfg *delivery.Config) {
		cfg.TLSPolicy = func() *tlspolicy.Policy { return bad }
		cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
	})
	out = c2.Deliver(testCtx(t), []delivery.Hop{relayHop(t, sesName, addr, 587)}, msg(testBody, "ops@example.net"))
	if st := out.Statuses[0]; st.Delivered() || st.Permanent() || st.Enhanced != "4.7.8" || !strings.Contains(st.Text, "535") {
		t.Errorf("wrong password: %+v, want deferred 4.7.8 with the relay's 535", st)
	}
	if _, _, mails, _ := r.snapshot(); len(mails) != 1 {
		t.Errorf("MAIL after a failed AUTH: %q", mails)
	}
}

// Credentials are never sent without TLS: a relay that offers AUTH in
// plain text and no STARTTLS gets nothing, even under tls_policy may.
func TestRelayhostAUTHNeverWithoutTLS(t *testing.T) {
	r := &relayServer{user: "u", pass: "secret", insecureAuth: true}
	addr := r.start(t, nil)
	pol := tlsPolicy(t, map[string]string{".": "may"}, map[string]string{"[relay.test]:2525": "u:secret"})
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
	})
	out := c.Deliver(testCtx(t), []delivery.Hop{relayHop(t, "relay.test", addr, 2525)}, msg(testBody, "ops@example.net"))
	st := out.Statuses[0]
	if st.Delivered() || st.Permanent() || st.Enhanced != "4.7.4" {
		t.Errorf("status %+v, want deferred 4.7.4 (TLS required for credentials)", st)
	}
	if _, auths, mails, try := r.snapshot(); try != 0 || len(auths) != 0 || len(mails) != 0 {
		t.Errorf("relay saw AUTH %d %q MAIL %q without TLS", try, auths, mails)
	}
}

// verify refuses a server whose certificate does not chain to the roots
// (deferred, with the reason); may uses it, and says it was not verified.
func TestVerifyRefusesBadCertificateMayUsesIt(t *testing.T) {
	ca := testenv.NewCA(t)
	bogus := testenv.SelfSignedCert(t, "mx.example.org") // right name, unknown issuer
	r := &relayServer{}
	addr := r.start(t, &bogus)
	hop := hopFor(t, "mx.example.org", addr)
	hop.Policy, hop.MX = tlspolicy.Hop{Domain: "example.org"}, true

	for _, tc := range []struct {
		level     string
		delivered bool
	}{{"verify", false}, {"secure", false}, {"may", true}, {"encrypt", true}} {
		t.Run(tc.level, func(t *testing.T) {
			pol := tlsPolicy(t, map[string]string{"example.org": tc.level}, nil)
			c := newClient(t, func(cfg *delivery.Config) {
				cfg.StartTLS = true
				cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
				cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
			})
			before, _, mailsBefore, _ := r.snapshot()
			out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@example.org"))
			st := out.Statuses[0]
			conns, _, mails, _ := r.snapshot()
			if !tc.delivered {
				if st.Delivered() || st.Permanent() || st.Enhanced != "4.7.5" || !strings.Contains(st.Text, "certificate") {
					t.Fatalf("status %+v, want deferred 4.7.5 naming the certificate", st)
				}
				if len(mails) != len(mailsBefore) {
					t.Errorf("MAIL sent despite the failed verification: %q", mails)
				}
				if conns-before != 1 {
					t.Errorf("%d connections, want 1 (no plain-text retry)", conns-before)
				}
				return
			}
			if !st.Delivered() {
				t.Fatalf("status %+v", st)
			}
			if len(mails) != len(mailsBefore)+1 || !strings.Contains(mails[len(mails)-1], "tls=true") {
				t.Errorf("want the message over TLS, got %q", mails)
			}
			if !strings.HasSuffix(out.TLS, " verified=no") || out.Verify != "FAIL" {
				t.Errorf("outcome %q %q, want verified=no, FAIL", out.TLS, out.Verify)
			}
		})
	}

	// The right certificate passes verify, with a CA given as the
	// tls_policy entry's ca= file.
	good := ca.Issue(t, "mx.example.org")
	r2 := &relayServer{}
	addr2 := r2.start(t, &good)
	caFile := t.TempDir() + "/ca.pem"
	writeFile(t, caFile, ca.PEM())
	pol := tlsPolicy(t, map[string]string{"example.org": "verify ca=" + caFile}, nil)
	c := newClient(t, func(cfg *delivery.Config) { cfg.TLSPolicy = func() *tlspolicy.Policy { return pol } })
	hop2 := hopFor(t, "mx.example.org", addr2)
	hop2.Policy = tlspolicy.Hop{Domain: "example.org"}
	out := c.Deliver(testCtx(t), []delivery.Hop{hop2}, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() || out.Verify != "OK" {
		t.Fatalf("verify with ca=: %+v %s %s", out.Statuses[0], out.TLS, out.Verify)
	}
}

// encrypt against a server without STARTTLS defers and sends nothing;
// may delivers in plain text; none never tries STARTTLS.
func TestEncryptWithoutSTARTTLSDefers(t *testing.T) {
	r := &relayServer{}
	addr := r.start(t, nil)
	hop := hopFor(t, "mx.example.org", addr)
	hop.Policy = tlspolicy.Hop{Domain: "example.org"}
	pol := tlsPolicy(t, map[string]string{"example.org": "encrypt"}, nil)
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
	})
	out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@example.org"))
	st := out.Statuses[0]
	if st.Delivered() || st.Permanent() || st.Enhanced != "4.7.4" || !strings.Contains(st.Text, "not offered") {
		t.Fatalf("status %+v, want deferred 4.7.4 TLS not offered", st)
	}
	if _, _, mails, _ := r.snapshot(); len(mails) != 0 {
		t.Fatalf("MAIL sent in plain text under encrypt: %q", mails)
	}
	// The default level (may) delivers in plain text.
	c2 := newClient(t, func(cfg *delivery.Config) { cfg.StartTLS = true })
	out = c2.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() || out.TLS != "tls=none" || out.Verify != "NONE" {
		t.Fatalf("may: %+v %q %q", out.Statuses[0], out.TLS, out.Verify)
	}
}

// none never sends STARTTLS, even when offered.
func TestLevelNoneSkipsSTARTTLS(t *testing.T) {
	cert := testenv.SelfSignedCert(t, "mx.example.org")
	r := &relayServer{}
	addr := r.start(t, &cert)
	hop := hopFor(t, "mx.example.org", addr)
	hop.Policy = tlspolicy.Hop{Domain: "example.org"}
	pol := tlsPolicy(t, map[string]string{"example.org": "none"}, nil)
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
	})
	out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@example.org"))
	if _, _, mails, _ := r.snapshot(); !out.Statuses[0].Delivered() || len(mails) != 1 || !strings.Contains(mails[0], "tls=false") {
		t.Fatalf("none: %+v %q", out.Statuses[0], mails)
	}
}

// A pooled connection is never reused across different credentials or TLS
// levels: each delivery authenticates as its own authinfo entry.
func TestPoolKeyedOnSecurity(t *testing.T) {
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "relay.test")
	r := &relayServer{user: "alice", pass: "one"}
	addr := r.start(t, &cert)
	cur := tlsPolicy(t, map[string]string{"[relay.test]:2525": "secure"}, map[string]string{"[relay.test]:2525": "alice:one"})
	var mu sync.Mutex
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.TLSPolicy = func() *tlspolicy.Policy { mu.Lock(); defer mu.Unlock(); return cur }
		cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
	})
	hops := []delivery.Hop{relayHop(t, "relay.test", addr, 2525)}
	for i := range 2 {
		if out := c.Deliver(testCtx(t), hops, msg(testBody, "x@example.net")); !out.Statuses[0].Delivered() {
			t.Fatalf("delivery %d: %+v", i, out.Statuses[0])
		}
	}
	if conns, auths, _, _ := r.snapshot(); conns != 1 || len(auths) != 1 {
		t.Fatalf("same credentials: %d connections %q, want one pooled connection", conns, auths)
	}
	// New credentials (a policy reload): a new connection that
	// authenticates as them, not the pooled one authenticated as alice.
	r.mu.Lock()
	r.user, r.pass = "bob", "two"
	r.mu.Unlock()
	mu.Lock()
	cur = tlsPolicy(t, map[string]string{"[relay.test]:2525": "secure"}, map[string]string{"[relay.test]:2525": "bob:two"})
	mu.Unlock()
	if out := c.Deliver(testCtx(t), hops, msg(testBody, "x@example.net")); !out.Statuses[0].Delivered() {
		t.Fatalf("after the credentials changed: %+v", out.Statuses[0])
	}
	conns, auths, mails, _ := r.snapshot()
	if conns != 2 || len(auths) != 2 || !strings.HasPrefix(auths[1], "bob:two") || !strings.HasSuffix(mails[2], "user=bob") {
		t.Fatalf("after the credentials changed: %d connections, auths %q, mails %q", conns, auths, mails)
	}
}

// MTA-STS enforce (policy over HTTPS on loopback, TXT in the test zone):
// an MX the policy does not list is not used, a listed one is, over
// verified TLS.
func TestMTASTSEnforce(t *testing.T) {
	ca := testenv.NewCA(t)
	goodCert := ca.Issue(t, "mx.sts.example")
	good := &relayServer{}
	goodAddr := good.start(t, &goodCert)
	rogueCert := ca.Issue(t, "mx.rogue.example")
	rogue := &relayServer{}
	rogueAddr := rogue.start(t, &rogueCert)

	policyHost := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "mta-sts.sts.example" || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.example\r\nmax_age: 86400\r\n")
	}))
	policyHost.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "mta-sts.sts.example")}}
	policyHost.StartTLS()
	t.Cleanup(policyHost.Close)

	zone := testenv.StartDNS(t, `_mta-sts.sts.example. TXT "v=STSv1; id=20261201;"`)
	sts, err := mtasts.New(mtasts.Config{
		DNS:     &dnsquery.Client{Servers: []string{zone.Addr}, Timeout: 5 * time.Second},
		RootCAs: ca.Pool(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != "mta-sts.sts.example:443" {
				return nil, fmt.Errorf("unexpected policy host %s", addr)
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp", policyHost.Listener.Addr().String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.MTASTS = sts
		cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
	})
	mx := func(name, addr string) delivery.Hop {
		h := hopFor(t, name, addr)
		h.Policy, h.MX = tlspolicy.Hop{Domain: "sts.example"}, true
		return h
	}
	out := c.Deliver(testCtx(t), []delivery.Hop{mx("mx.rogue.example", rogueAddr)}, msg(testBody, "r@sts.example"))
	st := out.Statuses[0]
	if st.Delivered() || st.Permanent() || !strings.Contains(st.Text, "MTA-STS") {
		t.Fatalf("MX not in the policy: %+v, want deferred by MTA-STS", st)
	}
	if conns, _, _, _ := rogue.snapshot(); conns != 0 {
		t.Errorf("the MX the policy does not list was contacted %d times", conns)
	}
	// With the listed MX after it, that one is used (verified).
	out = c.Deliver(testCtx(t), []delivery.Hop{mx("mx.rogue.example", rogueAddr), mx("mx.sts.example", goodAddr)}, msg(testBody, "r@sts.example"))
	if !out.Statuses[0].Delivered() || out.Hop.Name != "mx.sts.example" || out.Verify != "OK" {
		t.Fatalf("listed MX: %+v via %s %s %s", out.Statuses[0], out.Hop.Name, out.TLS, out.Verify)
	}
	// A listed MX whose certificate does not verify for its name: deferred,
	// where without MTA-STS (may) it would have been used.
	imp := &relayServer{}
	impAddr := imp.start(t, &rogueCert) // a certificate for another name
	out = c.Deliver(testCtx(t), []delivery.Hop{mx("mx.sts.example", impAddr)}, msg(testBody, "r@sts.example"))
	if st := out.Statuses[0]; st.Delivered() || st.Enhanced != "4.7.5" {
		t.Fatalf("listed MX with a wrong certificate: %+v, want deferred 4.7.5", st)
	}
	if _, _, mails, _ := imp.snapshot(); len(mails) != 0 {
		t.Errorf("mail sent to an unverified MX under enforce: %q", mails)
	}
}

// DANE: with an authenticated (AD) TLSA record the matching certificate is
// accepted and a non-matching one refused; without AD the record is not
// used.
func TestDANE(t *testing.T) {
	ca := testenv.NewCA(t)
	pinned := testenv.SelfSignedCert(t, "mx.dane.example") // DANE-EE: no CA needed
	other := ca.Issue(t, "mx.dane.example")
	good := &relayServer{}
	goodAddr := good.start(t, &pinned)
	bad := &relayServer{}
	badAddr := bad.start(t, &other)

	spki, err := dns.CertificateToDANE(1, 1, pinned.Leaf)
	if err != nil {
		t.Fatal(err)
	}
	zone := testenv.StartDNS(t, "")
	q := &dnsquery.Client{Servers: []string{zone.Addr}, Timeout: 5 * time.Second}
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.DANE = q
		cfg.MaxMsgsPerConn = 1
	})
	mx := func(addr string) delivery.Hop {
		h := hopFor(t, "mx.dane.example", addr)
		h.Policy, h.MX = tlspolicy.Hop{Domain: "dane.example"}, true
		return h
	}
	setTLSA := func(addr string) {
		_, port, _ := net.SplitHostPort(addr)
		zone.Set(fmt.Sprintf("_%s._tcp.mx.dane.example. IN TLSA 3 1 1 %s\n", port, spki))
	}

	zone.SetAuthenticated(true)
	setTLSA(goodAddr)
	out := c.Deliver(testCtx(t), []delivery.Hop{mx(goodAddr)}, msg(testBody, "r@dane.example"))
	if !out.Statuses[0].Delivered() || out.Verify != "OK" || !strings.HasSuffix(out.TLS, "verified=yes") {
		t.Fatalf("matching certificate: %+v %s %s", out.Statuses[0], out.TLS, out.Verify)
	}
	setTLSA(badAddr)
	out = c.Deliver(testCtx(t), []delivery.Hop{mx(badAddr)}, msg(testBody, "r@dane.example"))
	if st := out.Statuses[0]; st.Delivered() || st.Permanent() || st.Enhanced != "4.7.5" || !strings.Contains(st.Text, "TLSA") {
		t.Fatalf("non-matching certificate: %+v, want deferred 4.7.5", st)
	}
	if _, _, mails, _ := bad.snapshot(); len(mails) != 0 {
		t.Errorf("mail sent to a server DANE refuses: %q", mails)
	}

	// The same record without AD is not trusted: DANE does not apply and
	// may delivers (unverified).
	zone.SetAuthenticated(false)
	out = c.Deliver(testCtx(t), []delivery.Hop{mx(badAddr)}, msg(testBody, "r@dane.example"))
	if !out.Statuses[0].Delivered() {
		t.Fatalf("unauthenticated TLSA answer used: %+v", out.Statuses[0])
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// loginServer is the server side of AUTH LOGIN (go-sasl has only the
// client): "Username:", "Password:", then the check.
type loginServer struct {
	check func(user, pass string) error
	r     *relayServer
	step  int
	user  string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	l.r.mu.Lock()
	endless := l.r.endlessLogin
	if l.step > 0 {
		l.r.challenges++
	}
	l.r.mu.Unlock()
	if endless && l.step >= 2 {
		return []byte("Password:"), false, nil
	}
	switch l.step {
	case 0:
		l.step++
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

// LOGIN with the relayhost, and a hostile relay that keeps asking for the
// password: the exchange is cut after a few challenges and the mail
// deferred, not an endless loop.
func TestRelayhostLOGINAndEndlessChallenges(t *testing.T) {
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "relay.test")
	r := &relayServer{user: "u", pass: "p", requireAuth: true, mechs: []string{sasl.Login}}
	addr := r.start(t, &cert)
	pol := tlsPolicy(t, map[string]string{"[relay.test]:2525": "verify"}, map[string]string{"[relay.test]:2525": "u:p"})
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
		cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
		cfg.MaxMsgsPerConn = 1
	})
	hops := []delivery.Hop{relayHop(t, "relay.test", addr, 2525)}
	if out := c.Deliver(testCtx(t), hops, msg(testBody, "x@example.net")); !out.Statuses[0].Delivered() {
		t.Fatalf("LOGIN: %+v", out.Statuses[0])
	}
	if _, auths, _, _ := r.snapshot(); len(auths) != 1 || auths[0] != "u:p tls=true" {
		t.Fatalf("LOGIN: relay saw %q", auths)
	}
	r.mu.Lock()
	r.endlessLogin, r.challenges = true, 0
	r.mu.Unlock()
	out := c.Deliver(testCtx(t), hops, msg(testBody, "x@example.net"))
	if st := out.Statuses[0]; st.Delivered() || st.Permanent() {
		t.Fatalf("endless challenges: %+v, want deferred", st)
	}
	r.mu.Lock()
	n := r.challenges
	r.mu.Unlock()
	if n > 5 {
		t.Errorf("the client answered %d challenges, want the exchange cut after a few", n)
	}
}

type saslFunc func([]byte) ([]byte, bool, error)

func (f saslFunc) Next(resp []byte) ([]byte, bool, error) { return f(resp) }

// XOAUTH2: an authinfo entry naming an OAuth 2.0 client; the token comes
// from a loopback token endpoint (client credentials) and authenticates
// the delivery to a relay that offers only XOAUTH2.
func TestRelayhostXOAUTH2(t *testing.T) {
	ca := testenv.NewCA(t)
	tokenSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, _ := r.BasicAuth()
		if err := r.ParseForm(); err != nil || r.Form.Get("grant_type") != "client_credentials" || id != "app-1" || secret != "app-secret" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"tok-42","token_type":"Bearer","expires_in":3600}`)
	}))
	tokenSrv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1")}}
	tokenSrv.StartTLS()
	t.Cleanup(tokenSrv.Close)

	cert := ca.Issue(t, "smtp.office365.test")
	r := &relayServer{user: "relay@example.com", pass: "tok-42", requireAuth: true, mechs: []string{"XOAUTH2"}}
	addr := r.start(t, &cert)
	entry := func(secret string) string {
		return "xoauth2 user=relay@example.com token_url=" + tokenSrv.URL + "/token client_id=app-1 client_secret=" + secret + " scope=https://outlook.office365.com/.default"
	}
	hops := []delivery.Hop{relayHop(t, "smtp.office365.test", addr, 587)}
	for _, tc := range []struct {
		secret string
		ok     bool
	}{{"app-secret", true}, {"wrong", false}} {
		pol := tlsPolicy(t, map[string]string{"[smtp.office365.test]:587": "secure"}, map[string]string{"[smtp.office365.test]:587": entry(tc.secret)})
		c := newClient(t, func(cfg *delivery.Config) {
			cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
			cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
			cfg.Tokens = tlspolicy.NewTokens(ca.Pool(), 10*time.Second)
		})
		out := c.Deliver(testCtx(t), hops, msg(testBody, "x@example.net"))
		st := out.Statuses[0]
		if tc.ok != st.Delivered() || st.Permanent() {
			t.Fatalf("client secret %s: %+v", tc.secret, st)
		}
	}
	if _, auths, mails, _ := r.snapshot(); len(auths) != 1 || auths[0] != "relay@example.com:tok-42 tls=true" || len(mails) != 1 {
		t.Fatalf("relay saw AUTH %q MAIL %q", auths, mails)
	}
}

// A handshake that fails (the server demands a client certificate, over
// TLS 1.2 so the client sees it): encrypt defers without a plain-text
// retry, may reconnects in plain text as before.
func TestEncryptFailedHandshakeNeverPlain(t *testing.T) {
	cert := testenv.SelfSignedCert(t, "mx.example.org")
	for _, tc := range []struct {
		level string
		conns int
		sent  bool
	}{{"encrypt", 1, false}, {"may", 2, true}} {
		t.Run(tc.level, func(t *testing.T) {
			r := &relayServer{}
			addr := r.startWith(t, &cert, func(c *tls.Config) {
				c.MaxVersion = tls.VersionTLS12
				c.ClientAuth = tls.RequireAnyClientCert
			})
			hop := hopFor(t, "mx.example.org", addr)
			hop.Policy = tlspolicy.Hop{Domain: "example.org"}
			pol := tlsPolicy(t, map[string]string{"example.org": tc.level}, nil)
			c := newClient(t, func(cfg *delivery.Config) {
				cfg.StartTLS = true
				cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
			})
			out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@example.org"))
			st := out.Statuses[0]
			conns, _, mails, _ := r.snapshot()
			if st.Delivered() != tc.sent || conns != tc.conns || len(mails) != map[bool]int{true: 1}[tc.sent] {
				t.Fatalf("%s: status %+v, %d connections, mails %q", tc.level, st, conns, mails)
			}
			if !tc.sent && (st.Permanent() || st.Enhanced != "4.7.5" || !strings.Contains(st.Text, "handshake")) {
				t.Errorf("encrypt: %+v, want deferred 4.7.5 naming the handshake", st)
			}
		})
	}
}
