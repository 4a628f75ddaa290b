package mtasts

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/testenv"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

const goodPolicy = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.backup.example.com\r\nmax_age: 86400\r\n"

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy([]byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != Enforce || p.MaxAge != 86400*time.Second || len(p.MX) != 2 {
		t.Fatalf("%+v", p)
	}
	for mx, want := range map[string]bool{
		"mail.example.com":       true,
		"MAIL.example.com.":      true,
		"a.backup.example.com":   true,
		"a.b.backup.example.com": false, // one label only
		"backup.example.com":     false,
		"evil-mail.example.com":  false,
		"mail.example.com.evil":  false,
	} {
		if p.Match(mx) != want {
			t.Errorf("Match(%s) = %v", mx, !want)
		}
	}
	allowed, refused := p.Allowed([]string{"mail.example.com", "mx.attacker.example"})
	if len(allowed) != 1 || len(refused) != 1 || !p.RequiresVerifiedTLS() {
		t.Errorf("enforce Allowed: %v %v", allowed, refused)
	}
	tp, _ := ParsePolicy([]byte(strings.Replace(goodPolicy, "enforce", "testing", 1)))
	if allowed, refused := tp.Allowed([]string{"mail.example.com", "mx.attacker.example"}); len(allowed) != 2 || len(refused) != 1 || tp.RequiresVerifiedTLS() {
		t.Errorf("testing Allowed: %v %v", allowed, refused)
	}
	if _, err := ParsePolicy([]byte("version: STSv1\nmode: none\nmax_age: 0\n")); err != nil {
		t.Errorf("mode none without mx: %v", err)
	}
	if _, err := ParsePolicy([]byte(goodPolicy + "x-ext: anything goes\r\n")); err != nil {
		t.Errorf("extension field: %v", err)
	}
	for name, text := range map[string]string{
		"empty":           "",
		"no version":      "mode: enforce\nmx: a.example\nmax_age: 1\n",
		"bad version":     strings.Replace(goodPolicy, "STSv1", "STSv2", 1),
		"bad mode":        strings.Replace(goodPolicy, "enforce", "strict", 1),
		"two modes":       goodPolicy + "mode: testing\n",
		"no max_age":      "version: STSv1\nmode: enforce\nmx: a.example\n",
		"max_age too big": strings.Replace(goodPolicy, "86400", "31557601", 1),
		"max_age neg":     strings.Replace(goodPolicy, "86400", "-1", 1),
		"max_age huge":    strings.Replace(goodPolicy, "86400", "999999999999999999999", 1),
		"enforce no mx":   "version: STSv1\nmode: enforce\nmax_age: 1\n",
		"bad mx":          strings.Replace(goodPolicy, "mail.example.com", "mail..example.com", 1),
		"mx wildcard mid": strings.Replace(goodPolicy, "mail.example.com", "mail.*.example.com", 1),
		"no colon":        goodPolicy + "garbage\n",
		"bad key":         goodPolicy + "_x: 1\n",
		"html":            "<html><body>hi</body></html>",
	} {
		if _, err := ParsePolicy([]byte(text)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseTXT(t *testing.T) {
	for _, c := range []struct {
		recs []string
		id   string
		ok   bool
	}{
		{[]string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z", true},
		{[]string{"v=STSv1;id=abc"}, "abc", true},
		{[]string{"v=spf1 -all", "v=STSv1; id=abc; ext=1"}, "abc", true},
		{[]string{"v=STSv1; id=abc;", "v=STSv1; id=def;"}, "", false}, // two records
		{[]string{"v=STSv1;"}, "", false},
		{[]string{"v=STSv1; id=ab-c"}, "", false},
		{[]string{"v=STSv1; id=" + strings.Repeat("a", 33)}, "", false},
		{nil, "", false},
	} {
		id, ok := ParseTXT(c.recs)
		if id != c.id || ok != c.ok {
			t.Errorf("ParseTXT(%q) = %q %v", c.recs, id, ok)
		}
	}
}

// policyServer is an HTTPS server on loopback for mta-sts.example.com.
type policyServer struct {
	srv      *httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	body     string
	ctype    string
	status   int
	redirect bool
}

func startPolicyServer(t *testing.T, cert tls.Certificate) *policyServer {
	ps := &policyServer{body: goodPolicy, ctype: "text/plain; charset=utf-8", status: 200}
	ps.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ps.requests.Add(1)
		ps.mu.Lock()
		defer ps.mu.Unlock()
		if r.URL.Path != "/.well-known/mta-sts.txt" || r.Host != "mta-sts.example.com" {
			http.NotFound(w, r)
			return
		}
		if ps.redirect {
			http.Redirect(w, r, "https://mta-sts.example.com/elsewhere", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", ps.ctype)
		w.WriteHeader(ps.status)
		_, _ = w.Write([]byte(ps.body))
	}))
	ps.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ps.srv.StartTLS()
	t.Cleanup(ps.srv.Close)
	return ps
}

func (ps *policyServer) set(f func(ps *policyServer)) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	f(ps)
}

func TestLookup(t *testing.T) {
	ca := testenv.NewCA(t)
	ps := startPolicyServer(t, ca.Issue(t, "mta-sts.example.com"))
	dns := testenv.StartDNS(t, `_mta-sts.example.com. TXT "v=STSv1; id=1;"`)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var dialed []string
	var dmu sync.Mutex
	c, err := New(Config{
		DNS:     &dnsquery.Client{Servers: []string{dns.Addr}, Timeout: 5 * time.Second},
		RootCAs: ca.Pool(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dmu.Lock()
			dialed = append(dialed, addr)
			dmu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, "tcp", ps.srv.Listener.Addr().String())
		},
		FetchTimeout: 10 * time.Second,
		Now:          func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lookup := func() *Policy {
		t.Helper()
		p, err := c.Lookup(ctx, "Example.COM")
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		return p
	}

	p := lookup()
	if p == nil || p.Mode != Enforce || p.ID != "1" || !p.Match("mail.example.com") {
		t.Fatalf("policy %v", p)
	}
	if len(dialed) != 1 || dialed[0] != "mta-sts.example.com:443" {
		t.Fatalf("dialed %v", dialed)
	}
	// Same id, within max_age: from the cache.
	lookup()
	if ps.requests.Load() != 1 {
		t.Fatalf("%d fetches, want 1 (cached)", ps.requests.Load())
	}
	// A new id: fetched again.
	ps.set(func(ps *policyServer) { ps.body = strings.Replace(goodPolicy, "enforce", "testing", 1) })
	dns.Set(`_mta-sts.example.com. TXT "v=STSv1; id=2;"`)
	if p := lookup(); p.Mode != Testing || ps.requests.Load() != 2 {
		t.Fatalf("after id change: %v, %d fetches", p, ps.requests.Load())
	}
	// The policy host fails: the cached policy stays in force.
	ps.set(func(ps *policyServer) { ps.status = 500 })
	dns.Set(`_mta-sts.example.com. TXT "v=STSv1; id=3;"`)
	if p := lookup(); p == nil || p.Mode != Testing {
		t.Fatalf("fetch failure with a valid cache: %v", p)
	}
	// The TXT record disappears: the cache is used until max_age.
	dns.Set(`other.example. TXT "x"`)
	if p := lookup(); p == nil || p.ID != "2" {
		t.Fatalf("no TXT with a valid cache: %v", p)
	}
	// max_age passes: no record, no policy.
	now = now.Add(86400 * time.Second)
	if p, err := c.Lookup(ctx, "example.com"); p != nil || err != nil {
		t.Fatalf("expired: %v %v", p, err)
	}
	// Record back, host broken, nothing cached: no policy, with the reason.
	dns.Set(`_mta-sts.example.com. TXT "v=STSv1; id=4;"`)
	good := func(ps *policyServer) {
		ps.body, ps.ctype, ps.status, ps.redirect = goodPolicy, "text/plain; charset=utf-8", 200, false
	}
	for _, tc := range []struct {
		name string
		f    func(ps *policyServer)
	}{
		{"HTTP 500", func(ps *policyServer) { ps.status = 500 }},
		{"redirect", func(ps *policyServer) { ps.redirect = true }},
		{"content type", func(ps *policyServer) { ps.ctype = "text/html" }},
		{"too large", func(ps *policyServer) { ps.body = goodPolicy + "x-pad: " + strings.Repeat("a", 70<<10) + "\n" }},
		{"bad policy", func(ps *policyServer) { ps.body = "version: STSv1\nmode: sometimes\n" }},
	} {
		ps.set(func(ps *policyServer) { good(ps); tc.f(ps) })
		if p, err := c.Lookup(ctx, "example.com"); p != nil || err == nil {
			t.Errorf("%s: policy %v, err %v; want none with an error", tc.name, p, err)
		}
	}
	ps.set(good)
	if p := lookup(); p == nil || p.ID != "4" {
		t.Fatalf("recovered: %v", p)
	}
	// DNS failure with a valid cache: cached.
	dns.SetServfail("_mta-sts.example.com", true)
	if p := lookup(); p == nil || p.ID != "4" {
		t.Fatalf("SERVFAIL with cache: %v", p)
	}
	// A domain without a record: no policy, no error.
	if p, err := c.Lookup(ctx, "nopolicy.example"); p != nil || err != nil {
		t.Errorf("no record: %v %v", p, err)
	}
}

// TestLookupBadCertificate: a policy host whose certificate does not verify
// gives no policy.
func TestLookupBadCertificate(t *testing.T) {
	ca := testenv.NewCA(t)
	for name, cert := range map[string]tls.Certificate{
		"self-signed": testenv.SelfSignedCert(t, "mta-sts.example.com"),
		"wrong name":  ca.Issue(t, "www.example.com"),
	} {
		ps := startPolicyServer(t, cert)
		dns := testenv.StartDNS(t, `_mta-sts.example.com. TXT "v=STSv1; id=1;"`)
		c, err := New(Config{
			DNS:     &dnsquery.Client{Servers: []string{dns.Addr}},
			RootCAs: ca.Pool(),
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", ps.srv.Listener.Addr().String())
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if p, err := c.Lookup(context.Background(), "example.com"); p != nil || err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: %v %v", name, p, err)
		}
	}
}

func TestCacheBound(t *testing.T) {
	c, err := New(Config{DNS: &dnsquery.Client{Servers: []string{"127.0.0.1:1"}}, MaxCachedPolicies: 2})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, d := range []string{"a.example", "b.example", "c.example"} {
		c.store(d, &Policy{Mode: Enforce, MaxAge: time.Duration(i+1) * time.Hour, Fetched: now}, now)
	}
	if c.Cached() != 2 || c.cached("a.example", now) != nil || c.cached("c.example", now) == nil {
		t.Errorf("cache holds %d; the soonest to expire must go first", c.Cached())
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(goodPolicy))
	f.Add([]byte("version: STSv1\nmode: none\nmax_age: 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > MaxMaxAge || (p.Mode != None && len(p.MX) == 0) {
			t.Fatalf("accepted an invalid policy: %+v", p)
		}
		for _, m := range p.MX {
			p.Match(m)
		}
	})
}

// TestApply: under enforce the hop needs a certificate for the MX name
// that chains to the roots; a self-signed one that "may" would take is
// refused, and an MX outside the policy is not used.
func TestApply(t *testing.T) {
	ca := testenv.NewCA(t)
	self := testenv.StartTLSServer(t, testenv.SelfSignedCert(t, "mail.example.com"))
	good := testenv.StartTLSServer(t, ca.Issue(t, "mail.example.com"))
	p, _ := ParsePolicy([]byte(goodPolicy))
	d := tlspolicy.New().Lookup(tlspolicy.Hop{Domain: "example.com", Port: 25}) // may
	if _, err := p.Apply(d, "mx.attacker.example"); !errors.Is(err, ErrMXNotAllowed) {
		t.Fatalf("MX outside the policy: %v", err)
	}
	ed, err := p.Apply(d, "mail.example.com")
	if err != nil || ed.Level != tlspolicy.Verify {
		t.Fatalf("enforce: %s %v", ed.Level, err)
	}
	b := &tlspolicy.Builder{Roots: ca.Pool()}
	dialTLS := func(d tlspolicy.Decision, addr string) error {
		cfg, err := b.Config(d, "mail.example.com")
		if err != nil {
			return err
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return err
		}
		return c.Close()
	}
	if err := dialTLS(ed, self); err == nil {
		t.Error("enforce accepted a self-signed certificate")
	}
	if err := dialTLS(d, self); err != nil {
		t.Errorf("may refused: %v", err)
	}
	if err := dialTLS(ed, good); err != nil {
		t.Errorf("enforce refused a good certificate: %v", err)
	}
	tp, _ := ParsePolicy([]byte(strings.Replace(goodPolicy, "enforce", "testing", 1)))
	if td, err := tp.Apply(d, "mx.attacker.example"); err != nil || td.Level != tlspolicy.May {
		t.Errorf("testing changed the decision: %s %v", td.Level, err)
	}
	// A stronger tls_policy level stays.
	sd := d
	sd.Level = tlspolicy.Secure
	if got, _ := p.Apply(sd, "mail.example.com"); got.Level != tlspolicy.Secure {
		t.Errorf("secure lowered to %s", got.Level)
	}
}
