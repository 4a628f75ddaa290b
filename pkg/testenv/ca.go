package testenv

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"testing"
	"time"
)

// CA is a test certificate authority: a self-signed root that issues
// server certificates, so tests can check chain and name verification the
// way a real deployment's CA would be checked.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA returns a fresh test CA valid from one hour ago for 24 hours.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key := newECKey(t)
	_, cert := newCert(t, rootTemplate("mailfwd test CA", x509.KeyUsageCertSign|x509.KeyUsageCRLSign), nil, &key.PublicKey, key)
	return &CA{Cert: cert, key: key}
}

// Pool returns a pool holding only the CA's root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// PEM returns the root in PEM form (a ca= or --tls-ca-file bundle).
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Issue returns a server certificate for hosts (IP literals become IP
// SANs), signed by the CA, valid from one hour ago for 24 hours; its chain
// is leaf then root.
func (ca *CA) Issue(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	return ca.IssueValid(t, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), hosts...)
}

// IssueValid is Issue with an explicit validity period (expired
// certificates for tests).
func (ca *CA) IssueValid(t testing.TB, notBefore, notAfter time.Time, hosts ...string) tls.Certificate {
	t.Helper()
	key := newECKey(t)
	cn := "mailfwd test server"
	if len(hosts) > 0 {
		cn = hosts[0]
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	addHosts(tmpl, hosts)
	der, leaf := newCert(t, tmpl, ca.Cert, &key.PublicKey, ca.key)
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// StartTLSServer accepts TLS connections on 127.0.0.1 with cert, completes
// the handshake, writes "ok\n" and closes; it returns the address. The
// listener is closed by t.Cleanup.
func StartTLSServer(t testing.TB, cert tls.Certificate) string {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err == nil {
			_, _ = tc.Write([]byte("ok\n"))
		}
	}).String()
}
