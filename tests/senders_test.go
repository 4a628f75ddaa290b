package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/srs"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// sinkMessage waits for the message whose Message-ID is msgid at s.
func sinkMessage(t *testing.T, s *sink.Server, msgid string) sink.Received {
	t.Helper()
	var got sink.Received
	waitFor(t, "delivery of "+msgid, 30*time.Second, func() bool {
		for _, m := range s.Messages() {
			if strings.Contains(string(m.Data), "Message-ID: "+msgid) {
				got = m
				return true
			}
		}
		return false
	})
	return got
}

// headerField returns the first header field name: of data (unfolded).
func headerField(data, name string) string {
	head, _, _ := strings.Cut(data, "\r\n\r\n")
	for _, l := range strings.Split(head, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// A cron message from an internal host leaves as the masqueraded sender;
// genericstable rewrites envelope and header as each entry says, a PLMN
// address is left alone, and the DKIM signature (made after the rewrite)
// verifies for the masquerade domain.
func TestMasqueradeAndGenericstable(t *testing.T) {
	signer, err := dkim.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	key := dkim.Key{Domain: "example.com", Selector: "s1", Signer: signer}
	keyLine, _ := key.Line()
	zone, _ := key.ZoneLine()
	e := newEnv(t, envOptions{blob: "fs", zones: "\n" + zone + "\n", policy: map[string]string{
		"access":        "Connect:127.0.0.1 RELAY\n",
		"mailertable":   ".\tsmtp:[127.0.0.2]:{PORT}\n",
		"masquerade":    ".internal\texample.com\theaders\nexposed\tadmin\n",
		"genericstable": "root@server17.internal\tops@example.com\theaders\n@d1pr0004.app.internal\t%1@apps.example.com\n",
		"dkim":          keyLine + "\n",
	}})
	sk := e.sinks["127.0.0.2"]
	for _, c := range []struct {
		from, header, wantFrom, wantHeader string
	}{
		{"root@server17.internal", "Cron Daemon <root@server17.internal>", "ops@example.com", `"Cron Daemon" <ops@example.com>`},
		{"cron@server17.internal", "cron@server17.internal", "cron@example.com", "<cron@example.com>"},
		{"app@d1pr0004.app.internal", "app@d1pr0004.app.internal", "app@apps.example.com", "app@d1pr0004.app.internal"}, // envelope only
		{"admin@server17.internal", "admin@server17.internal", "admin@server17.internal", "admin@server17.internal"},    // exposed
		{"+4512345678/TYPE=PLMN@mms.internal", "+4512345678/TYPE=PLMN@mms.internal", "+4512345678/TYPE=PLMN@mms.internal", "+4512345678/TYPE=PLMN@mms.internal"},
	} {
		msgid := "<" + strings.NewReplacer("@", ".", "+", "", "/", ".", "=", ".").Replace(c.from) + "@test>"
		body := []byte("From: " + c.header + "\r\nTo: x@alpha.test\r\nSubject: cron\r\nMessage-ID: " + msgid + "\r\n\r\nOutput of cron.\r\n")
		if res := send(e.smtp, "", c.from, []string{"x@alpha.test"}, body, nil); res.Err != nil || len(res.RcptErrs) > 0 {
			t.Fatalf("submit from %s: %+v", c.from, res)
		}
		m := sinkMessage(t, sk, msgid)
		if m.From != c.wantFrom {
			t.Errorf("%s: envelope sender at the destination %q, want %q", c.from, m.From, c.wantFrom)
		}
		if got := headerField(string(m.Data), "From"); got != c.wantHeader {
			t.Errorf("%s: From: header %q, want %q", c.from, got, c.wantHeader)
		}
		if c.wantFrom == "ops@example.com" || c.wantFrom == "cron@example.com" {
			verifyDKIM(t, e, string(m.Data), "example.com")
		}
	}
	if !strings.Contains(e.logs.String(), "sender <cron@server17.internal> -> <cron@example.com> (masquerade:1:") {
		t.Errorf("the ingress log does not say why the sender changed:\n%s", e.logs.String())
	}
}

func verifyDKIM(t *testing.T, e *env, data, domain string) {
	t.Helper()
	c := &dnsquery.Client{Servers: []string{e.dns.Addr}, Timeout: 5 * time.Second}
	opts := &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.TXT(ctx, name)
	}}
	vs, err := msgdkim.VerifyWithOptions(strings.NewReader(data), opts)
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != domain {
		t.Errorf("DKIM verification: %+v %v\n%.800s", vs, err, data)
	}
}

// A forwarded alias carries an SRS sender that verifies with the secret;
// when the destination refuses the forwarded recipient, the DSN goes back
// to the original sender; a bounce from elsewhere to the SRS address comes
// back through the ingress to the original sender; a forged SRS address is
// refused.
func TestSRSForwarding(t *testing.T) {
	const secret = "0123456789abcdef-srs-secret"
	e := newEnv(t, envOptions{blob: "fs",
		onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
			if strings.HasPrefix(rcpt, "gone@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
			}
			return nil
		},
		policy: map[string]string{
			"access":           "Connect:127.0.0.1 RELAY\nTo:example.com RELAY\n",
			"local-host-names": "example.com\n",
			"aliases":          "spi0004: spi0004@alpha.test, david.spink@gamma.test\nold: gone@alpha.test\n",
			"mailertable":      "alpha.test\tsmtp:[127.0.0.2]:{PORT}\ngamma.test\tsmtp:[127.0.0.4]:{PORT}\nsender.example\tsmtp:[127.0.0.3]:{PORT}\n",
			"settings":         "srs_domain = fwd.mailfwd.test\n",
			"srs":              secret + "\n",
		}})
	rw, err := srs.New("fwd.mailfwd.test", []string{secret}, 0)
	if err != nil {
		t.Fatal(err)
	}
	body := message("forwarded", "fwd-1@sender.example", "Hello.\r\n")
	if res := send(e.smtp, "", "alice@sender.example", []string{"spi0004@example.com"}, body, nil); res.Err != nil || len(res.RcptErrs) > 0 {
		t.Fatalf("submit: %+v", res)
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.4"} {
		m := sinkMessage(t, e.sinks[ip], "<fwd-1@sender.example>")
		if !strings.HasPrefix(m.From, "SRS0=") || !strings.HasSuffix(m.From, "@fwd.mailfwd.test") {
			t.Fatalf("forwarded to %s with sender %q, want an SRS0 address", ip, m.From)
		}
		if orig, err := rw.Reverse(m.From); err != nil || orig != "alice@sender.example" {
			t.Fatalf("SRS sender %q reverses to %q, %v", m.From, orig, err)
		}
	}

	// The destination refuses the forwarded recipient: the DSN reaches
	// alice, not the SRS address.
	body = message("to a gone user", "fwd-2@sender.example", "Hello?\r\n")
	if res := send(e.smtp, "", "alice@sender.example", []string{"old@example.com"}, body, nil); res.Err != nil || len(res.RcptErrs) > 0 {
		t.Fatalf("submit: %+v", res)
	}
	waitFor(t, "the DSN at the original sender", 30*time.Second, func() bool {
		for _, m := range e.sinks["127.0.0.3"].Messages() {
			if m.From == "" && len(m.Recipients) == 1 && m.Recipients[0] == "alice@sender.example" && strings.Contains(string(m.Data), "<fwd-2@sender.example>") {
				return true
			}
		}
		return false
	})

	// A remote MX's bounce to the SRS address, from a client that may not
	// relay: the ingress reverses it and delivers it to alice.
	srsAddr, _ := rw.Forward("alice", "sender.example")
	stranger := "127.0.0.7"
	bounceMsg := message("Undelivered Mail", "remote-bounce@mx.elsewhere", "Your message could not be delivered.\r\n")
	if res := send(e.smtp, stranger, "", []string{srsAddr}, bounceMsg, nil); res.Err != nil || len(res.RcptErrs) > 0 {
		t.Fatalf("bounce to the SRS address: %+v", res)
	}
	m := sinkMessage(t, e.sinks["127.0.0.3"], "<remote-bounce@mx.elsewhere>")
	if len(m.Recipients) != 1 || m.Recipients[0] != "alice@sender.example" {
		t.Fatalf("the bounce reached %v", m.Recipients)
	}

	// Forged and expired SRS addresses are refused at RCPT.
	forged := strings.Replace(srsAddr, "alice", "mallory", 1)
	expiredRW, _ := srs.New("fwd.mailfwd.test", []string{secret}, 0)
	expiredRW.SetClock(func() time.Time { return time.Now().Add(-30 * 24 * time.Hour) })
	expired, _ := expiredRW.Forward("alice", "sender.example")
	for _, a := range []string{forged, expired, "SRS0=xxxx=AA=victim.example=bob@fwd.mailfwd.test"} {
		res := send(e.smtp, stranger, "", []string{a}, bounceMsg, nil)
		if re := res.RcptErrs[a]; re == nil || re.Code != 550 {
			t.Errorf("RCPT TO:<%s>: %+v, want 550", a, res)
		}
	}
}

// Two senders of one recipient domain leave through two relays, each with
// its own credentials from authinfo; a sender with no entry follows the
// mailertable.
func TestSenderRoutes(t *testing.T) {
	ca := testenv.NewCA(t)
	billing := &providerRelay{user: "billing-user", pass: "billing-pass"}
	marketing := &providerRelay{user: "mkt-user", pass: "mkt-pass"}
	bPort := billing.start(t, ca.Issue(t, "relay-b.test"))
	mPort := marketing.start(t, ca.Issue(t, "relay-m.test"))
	e := newEnv(t, envOptions{blob: "fs", policy: map[string]string{
		"access":       "Connect:127.0.0.1 RELAY\n",
		"mailertable":  "alpha.test\tsmtp:[127.0.0.2]:{PORT}\n",
		"senderroutes": fmt.Sprintf("@billing.example\tsmtp:[127.0.0.1]:%d\nnews@example.com\tsmtp:[127.0.0.1]:%d\n", bPort, mPort),
		"authinfo":     fmt.Sprintf("[127.0.0.1]:%d\tbilling-user:billing-pass\n[127.0.0.1]:%d\tmkt-user:mkt-pass\n", bPort, mPort),
		"tls_policy":   fmt.Sprintf("[127.0.0.1]:%d\tencrypt\n[127.0.0.1]:%d\tencrypt\n", bPort, mPort),
	}})
	for _, c := range []struct{ from, msgid string }{
		{"invoices@billing.example", "<sr-1@test>"},
		{"news@example.com", "<sr-2@test>"},
		{"other@example.com", "<sr-3@test>"},
	} {
		if res := send(e.smtp, "", c.from, []string{"x@alpha.test"}, message("s", strings.Trim(c.msgid, "<>"), "Hi.\r\n"), nil); res.Err != nil || len(res.RcptErrs) > 0 {
			t.Fatalf("submit: %+v", res)
		}
	}
	waitFor(t, "both relays and the mailertable route", 30*time.Second, func() bool {
		_, _, b := billing.got()
		_, _, m := marketing.got()
		return len(b) == 1 && len(m) == 1 && e.sinks["127.0.0.2"].Count() == 1
	})
	_, bm, bd := billing.got()
	_, mm, md := marketing.got()
	if bm[0] != "invoices@billing.example user=billing-user" || !strings.Contains(bd[0], "<sr-1@test>") {
		t.Errorf("billing relay got %v", bm)
	}
	if mm[0] != "news@example.com user=mkt-user" || !strings.Contains(md[0], "<sr-2@test>") {
		t.Errorf("marketing relay got %v", mm)
	}
	if !strings.Contains(string(e.sinks["127.0.0.2"].Messages()[0].Data), "<sr-3@test>") {
		t.Errorf("the sender without an entry did not follow the mailertable")
	}
	if !strings.Contains(e.logs.String(), "route=\"senderroutes:1:") {
		t.Errorf("the delivery log does not name the sender route:\n%s", e.logs.String())
	}
}
