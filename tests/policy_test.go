package tests

import (
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// The MMS gateway's access map from the operators' notes (issue 3), with the
// MNC/MCC placeholders as they wrote them.
const mmsAccess = `Connect:localhost              RELAY
Connect:127.0.0.1              RELAY
Connect:our-mmsc.intra.example.com RELAY
To:example.com                 RELAY
To:mms.mnc001.mccXXX.gprs      RELAY
To:mms.mnc002.mccXXX.gprs      REJECT
From:mms.mnc003.mccXXX.gprs    OK
From:mm4gw1.example.com        OK
`

const mmsMailertable = `.mccxxx.gprs      smtp:[127.0.0.2]:{PORT}
example.com       smtp:[127.0.0.3]:{PORT}
.                 smtp:[127.0.0.4]:{PORT}
`

// rcptCode sends one envelope up to RCPT TO and returns the RCPT reply code.
func rcptCode(t *testing.T, addr, localIP, from, rcpt string) (int, string) {
	t.Helper()
	c := dialSession(t, addr, localIP)
	defer c.Close()
	return c.rcpt(t, from, rcpt)
}

type session struct {
	*textproto.Conn
}

func dialSession(t *testing.T, addr, localIP string) *session {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetDeadline(time.Now().Add(60 * time.Second))
	c := &session{textproto.NewConn(nc)}
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if err := c.PrintfLine("EHLO client.test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadResponse(250); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

// rcpt runs RSET, MAIL FROM, RCPT TO and returns the RCPT reply.
func (c *session) rcpt(t *testing.T, from, rcpt string) (int, string) {
	t.Helper()
	for _, cmd := range []string{"RSET", "MAIL FROM:<" + from + ">"} {
		if err := c.PrintfLine("%s", cmd); err != nil {
			t.Fatal(err)
		}
		if code, msg, err := c.ReadResponse(250); err != nil {
			t.Fatalf("%s: %d %s %v", cmd, code, msg, err)
		}
	}
	if err := c.PrintfLine("RCPT TO:<%s>", rcpt); err != nil {
		t.Fatal(err)
	}
	code, msg, _ := c.ReadResponse(0)
	return code, msg
}

func TestMMSGatewayPolicy(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", policy: map[string]string{"access": mmsAccess, "mailertable": mmsMailertable}})
	const (
		ourMMSC  = "127.0.0.1"
		mmscHost = "127.0.0.6" // PTR our-mmsc.intra.example.com, forward-confirmed
		stranger = "127.0.0.5" // a partner operator's MM4 gateway, no Connect: entry
		plmn     = "+4512345678/TYPE=PLMN@mms.mnc001.mccxxx.gprs"
	)
	type tc struct {
		name, client, from, rcpt string
		code                     int
		text                     string
	}
	check := func(cases []tc) {
		t.Helper()
		for _, c := range cases {
			code, msg := rcptCode(t, e.smtp, c.client, c.from, c.rcpt)
			if code != c.code || !strings.Contains(msg, c.text) {
				t.Errorf("%s: client %s from <%s> to <%s>: got %d %q, want %d %q", c.name, c.client, c.from, c.rcpt, code, msg, c.code, c.text)
			}
		}
	}
	check([]tc{
		{"own MMSC relays to partners", ourMMSC, "a@mms.mnc001.mccxxx.gprs", "+4587654321/TYPE=PLMN@mms.mnc004.mccxxx.gprs", 250, ""},
		{"own MMSC relays anywhere", ourMMSC, "root@mm4gw1.example.com", "someone@other.example.org", 250, ""},
		{"operator that is down is refused even for the MMSC", ourMMSC, "a@mms.mnc001.mccxxx.gprs", "+4511111111/TYPE=PLMN@mms.mnc002.mccxxx.gprs", 550, "Access denied"},
		{"MMSC by verified host name relays", mmscHost, "a@mms.mnc001.mccxxx.gprs", "x@other.example.org", 250, ""},
		{"partner to our MMS domain", stranger, "b@mms.mnc003.mccxxx.gprs", plmn, 250, ""},
		{"partner to company mail", stranger, "b@mms.mnc003.mccxxx.gprs", "user@example.com", 250, ""},
		{"stranger cannot relay elsewhere", stranger, "b@mms.mnc003.mccxxx.gprs", "x@other.example.org", 550, "Relaying denied"},
		{"stock semantics: From: OK never grants relay", stranger, "b@mms.mnc003.mccxxx.gprs", "y@other.example.org", 550, "5.7.1"},
		{"stock semantics: unlisted sender may send to a To: RELAY domain", stranger, "c@mms.mnc009.mccxxx.gprs", plmn, 250, ""},
	})

	// Mail accepted under this policy is delivered, address verbatim, by the mailertable.
	res := send(e.smtp, stranger, "b@mms.mnc003.mccxxx.gprs", []string{plmn}, message("mms", "mms@x", "MM4\r\n"), nil)
	if res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "MMS delivered by mailertable", 30*time.Second, func() bool { return e.sinks["127.0.0.2"].RecipientsDelivered()[plmn] == 1 })

	// The patched-sendmail whitelist, switched on while a session is open:
	// the same session sees the new decision (hot reload, no restart).
	s := dialSession(t, e.smtp, stranger)
	defer s.Close()
	if code, _ := s.rcpt(t, "c@mms.mnc009.mccxxx.gprs", plmn); code != 250 {
		t.Fatalf("before from_whitelist: %d", code)
	}
	e.writePolicy("settings", "from_whitelist = true\n")
	waitFor(t, "whitelist applied in the open session", 10*time.Second, func() bool {
		code, _ := s.rcpt(t, "c@mms.mnc009.mccxxx.gprs", plmn)
		return code == 550
	})
	check([]tc{
		{"whitelisted partner", stranger, "b@mms.mnc003.mccxxx.gprs", plmn, 250, ""},
		{"unlisted operator refused", stranger, "c@mms.mnc009.mccxxx.gprs", plmn, 550, "Relaying denied"},
		{"own MMSC unaffected", ourMMSC, "c@mms.mnc009.mccxxx.gprs", plmn, 250, ""},
	})

	// An invalid update is refused; the last good policy stays in force.
	e.writePolicy("access", mmsAccess+"To:broken.example RELAYY\n")
	waitFor(t, "invalid update refused in the logs", 10*time.Second, func() bool {
		return strings.Contains(e.logs.String(), "policy update refused") && strings.Contains(e.logs.String(), `unknown action`)
	})
	if code, _ := s.rcpt(t, "b@mms.mnc003.mccxxx.gprs", plmn); code != 250 {
		t.Errorf("after an invalid update the whitelisted partner got %d", code)
	}
	if code, _ := s.rcpt(t, "c@mms.mnc009.mccxxx.gprs", plmn); code != 550 {
		t.Errorf("after an invalid update the last good policy (whitelist on) is not in force: %d", code)
	}
	// Fixing it applies again, still in the same session.
	e.writePolicy("access", mmsAccess+"To:fixed.example RELAY\n")
	waitFor(t, "fixed policy applied", 10*time.Second, func() bool {
		code, _ := s.rcpt(t, "b@mms.mnc003.mccxxx.gprs", "u@fixed.example")
		return code == 250
	})
	// from_whitelist is still on: the new To: RELAY needs a whitelisted sender.
	if code, _ := s.rcpt(t, "c@mms.mnc009.mccxxx.gprs", "u@fixed.example"); code != 550 {
		t.Errorf("new To: RELAY entry granted relay to an unlisted sender: %d", code)
	}
}

func TestAliasesAndVirtusers(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", policy: map[string]string{
		"access":           "Connect:127.0.0.1 RELAY\n",
		"local-host-names": "alpha.test\n",
		"aliases":          "postmaster: ops@beta.test,\n  oncall@gamma.test\n",
		"virtusertable":    "info@beta.test  sales@gamma.test\n@virt.test  %1@beta.test\nold@virt.test  new@gamma.test.REDIRECT\n",
		"mailertable":      "beta.test smtp:[127.0.0.3]:{PORT}\ngamma.test smtp:[127.0.0.4]:{PORT}\n",
	}})
	if code, msg := rcptCode(t, e.smtp, "127.0.0.1", "s@origin.test", "nobody@alpha.test"); code != 550 || !strings.Contains(msg, "User unknown") {
		t.Errorf("unknown local user: %d %s", code, msg)
	}
	if code, msg := rcptCode(t, e.smtp, "127.0.0.1", "s@origin.test", "old@virt.test"); code != 551 || !strings.Contains(msg, "new@gamma.test") {
		t.Errorf("redirect: %d %s", code, msg)
	}
	body := message("alias", "alias@x", "expand me\r\n")
	res := send(e.smtp, "127.0.0.1", "s@origin.test", []string{"postmaster@alpha.test", "info@beta.test", "joe@virt.test"}, body, nil)
	if res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "expanded recipients delivered", 30*time.Second, func() bool {
		b, g := e.sinks["127.0.0.3"].RecipientsDelivered(), e.sinks["127.0.0.4"].RecipientsDelivered()
		return b["ops@beta.test"] == 1 && b["joe@beta.test"] == 1 && g["oncall@gamma.test"] == 1 && g["sales@gamma.test"] == 1
	})
	if n := e.sinks["127.0.0.3"].RecipientsDelivered()["info@beta.test"]; n != 0 {
		t.Errorf("virtusertable source address was delivered too")
	}
}
