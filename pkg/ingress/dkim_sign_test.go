package ingress_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// Who gets mail DKIM-signed (issue 19 item 1): an authenticated user whose
// allowed senders cover the From: address, or a client in the signing
// networks; never a client that only relays to a To: RELAY domain.

// testKeys makes Ed25519 keys for domains and the TXT lookup that verifies
// their signatures.
func testKeys(t *testing.T, domains ...string) (*dkim.Keys, *msgdkim.VerifyOptions) {
	t.Helper()
	var list []dkim.Key
	txt := map[string]string{}
	for _, d := range domains {
		signer, err := dkim.GenerateKey("ed25519")
		if err != nil {
			t.Fatal(err)
		}
		k := dkim.Key{Domain: d, Selector: "s1", Signer: signer}
		if txt[k.DNSName()], err = k.TXTRecord(); err != nil {
			t.Fatal(err)
		}
		list = append(list, k)
	}
	keys, err := dkim.NewKeys(list)
	if err != nil {
		t.Fatal(err)
	}
	return keys, &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if v, ok := txt[name]; ok {
			return []string{v}, nil
		}
		return nil, &net.DNSError{Err: "no such record", Name: name, IsNotFound: true}
	}}
}

type signFixture struct {
	*fixture
	ca   *testenv.CA
	opts *msgdkim.VerifyOptions
}

// startSigning: keys for example.com and example.net; the user app1 may
// send only as invoices@example.net; access is the policy's access map.
func startSigning(t *testing.T, access string, mutate func(*ingress.Config)) *signFixture {
	t.Helper()
	h, err := smtpauth.HashBcrypt(goodPass, smtpauth.MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(map[string][]byte{
		"access": []byte(access),
		"users":  []byte("app1 " + h + " invoices@example.net\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	keys, opts := testKeys(t, "example.com", "example.net")
	budget, err := smtpauth.NewFailureBudget(smtpauth.BudgetConfig{MaxFailures: 5})
	if err != nil {
		t.Fatal(err)
	}
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "mx.test")
	f := start(t, func(c *ingress.Config) {
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		c.Policy = &ingress.SendmailPolicy{Current: func() *policy.Policy { return pol }}
		c.Auth = &smtpauth.Authenticator{Verifier: smtpauth.NewVerifier(2), Budget: budget}
		c.Users = func() *smtpauth.Users { return pol.Users }
		c.DKIM = func() *dkim.Keys { return keys }
		c.InlineBodyMax = 4096
		if mutate != nil {
			mutate(c)
		}
	})
	return &signFixture{fixture: f, ca: ca, opts: opts}
}

// login opens a session authenticated as app1 (STARTTLS, AUTH PLAIN).
func (f *signFixture) login(t *testing.T) *client {
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	(&authFixture{fixture: f.fixture, ca: f.ca}).startTLS(c)
	c.expect(250, "EHLO client.test")
	c.expect(235, "%s", plainAuth("app1", goodPass))
	return c
}

// send runs one transaction and returns the queued envelope's signature
// ("" unsigned) after checking that it verifies over the stored message.
func (f *signFixture) send(t *testing.T, c *client, from, to, header, body string) string {
	t.Helper()
	c.expect(250, "MAIL FROM:<%s>", from)
	c.expect(250, "RCPT TO:<%s>", to)
	qid := queueID(t, c.sendData(header+"Subject: pay\r\n\r\n"+body))
	jobs := f.fetch(1, 10*time.Second)
	if len(jobs) != 1 || jobs[0].Env.QueueID != qid {
		t.Fatalf("queued %v", jobs)
	}
	env := jobs[0].Env
	_ = jobs[0].Ack(context.Background())
	stored := env.Body
	if stored == nil {
		var err error
		if stored, err = f.store.Get(context.Background(), qid); err != nil {
			t.Fatal(err)
		}
	}
	if env.DKIMSignature != "" {
		vs, err := msgdkim.VerifyWithOptions(strings.NewReader(env.DKIMSignature+string(stored)), f.opts)
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("signature does not verify: %+v %v (%q)", vs, err, env.DKIMSignature)
		}
		return vs[0].Domain
	}
	return ""
}

// The two reproductions of the issue, and the mail that must still be signed.
func TestDKIMSignsOnlyForAuthorisedSenders(t *testing.T) {
	// Loopback is no relay client: it may only send to the To: RELAY domain.
	f := startSigning(t, "To:mms.test RELAY\n", nil)

	t.Run("inbound to a RELAY domain is not signed", func(t *testing.T) {
		c := dial(t, f.addr)
		c.expect(250, "EHLO other-operator.test")
		if d := f.send(t, c, "ceo@example.com", "u@mms.test", "From: ceo@example.com\r\n", "hi\r\n"); d != "" {
			t.Fatalf("inbound mail from a stranger signed with d=%s", d)
		}
	})
	t.Run("user signs only for its allowed senders", func(t *testing.T) {
		c := f.login(t)
		for _, tc := range []struct{ header, want string }{
			{"From: ceo@example.com\r\n", ""},        // the issue's reproduction
			{"From: Boss <ceo@example.net>\r\n", ""}, // same domain, another address
			{"From: invoices@example.net\r\n", "example.net"},
			{"From: Invoices <INVOICES@Example.NET>\r\n", "example.net"},
			{"From: invoices@example.net, ceo@example.com\r\n", ""},         // one address not allowed
			{"From: invoices@example.net\r\nFrom: ceo@example.com\r\n", ""}, // two From: fields
			{"From: ceo@example.com\r\nFrom: invoices@example.net\r\n", ""}, // the other order
		} {
			if d := f.send(t, c, "invoices@example.net", "u@elsewhere.test", tc.header, "hi\r\n"); d != tc.want {
				t.Errorf("%q: signed with d=%q, want %q", tc.header, d, tc.want)
			}
		}
		// A body longer than the peek is streamed, and signed the same.
		if d := f.send(t, c, "invoices@example.net", "u@elsewhere.test", "From: invoices@example.net\r\n", strings.Repeat("0123456789abcdef\r\n", 8000)); d != "example.net" {
			t.Errorf("streamed body signed with d=%q", d)
		}
	})
}

// Clients the access map lets relay anywhere (Connect: RELAY) sign any
// From: with a key (OpenDKIM's InternalHosts) when DKIMSignRelayClients is
// on (the daemon's default); explicit signing networks do the same.
func TestDKIMSigningNetworks(t *testing.T) {
	for _, tc := range []struct {
		name, access string
		mutate       func(*ingress.Config)
		want         string
	}{
		{"relay client, relay clients sign", "Connect:127.0.0.1 RELAY\n", func(c *ingress.Config) { c.DKIMSignRelayClients = true }, "example.com"},
		{"relay client, relay clients do not sign", "Connect:127.0.0.1 RELAY\n", nil, ""},
		{"signing network", "To:mms.test RELAY\n", func(c *ingress.Config) {
			c.DKIMSignNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		}, "example.com"},
		{"another signing network", "Connect:127.0.0.1 RELAY\n", func(c *ingress.Config) {
			c.DKIMSignNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startSigning(t, tc.access, tc.mutate)
			c := dial(t, f.addr)
			c.expect(250, "EHLO app.test")
			if d := f.send(t, c, "ceo@example.com", "u@mms.test", "From: ceo@example.com\r\n", "hi\r\n"); d != tc.want {
				t.Errorf("signed with d=%q, want %q", d, tc.want)
			}
		})
	}
}
