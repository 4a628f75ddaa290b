package dane

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func tlsa(t *testing.T, usage, selector, matching uint8, cert tls.Certificate, chainIndex int) string {
	t.Helper()
	leaf := cert.Leaf
	if chainIndex > 0 {
		var err error
		if leaf, err = x509Parse(cert.Certificate[chainIndex]); err != nil {
			t.Fatal(err)
		}
	}
	h, err := dns.CertificateToDANE(selector, matching, leaf)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d %d %d %s", usage, selector, matching, h)
}

// dial connects to addr with the DANE configuration of recs.
func dial(t *testing.T, recs *Records, addr string, names ...string) error {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, recs.Config(names...))
	if err := c.Handshake(); err != nil {
		return err
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("after handshake: %q %v", line, err)
	}
	return nil
}

func TestDANE(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "mx.example.com")
	self := testenv.SelfSignedCert(t, "whatever.invalid")
	other := ca.Issue(t, "mx.other.example")
	addrGood := testenv.StartTLSServer(t, good)
	addrSelf := testenv.StartTLSServer(t, self)
	addrOther := testenv.StartTLSServer(t, other)

	dnsSrv := testenv.StartDNS(t, "")
	dnsSrv.SetAuthenticated(true)
	q := &dnsquery.Client{Servers: []string{dnsSrv.Addr}, Timeout: 5 * time.Second}
	ctx := context.Background()
	lookup := func(rrs ...string) *Records {
		t.Helper()
		var zone strings.Builder
		for _, rr := range rrs {
			fmt.Fprintf(&zone, "_25._tcp.mx.example.com. IN TLSA %s\n", rr)
		}
		dnsSrv.Set(zone.String())
		recs, err := Lookup(ctx, q, "MX.example.com.", 25)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}

	cases := []struct {
		name    string
		rrs     []string
		addr    string
		wantErr bool
	}{
		// DANE-EE: the key or certificate itself; names and issuer ignored.
		{"EE spki sha256", []string{tlsa(t, 3, 1, 1, self, 0)}, addrSelf, false},
		{"EE cert sha512", []string{tlsa(t, 3, 0, 2, self, 0)}, addrSelf, false},
		{"EE cert exact", []string{tlsa(t, 3, 0, 0, self, 0)}, addrSelf, false},
		{"EE other key", []string{tlsa(t, 3, 1, 1, good, 0)}, addrSelf, true},
		{"EE one of two", []string{tlsa(t, 3, 1, 1, good, 0), tlsa(t, 3, 1, 1, self, 0)}, addrSelf, false},
		// DANE-TA: the CA in the chain; the leaf must chain to it and name
		// the MX host.
		{"TA cert sha256", []string{tlsa(t, 2, 0, 1, good, 1)}, addrGood, false},
		{"TA spki sha256", []string{tlsa(t, 2, 1, 1, good, 1)}, addrGood, false},
		{"TA wrong name", []string{tlsa(t, 2, 0, 1, other, 1)}, addrOther, true},
		{"TA other CA", []string{tlsa(t, 2, 0, 1, good, 1)}, addrSelf, true},
		// A TA record naming the leaf itself is not a trust anchor.
		{"TA is the leaf", []string{tlsa(t, 2, 0, 1, good, 0)}, addrGood, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recs := lookup(c.rrs...)
			if recs == nil || len(recs.Usable) != len(c.rrs) {
				t.Fatalf("records %+v", recs)
			}
			err := dial(t, recs, c.addr)
			if c.wantErr != (err != nil) {
				t.Fatalf("handshake error %v, want error %v", err, c.wantErr)
			}
		})
	}

	// The next-hop domain as an extra reference identifier (DANE-TA).
	recs := lookup(tlsa(t, 2, 0, 1, other, 1))
	if err := dial(t, recs, addrOther, "mx.other.example"); err != nil {
		t.Errorf("extra name: %v", err)
	}

	// PKIX usages are unusable for SMTP: TLS required, nothing authenticated.
	recs = lookup(tlsa(t, 1, 1, 1, self, 0), "3 1 1 00")
	if recs == nil || len(recs.All) != 2 || len(recs.Usable) != 0 {
		t.Fatalf("unusable: %+v", recs)
	}
	if err := dial(t, recs, addrSelf); err != nil {
		t.Errorf("no usable records must still allow (unauthenticated) TLS: %v", err)
	}

	// Without AD the records are not used at all.
	dnsSrv.SetAuthenticated(false)
	dnsSrv.Set("_25._tcp.mx.example.com. IN TLSA " + tlsa(t, 3, 1, 1, good, 0) + "\n")
	if recs, err := Lookup(ctx, q, "mx.example.com", 25); recs != nil || err != nil {
		t.Errorf("unauthenticated answer used: %+v %v", recs, err)
	}
	dnsSrv.SetAuthenticated(true)
	// No records: DANE does not apply.
	if recs, err := Lookup(ctx, q, "mx2.example.com", 25); recs != nil || err != nil {
		t.Errorf("no records: %+v %v", recs, err)
	}
	// A failed lookup is an error (the caller defers a secure MX).
	dnsSrv.SetServfail("_25._tcp.mx.example.com", true)
	if _, err := Lookup(ctx, q, "mx.example.com", 25); err == nil {
		t.Error("SERVFAIL: no error")
	}
}

func x509Parse(der []byte) (*x509.Certificate, error) { return x509.ParseCertificate(der) }
