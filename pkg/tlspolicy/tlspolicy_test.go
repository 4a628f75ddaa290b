package tlspolicy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func TestParseLevelAndEntry(t *testing.T) {
	for _, s := range []string{"none", "MAY", "encrypt", "verify", "secure"} {
		if _, err := ParseLevel(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for rhs, want := range map[string]string{
		"verfy":                      `unknown TLS level "verfy"`,
		"dane":                       "unknown TLS level",
		"":                           "no TLS level",
		"secure match=":              "want name=value",
		"secure match=exa_mple..com": "is not hostname",
		"secure ca=relative.pem":     "absolute path",
		"may match=hostname":         "need level verify or secure",
		"secure ciphers=high":        "unknown option",
		"secure ca=/a.pem ca=/b.pem": "given twice",
	} {
		_, err := ParseEntry(rhs)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseEntry(%q) = %v, want error containing %q", rhs, err, want)
		}
	}
	e, err := ParseEntry("secure match=hostname:nexthop:.Example.COM ca=/etc/ca/../ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	if e.String() != "secure match=hostname:nexthop:.example.com ca=/etc/ca.pem" {
		t.Errorf("entry %q", e.String())
	}
}

func TestParseKey(t *testing.T) {
	for in, want := range map[string]string{
		"[Email-SMTP.eu-west-1.amazonaws.com]:587": "[email-smtp.eu-west-1.amazonaws.com]:587",
		"[10.1.1.1]":            "[10.1.1.1]",
		"[IPv6:2001:db8::1]:25": "[2001:db8::1]:25",
		"relay.example:2525":    "relay.example:2525",
		".Example.com":          ".example.com",
		".":                     ".",
		"bücher.example":        "xn--bcher-kva.example",
	} {
		got, err := ParseKey(in)
		if err != nil || got != want {
			t.Errorf("ParseKey(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"[relay.example", "[relay.example]x", "relay.example:0", "relay.example:99999", ".example.com:25", "bad_host..x"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

func mustPolicy(t *testing.T, tlsLines, authLines map[string]string) *Policy {
	t.Helper()
	p := New()
	for k, v := range tlsLines {
		key, err := ParseKey(k)
		if err != nil {
			t.Fatal(err)
		}
		e, err := ParseEntry(v)
		if err != nil {
			t.Fatal(err)
		}
		p.AddTLS(key, e)
	}
	for k, v := range authLines {
		key, err := ParseKey(k)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseCredentials(v)
		if err != nil {
			t.Fatal(err)
		}
		p.AddAuth(key, c)
	}
	return p
}

func TestLookup(t *testing.T) {
	p := mustPolicy(t, map[string]string{
		"[email-smtp.eu-west-1.amazonaws.com]:587": "secure",
		"example.com":   "verify",
		".example.com":  "encrypt",
		"plain.example": "none",
		".":             "may",
	}, map[string]string{
		"[email-smtp.eu-west-1.amazonaws.com]:587": "AKIAEXAMPLE:pa:ss word",
		"plain.example": "u:p",
	})
	ses := Hop{Domain: "customer.example", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 587}
	cases := []struct {
		hop   Hop
		level Level
		key   string
		auth  string
	}{
		{ses, Secure, "[email-smtp.eu-west-1.amazonaws.com]:587", "AKIAEXAMPLE"},
		{Hop{Domain: "example.com", Port: 25}, Verify, "example.com", ""},
		{Hop{Domain: "a.b.example.com", Port: 25}, Encrypt, ".example.com", ""},
		{Hop{Domain: "other.example", Port: 25}, May, ".", ""},
		// Credentials never go over plain text: none is raised to encrypt.
		{Hop{Domain: "plain.example", Port: 25}, Encrypt, "plain.example", "u"},
		// The relay on another port is not the SES entry.
		{Hop{Domain: "x.example", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 25}, May, ".", ""},
	}
	for _, c := range cases {
		d := p.Lookup(c.hop)
		user := ""
		if d.Auth != nil {
			user = d.Auth.User
		}
		if d.Level != c.level || d.Key != c.key || user != c.auth {
			t.Errorf("Lookup(%+v) = level %s key %q user %q; want %s %q %q", c.hop, d.Level, d.Key, user, c.level, c.key, c.auth)
		}
	}
	if d := p.Lookup(ses); d.Auth.Password != "pa:ss word" || d.NextHop() != "email-smtp.eu-west-1.amazonaws.com" {
		t.Errorf("SES decision: %+v", d)
	}
	if d := (*Policy)(nil).Lookup(ses); d.Level != May {
		t.Errorf("nil policy: %s", d.Level)
	}
	if d := p.Lookup(Hop{Domain: "plain.example"}); !d.Raised {
		t.Error("Raised not set")
	}
}

// handshake dials addr (a loopback server) as if it were host, under d.
func handshake(t *testing.T, b *Builder, d Decision, host, addr string) (*tls.ConnectionState, error) {
	t.Helper()
	cfg, err := b.Config(d, host)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, nil
	}
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ok\n" {
		t.Fatalf("after handshake: %q %v", line, err)
	}
	cs := c.ConnectionState()
	return &cs, nil
}

func TestBuilderAgainstTLSServers(t *testing.T) {
	ca := testenv.NewCA(t)
	good := testenv.StartTLSServer(t, ca.Issue(t, "mx1.example.com"))
	otherName := testenv.StartTLSServer(t, ca.Issue(t, "mx.hoster.example"))
	selfSigned := testenv.StartTLSServer(t, testenv.SelfSignedCert(t, "mx1.example.com"))
	expired := testenv.StartTLSServer(t, ca.IssueValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour), "mx1.example.com"))
	relay := testenv.StartTLSServer(t, ca.Issue(t, "email-smtp.eu-west-1.amazonaws.com"))

	b := &Builder{Roots: ca.Pool()}
	p := mustPolicy(t, map[string]string{
		"verify.example":  "verify",
		"example.com":     "secure",
		"may.example":     "may",
		"encrypt.example": "encrypt",
		"none.example":    "none",
		"[email-smtp.eu-west-1.amazonaws.com]:587": "secure",
		"pinned.example": "secure match=mx.hoster.example",
	}, nil)
	at := func(domain string) Decision { return p.Lookup(Hop{Domain: domain, Port: 25}) }

	cases := []struct {
		name    string
		d       Decision
		host    string
		addr    string
		wantErr bool
	}{
		{"verify good", at("verify.example"), "mx1.example.com", good, false},
		{"verify self-signed", at("verify.example"), "mx1.example.com", selfSigned, true},
		{"verify wrong name", at("verify.example"), "mx1.example.com", otherName, true},
		{"verify expired", at("verify.example"), "mx1.example.com", expired, true},
		{"may self-signed", at("may.example"), "mx1.example.com", selfSigned, false},
		{"may expired", at("may.example"), "mx1.example.com", expired, false},
		{"encrypt self-signed", at("encrypt.example"), "mx1.example.com", selfSigned, false},
		// secure: the certificate must name the recipient domain or a
		// subdomain; the MX name alone (from DNS) does not count.
		{"secure subdomain of nexthop", at("example.com"), "mx1.example.com", good, false},
		{"secure MX at a hoster", at("example.com"), "mx.hoster.example", otherName, true},
		{"verify MX at a hoster", at("verify.example"), "mx.hoster.example", otherName, false},
		{"secure match= pinned", at("pinned.example"), "mx.hoster.example", otherName, false},
		{"secure relay", p.Lookup(Hop{Domain: "customer.example", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 587}), "email-smtp.eu-west-1.amazonaws.com", relay, false},
		{"secure relay impostor", p.Lookup(Hop{Domain: "customer.example", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 587}), "email-smtp.eu-west-1.amazonaws.com", good, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cs, err := handshake(t, b, c.d, c.host, c.addr)
			if c.wantErr {
				var ve *VerifyError
				if err == nil || !errors.As(err, &ve) {
					t.Fatalf("want a *VerifyError, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if !strings.HasPrefix(Describe(cs, nil), "tls=TLSv1.") {
				t.Errorf("Describe: %s", Describe(cs, nil))
			}
		})
	}

	// may: the handshake succeeds, and Check tells the log whether it
	// would have verified.
	cs, err := handshake(t, b, at("may.example"), "mx1.example.com", selfSigned)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Check(at("may.example"), "mx1.example.com", *cs); err == nil {
		t.Error("Check passed a self-signed certificate")
	}
	if got := Describe(cs, b.Check(at("may.example"), "mx1.example.com", *cs)); !strings.HasSuffix(got, "verified=no") {
		t.Errorf("Describe = %s", got)
	}
	if cfg, _ := b.Config(at("none.example"), "mx1.example.com"); cfg != nil {
		t.Error("none gave a TLS config")
	}
	if Describe(nil, nil) != "tls=none" {
		t.Error("Describe(nil)")
	}
}

func TestBuilderCAFile(t *testing.T) {
	ca := testenv.NewCA(t)
	addr := testenv.StartTLSServer(t, ca.Issue(t, "relay.corp.example"))
	path := filepath.Join(t.TempDir(), "corp.pem")
	p := mustPolicy(t, map[string]string{"relay.corp.example": "verify ca=" + path}, nil)
	d := p.Lookup(Hop{Relay: "relay.corp.example", Port: 25})
	b := &Builder{Roots: testenv.NewCA(t).Pool()} // the default roots do not know the corp CA

	if _, err := b.Config(d, "relay.corp.example"); err == nil {
		t.Error("missing ca= file: no error")
	}
	if err := os.WriteFile(path, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Config(d, "relay.corp.example"); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Errorf("junk ca= file: %v", err)
	}
	if err := os.WriteFile(path, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(t, b, d, "relay.corp.example", addr); err != nil {
		t.Errorf("with the corp CA: %v", err)
	}
	// The default roots alone refuse it.
	d2 := mustPolicy(t, map[string]string{".": "verify"}, nil).Lookup(Hop{Relay: "relay.corp.example", Port: 25})
	if _, err := handshake(t, b, d2, "relay.corp.example", addr); err == nil {
		t.Error("verified against roots that do not hold the CA")
	}
}

// The worker's --tls-ca-file (Builder.RootsFile) is re-read when the file
// changes: a replaced CA bundle verifies the next connection, no restart
// (issue 21); a bundle caught mid-update keeps the last good one.
func TestBuilderRootsFileReload(t *testing.T) {
	old, renewed := testenv.NewCA(t), testenv.NewCA(t)
	oldSrv := testenv.StartTLSServer(t, old.Issue(t, "relay.corp.example"))
	newSrv := testenv.StartTLSServer(t, renewed.Issue(t, "relay.corp.example"))
	path := filepath.Join(t.TempDir(), "ca.pem")
	replace := func(b []byte) {
		if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	replace(old.PEM())
	b := &Builder{RootsFile: path}
	d := mustPolicy(t, map[string]string{".": "verify"}, nil).Lookup(Hop{Relay: "relay.corp.example", Port: 25})

	if _, err := handshake(t, b, d, "relay.corp.example", oldSrv); err != nil {
		t.Fatalf("with the first CA: %v", err)
	}
	if _, err := handshake(t, b, d, "relay.corp.example", newSrv); err == nil {
		t.Fatalf("a server of the renewed CA verified before the bundle changed")
	}
	replace(renewed.PEM())
	if _, err := handshake(t, b, d, "relay.corp.example", newSrv); err != nil {
		t.Errorf("after replacing the CA bundle: %v", err)
	}
	if _, err := handshake(t, b, d, "relay.corp.example", oldSrv); err == nil {
		t.Errorf("the old CA still verifies after the bundle was replaced")
	}
	replace([]byte("half a PEM"))
	if _, err := handshake(t, b, d, "relay.corp.example", newSrv); err != nil {
		t.Errorf("a broken bundle did not keep the last good one: %v", err)
	}
}
