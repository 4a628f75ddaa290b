package certreload

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// writePair writes cert as the files a Secret mount or certbot leaves:
// a new file renamed over the old one (key first, as cert-manager's
// atomic writer swaps both at once; here the rename order is the worst).
func writePair(t *testing.T, certFile, keyFile string, cert tls.Certificate) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	for path, block := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: cert.Certificate[0]},
		keyFile:  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
}

// served dials a TLS server and returns the certificate it presents.
func served(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // the test inspects the certificate itself
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// A replaced certificate is served at the next handshake without a restart
// (issue 21: a cert-manager renewal needed a rollout); a pair that does not
// load keeps the previous one in service.
func TestReloadOnChange(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	a, b := testenv.SelfSignedCert(t, "a.example.test"), testenv.SelfSignedCert(t, "b.example.test")
	writePair(t, certFile, keyFile, a)
	var logs bytes.Buffer
	c, err := Load(certFile, keyFile, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", c.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = conn.(*tls.Conn).Handshake(); conn.Close() }()
		}
	}()
	addr := ln.Addr().String()

	if got := served(t, addr); got.Subject.CommonName != "a.example.test" {
		t.Fatalf("first certificate: %s", got.Subject.CommonName)
	}
	writePair(t, certFile, keyFile, b)
	if got := served(t, addr); got.Subject.CommonName != "b.example.test" {
		t.Fatalf("after replacing the files: served %s, want b.example.test", got.Subject.CommonName)
	}
	if c.Reloads() != 1 || !bytes.Contains(logs.Bytes(), []byte("TLS certificate reloaded")) {
		t.Errorf("reloads %d, logs %s", c.Reloads(), logs.String())
	}

	// A new certificate with the old key: refused, b stays in service.
	keyOfB, _ := os.ReadFile(keyFile)
	writePair(t, certFile, keyFile, testenv.SelfSignedCert(t, "c.example.test"))
	if err := os.WriteFile(keyFile+".tmp", keyOfB, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(keyFile+".tmp", keyFile); err != nil {
		t.Fatal(err)
	}
	if got := served(t, addr); got.Subject.CommonName != "b.example.test" {
		t.Errorf("after a mismatched pair: served %s, want the previous b.example.test", got.Subject.CommonName)
	}
	if !bytes.Contains(logs.Bytes(), []byte("does not load")) {
		t.Errorf("the mismatched pair was not logged: %s", logs.String())
	}
	// Removed files (mid-update) keep the last good certificate too.
	os.Remove(certFile)
	if got := served(t, addr); got.Subject.CommonName != "b.example.test" {
		t.Errorf("with the certificate file gone: served %s", got.Subject.CommonName)
	}
	// The completed update is picked up.
	writePair(t, certFile, keyFile, a)
	if got := served(t, addr); got.Subject.CommonName != "a.example.test" {
		t.Errorf("after the update completed: served %s, want a.example.test", got.Subject.CommonName)
	}
	if _, err := Load(filepath.Join(dir, "none.crt"), keyFile, nil); err == nil {
		t.Errorf("Load of a missing file succeeded")
	}
}
