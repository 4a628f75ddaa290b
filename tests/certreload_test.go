package tests

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// writeCertPair writes cert and key as new files renamed into place, as a
// Secret update or certbot does.
func writeCertPair(t *testing.T, certFile, keyFile string, cert tls.Certificate) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	for path, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: cert.Certificate[0]}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path+".new", pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
}

// The running ingress serves a replaced certificate on STARTTLS and on the
// implicit-TLS port from the next handshake on, without a restart (issue
// 21: a cert-manager renewal was not picked up until a rollout).
func TestIngressServesRenewedCertificate(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCertPair(t, certFile, keyFile, ca.Issue(t, "first.mailfwd.test"))
	var mu sync.Mutex
	listen := map[string]string{}
	e := newEnv(t, envOptions{blob: "fs", ingressSetup: func(in *daemon.Ingress) {
		in.TLSCert, in.TLSKey = certFile, keyFile
		in.SMTPSListen = "127.0.0.1:0"
		in.OnListen = func(kind, addr string) { mu.Lock(); listen[kind] = addr; mu.Unlock() }
	}})
	mu.Lock()
	smtps := listen["smtps"]
	mu.Unlock()

	starttls := func() string {
		t.Helper()
		c, err := smtp.DialStartTLS(e.smtp, &tls.Config{ServerName: "mx.mailfwd.test", InsecureSkipVerify: true}) // the test reads the certificate itself
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Noop(); err != nil { // a command over TLS: the handshake is done
			t.Fatal(err)
		}
		st, _ := c.TLSConnectionState()
		return st.PeerCertificates[0].Subject.CommonName
	}
	implicit := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", smtps, &tls.Config{InsecureSkipVerify: true}) // the test reads the certificate itself
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := starttls(); got != "first.mailfwd.test" {
		t.Fatalf("STARTTLS serves %s", got)
	}
	writeCertPair(t, certFile, keyFile, ca.Issue(t, "second.mailfwd.test"))
	if got := starttls(); got != "second.mailfwd.test" {
		t.Errorf("after replacing the files, STARTTLS serves %s, want second.mailfwd.test", got)
	}
	if got := implicit(); got != "second.mailfwd.test" {
		t.Errorf("after replacing the files, port 465 serves %s, want second.mailfwd.test", got)
	}
}
