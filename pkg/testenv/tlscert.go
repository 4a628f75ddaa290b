package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// SelfSignedCert returns a self-signed ECDSA P-256 certificate valid from one
// hour ago until 24 hours from now. Each host becomes a SAN: IP literals as
// IP SANs, everything else as DNS names. Without hosts it covers "localhost"
// and "127.0.0.1".
func SelfSignedCert(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	key := newECKey(t)
	tmpl := rootTemplate(hosts[0], x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	addHosts(tmpl, hosts)
	der, leaf := newCert(t, tmpl, nil, &key.PublicKey, key)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TLSConfig returns a server TLS configuration carrying a fresh
// SelfSignedCert for "localhost" and "127.0.0.1".
func TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	return &tls.Config{
		Certificates: []tls.Certificate{SelfSignedCert(t)},
		MinVersion:   tls.VersionTLS12,
	}
}
