package dkim

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

const message = "Received: from app.example (app.example [10.0.0.5]) by mailfwd; Tue, 1 Dec 2026 12:00:00 +0000\r\n" +
	"From: Alerts <alerts@example.com>\r\n" +
	"To: ops@example.net\r\n" +
	"Subject: disk full\r\n" +
	"Date: Tue, 1 Dec 2026 12:00:00 +0000\r\n" +
	"Message-ID: <1@app.example>\r\n" +
	"\r\n" +
	"The disk is full.\r\n" +
	"  Really.\r\n"

func mustKey(t *testing.T, alg, domain, selector string) Key {
	t.Helper()
	s, err := GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	k := Key{Domain: domain, Selector: selector, Signer: s}
	line, err := k.Line()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseKeyLine(line)
	if err != nil {
		t.Fatalf("the line Line wrote does not parse: %v", err)
	}
	return parsed
}

// sign feeds msg through a Signer in small, uneven chunks (as the ingress
// tees DATA) and returns the signature header.
func sign(t *testing.T, keys *Keys, msg string) *Signer {
	t.Helper()
	return signWith(t, keys, Options{}, msg)
}

func signWith(t *testing.T, keys *Keys, opts Options, msg string) *Signer {
	t.Helper()
	s := NewSigner(keys, opts)
	r := strings.NewReader(msg)
	buf := make([]byte, 7)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if w, werr := s.Write(buf[:n]); werr != nil || w != n {
				t.Fatalf("Write: %d %v", w, werr)
			}
		}
		if err == io.EOF {
			break
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return s
}

func verifier(t *testing.T, dns *testenv.DNSServer) *msgdkim.VerifyOptions {
	c := &dnsquery.Client{Servers: []string{dns.Addr}, Timeout: 5 * time.Second}
	return &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.TXT(ctx, name)
	}}
}

func TestSignVerify(t *testing.T) {
	rsaKey := mustKey(t, "rsa", "example.com", "s1")
	edKey := mustKey(t, "ed25519", "example.org", "ed1")
	keys, err := NewKeys([]Key{rsaKey, edKey})
	if err != nil {
		t.Fatal(err)
	}
	var zone strings.Builder
	for _, k := range []Key{rsaKey, edKey} {
		zl, err := k.ZoneLine()
		if err != nil {
			t.Fatal(err)
		}
		zone.WriteString(zl + "\n")
	}
	dns := testenv.StartDNS(t, zone.String())
	opts := verifier(t, dns)

	for _, tc := range []struct{ name, msg, domain string }{
		{"rsa", message, "example.com"},
		{"ed25519", strings.Replace(message, "alerts@example.com", "alerts@example.org", 1), "example.org"},
		{"parent domain key", strings.Replace(message, "alerts@example.com", "alerts@eu.example.com", 1), "example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sign(t, keys, tc.msg)
			if s.Header() == "" || !strings.HasPrefix(s.Header(), "DKIM-Signature: ") || s.Domain() != tc.domain {
				t.Fatalf("no signature for %s: %q (reason %q)", tc.domain, s.Header(), s.Reason())
			}
			delivered := s.Header() + tc.msg
			vs, err := msgdkim.VerifyWithOptions(strings.NewReader(delivered), opts)
			if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != tc.domain {
				t.Fatalf("verification failed: %v %+v", err, vs)
			}
			for _, h := range []string{"from", "subject", "message-id", "list-unsubscribe"} {
				if !containsFold(vs[0].HeaderKeys, h) {
					t.Errorf("h= lacks %s: %v", h, vs[0].HeaderKeys)
				}
			}
			// Changed in transit: the body, or a signed header.
			for what, changed := range map[string]string{
				"body":    strings.Replace(delivered, "The disk is full.", "The disk is fine.", 1),
				"subject": strings.Replace(delivered, "Subject: disk full", "Subject: all good", 1),
				"added":   strings.Replace(delivered, "\r\n\r\n", "\r\nReply-To: evil@attacker.example\r\n\r\n", 1),
			} {
				vs, err := msgdkim.VerifyWithOptions(strings.NewReader(changed), opts)
				if err != nil || len(vs) != 1 || vs[0].Err == nil {
					t.Errorf("%s changed in transit, yet verification: %v %+v", what, err, vs)
				}
			}
			// Relaxed canonicalization: re-folded white space still verifies.
			refolded := strings.Replace(delivered, "Subject: disk full", "Subject:  disk   full", 1)
			if vs, err := msgdkim.VerifyWithOptions(strings.NewReader(refolded), opts); err != nil || vs[0].Err != nil {
				t.Errorf("relaxed canonicalization: %v %+v", err, vs)
			}
		})
	}
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func TestUnsigned(t *testing.T) {
	keys, err := NewKeys([]Key{mustKey(t, "ed25519", "example.com", "s1")})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		msg    string
		reason string
	}{
		"other domain": {strings.Replace(message, "alerts@example.com", "a@example.net", 1), "no key for example.net"},
		"no from":      {"Subject: x\r\n\r\nbody\r\n", "no parsable From"},
		"lookalike":    {strings.Replace(message, "alerts@example.com", "a@notexample.com", 1), "no key"},
	} {
		s := sign(t, keys, tc.msg)
		if s.Header() != "" || !strings.Contains(s.Reason(), tc.reason) {
			t.Errorf("%s: header %q reason %q, want unsigned: %s", name, s.Header(), s.Reason(), tc.reason)
		}
	}
	// A header section larger than the bound is not held: not signed.
	s := NewSigner(keys, Options{MaxHeaderBytes: 1024})
	big := "From: a@example.com\r\nX-Junk: " + strings.Repeat("x", 4096) + "\r\n\r\nbody\r\n"
	if _, err := s.Write([]byte(big)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil || s.Header() != "" || !strings.Contains(s.Reason(), "longer than 1024") {
		t.Errorf("big header: %v %q %q", err, s.Header(), s.Reason())
	}
	// A message without a body is still signed.
	s = sign(t, keys, "From: a@example.com\r\nSubject: x\r\n")
	if s.Header() == "" {
		t.Errorf("header-only message not signed: %s", s.Reason())
	}
	// Abort releases a started signer.
	s = NewSigner(keys, Options{})
	_, _ = s.Write([]byte(message))
	s.Abort()
	s.Abort()
	if _, err := s.Write([]byte("x")); err == nil {
		t.Error("Write after Abort succeeded")
	}
}

// Options.Allow: signed only when every From: address is allowed; a
// message with two From: fields is never signed (issue 19 item 1).
func TestAllowAndOneFromField(t *testing.T) {
	keys, err := NewKeys([]Key{mustKey(t, "ed25519", "example.com", "s1"), mustKey(t, "ed25519", "example.net", "s1")})
	if err != nil {
		t.Fatal(err)
	}
	allow := func(addr string) bool { return strings.EqualFold(addr, "invoices@example.net") }
	for _, tc := range []struct {
		from, domain, reason string
	}{
		{"From: invoices@example.net\r\n", "example.net", ""},
		{"From: Inv <Invoices@EXAMPLE.net>\r\n", "example.net", ""},
		{"From: ceo@example.com\r\n", "", "ceo@example.com is not a sender"},
		{"From: invoices@example.net, ceo@example.com\r\n", "", "ceo@example.com is not a sender"},
		{"From: invoices@example.net\r\nFrom: ceo@example.com\r\n", "", "2 From: fields"},
		{"From: invoices@example.net\r\nfrom: invoices@example.net\r\n", "", "2 From: fields"},
		{"From: invoices@example.net\r\nFROM : ceo@example.com\r\n", "", "2 From: fields"}, // net/mail keeps "FROM " apart; DKIM does not
	} {
		s := signWith(t, keys, Options{Allow: allow}, tc.from+"Subject: x\r\n\r\nbody\r\n")
		if s.Domain() != tc.domain || (s.Header() == "") != (tc.domain == "") || !strings.Contains(s.Reason(), tc.reason) {
			t.Errorf("%q: signed d=%q (%q), reason %q; want d=%q, reason %q", tc.from, s.Domain(), s.Header(), s.Reason(), tc.domain, tc.reason)
		}
	}
	// Without Allow, any From: with a key is signed; two From: fields never.
	if s := sign(t, keys, "From: ceo@example.com\r\n\r\nbody\r\n"); s.Domain() != "example.com" {
		t.Errorf("no Allow: not signed: %s", s.Reason())
	}
	if s := sign(t, keys, "From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n"); s.Header() != "" {
		t.Error("two From: fields signed")
	}
}

func TestParseKeyLine(t *testing.T) {
	k := mustKey(t, "ed25519", "Example.COM", "S1")
	if k.Domain != "example.com" || k.Selector != "s1" || k.Algorithm() != "ed25519" {
		t.Errorf("%+v", k)
	}
	line, _ := k.Line()
	fields := strings.Fields(line)
	small, _ := rsa.GenerateKey(bytesReader(), 1024)
	der, _ := x509.MarshalPKCS8PrivateKey(small)
	for text, want := range map[string]string{
		"example.com s1":                                           "want DOMAIN SELECTOR KEY",
		"exa_mple..com s1 " + fields[2]:                            "bad domain",
		"example.com s_1 " + fields[2]:                             "bad selector",
		"example.com s1 !!!":                                       "not base64",
		"example.com s1 aGVsbG8=":                                  "not a PKCS#8",
		"example.com s1 " + base64.StdEncoding.EncodeToString(der): "RSA key of 1024 bits",
		"example.com s1 " + fields[2] + " h=To:Subject":            "must include From",
		"example.com s1 " + fields[2] + " x=1":                     "want h=",
	} {
		_, err := ParseKeyLine(text)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseKeyLine(%.60q…) = %v, want %q", text, err, want)
		}
		if err != nil && strings.Contains(err.Error(), fields[2][:20]) {
			t.Errorf("error quotes the key: %v", err)
		}
	}
	h, err := ParseKeyLine("example.com s1 " + fields[2] + " h=From:To:Subject")
	if err != nil || strings.Join(h.SignedHeaders(), ",") != "From,To,Subject" {
		t.Errorf("h=: %v %v", err, h.Headers)
	}
	if _, err := NewKeys([]Key{k, k}); err == nil {
		t.Error("two keys for a domain accepted")
	}
}

// bytesReader is a deterministic entropy source for the one throw-away
// 1024-bit key (its value does not matter, only its size).
func bytesReader() io.Reader { return bytes.NewReader(bytes.Repeat([]byte{0x5a, 0xa5, 0x3c}, 1<<16)) }
