package dnsquery

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func TestQuery(t *testing.T) {
	var zone strings.Builder
	// Enough TXT data to overflow a UDP answer: the client must retry over TCP.
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&zone, "big.example. TXT \"%s-%02d\"\n", strings.Repeat("x", 200), i)
	}
	zone.WriteString("_mta-sts.example.com. TXT \"v=STSv1; \" \"id=1;\"\nalias.example. CNAME _mta-sts.example.com.\n")
	srv := testenv.StartDNS(t, zone.String())
	c := &Client{Servers: []string{testenv.StartBlackholeDNS(t), srv.Addr}, Timeout: 300 * time.Millisecond}
	ctx := context.Background()

	txt, err := c.TXT(ctx, "_mta-sts.example.com")
	if err != nil || len(txt) != 1 || txt[0] != "v=STSv1; id=1;" {
		t.Fatalf("TXT: %q %v (strings of one record must be joined; a dead first server skipped)", txt, err)
	}
	if txt, err := c.TXT(ctx, "alias.example"); err != nil || len(txt) != 1 {
		t.Errorf("TXT through a CNAME: %q %v", txt, err)
	}
	big, err := c.TXT(ctx, "big.example")
	if err != nil || len(big) != 20 {
		t.Fatalf("truncated answer not retried over TCP: %d records, %v", len(big), err)
	}
	if txt, err := c.TXT(ctx, "none.example"); err != nil || len(txt) != 0 {
		t.Errorf("NXDOMAIN: %q %v", txt, err)
	}
	a, err := c.Query(ctx, "none.example", dns.TypeTXT)
	if err != nil || !a.NXDomain || a.Authenticated {
		t.Errorf("NXDOMAIN answer: %+v %v", a, err)
	}
	srv.SetAuthenticated(true)
	if a, err := c.Query(ctx, "_mta-sts.example.com", dns.TypeTXT); err != nil || !a.Authenticated {
		t.Errorf("AD not reported: %+v %v", a, err)
	}
	srv.SetServfail("_mta-sts.example.com", true)
	if _, err := c.TXT(ctx, "_mta-sts.example.com"); err == nil || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("SERVFAIL: %v", err)
	}
	if _, err := (&Client{}).Query(ctx, "x.example", dns.TypeTXT); err != ErrNoServers {
		t.Errorf("no servers: %v", err)
	}
}
