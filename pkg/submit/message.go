package submit

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"
)

// ReadMessage reads the message from r: at most limit bytes (more is an
// ExDataErr naming the limit, and nothing is sent), ending at EOF or, unless
// ignoreDots, at a line holding a single dot (sendmail's default).
func ReadMessage(r io.Reader, limit int64, ignoreDots bool) ([]byte, error) {
	lr := &io.LimitedReader{R: r, N: limit + 1}
	if ignoreDots {
		b, err := io.ReadAll(lr)
		if err != nil {
			return nil, fail(ExIOErr, "reading the message: %v", err)
		}
		if int64(len(b)) > limit {
			return nil, tooLarge(limit)
		}
		return b, nil
	}
	br := bufio.NewReader(lr)
	var out bytes.Buffer
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			out.Write(line)
			continue
		}
		if t := bytes.TrimRight(line, "\r\n"); string(t) == "." {
			return out.Bytes(), nil
		}
		out.Write(line)
		if int64(out.Len()) > limit {
			return nil, tooLarge(limit)
		}
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return nil, fail(ExIOErr, "reading the message: %v", err)
		}
	}
}

func tooLarge(limit int64) error {
	return fail(ExDataErr, "message larger than %d bytes (max-message-size, the ingress's --max-message-size); nothing was sent", limit)
}

// field is one raw header field: its name and all its bytes, continuation
// lines and line ending included.
type field struct {
	name string
	raw  []byte
}

// splitHeader cuts msg into header fields and the rest (the blank line and
// the body, or a first line that is no header field). A message that does
// not start with a header field has no header.
func splitHeader(msg []byte) (fields []field, rest []byte) {
	i := 0
	for i < len(msg) {
		end := bytes.IndexByte(msg[i:], '\n')
		line := msg[i:]
		if end >= 0 {
			line = msg[i : i+end+1]
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(fields) == 0 {
				return nil, msg
			}
			fields[len(fields)-1].raw = append(fields[len(fields)-1].raw, line...)
			i += len(line)
			continue
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t\r\n") {
			break
		}
		fields = append(fields, field{name: string(name), raw: append([]byte(nil), line...)})
		i += len(line)
	}
	return fields, msg[i:]
}

func (f field) value() string {
	_, v, _ := strings.Cut(string(f.raw), ":")
	// Unfold: continuation lines are one logical line.
	v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
	return strings.TrimSpace(v)
}

// Prepared is a message ready to submit.
type Prepared struct {
	Data       []byte   // the message as sent
	Recipients []string // envelope recipients
	Added      []string // the names of the header fields added
}

// PrepareOptions say how to complete a message.
type PrepareOptions struct {
	Extract       bool     // -t
	Args          []string // command-line recipients
	Sender        string   // envelope sender (From: when missing)
	FullName      string   // -F, for a missing From:
	QualifyDomain string   // for addresses without a domain
	Hostname      string   // right side of a generated Message-ID
	Now           time.Time
}

// Prepare finds the recipients and adds Date:, Message-ID: and From: when
// missing (as sendmail does for a local submission). Bcc: fields are removed.
// Every other byte is kept as it came, line endings included (the SMTP client
// only turns a bare LF into CRLF, as SMTP requires).
func Prepare(msg []byte, o PrepareOptions) (*Prepared, error) {
	fields, rest := splitHeader(msg)
	var argRcpts []string
	for _, a := range o.Args {
		l, err := parseAddressList(a, o.QualifyDomain)
		if err != nil {
			return nil, fail(ExUsage, "recipient %q: %v", a, err)
		}
		argRcpts = append(argRcpts, l...)
	}
	p := &Prepared{}
	have := map[string]bool{}
	var kept []field
	nl := "\n"
	for _, f := range fields {
		if bytes.HasSuffix(f.raw, []byte("\r\n")) {
			nl = "\r\n"
		}
		lname := strings.ToLower(f.name)
		have[lname] = true
		if o.Extract && (lname == "to" || lname == "cc" || lname == "bcc") {
			l, err := parseAddressList(f.value(), o.QualifyDomain)
			if err != nil {
				return nil, fail(ExDataErr, "%s: header: %v; nothing was sent", f.name, err)
			}
			p.Recipients = append(p.Recipients, l...)
		}
		if lname == "bcc" {
			continue
		}
		kept = append(kept, f)
	}
	if o.Extract {
		// sendmail -t: addresses on the command line are not sent to.
		p.Recipients = dedupe(p.Recipients, argRcpts)
	} else {
		p.Recipients = dedupe(argRcpts, nil)
	}
	if len(p.Recipients) == 0 {
		if o.Extract {
			return nil, fail(ExUsage, "no recipient addresses found in the To:, Cc: or Bcc: header; nothing was sent")
		}
		return nil, fail(ExUsage, "no recipients: give addresses on the command line, or -t to read them from the header")
	}
	var add bytes.Buffer
	if !have["from"] {
		a := mail.Address{Name: o.FullName, Address: qualify(o.Sender, o.QualifyDomain)}
		if o.Sender == "" {
			a.Address = "MAILER-DAEMON@" + o.QualifyDomain
		}
		fmt.Fprintf(&add, "From: %s%s", a.String(), nl)
		p.Added = append(p.Added, "From")
	}
	if !have["date"] {
		fmt.Fprintf(&add, "Date: %s%s", o.Now.Format(time.RFC1123Z), nl)
		p.Added = append(p.Added, "Date")
	}
	if !have["message-id"] {
		var r [8]byte
		_, _ = rand.Read(r[:])
		fmt.Fprintf(&add, "Message-ID: <%s.%s@%s>%s", o.Now.UTC().Format("20060102150405"), hex.EncodeToString(r[:]), o.Hostname, nl)
		p.Added = append(p.Added, "Message-ID")
	}
	var out bytes.Buffer
	out.Grow(len(msg) + add.Len() + 2)
	for _, f := range kept {
		out.Write(f.raw)
	}
	if len(kept) > 0 && !bytes.HasSuffix(kept[len(kept)-1].raw, []byte("\n")) {
		// The header ended the input without a line ending.
		out.WriteString(nl)
	}
	out.Write(add.Bytes())
	if len(fields) == 0 || len(rest) == 0 || (rest[0] != '\n' && !bytes.HasPrefix(rest, []byte("\r\n"))) {
		// No header (the whole input is body), no body, or a header that
		// runs into the text without a blank line (typed by hand: "Subject:
		// x" then the text): the blank line that separates them, as
		// sendmail adds it.
		out.WriteString(nl)
	}
	out.Write(rest)
	p.Data = out.Bytes()
	return p, nil
}

func dedupe(list, without []string) []string {
	seen := map[string]bool{}
	for _, w := range without {
		seen[strings.ToLower(w)] = true
	}
	var out []string
	for _, a := range list {
		if k := strings.ToLower(a); !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

// qualify appends @domain to an address without one (sendmail's $j).
func qualify(a, domain string) string {
	if a == "" || strings.Contains(a, "@") {
		return a
	}
	return a + "@" + domain
}

// passCharset lets encoded words in unknown charsets through: only the
// addresses matter here, never the display names.
var addrParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil }}}

// parseAddressList parses a header or argument address list; local names
// without a domain ("root", "Joe <root>") are qualified.
func parseAddressList(s, domain string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	if l, err := addrParser.ParseList(s); err == nil {
		return addrs(l), nil
	}
	var out []string
	for _, item := range splitList(s) {
		item = strings.TrimSpace(item)
		if name, after, ok := strings.Cut(item, ":"); ok && !strings.ContainsAny(name, "<\"@") {
			item = strings.TrimSpace(after) // group "name: a, b;" — its first member
		}
		item = strings.TrimSpace(strings.TrimSuffix(item, ";"))
		if item == "" {
			continue
		}
		a, err := addrParser.Parse(item)
		if err != nil && !strings.Contains(item, "@") {
			if lt := strings.LastIndexByte(item, '>'); lt > 0 {
				a, err = addrParser.Parse(item[:lt] + "@" + domain + item[lt:])
			} else {
				a, err = addrParser.Parse(item + "@" + domain)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%q: %v", item, err)
		}
		out = append(out, envelopeForm(a))
	}
	return out, nil
}

func addrs(l []*mail.Address) []string {
	out := make([]string, 0, len(l))
	for _, a := range l {
		out = append(out, envelopeForm(a))
	}
	return out
}

// envelopeForm is an address as it goes in MAIL/RCPT: a local part that
// needs quotes keeps them ("john doe"@example.com), as net/mail's Address
// field drops them.
func envelopeForm(a *mail.Address) string {
	return strings.TrimSuffix(strings.TrimPrefix((&mail.Address{Address: a.Address}).String(), "<"), ">")
}

// splitList splits at commas outside quotes, comments and angle brackets.
func splitList(s string) []string {
	var out []string
	depth, angle, quoted, esc := 0, false, false, false
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case esc:
			esc = false
		case c == '\\':
			esc = true
		case quoted:
			quoted = c != '"'
		case c == '"':
			quoted = true
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == '<':
			angle = true
		case c == '>':
			angle = false
		case c == ',' && depth == 0 && !angle:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
