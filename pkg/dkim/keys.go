// Package dkim signs outbound mail (RFC 6376) with github.com/emersion/go-msgauth:
// a key and selector per sender domain from the "dkim" policy key (in the
// policy Secret), RSA (2048 to 4096 bits) or Ed25519 (RFC 8463).
//
// The Signer is an io.Writer: the ingress tees the message through it while
// streaming it to the store, and keeps the DKIM-Signature header it yields
// to be prepended at delivery. Only the header section is held in memory
// (bounded); the body is hashed as it passes.
//
// dkim lines:
//
//	DOMAIN  SELECTOR  KEY  [h=From:To:Subject:…]
//
// KEY is the private key as base64 PKCS#8 DER (what mailfwdctl dkim keygen
// writes; `openssl pkcs8 -topk8 -nocrypt -outform DER | base64 -w0` converts
// an existing PEM key).
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// DefaultHeaders are the header fields signed when a key line has no h=:
// the list of RFC 6376 §5.4.1, plus Message-ID, MIME-Version and the
// Content-* fields that change how the body is read. Fields absent from a
// message are still listed, so they cannot be added later without breaking
// the signature.
var DefaultHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"In-Reply-To", "References",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
	"Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// RSA key sizes accepted.
const (
	MinRSABits = 2048
	MaxRSABits = 4096
)

// Key is one dkim line.
type Key struct {
	Domain   string // A-labels, lower case
	Selector string
	Signer   crypto.Signer
	// Headers to sign; nil: DefaultHeaders.
	Headers []string
}

// Algorithm is "rsa" or "ed25519" (the k= tag).
func (k *Key) Algorithm() string {
	if _, ok := k.Signer.Public().(ed25519.PublicKey); ok {
		return "ed25519"
	}
	return "rsa"
}

// SignedHeaders returns the header fields the key signs.
func (k *Key) SignedHeaders() []string {
	if k.Headers != nil {
		return k.Headers
	}
	return DefaultHeaders
}

// ParseKeyLine parses a dkim line (without comment and line end); the
// caller (package policy) adds file and line to errors. Errors never quote
// the key material.
func ParseKeyLine(text string) (Key, error) {
	f := strings.Fields(text)
	if len(f) < 3 || len(f) > 4 {
		return Key{}, errors.New("want DOMAIN SELECTOR KEY [h=Header:Header…]")
	}
	d, err := address.Domain(f[0])
	if err != nil {
		return Key{}, fmt.Errorf("bad domain %q: %v", f[0], err)
	}
	if err := checkSelector(f[1]); err != nil {
		return Key{}, err
	}
	signer, err := parsePrivateKey(f[2])
	if err != nil {
		return Key{}, fmt.Errorf("domain %s selector %s: %w", d, f[1], err)
	}
	k := Key{Domain: d, Selector: strings.ToLower(f[1]), Signer: signer}
	if len(f) == 4 {
		hs, ok := strings.CutPrefix(f[3], "h=")
		if !ok || hs == "" {
			return Key{}, fmt.Errorf("fourth field %q: want h=From:To:…", f[3])
		}
		from := false
		for _, h := range strings.Split(hs, ":") {
			if h == "" || strings.IndexFunc(h, func(r rune) bool { return r <= ' ' || r > '~' || r == ':' }) >= 0 {
				return Key{}, fmt.Errorf("h=: bad header field name %q", h)
			}
			from = from || strings.EqualFold(h, "From")
			k.Headers = append(k.Headers, h)
		}
		if !from {
			return Key{}, errors.New("h= must include From (RFC 6376 §5.4)")
		}
	}
	return k, nil
}

// checkSelector: a selector is one or more DNS labels.
func checkSelector(s string) error {
	bad := fmt.Errorf("bad selector %q: want DNS labels such as s1 or 2026.mail", s)
	if s == "" || len(s) > 253 {
		return bad
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return bad
		}
		for i := 0; i < len(l); i++ {
			c := l[i] | 0x20
			if !(c >= 'a' && c <= 'z' || l[i] >= '0' && l[i] <= '9' || l[i] == '-') {
				return bad
			}
		}
	}
	return nil
}

// CheckSelector reports whether s can be a selector (for mailfwdctl).
func CheckSelector(s string) error { return checkSelector(s) }

func parsePrivateKey(b64 string) (crypto.Signer, error) {
	der, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("key is not base64 PKCS#8 DER")
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("key is not a PKCS#8 private key")
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; want %d to %d", n, MinRSABits, MaxRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("key type %T: want RSA or Ed25519", k)
}

// GenerateKey makes a new key: alg "rsa" (2048 bits) or "ed25519".
func GenerateKey(alg string) (crypto.Signer, error) {
	switch alg {
	case "rsa", "":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown key algorithm %q (rsa or ed25519)", alg)
}

// Line formats k as a dkim line.
func (k *Key) Line() (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.Signer)
	if err != nil {
		return "", err
	}
	s := k.Domain + "\t" + k.Selector + "\t" + base64.StdEncoding.EncodeToString(der)
	if k.Headers != nil {
		s += "\th=" + strings.Join(k.Headers, ":")
	}
	return s, nil
}

// DNSName is where the public key is published: SELECTOR._domainkey.DOMAIN.
func (k *Key) DNSName() string { return k.Selector + "._domainkey." + k.Domain }

// TXTRecord is the DNS TXT value to publish: "v=DKIM1; k=rsa; p=…".
func (k *Key) TXTRecord() (string, error) {
	var p []byte
	switch pub := k.Signer.Public().(type) {
	case ed25519.PublicKey:
		p = pub
	default:
		var err error
		if p, err = x509.MarshalPKIXPublicKey(pub); err != nil {
			return "", err
		}
	}
	return "v=DKIM1; k=" + k.Algorithm() + "; p=" + base64.StdEncoding.EncodeToString(p), nil
}

// ZoneLine is the record as a zone-file line, split into strings of at
// most 255 bytes (RFC 1035 §3.3.14).
func (k *Key) ZoneLine() (string, error) {
	txt, err := k.TXTRecord()
	if err != nil {
		return "", err
	}
	var parts []string
	for len(txt) > 255 {
		parts = append(parts, `"`+txt[:255]+`"`)
		txt = txt[255:]
	}
	parts = append(parts, `"`+txt+`"`)
	return k.DNSName() + ". IN TXT ( " + strings.Join(parts, " ") + " )", nil
}

// Keys is the parsed dkim file: immutable, safe for concurrent use.
type Keys struct {
	byDomain map[string]*Key
	order    []*Key
}

// NewKeys builds the set; one key per domain.
func NewKeys(list []Key) (*Keys, error) {
	ks := &Keys{byDomain: map[string]*Key{}}
	for i := range list {
		k := list[i]
		if _, ok := ks.byDomain[k.Domain]; ok {
			return nil, fmt.Errorf("domain %s has two keys", k.Domain)
		}
		ks.byDomain[k.Domain] = &k
		ks.order = append(ks.order, &k)
	}
	return ks, nil
}

// Len is the number of domains with a key.
func (ks *Keys) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.order)
}

// List returns the keys in file order.
func (ks *Keys) List() []*Key {
	if ks == nil {
		return nil
	}
	return append([]*Key(nil), ks.order...)
}

// For returns the key for domain: its own, else the nearest parent
// domain's (d= of a parent aligns for DMARC in relaxed mode).
func (ks *Keys) For(domain string) (*Key, bool) {
	if ks == nil {
		return nil, false
	}
	d, err := address.Domain(domain)
	if err != nil {
		return nil, false
	}
	for {
		if k, ok := ks.byDomain[d]; ok {
			return k, true
		}
		i := strings.IndexByte(d, '.')
		if i < 0 {
			return nil, false
		}
		d = d[i+1:]
	}
}
