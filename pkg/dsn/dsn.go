// Package dsn builds delivery status notifications — bounces, delay
// warnings and success reports — as RFC 3464 multipart/report messages
// (RFC 6522, formerly RFC 3462), worded the way sendmail words them so that
// users and their filters recognise them.
//
// A report has three parts: a human-readable text/plain explanation, the
// machine-readable message/delivery-status (message/global-delivery-status
// per RFC 6533 when a recipient address is not ASCII), and the header block
// of the original message as text/rfc822-headers. The original body is never
// returned.
//
// Everything that ends up in a header field or a delivery-status field is
// stripped of CR, LF and other control characters, so a hostile address or
// SMTP reply cannot inject header fields.
package dsn

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Action is the RFC 3464 §2.3.3 Action field value for one recipient.
type Action string

// Actions defined by RFC 3464 §2.3.3.
const (
	Failed    Action = "failed"
	Delayed   Action = "delayed"
	Delivered Action = "delivered"
	Relayed   Action = "relayed"
	Expanded  Action = "expanded"
)

func (a Action) valid() bool {
	switch a {
	case Failed, Delayed, Delivered, Relayed, Expanded:
		return true
	}
	return false
}

// Recipient is one per-recipient block of the report.
type Recipient struct {
	Final          string    // final recipient address, verbatim
	Original       string    // original recipient (ORCPT) if known, optional
	Action         Action    // what happened to this recipient
	Status         string    // RFC 3463 status code, e.g. "5.1.1"
	RemoteMTA      string    // host name of the remote MTA, optional
	Diagnostic     string    // SMTP reply text, e.g. "550 5.1.1 User unknown", optional
	LastAttempt    time.Time // optional
	WillRetryUntil time.Time // only rendered for Delayed, optional
}

// Report describes one notification about one queued message.
type Report struct {
	ReportingMTA string      // our host name, e.g. "relay.example.com"
	QueueID      string      // queue id of the original message
	Sender       string      // original envelope sender, the recipient of the DSN
	Arrival      time.Time   // when the original message was received; optional
	Recipients   []Recipient // at least one
	Reason       string      // human summary, e.g. "Cannot send message for 5 days"
	Original     []byte      // the original message; only its header block is returned
	ClientHelo   string      // optional, for Received-From-MTA and the text part
	ClientAddr   string      // optional, IP address of the client that sent the original
}

const (
	maxAddrLen  = 900 // longer addresses are refused (RFC 5321 allows 256)
	maxTextLen  = 900 // diagnostic and reason text is cut to this many bytes
	maxTokenLen = 255 // host names, HELO, queue id
	foldAt      = 78
)

var statusRE = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

// ValidStatus reports whether s is an RFC 3463 status code: class 2, 4 or
// 5, subject and detail of 1-3 digits ("5.1.1"; not "5.1234.1").
func ValidStatus(s string) bool { return statusRE.MatchString(s) }

// Returnable reports whether a DSN may be sent for a message from sender:
// false for the null sender ("" or "<>") and for MAILER-DAEMON senders
// (local part "mailer-daemon", any case), so that notifications never loop.
func Returnable(sender string) bool {
	s := strings.TrimSpace(sender)
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	s = strings.TrimSpace(s)
	if s == "" {
		return false
	}
	// Drop an obsolete source route ("@a,@b:user@host").
	if strings.HasPrefix(s, "@") {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			s = s[i+1:]
		}
	}
	local := s
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		local = s[:i]
	}
	if len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"' {
		local = local[1 : len(local)-1]
	}
	if local == "" {
		return false
	}
	return !strings.EqualFold(local, "mailer-daemon")
}

// recipient is a Recipient after validation and sanitising.
type recipient struct {
	final, original        string
	action                 Action
	status                 string
	remoteMTA              string
	diagnostic             string // 7-bit or UTF-8 depending on the report
	textDiag               string // for the text part, valid UTF-8
	lastAttempt, retryTill time.Time
}

// Build returns a complete RFC 5322 message with CRLF line endings, ready to
// be queued for r.Sender. now is the time the report is made (Date header,
// Message-ID, subject duration).
func Build(r Report, now time.Time) ([]byte, error) {
	if now.IsZero() {
		now = time.Now()
	}
	host := strings.TrimSpace(r.ReportingMTA)
	if !validHost(host) {
		return nil, fmt.Errorf("dsn: invalid reporting MTA name %q", r.ReportingMTA)
	}
	sender, err := cleanAddr(r.Sender)
	if err != nil {
		return nil, fmt.Errorf("dsn: sender: %w", err)
	}
	if sender == "" {
		return nil, errors.New("dsn: empty sender: no notification can be sent to the null sender")
	}
	if len(r.Recipients) == 0 {
		return nil, errors.New("dsn: report has no recipients")
	}

	rcpts := make([]recipient, 0, len(r.Recipients))
	global := false
	for i, in := range r.Recipients {
		rc, err := cleanRecipient(in)
		if err != nil {
			return nil, fmt.Errorf("dsn: recipient %d: %w", i, err)
		}
		if !isASCII(rc.final) || !isASCII(rc.original) {
			global = true
		}
		rcpts = append(rcpts, rc)
	}
	if !global { // keep message/delivery-status 7-bit
		for i := range rcpts {
			rcpts[i].diagnostic = asciiOnly(rcpts[i].diagnostic)
		}
	}

	b := &builder{
		r:        r,
		now:      now,
		host:     host,
		sender:   sender,
		rcpts:    rcpts,
		global:   global,
		queueID:  cleanToken(r.QueueID),
		helo:     cleanToken(r.ClientHelo),
		clientIP: cleanIP(r.ClientAddr),
		reason:   strings.ToValidUTF8(cleanText(r.Reason), "?"),
	}
	return b.build()
}

type builder struct {
	r        Report
	now      time.Time
	host     string
	sender   string
	rcpts    []recipient
	global   bool
	queueID  string
	helo     string
	clientIP string
	reason   string
}

func (b *builder) anyAction(a Action) bool {
	for _, rc := range b.rcpts {
		if rc.action == a {
			return true
		}
	}
	return false
}

func (b *builder) subject() string {
	switch {
	case b.anyAction(Failed):
		return "Returned mail: see transcript for details"
	case b.anyAction(Delayed):
		if b.r.Arrival.IsZero() {
			return "Warning: could not send message"
		}
		return "Warning: could not send message for past " + hoursSince(b.r.Arrival, b.now)
	default:
		return "Successful Mail Delivery Report"
	}
}

func (b *builder) build() ([]byte, error) {
	text := b.textPart()
	status := b.statusPart()
	headers := headerBlock(b.r.Original)

	boundary := ""
	for range 10 {
		c := "mailfwd-dsn-" + rand.Text()
		d := []byte("--" + c)
		if !bytes.Contains(text, d) && !bytes.Contains(status, d) && !bytes.Contains(headers, d) {
			boundary = c
			break
		}
	}
	if boundary == "" {
		return nil, errors.New("dsn: could not choose a MIME boundary not present in the content")
	}

	eight := !isASCIIBytes(text) || !isASCIIBytes(status) || !isASCIIBytes(headers)
	cte := func(body []byte) string {
		if isASCIIBytes(body) {
			return "7bit"
		}
		return "8bit"
	}

	var m bytes.Buffer
	hdr := func(name, value string) { m.WriteString(name + ": " + value + "\r\n") }
	hdr("From", "Mail Delivery Subsystem <MAILER-DAEMON@"+b.host+">")
	hdr("To", "<"+b.sender+">")
	hdr("Subject", b.subject())
	hdr("Date", b.now.Format(time.RFC1123Z))
	hdr("Message-ID", b.messageID())
	hdr("Auto-Submitted", "auto-replied")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", "multipart/report; report-type=delivery-status;\r\n\tboundary=\""+boundary+"\"")
	if eight {
		hdr("Content-Transfer-Encoding", "8bit")
	} else {
		hdr("Content-Transfer-Encoding", "7bit")
	}
	m.WriteString("\r\nThis is a MIME-encapsulated message.\r\n")

	part := func(ctype, desc string, body []byte) {
		m.WriteString("\r\n--" + boundary + "\r\n")
		hdr("Content-Type", ctype)
		hdr("Content-Description", desc)
		hdr("Content-Transfer-Encoding", cte(body))
		m.WriteString("\r\n")
		m.Write(body)
	}
	part("text/plain; charset=utf-8", "Notification", text)
	if b.global {
		part("message/global-delivery-status", "Delivery report", status)
	} else {
		part("message/delivery-status", "Delivery report", status)
	}
	part("text/rfc822-headers", "Undelivered Message Headers", headers)
	m.WriteString("\r\n--" + boundary + "--\r\n")
	return m.Bytes(), nil
}

func (b *builder) messageID() string {
	left := fmt.Sprintf("dsn.%d", b.now.UnixNano())
	if q := atomText(b.queueID); q != "" {
		left = q + "." + left
	}
	return "<" + left + "@" + b.host + ">"
}

// textPart is the sendmail-style human explanation.
func (b *builder) textPart() []byte {
	var t strings.Builder
	line := func(s string) { t.WriteString(s + "\r\n") }

	failed := b.anyAction(Failed)
	delayed := b.anyAction(Delayed)
	if delayed && !failed {
		line("    **********************************************")
		line("    **      THIS IS A WARNING MESSAGE ONLY      **")
		line("    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **")
		line("    **********************************************")
		line("")
	}
	if !b.r.Arrival.IsZero() {
		line("The original message was received at " + b.r.Arrival.Format(time.RFC1123Z))
		if from := b.clientText(); from != "" {
			line("from " + from)
		}
		line("")
	}

	section := func(title string, match func(Action) bool) {
		first := true
		for _, rc := range b.rcpts {
			if !match(rc.action) {
				continue
			}
			if first {
				line("   ----- " + title + " -----")
				first = false
			}
			line("<" + rc.final + ">")
			if rc.original != "" && rc.original != rc.final {
				line("    (expanded from: <" + rc.original + ">)")
			}
			line("    (reason: " + b.reasonFor(rc) + ")")
		}
		if !first {
			line("")
		}
	}
	section("The following addresses had permanent fatal errors", func(a Action) bool { return a == Failed })
	section("The following addresses had transient non-fatal errors", func(a Action) bool { return a == Delayed })
	section("The following addresses had successful delivery notifications", func(a Action) bool {
		return a == Delivered || a == Relayed || a == Expanded
	})

	if failed || delayed {
		line("   ----- Transcript of session follows -----")
		ownText := false
		for _, rc := range b.rcpts {
			if rc.action != Failed && rc.action != Delayed {
				continue
			}
			if rc.remoteMTA != "" && rc.textDiag != "" {
				line("... while talking to " + rc.remoteMTA + ":")
				line("<<< " + rc.textDiag)
			}
			what := rc.textDiag
			switch {
			case what != "":
				ownText = true
			case b.reason != "":
				what = b.reason
			default:
				what = "status " + rc.status
			}
			if rc.action == Delayed {
				what = "Deferred: " + what
			}
			line("<" + rc.final + ">... " + what)
		}
		// The report-level summary, e.g. "Cannot send message for 5 days",
		// unless every line above already said it.
		if ownText && b.reason != "" {
			line(b.reason)
		}
		if delayed && !b.r.Arrival.IsZero() {
			line("Warning: message still undelivered after " + hoursSince(b.r.Arrival, b.now))
			if until := b.retryUntil(); !until.IsZero() {
				line("Will keep trying until message is " + age(until.Sub(b.r.Arrival)) + " old")
			}
		}
	}
	return []byte(strings.ToValidUTF8(t.String(), "?"))
}

func (b *builder) reasonFor(rc recipient) string {
	switch {
	case rc.textDiag != "":
		return rc.textDiag
	case b.reason != "":
		return b.reason
	}
	switch rc.action {
	case Delivered:
		return "delivered, status " + rc.status
	case Relayed:
		return "relayed to non-DSN-aware mailer, status " + rc.status
	case Expanded:
		return "expanded to multiple recipients, status " + rc.status
	}
	return "status " + rc.status
}

func (b *builder) retryUntil() time.Time {
	var until time.Time
	for _, rc := range b.rcpts {
		if rc.action == Delayed && rc.retryTill.After(until) {
			until = rc.retryTill
		}
	}
	return until
}

// clientText is "helo [ip]" as far as known.
func (b *builder) clientText() string {
	switch {
	case b.helo != "" && b.clientIP != "":
		return b.helo + " [" + b.clientIP + "]"
	case b.helo != "":
		return b.helo
	case b.clientIP != "":
		return "[" + b.clientIP + "]"
	}
	return ""
}

// statusPart renders the message/delivery-status body (RFC 3464 §2).
func (b *builder) statusPart() []byte {
	var s strings.Builder
	field := func(name, value string) { s.WriteString(name + ": " + value + "\r\n") }

	field("Reporting-MTA", "dns; "+b.host)
	switch {
	case b.helo != "" && b.clientIP != "":
		field("Received-From-MTA", "dns; "+b.helo+" (["+b.clientIP+"])")
	case b.helo != "":
		field("Received-From-MTA", "dns; "+b.helo)
	case b.clientIP != "":
		field("Received-From-MTA", "dns; ["+b.clientIP+"]")
	}
	if !b.r.Arrival.IsZero() {
		field("Arrival-Date", b.r.Arrival.Format(time.RFC1123Z))
	}
	if b.queueID != "" {
		field("X-Mailfwd-Queue-ID", b.queueID)
	}
	for _, rc := range b.rcpts {
		s.WriteString("\r\n")
		if rc.original != "" {
			field("Original-Recipient", addrType(rc.original)+rc.original)
		}
		field("Final-Recipient", addrType(rc.final)+rc.final)
		field("Action", string(rc.action))
		field("Status", rc.status)
		if rc.remoteMTA != "" {
			field("Remote-MTA", "dns; "+rc.remoteMTA)
		}
		if rc.diagnostic != "" {
			typ := "X-Mailfwd; "
			if smtpReply(rc.diagnostic) {
				typ = "smtp; "
			}
			s.WriteString(fold("Diagnostic-Code: "+typ+rc.diagnostic) + "\r\n")
		}
		if !rc.lastAttempt.IsZero() {
			field("Last-Attempt-Date", rc.lastAttempt.Format(time.RFC1123Z))
		}
		if rc.action == Delayed && !rc.retryTill.IsZero() {
			field("Will-Retry-Until", rc.retryTill.Format(time.RFC1123Z))
		}
	}
	return []byte(s.String())
}

// addrType is the RFC 3464 address-type prefix: "rfc822; " for ASCII
// addresses, "utf-8; " (RFC 6533) otherwise.
func addrType(addr string) string {
	if isASCII(addr) {
		return "rfc822; "
	}
	return "utf-8; "
}

func smtpReply(s string) bool {
	return len(s) >= 3 && s[0] >= '2' && s[0] <= '5' &&
		s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9' &&
		(len(s) == 3 || s[3] == ' ' || s[3] == '-')
}

func cleanRecipient(in Recipient) (recipient, error) {
	var rc recipient
	var err error
	if rc.final, err = cleanAddr(in.Final); err != nil {
		return rc, fmt.Errorf("final recipient: %w", err)
	}
	if rc.final == "" {
		return rc, errors.New("empty final recipient")
	}
	orig := strings.TrimSpace(in.Original)
	// Accept an ORCPT value still carrying its address type.
	if len(orig) >= 7 && strings.EqualFold(orig[:7], "rfc822;") {
		orig = orig[7:]
	} else if len(orig) >= 6 && strings.EqualFold(orig[:6], "utf-8;") {
		orig = orig[6:]
	}
	if rc.original, err = cleanAddr(orig); err != nil {
		return rc, fmt.Errorf("original recipient: %w", err)
	}
	if !in.Action.valid() {
		return rc, fmt.Errorf("invalid action %q", in.Action)
	}
	rc.action = in.Action
	if !statusRE.MatchString(in.Status) {
		return rc, fmt.Errorf("invalid status %q (want class.subject.detail, e.g. 5.1.1)", in.Status)
	}
	rc.status = in.Status
	rc.remoteMTA = cleanToken(in.RemoteMTA)
	rc.textDiag = strings.ToValidUTF8(cleanText(in.Diagnostic), "?")
	rc.diagnostic = rc.textDiag
	rc.lastAttempt = in.LastAttempt
	rc.retryTill = in.WillRetryUntil
	return rc, nil
}

// cleanAddr removes control characters (CR and LF above all), surrounding
// space and angle brackets, and replaces invalid UTF-8. The result may be "".
func cleanAddr(s string) (string, error) {
	s = strings.TrimSpace(stripControls(s))
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	s = strings.ToValidUTF8(s, "?")
	if len(s) > maxAddrLen {
		return "", fmt.Errorf("address longer than %d bytes", maxAddrLen)
	}
	return s, nil
}

// stripControls deletes C0 control characters and DEL.
func stripControls(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// cleanText turns multi-line text into one line: control characters become
// spaces, runs of white space collapse, and the result is cut to maxTextLen.
func cleanText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	return truncate(s, maxTextLen)
}

// cleanToken keeps printable ASCII without spaces or parentheses, for host
// names, HELO arguments and queue ids; anything else becomes '?'.
func cleanToken(s string) string {
	s = strings.TrimSpace(stripControls(s))
	var t strings.Builder
	for _, r := range s {
		if r > 0x20 && r < 0x7f && r != '(' && r != ')' {
			t.WriteRune(r)
		} else {
			t.WriteByte('?')
		}
	}
	return truncate(t.String(), maxTokenLen)
}

func cleanIP(s string) string {
	s = strings.TrimSpace(s)
	if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	return cleanToken(s)
}

// validHost accepts host names and address literals ("[192.0.2.1]",
// "[IPv6:2001:db8::1]") for use after '@' and in "dns;" fields.
func validHost(h string) bool {
	if h == "" || len(h) > maxTokenLen {
		return false
	}
	literal := false
	if len(h) > 2 && h[0] == '[' && h[len(h)-1] == ']' {
		h, literal = h[1:len(h)-1], true
	}
	for _, c := range []byte(h) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '_' || literal && c == ':'
		if !ok {
			return false
		}
	}
	return true
}

// atomText keeps the characters of a queue id that are safe in a msg-id.
func atomText(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return -1
	}, s)
}

func asciiOnly(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= utf8.RuneSelf {
			return '?'
		}
		return r
	}, s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// fold breaks a Diagnostic-Code line at spaces so lines stay near foldAt
// columns, never before the text after "; " starts. Unfolding (RFC 5322
// §2.2.3) restores the line because cleanText leaves single spaces only.
func fold(line string) string {
	if len(line) <= foldAt {
		return line
	}
	start := strings.Index(line, "; ") + 2 // earliest index a break may be at
	var out strings.Builder
	for len(line) > foldAt {
		i := strings.LastIndexByte(line[:foldAt], ' ')
		if i < start {
			j := strings.IndexByte(line[start:], ' ')
			if j < 0 {
				break
			}
			i = start + j
		}
		out.WriteString(line[:i] + "\r\n")
		line = line[i:] // the space becomes the continuation's leading WSP
		start = 1
	}
	out.WriteString(line)
	return out.String()
}

// headerBlock returns the header section of msg, up to (not including) the
// first empty line, with every line ending normalised to CRLF.
func headerBlock(msg []byte) []byte {
	var out bytes.Buffer
	for len(msg) > 0 {
		i := bytes.IndexAny(msg, "\r\n")
		var ln []byte
		if i < 0 {
			ln, msg = msg, nil
		} else {
			ln = msg[:i]
			if msg[i] == '\r' && i+1 < len(msg) && msg[i+1] == '\n' {
				msg = msg[i+2:]
			} else {
				msg = msg[i+1:]
			}
		}
		if len(ln) == 0 {
			break
		}
		out.Write(ln)
		out.WriteString("\r\n")
	}
	return out.Bytes()
}

// hoursSince renders the time since t rounded to whole hours, at least one.
func hoursSince(t, now time.Time) string {
	h := int64(math.Round(now.Sub(t).Hours()))
	if h < 1 {
		h = 1
	}
	return plural(h, "hour")
}

// age renders d as days when it is a whole number of days, else hours.
func age(d time.Duration) string {
	h := int64(math.Round(d.Hours()))
	if h < 1 {
		h = 1
	}
	if h%24 == 0 {
		return plural(h/24, "day")
	}
	return plural(h, "hour")
}

func plural(n int64, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func isASCIIBytes(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
