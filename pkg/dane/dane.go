// Package dane authenticates SMTP servers with DANE (RFC 7672): TLSA
// records at _PORT._tcp.MXHOST, used only when the resolver says the answer
// is DNSSEC-authenticated (the AD bit), matched against the certificate
// chain in a tls.Config VerifyConnection.
//
// Usages 3 (DANE-EE: the server's own certificate or key; no name or date
// checks, RFC 7672 §3.1.1) and 2 (DANE-TA: a trust anchor in the chain the
// server sends; chain, dates and names checked, §3.1.2) are used; 0 and 1
// (PKIX-TA/EE) are unusable for SMTP (§3.1.3). Selectors 0 (certificate)
// and 1 (SubjectPublicKeyInfo), matching types 0 (exact), 1 (SHA-256) and
// 2 (SHA-512).
//
// RFC 7672 §2.2 also needs the MX lookup itself to be secure before TLSA
// records are looked for; that is the caller's (the MX resolver's) to say.
package dane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mailfwd/mailfwd/pkg/dnsquery"
)

// Resolver asks DNS questions and reports AD (dnsquery.Client does).
type Resolver interface {
	Query(ctx context.Context, name string, qtype uint16) (*dnsquery.Answer, error)
}

// maxRecords bounds the TLSA records considered for one host.
const maxRecords = 32

// Records are the authenticated TLSA records of one host and port.
type Records struct {
	// Name is the TLSA owner, _25._tcp.mx.example.com.
	Name string
	// Host is the TLSA base domain (the MX host name), a reference
	// identifier for DANE-TA.
	Host string
	// All are every record of the RRset; Usable those this package can
	// match (usage 2 or 3, known selector and matching type).
	All    []*dns.TLSA
	Usable []*dns.TLSA
	// Now is the clock for DANE-TA chain validation (tests); nil: time.Now.
	Now func() time.Time
}

// ErrNoUsable: TLSA records exist (so TLS is mandatory, RFC 7672 §2.2)
// but none can be matched: the connection is encrypted but not
// authenticated.
var ErrNoUsable = errors.New("dane: no usable TLSA records")

// Lookup returns the TLSA records of host:port when the answer is
// authenticated (AD set), or nil when DANE does not apply: the answer is
// not authenticated, or there are no records. An error is a failed lookup
// (SERVFAIL, timeout): for an MX found securely the hop must be deferred
// (RFC 7672 §2.2), not delivered without DANE.
func Lookup(ctx context.Context, r Resolver, host string, port uint16) (*Records, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	name := "_" + strconv.Itoa(int(port)) + "._tcp." + host + "."
	a, err := r.Query(ctx, name, dns.TypeTLSA)
	if err != nil {
		return nil, fmt.Errorf("dane: TLSA lookup: %w", err)
	}
	if !a.Authenticated || a.NXDomain {
		return nil, nil
	}
	rec := &Records{Name: name, Host: host}
	for _, rr := range a.Msg.Answer {
		t, ok := rr.(*dns.TLSA)
		if !ok {
			continue
		}
		if len(rec.All) >= maxRecords {
			break
		}
		rec.All = append(rec.All, t)
		if usable(t) {
			rec.Usable = append(rec.Usable, t)
		}
	}
	if len(rec.All) == 0 {
		return nil, nil
	}
	return rec, nil
}

func usable(t *dns.TLSA) bool {
	if t.Usage != 2 && t.Usage != 3 {
		return false
	}
	if t.Selector > 1 {
		return false
	}
	switch t.MatchingType {
	case 0:
		return t.Certificate != ""
	case 1:
		return len(t.Certificate) == 64
	case 2:
		return len(t.Certificate) == 128
	}
	return false
}

// Config returns a client configuration that accepts the server only when
// its chain matches a usable record. With no usable records it still
// requires TLS but authenticates nothing, and Verify reports ErrNoUsable.
// names are the extra reference identifiers for DANE-TA besides Host (the
// next-hop domain, RFC 7672 §3.2.2).
func (r *Records) Config(names ...string) *tls.Config {
	return &tls.Config{
		ServerName:         r.Host, // SNI: the TLSA base domain (RFC 7672 §8.1)
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, //nolint:gosec // VerifyConnection does the DANE checks
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := r.Verify(cs, names...)
			if errors.Is(err, ErrNoUsable) {
				return nil
			}
			return err
		},
	}
}

// Verify checks the peer chain of cs against the usable records.
func (r *Records) Verify(cs tls.ConnectionState, names ...string) error {
	if len(r.Usable) == 0 {
		return ErrNoUsable
	}
	chain := cs.PeerCertificates
	if len(chain) == 0 {
		return errors.New("dane: no certificate")
	}
	leaf := chain[0]
	var lastErr error
	for _, t := range r.Usable {
		switch t.Usage {
		case 3:
			if matches(t, leaf) {
				return nil
			}
		case 2:
			for _, ta := range chain[1:] {
				if !matches(t, ta) {
					continue
				}
				if err := r.verifyTA(leaf, ta, chain[1:], names); err != nil {
					lastErr = err
					continue
				}
				return nil
			}
		}
	}
	if lastErr != nil {
		return fmt.Errorf("dane: %s: %w", r.Name, lastErr)
	}
	return fmt.Errorf("dane: %s: no TLSA record matches the certificate chain", r.Name)
}

func (r *Records) verifyTA(leaf, ta *x509.Certificate, chain []*x509.Certificate, names []string) error {
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	roots := x509.NewCertPool()
	roots.AddCert(ta)
	inter := x509.NewCertPool()
	for _, c := range chain {
		if c != ta {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return err
	}
	for _, n := range append([]string{r.Host}, names...) {
		if n != "" && leaf.VerifyHostname(n) == nil {
			return nil
		}
	}
	return fmt.Errorf("certificate names %v match none of %s", leaf.DNSNames, strings.Join(append([]string{r.Host}, names...), ", "))
}

func matches(t *dns.TLSA, c *x509.Certificate) bool {
	want, err := dns.CertificateToDANE(t.Selector, t.MatchingType, c)
	return err == nil && strings.EqualFold(want, t.Certificate)
}
