package tlspolicy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mailfwd/mailfwd/pkg/certreload"
)

// MaxCAFileSize bounds a ca= PEM bundle.
const MaxCAFileSize = 1 << 20

// Builder makes tls.Configs for Decisions. The zero value trusts the
// system roots. Safe for concurrent use.
type Builder struct {
	// Roots are trusted when an entry has no ca=; nil: the system roots
	// (the worker's --tls-ca-file replaces them).
	Roots *x509.CertPool
	// RootsFile, when set, replaces Roots with the PEM bundle in that file
	// (the worker's --tls-ca-file), re-read when the file changes, as ca=
	// files are: a renewed bundle applies to the next connection.
	RootsFile string
	// Now is the clock for certificate validity (tests); nil: time.Now.
	Now func() time.Time

	mu  sync.Mutex
	cas map[string]caFile
}

type caFile struct {
	stamp certreload.Stamp
	pool  *x509.CertPool
}

// VerifyError is a certificate that the level refuses. The worker defers
// the hop (4.7.5), as Postfix does for an untrusted certificate.
type VerifyError struct {
	Level Level
	Host  string
	Err   error
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("TLS %s: certificate of %s: %v", e.Level, e.Host, e.Err)
}
func (e *VerifyError) Unwrap() error { return e.Err }

// Config returns the client configuration for connecting to host (the MX
// host name or the relay, as connected to; an IP for literals) under d, or
// nil for level none (no STARTTLS). For may and encrypt the certificate is
// not checked (Check can still tell, for the log); for verify and secure
// the handshake fails with a *VerifyError unless the chain is trusted and
// the certificate names what the level requires.
func (b *Builder) Config(d Decision, host string) (*tls.Config, error) {
	if d.Level == None {
		return nil, nil
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is done by VerifyConnection below, so that the
		// names can be Postfix's match= list rather than only ServerName.
		InsecureSkipVerify: true, //nolint:gosec // see VerifyConnection
	}
	if net.ParseIP(host) == nil {
		cfg.ServerName = host
	}
	if !d.Level.Verifies() {
		return cfg, nil
	}
	roots, err := b.roots(d.Entry.CAFile)
	if err != nil {
		return nil, err
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		return b.check(d, host, roots, cs)
	}
	return cfg, nil
}

// Check verifies cs as level verify/secure of d would (for may and
// encrypt: as verify would), so the delivery log can say verified=yes|no.
func (b *Builder) Check(d Decision, host string, cs tls.ConnectionState) error {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if !d.Level.Verifies() {
		d.Level, d.Entry.Match = Verify, nil
	}
	roots, err := b.roots(d.Entry.CAFile)
	if err != nil {
		return err
	}
	return b.check(d, host, roots, cs)
}

func (b *Builder) check(d Decision, host string, roots *x509.CertPool, cs tls.ConnectionState) error {
	fail := func(err error) error { return &VerifyError{Level: d.Level, Host: host, Err: err} }
	if len(cs.PeerCertificates) == 0 {
		return fail(errors.New("no certificate"))
	}
	now := time.Now()
	if b.Now != nil {
		now = b.Now()
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fail(err)
	}
	names := MatchNames(d, host)
	for _, n := range names {
		if nameMatches(leaf, n) {
			return nil
		}
	}
	return fail(fmt.Errorf("names %s do not match any of %s", certNames(leaf), strings.Join(names, ", ")))
}

// MatchNames lists the names a certificate may carry under d when
// connected to host: match= resolved ("hostname" → host, "nexthop" → the
// next hop, "dot-nexthop" → ".next-hop"), or the level's default.
func MatchNames(d Decision, host string) []string {
	match := d.Entry.Match
	if len(match) == 0 {
		if d.Level == Secure {
			match = []string{"nexthop", "dot-nexthop"}
		} else {
			match = []string{"hostname"}
		}
	}
	var out []string
	for _, m := range match {
		switch m {
		case "hostname":
			out = append(out, host)
		case "nexthop":
			out = append(out, d.nextHop)
		case "dot-nexthop":
			out = append(out, "."+d.nextHop)
		default:
			out = append(out, m)
		}
	}
	return out
}

// nameMatches: "name" as crypto/x509 matches a host name (wildcards, IP
// SANs); ".name" any DNS SAN below name.
func nameMatches(c *x509.Certificate, n string) bool {
	if n == "" || n == "." {
		return false
	}
	if strings.HasPrefix(n, ".") {
		for _, s := range c.DNSNames {
			if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(s, ".")), n) {
				return true
			}
		}
		return false
	}
	return c.VerifyHostname(n) == nil
}

func certNames(c *x509.Certificate) string {
	var n []string
	n = append(n, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		n = append(n, ip.String())
	}
	if len(n) == 0 {
		return "(none)"
	}
	return strings.Join(n, ", ")
}

// roots returns the pool for a ca= file (re-read when it changes), or the
// default roots.
func (b *Builder) roots(path string) (*x509.CertPool, error) {
	if path == "" {
		switch {
		case b.RootsFile != "":
			path = b.RootsFile
		case b.Roots != nil:
			return b.Roots, nil
		default:
			return x509.SystemCertPool()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	pool, err := b.loadCAs(path)
	if err != nil {
		// A file caught mid-update (a Secret or certbot renewal) keeps the
		// last good bundle; the next change is read again.
		if c, ok := b.cas[path]; ok {
			return c.pool, nil
		}
		return nil, err
	}
	return pool, nil
}

// loadCAs reads a PEM bundle unless it is unchanged since the last read.
// b.mu is held.
func (b *Builder) loadCAs(path string) (*x509.CertPool, error) {
	st, err := certreload.StampOf(path)
	if err != nil {
		return nil, fmt.Errorf("tls_policy ca=%s: %w", path, err)
	}
	if c, ok := b.cas[path]; ok && c.stamp == st {
		return c.pool, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tls_policy ca=%s: %w", path, err)
	}
	defer f.Close()
	pem, err := io.ReadAll(io.LimitReader(f, MaxCAFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("tls_policy ca=%s: %w", path, err)
	}
	if len(pem) > MaxCAFileSize {
		return nil, fmt.Errorf("tls_policy ca=%s: larger than %d bytes", path, MaxCAFileSize)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls_policy ca=%s: no PEM certificate in it", path)
	}
	if b.cas == nil {
		b.cas = map[string]caFile{}
	}
	b.cas[path] = caFile{stamp: st, pool: pool}
	return pool, nil
}

// Describe says what protected a connection, for the delivery log and the
// span: "tls=TLSv1.3 verified=yes", "tls=TLSv1.2 verified=no", "tls=none".
func Describe(cs *tls.ConnectionState, verifyErr error) string {
	if cs == nil || !cs.HandshakeComplete {
		return "tls=none"
	}
	v := "yes"
	if verifyErr != nil {
		v = "no"
	}
	return "tls=" + strings.ReplaceAll(tls.VersionName(cs.Version), " ", "v") + " verified=" + v
}
