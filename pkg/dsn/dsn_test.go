package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

var (
	testNow     = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	testArrival = testNow.Add(-4*time.Hour - 10*time.Minute)
)

const testOriginal = "Received: from mx-client.example.org ([192.0.2.7])\r\n" +
	"\tby relay.example.com with ESMTP id Q123\r\n" +
	"From: Alice <alice@example.net>\r\n" +
	"To: bob@example.com\r\n" +
	"Subject: quarterly numbers\r\n" +
	"Message-ID: <orig-1@example.net>\r\n" +
	"\r\n" +
	"SECRET BODY LINE one\r\n" +
	"\r\n" +
	"SECRET BODY LINE two\r\n"

const testHeaderBlock = "Received: from mx-client.example.org ([192.0.2.7])\r\n" +
	"\tby relay.example.com with ESMTP id Q123\r\n" +
	"From: Alice <alice@example.net>\r\n" +
	"To: bob@example.com\r\n" +
	"Subject: quarterly numbers\r\n" +
	"Message-ID: <orig-1@example.net>\r\n"

func baseReport() Report {
	return Report{
		ReportingMTA: "relay.example.com",
		QueueID:      "Q123",
		Sender:       "alice@example.net",
		Arrival:      testArrival,
		Recipients: []Recipient{{
			Final:       "bob@example.com",
			Original:    "robert@example.com",
			Action:      Failed,
			Status:      "5.1.1",
			RemoteMTA:   "mx.example.com",
			Diagnostic:  "550 5.1.1 User unknown",
			LastAttempt: testNow.Add(-time.Minute),
		}},
		Reason:     "User unknown",
		Original:   []byte(testOriginal),
		ClientHelo: "mx-client.example.org",
		ClientAddr: "192.0.2.7",
	}
}

type part struct {
	header textproto.MIMEHeader
	ctype  string
	params map[string]string
	body   []byte
}

type parsed struct {
	msg   *mail.Message
	parts []part
}

// parseReport parses a DSN with the standard library only and checks the
// multipart/report framing; it returns an error instead of failing so the
// fuzz target can use it too.
func parseReport(raw []byte) (*parsed, error) {
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		return nil, errors.New("bare LF in message")
	}
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
		return nil, errors.New("bare CR in message")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		return nil, err
	}
	if mt != "multipart/report" || params["report-type"] != "delivery-status" || params["boundary"] == "" {
		return nil, errors.New("bad top-level content type: " + msg.Header.Get("Content-Type"))
	}
	p := &parsed{msg: msg}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for range 10 {
		mp, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(mp)
		if err != nil {
			return nil, err
		}
		ct, cp, err := mime.ParseMediaType(mp.Header.Get("Content-Type"))
		if err != nil {
			return nil, err
		}
		p.parts = append(p.parts, part{header: mp.Header, ctype: ct, params: cp, body: body})
	}
	if len(p.parts) != 3 {
		return nil, errors.New("report does not have exactly 3 parts")
	}
	return p, nil
}

// parseStatus splits a delivery-status body into the per-message block and
// the per-recipient blocks (RFC 3464 §2.1).
func parseStatus(t testing.TB, body []byte) (textproto.MIMEHeader, []textproto.MIMEHeader) {
	t.Helper()
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
	var blocks []textproto.MIMEHeader
	for range 100 {
		h, err := r.ReadMIMEHeader()
		if len(h) > 0 {
			blocks = append(blocks, h)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("delivery-status block %d: %v\n%s", len(blocks), err, body)
		}
	}
	if len(blocks) < 2 {
		t.Fatalf("delivery-status has %d blocks, want per-message + per-recipient:\n%s", len(blocks), body)
	}
	return blocks[0], blocks[1:]
}

func mustBuild(t *testing.T, r Report) (*parsed, []byte) {
	t.Helper()
	raw, err := Build(r, testNow)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	p, err := parseReport(raw)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, raw)
	}
	for i, ln := range strings.Split(string(raw), "\r\n") {
		if len(ln) > 998 {
			t.Errorf("line %d is %d bytes long", i, len(ln))
		}
	}
	return p, raw
}

func wantField(t *testing.T, h textproto.MIMEHeader, name, want string) {
	t.Helper()
	if got := h.Values(name); len(got) != 1 || got[0] != want {
		t.Errorf("%s = %q, want [%q]", name, got, want)
	}
}

func TestBuildFailed(t *testing.T) {
	p, raw := mustBuild(t, baseReport())
	h := p.msg.Header

	from, err := mail.ParseAddress(h.Get("From"))
	if err != nil {
		t.Fatalf("From: %v", err)
	}
	if from.Name != "Mail Delivery Subsystem" || from.Address != "MAILER-DAEMON@relay.example.com" {
		t.Errorf("From = %+v", from)
	}
	to, err := mail.ParseAddress(h.Get("To"))
	if err != nil || to.Address != "alice@example.net" {
		t.Errorf("To = %q (%v)", h.Get("To"), err)
	}
	if got := h.Get("Subject"); got != "Returned mail: see transcript for details" {
		t.Errorf("Subject = %q", got)
	}
	if got := h.Get("Auto-Submitted"); got != "auto-replied" {
		t.Errorf("Auto-Submitted = %q", got)
	}
	if got := h.Get("MIME-Version"); got != "1.0" {
		t.Errorf("MIME-Version = %q", got)
	}
	if d, err := h.Date(); err != nil || !d.Equal(testNow) {
		t.Errorf("Date = %q (%v)", h.Get("Date"), err)
	}
	wantID := "<Q123.dsn." + itoa(testNow.UnixNano()) + "@relay.example.com>"
	if got := h.Get("Message-ID"); got != wantID {
		t.Errorf("Message-ID = %q, want %q", got, wantID)
	}
	if got := h.Get("Content-Transfer-Encoding"); got != "7bit" {
		t.Errorf("Content-Transfer-Encoding = %q", got)
	}
	for i, b := range raw {
		if b >= 0x80 {
			t.Fatalf("ASCII-only report has 8-bit byte at %d", i)
		}
	}

	wantTypes := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}
	for i, w := range wantTypes {
		if p.parts[i].ctype != w {
			t.Errorf("part %d type %q, want %q", i, p.parts[i].ctype, w)
		}
	}
	if cs := p.parts[0].params["charset"]; cs != "utf-8" {
		t.Errorf("text charset %q", cs)
	}

	text := string(p.parts[0].body)
	for _, want := range []string{
		"The original message was received at " + testArrival.Format(time.RFC1123Z) + "\r\nfrom mx-client.example.org [192.0.2.7]\r\n",
		"   ----- The following addresses had permanent fatal errors -----\r\n<bob@example.com>\r\n",
		"    (reason: 550 5.1.1 User unknown)\r\n",
		"    (expanded from: <robert@example.com>)\r\n",
		"   ----- Transcript of session follows -----\r\n",
		"... while talking to mx.example.com:\r\n<<< 550 5.1.1 User unknown\r\n",
		"<bob@example.com>... 550 5.1.1 User unknown\r\nUser unknown\r\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text part lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "WARNING MESSAGE ONLY") {
		t.Error("failure report carries the warning banner")
	}

	msgFields, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, msgFields, "Reporting-MTA", "dns; relay.example.com")
	wantField(t, msgFields, "Received-From-MTA", "dns; mx-client.example.org ([192.0.2.7])")
	wantField(t, msgFields, "X-Mailfwd-Queue-ID", "Q123")
	if d, err := mail.ParseDate(msgFields.Get("Arrival-Date")); err != nil || !d.Equal(testArrival) {
		t.Errorf("Arrival-Date = %q (%v)", msgFields.Get("Arrival-Date"), err)
	}
	if len(rcpts) != 1 {
		t.Fatalf("%d recipient blocks, want 1", len(rcpts))
	}
	rc := rcpts[0]
	wantField(t, rc, "Original-Recipient", "rfc822; robert@example.com")
	wantField(t, rc, "Final-Recipient", "rfc822; bob@example.com")
	wantField(t, rc, "Action", "failed")
	wantField(t, rc, "Status", "5.1.1")
	wantField(t, rc, "Remote-MTA", "dns; mx.example.com")
	wantField(t, rc, "Diagnostic-Code", "smtp; 550 5.1.1 User unknown")
	if d, err := mail.ParseDate(rc.Get("Last-Attempt-Date")); err != nil || !d.Equal(testNow.Add(-time.Minute)) {
		t.Errorf("Last-Attempt-Date = %q (%v)", rc.Get("Last-Attempt-Date"), err)
	}
	if rc.Get("Will-Retry-Until") != "" {
		t.Error("failed recipient has Will-Retry-Until")
	}

	if got := string(p.parts[2].body); got != testHeaderBlock {
		t.Errorf("rfc822-headers part:\n%q\nwant\n%q", got, testHeaderBlock)
	}
	if bytes.Contains(raw, []byte("SECRET BODY")) {
		t.Error("report contains the original body")
	}
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func TestBuildDelayed(t *testing.T) {
	r := baseReport()
	r.Reason = "Connection timed out with mx.example.com."
	r.Recipients = []Recipient{{
		Final:          "bob@example.com",
		Action:         Delayed,
		Status:         "4.4.1",
		RemoteMTA:      "mx.example.com",
		LastAttempt:    testNow.Add(-5 * time.Minute),
		WillRetryUntil: testArrival.Add(5 * 24 * time.Hour),
	}}
	p, _ := mustBuild(t, r)
	if got := p.msg.Header.Get("Subject"); got != "Warning: could not send message for past 4 hours" {
		t.Errorf("Subject = %q", got)
	}
	text := string(p.parts[0].body)
	for _, want := range []string{
		"**      THIS IS A WARNING MESSAGE ONLY      **",
		"   ----- The following addresses had transient non-fatal errors -----\r\n<bob@example.com>\r\n",
		"    (reason: Connection timed out with mx.example.com.)\r\n",
		"   ----- Transcript of session follows -----\r\n",
		"<bob@example.com>... Deferred: Connection timed out with mx.example.com.\r\n",
		"Warning: message still undelivered after 4 hours\r\nWill keep trying until message is 5 days old\r\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text part lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "permanent fatal errors") {
		t.Error("delay warning lists permanent errors")
	}
	_, rcpts := parseStatus(t, p.parts[1].body)
	if len(rcpts) != 1 {
		t.Fatalf("%d recipient blocks", len(rcpts))
	}
	wantField(t, rcpts[0], "Action", "delayed")
	wantField(t, rcpts[0], "Status", "4.4.1")
	if rcpts[0].Get("Original-Recipient") != "" || rcpts[0].Get("Diagnostic-Code") != "" {
		t.Errorf("unset optional fields rendered: %v", rcpts[0])
	}
	if d, err := mail.ParseDate(rcpts[0].Get("Will-Retry-Until")); err != nil || !d.Equal(testArrival.Add(120*time.Hour)) {
		t.Errorf("Will-Retry-Until = %q (%v)", rcpts[0].Get("Will-Retry-Until"), err)
	}
}

func TestSubject(t *testing.T) {
	rcpt := func(a Action, status string) Recipient {
		return Recipient{Final: "x@example.com", Action: a, Status: status}
	}
	tests := []struct {
		name    string
		arrival time.Time
		rcpts   []Recipient
		want    string
	}{
		{"failed", testArrival, []Recipient{rcpt(Failed, "5.1.1")}, "Returned mail: see transcript for details"},
		{"expired", testNow.Add(-120 * time.Hour), []Recipient{rcpt(Failed, "4.4.7")}, "Returned mail: see transcript for details"},
		{"failed and delayed", testArrival, []Recipient{rcpt(Delayed, "4.4.1"), rcpt(Failed, "5.1.1")}, "Returned mail: see transcript for details"},
		{"delayed 4h", testNow.Add(-4 * time.Hour), []Recipient{rcpt(Delayed, "4.4.1")}, "Warning: could not send message for past 4 hours"},
		{"delayed rounds up", testNow.Add(-90 * time.Minute), []Recipient{rcpt(Delayed, "4.4.1")}, "Warning: could not send message for past 2 hours"},
		{"delayed under an hour", testNow.Add(-10 * time.Minute), []Recipient{rcpt(Delayed, "4.4.1")}, "Warning: could not send message for past 1 hour"},
		{"delayed 2 days", testNow.Add(-48 * time.Hour), []Recipient{rcpt(Delayed, "4.4.1")}, "Warning: could not send message for past 48 hours"},
		{"delayed no arrival", time.Time{}, []Recipient{rcpt(Delayed, "4.4.1")}, "Warning: could not send message"},
		{"success", testArrival, []Recipient{rcpt(Delivered, "2.0.0"), rcpt(Relayed, "2.0.0")}, "Successful Mail Delivery Report"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := baseReport()
			r.Arrival = tc.arrival
			r.Recipients = tc.rcpts
			p, _ := mustBuild(t, r)
			if got := p.msg.Header.Get("Subject"); got != tc.want {
				t.Errorf("Subject = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMultipleRecipients(t *testing.T) {
	r := baseReport()
	r.Reason = ""
	r.Recipients = []Recipient{
		{Final: "gone@example.com", Action: Failed, Status: "5.1.1", RemoteMTA: "mx.example.com", Diagnostic: "550 5.1.1 User unknown"},
		{Final: "slow@example.org", Action: Delayed, Status: "4.4.1", Diagnostic: "451 4.3.0 Try again later", WillRetryUntil: testArrival.Add(120 * time.Hour)},
	}
	p, _ := mustBuild(t, r)
	if got := p.msg.Header.Get("Subject"); got != "Returned mail: see transcript for details" {
		t.Errorf("Subject = %q", got)
	}
	text := string(p.parts[0].body)
	for _, want := range []string{
		"permanent fatal errors -----\r\n<gone@example.com>\r\n    (reason: 550 5.1.1 User unknown)\r\n",
		"transient non-fatal errors -----\r\n<slow@example.org>\r\n    (reason: 451 4.3.0 Try again later)\r\n",
		"<gone@example.com>... 550 5.1.1 User unknown\r\n",
		"<slow@example.org>... Deferred: 451 4.3.0 Try again later\r\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text part lacks %q:\n%s", want, text)
		}
	}
	_, rcpts := parseStatus(t, p.parts[1].body)
	if len(rcpts) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(rcpts))
	}
	wantField(t, rcpts[0], "Final-Recipient", "rfc822; gone@example.com")
	wantField(t, rcpts[0], "Action", "failed")
	wantField(t, rcpts[0], "Diagnostic-Code", "smtp; 550 5.1.1 User unknown")
	wantField(t, rcpts[1], "Final-Recipient", "rfc822; slow@example.org")
	wantField(t, rcpts[1], "Action", "delayed")
	wantField(t, rcpts[1], "Status", "4.4.1")
	wantField(t, rcpts[1], "Diagnostic-Code", "smtp; 451 4.3.0 Try again later")
	if rcpts[1].Get("Will-Retry-Until") == "" {
		t.Error("delayed recipient lacks Will-Retry-Until")
	}
}

func TestMMSAddress(t *testing.T) {
	const mms = "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs"
	r := baseReport()
	r.Recipients = []Recipient{{Final: mms, Original: mms, Action: Failed, Status: "5.1.1", Diagnostic: "550 5.1.1 unknown subscriber"}}
	p, _ := mustBuild(t, r)
	_, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, rcpts[0], "Final-Recipient", "rfc822; "+mms)
	wantField(t, rcpts[0], "Original-Recipient", "rfc822; "+mms)
	if p.parts[1].ctype != "message/delivery-status" {
		t.Errorf("ASCII MMS address gave %s", p.parts[1].ctype)
	}
	text := string(p.parts[0].body)
	if !strings.Contains(text, "<"+mms+">\r\n    (reason: 550 5.1.1 unknown subscriber)") {
		t.Errorf("text part lacks MMS address:\n%s", text)
	}
	if strings.Contains(text, "expanded from") {
		t.Error("identical ORCPT shown as expansion")
	}
}

func TestInjectionNeutralised(t *testing.T) {
	r := baseReport()
	r.Sender = "alice@example.net\r\nBcc: spy@evil.example"
	r.QueueID = "Q1\r\nX-Evil: 1"
	r.ClientHelo = "helo\r\nX-Evil: 2 (x)"
	r.Reason = "bad\r\n\r\nAction: delivered"
	r.Recipients = []Recipient{{
		Final:      "victim@example.com\r\nBcc: attacker@evil.example",
		Original:   "orig@example.com\nFinal-Recipient: rfc822; fake@evil.example",
		Action:     Failed,
		Status:     "5.1.1",
		RemoteMTA:  "mx.example.com\r\nX-Evil: 3",
		Diagnostic: "550 no\r\n\r\nFinal-Recipient: rfc822; fake@evil.example\r\nAction: delivered",
	}}
	p, raw := mustBuild(t, r)
	for k := range p.msg.Header {
		if k == "Bcc" || k == "X-Evil" {
			t.Errorf("injected header %s: %q", k, p.msg.Header[k])
		}
	}
	if got := p.msg.Header.Get("To"); got != "<alice@example.netBcc: spy@evil.example>" {
		t.Errorf("To = %q", got)
	}
	msgFields, rcpts := parseStatus(t, p.parts[1].body)
	if len(rcpts) != 1 {
		t.Fatalf("%d recipient blocks, want 1:\n%s", len(rcpts), p.parts[1].body)
	}
	for k := range msgFields {
		if k == "X-Evil" {
			t.Errorf("injected per-message field %s", k)
		}
	}
	wantField(t, msgFields, "X-Mailfwd-Queue-ID", "Q1X-Evil:?1")
	wantField(t, rcpts[0], "Final-Recipient", "rfc822; victim@example.comBcc: attacker@evil.example")
	wantField(t, rcpts[0], "Original-Recipient", "rfc822; orig@example.comFinal-Recipient: rfc822; fake@evil.example")
	wantField(t, rcpts[0], "Action", "failed")
	wantField(t, rcpts[0], "Remote-MTA", "dns; mx.example.comX-Evil:?3")
	wantField(t, rcpts[0], "Diagnostic-Code", "smtp; 550 no Final-Recipient: rfc822; fake@evil.example Action: delivered")
	if _, ok := rcpts[0]["X-Evil"]; ok {
		t.Error("injected per-recipient field")
	}
	if bytes.Contains(raw, []byte("\r\nBcc:")) || bytes.Contains(raw, []byte("\r\nX-Evil")) {
		t.Error("injected line start found in output")
	}
}

func TestUTF8Address(t *testing.T) {
	r := baseReport()
	r.Recipients = []Recipient{
		{Final: "jøran@blåbærsyltetøy.example", Action: Failed, Status: "5.1.1", Diagnostic: "550 5.1.1 ukjent bruker"},
		{Final: "ascii@example.com", Action: Failed, Status: "5.1.1"},
	}
	p, _ := mustBuild(t, r)
	if p.parts[1].ctype != "message/global-delivery-status" {
		t.Errorf("status part type %q, want message/global-delivery-status", p.parts[1].ctype)
	}
	if got := p.parts[1].header.Get("Content-Transfer-Encoding"); got != "8bit" {
		t.Errorf("status part CTE %q", got)
	}
	if got := p.msg.Header.Get("Content-Transfer-Encoding"); got != "8bit" {
		t.Errorf("top-level CTE %q", got)
	}
	_, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, rcpts[0], "Final-Recipient", "utf-8; jøran@blåbærsyltetøy.example")
	wantField(t, rcpts[1], "Final-Recipient", "rfc822; ascii@example.com")
	if !strings.Contains(string(p.parts[0].body), "<jøran@blåbærsyltetøy.example>") {
		t.Error("text part lacks UTF-8 address")
	}
}

func TestASCIIReportStays7Bit(t *testing.T) {
	r := baseReport()
	r.Recipients[0].Diagnostic = "550 5.1.1 Benutzer unbekannt: Müller"
	p, _ := mustBuild(t, r)
	if p.parts[1].ctype != "message/delivery-status" {
		t.Errorf("status part type %q", p.parts[1].ctype)
	}
	for _, b := range p.parts[1].body {
		if b >= 0x80 {
			t.Fatalf("message/delivery-status has 8-bit content:\n%s", p.parts[1].body)
		}
	}
	_, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, rcpts[0], "Diagnostic-Code", "smtp; 550 5.1.1 Benutzer unbekannt: M?ller")
	// The human-readable part keeps the text as sent.
	if !strings.Contains(string(p.parts[0].body), "(reason: 550 5.1.1 Benutzer unbekannt: Müller)") {
		t.Errorf("text part:\n%s", p.parts[0].body)
	}
	if got := p.parts[0].header.Get("Content-Transfer-Encoding"); got != "8bit" {
		t.Errorf("text part CTE %q", got)
	}
}

func TestOriginalHeaders(t *testing.T) {
	tests := []struct {
		name     string
		original string
		want     string
		cte      string
	}{
		{"CRLF", testOriginal, testHeaderBlock, "7bit"},
		{"LF only", "Subject: hi\nX-Long: a\n b\n\nbody\n", "Subject: hi\r\nX-Long: a\r\n b\r\n", "7bit"},
		{"mixed endings", "A: 1\r\nB: 2\nC: 3\r\n\nbody\r\n", "A: 1\r\nB: 2\r\nC: 3\r\n", "7bit"},
		{"bare CR", "A: 1\rB: 2\r\n\r\nbody", "A: 1\r\nB: 2\r\n", "7bit"},
		{"no body", "Subject: only headers\r\n", "Subject: only headers\r\n", "7bit"},
		{"no final newline", "Subject: x", "Subject: x\r\n", "7bit"},
		{"empty", "", "", "7bit"},
		{"body only", "\r\nbody text\r\n", "", "7bit"},
		{"8-bit headers", "Subject: Grüße\r\nFrom: jøran@example.org\r\n\r\nHallo\r\n", "Subject: Grüße\r\nFrom: jøran@example.org\r\n", "8bit"},
		{"boundary-like", "X-A: --mailfwd-dsn-AAAA\r\n--foo\r\n\r\n--bar\r\n", "X-A: --mailfwd-dsn-AAAA\r\n--foo\r\n", "7bit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := baseReport()
			r.Original = []byte(tc.original)
			p, raw := mustBuild(t, r)
			if got := string(p.parts[2].body); got != tc.want {
				t.Errorf("headers part %q, want %q", got, tc.want)
			}
			if p.parts[2].ctype != "text/rfc822-headers" {
				t.Errorf("part 3 type %q", p.parts[2].ctype)
			}
			if got := p.parts[2].header.Get("Content-Transfer-Encoding"); got != tc.cte {
				t.Errorf("part 3 CTE %q, want %q", got, tc.cte)
			}
			if bytes.Contains(raw, []byte("body")) || bytes.Contains(raw, []byte("Hallo")) {
				t.Error("original body leaked into the report")
			}
		})
	}
}

func TestLongDiagnosticFolded(t *testing.T) {
	diag := "550-5.7.1 " + strings.Repeat("this mail server does not like your message at all ", 12) + "end"
	r := baseReport()
	r.Recipients[0].Diagnostic = diag
	p, _ := mustBuild(t, r)
	for _, ln := range strings.Split(string(p.parts[1].body), "\r\n") {
		if len(ln) > foldAt {
			t.Errorf("delivery-status line of %d bytes: %q", len(ln), ln)
		}
	}
	_, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, rcpts[0], "Diagnostic-Code", "smtp; "+strings.TrimSpace(diag))
}

func TestNonSMTPDiagnostic(t *testing.T) {
	r := baseReport()
	r.Recipients[0].Diagnostic = "connection refused"
	p, _ := mustBuild(t, r)
	_, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, rcpts[0], "Diagnostic-Code", "X-Mailfwd; connection refused")
}

func TestReceivedFromMTA(t *testing.T) {
	tests := []struct{ helo, addr, want, text string }{
		{"client.example", "192.0.2.1", "dns; client.example ([192.0.2.1])", "from client.example [192.0.2.1]\r\n"},
		{"client.example", "", "dns; client.example", "from client.example\r\n"},
		{"", "[2001:db8::1]:2525", "dns; [2001:db8::1]", "from [2001:db8::1]\r\n"},
		{"", "", "", ""},
	}
	for _, tc := range tests {
		r := baseReport()
		r.ClientHelo, r.ClientAddr = tc.helo, tc.addr
		p, _ := mustBuild(t, r)
		msgFields, _ := parseStatus(t, p.parts[1].body)
		if got := msgFields.Get("Received-From-MTA"); got != tc.want {
			t.Errorf("helo %q addr %q: Received-From-MTA %q, want %q", tc.helo, tc.addr, got, tc.want)
		}
		text := string(p.parts[0].body)
		if tc.text != "" && !strings.Contains(text, tc.text) {
			t.Errorf("text lacks %q:\n%s", tc.text, text)
		}
		if tc.text == "" && strings.Contains(text, "\r\nfrom ") {
			t.Errorf("text has a from line without client data:\n%s", text)
		}
	}
}

func TestMessageIDWithoutQueueID(t *testing.T) {
	r := baseReport()
	r.QueueID = ""
	p, _ := mustBuild(t, r)
	want := "<dsn." + itoa(testNow.UnixNano()) + "@relay.example.com>"
	if got := p.msg.Header.Get("Message-ID"); got != want {
		t.Errorf("Message-ID %q, want %q", got, want)
	}
	msgFields, _ := parseStatus(t, p.parts[1].body)
	if _, ok := msgFields["X-Mailfwd-Queue-Id"]; ok {
		t.Error("empty queue id rendered")
	}
}

func TestReturnable(t *testing.T) {
	tests := []struct {
		sender string
		want   bool
	}{
		{"", false},
		{"<>", false},
		{"  ", false},
		{"MAILER-DAEMON@example.com", false},
		{"mailer-daemon@example.com", false},
		{"Mailer-Daemon", false},
		{"<MAILER-DAEMON@relay.example.com>", false},
		{`"mailer-daemon"@example.com`, false},
		{"@relay.example:MAILER-DAEMON@example.com", false},
		{"alice@example.com", true},
		{"<alice@example.com>", true},
		{"mailer-daemon-fan@example.com", true},
		{"postmaster@example.com", true},
		{"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs", true},
		{"jøran@example.org", true},
	}
	for _, tc := range tests {
		if got := Returnable(tc.sender); got != tc.want {
			t.Errorf("Returnable(%q) = %v, want %v", tc.sender, got, tc.want)
		}
	}
}

func TestBuildValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Report)
	}{
		{"empty sender", func(r *Report) { r.Sender = "" }},
		{"null sender", func(r *Report) { r.Sender = "<>" }},
		{"control-only sender", func(r *Report) { r.Sender = "\r\n" }},
		{"no recipients", func(r *Report) { r.Recipients = nil }},
		{"empty final", func(r *Report) { r.Recipients[0].Final = " " }},
		{"empty action", func(r *Report) { r.Recipients[0].Action = "" }},
		{"unknown action", func(r *Report) { r.Recipients[0].Action = "bounced" }},
		{"uppercase action", func(r *Report) { r.Recipients[0].Action = "FAILED" }},
		{"empty status", func(r *Report) { r.Recipients[0].Status = "" }},
		{"short status", func(r *Report) { r.Recipients[0].Status = "5.1" }},
		{"bad class", func(r *Report) { r.Recipients[0].Status = "6.1.1" }},
		{"long subject", func(r *Report) { r.Recipients[0].Status = "5.1234.1" }},
		{"trailing space", func(r *Report) { r.Recipients[0].Status = "5.1.1 " }},
		{"smtp code", func(r *Report) { r.Recipients[0].Status = "550" }},
		{"injected status", func(r *Report) { r.Recipients[0].Status = "5.1.1\r\nX: y" }},
		{"empty reporting MTA", func(r *Report) { r.ReportingMTA = "" }},
		{"reporting MTA with space", func(r *Report) { r.ReportingMTA = "relay example" }},
		{"reporting MTA with CRLF", func(r *Report) { r.ReportingMTA = "relay\r\nBcc: x@y" }},
		{"huge final", func(r *Report) { r.Recipients[0].Final = strings.Repeat("a", 2000) + "@example.com" }},
		{"huge original", func(r *Report) { r.Recipients[0].Original = strings.Repeat("a", 2000) + "@example.com" }},
		{"huge sender", func(r *Report) { r.Sender = strings.Repeat("a", 2000) + "@example.com" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := baseReport()
			tc.mutate(&r)
			if out, err := Build(r, testNow); err == nil {
				t.Errorf("Build succeeded:\n%s", out)
			}
		})
	}

	// The error names the recipient at fault.
	r := baseReport()
	r.Recipients = append(r.Recipients, Recipient{Final: "x@example.com", Action: Failed, Status: "5.1"})
	if _, err := Build(r, testNow); err == nil || !strings.Contains(err.Error(), "recipient 1") {
		t.Errorf("error %v does not name recipient 1", err)
	}
}

func TestValidStatusAndActions(t *testing.T) {
	for _, st := range []string{"2.0.0", "4.4.7", "5.7.1", "5.123.999", "4.0.10"} {
		for _, a := range []Action{Failed, Delayed, Delivered, Relayed, Expanded} {
			r := baseReport()
			r.Recipients[0].Status, r.Recipients[0].Action = st, a
			p, _ := mustBuild(t, r)
			_, rcpts := parseStatus(t, p.parts[1].body)
			wantField(t, rcpts[0], "Status", st)
			wantField(t, rcpts[0], "Action", string(a))
		}
	}
}

func FuzzBuild(f *testing.F) {
	f.Add("alice@example.net", "bob@example.com", "5.1.1", "550 5.1.1 User unknown", "Q1", "helo.example", []byte(testOriginal), uint8(0))
	f.Add("<a@b>", "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs", "4.4.7", "", "", "", []byte("Subject: x\n\nbody"), uint8(1))
	f.Add("s@x", "jøran@example.org\r\nBcc: y", "4.4.1", "451\r\n4.3.0 later", "q\r\n", "(h)", []byte("\xff\xfe: \r\r\n--x"), uint8(2))
	f.Add("\x00", "a\x7f@b", "2.0.0", "\xc3", "\x80", "\r", []byte{}, uint8(3))
	actions := []Action{Failed, Delayed, Delivered, Relayed, Expanded, "bogus"}
	f.Fuzz(func(t *testing.T, sender, rcpt, status, diag, qid, helo string, original []byte, act uint8) {
		r := Report{
			ReportingMTA: "relay.example.com",
			QueueID:      qid,
			Sender:       sender,
			Arrival:      testArrival,
			Recipients: []Recipient{
				{Final: rcpt, Original: diag, Action: actions[int(act)%len(actions)], Status: status, RemoteMTA: helo, Diagnostic: diag, WillRetryUntil: testNow},
				{Final: sender, Action: Delayed, Status: "4.4.1", Diagnostic: qid},
			},
			Reason:     diag,
			Original:   original,
			ClientHelo: helo,
			ClientAddr: qid,
		}
		raw, err := Build(r, testNow)
		if err != nil {
			return
		}
		p, err := parseReport(raw)
		if err != nil {
			t.Fatalf("unparseable report: %v\n%q", err, raw)
		}
		_, rcpts := parseStatus(t, p.parts[1].body)
		if len(rcpts) != 2 {
			t.Fatalf("%d recipient blocks, want 2:\n%q", len(rcpts), p.parts[1].body)
		}
		if want := headerBlock(original); !bytes.Equal(p.parts[2].body, want) {
			t.Fatalf("headers part %q, want %q", p.parts[2].body, want)
		}
		for k := range p.msg.Header {
			switch k {
			case "From", "To", "Subject", "Date", "Message-Id", "Auto-Submitted", "Mime-Version", "Content-Type", "Content-Transfer-Encoding":
			default:
				t.Fatalf("unexpected top-level header %q", k)
			}
		}
	})
}

func TestExpired(t *testing.T) {
	r := baseReport()
	r.Arrival = testNow.Add(-120 * time.Hour)
	r.Reason = "Cannot send message for 5 days"
	r.Recipients = []Recipient{
		{Final: "a@example.com", Original: "rfc822;orig-a@example.com", Action: Failed, Status: "4.4.7", RemoteMTA: "mx.example.com", Diagnostic: "421 4.7.0 Try again later"},
		{Final: "b@example.com", Action: Failed, Status: "4.4.7"},
	}
	p, _ := mustBuild(t, r)
	text := string(p.parts[0].body)
	for _, want := range []string{
		"<a@example.com>... 421 4.7.0 Try again later\r\n",
		"<b@example.com>... Cannot send message for 5 days\r\n",
		"\r\nCannot send message for 5 days\r\n",
		"<b@example.com>\r\n    (reason: Cannot send message for 5 days)\r\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text part lacks %q:\n%s", want, text)
		}
	}
	_, rcpts := parseStatus(t, p.parts[1].body)
	wantField(t, rcpts[0], "Original-Recipient", "rfc822; orig-a@example.com")
	wantField(t, rcpts[0], "Status", "4.4.7")
	wantField(t, rcpts[1], "Action", "failed")
}
