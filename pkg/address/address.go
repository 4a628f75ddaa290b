// Package address parses and checks SMTP envelope addresses (RFC 5321
// mailboxes) without rewriting them: mailfwd passes envelope addresses on
// verbatim, so the only things derived here are the domain, its A-label form
// and the NATS subject token for it.
package address

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Limits from RFC 5321 §4.5.3.1.
const (
	MaxLocalPart = 64
	MaxDomain    = 255
	MaxPath      = 256
)

// Error describes why an address was refused. Enhanced is the RFC 3463 code.
type Error struct {
	Addr     string
	Enhanced string
	Reason   string
}

func (e *Error) Error() string { return fmt.Sprintf("<%s>: %s", e.Addr, e.Reason) }

// Address is a parsed mailbox. Raw is exactly what the client sent.
type Address struct {
	Raw    string
	Local  string
	Domain string // as sent (may be U-labels or an address literal)
	ASCII  string // domain in lower-case A-labels, or the literal as sent
	UTF8   bool   // the address contains non-ASCII characters
}

var profile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false), idna.StrictDomainName(true), idna.VerifyDNSLength(true))

// Parse checks a mailbox such as "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs".
// The empty string is not a mailbox (the null reverse-path is handled by the caller).
func Parse(raw string) (Address, error) {
	bad := func(code, reason string) (Address, error) {
		return Address{}, &Error{Addr: raw, Enhanced: code, Reason: reason}
	}
	if raw == "" {
		return bad("5.1.3", "empty address")
	}
	if len(raw) > MaxPath {
		return bad("5.1.3", "address too long")
	}
	if !utf8.ValidString(raw) {
		return bad("5.1.3", "address is not valid UTF-8")
	}
	at := strings.LastIndexByte(raw, '@')
	if at < 0 {
		return bad("5.1.3", "address has no domain (user@domain required)")
	}
	local, domain := raw[:at], raw[at+1:]
	a := Address{Raw: raw, Local: local, Domain: domain}
	if local == "" {
		return bad("5.1.3", "empty local part")
	}
	if len(local) > MaxLocalPart {
		return bad("5.1.3", "local part longer than 64 octets")
	}
	if err := checkLocal(local); err != nil {
		return bad("5.1.3", err.Error())
	}
	if domain == "" {
		return bad("5.1.2", "empty domain")
	}
	ascii, err := Domain(domain)
	if err != nil {
		return bad("5.1.2", err.Error())
	}
	a.ASCII = ascii
	for i := 0; i < len(raw); i++ {
		if raw[i] >= 0x80 {
			a.UTF8 = true
			break
		}
	}
	return a, nil
}

func checkLocal(local string) error {
	if strings.HasPrefix(local, `"`) {
		if len(local) < 2 || !strings.HasSuffix(local, `"`) {
			return errors.New("unterminated quoted local part")
		}
		in := local[1 : len(local)-1]
		for i := 0; i < len(in); i++ {
			c := in[i]
			switch {
			case c == '\\':
				i++
				if i >= len(in) {
					return errors.New("dangling backslash in quoted local part")
				}
			case c == '"':
				return errors.New("unescaped quote in local part")
			case c < 32 || c == 127:
				return errors.New("control character in local part")
			}
		}
		return nil
	}
	if strings.HasPrefix(local, ".") || strings.HasSuffix(local, ".") || strings.Contains(local, "..") {
		return errors.New("local part has a misplaced dot")
	}
	for _, r := range local {
		if r >= 0x80 {
			continue // SMTPUTF8; checked against the MAIL parameter by the caller
		}
		if !isAtext(byte(r)) && r != '.' {
			return fmt.Errorf("character %q not allowed in local part", r)
		}
	}
	return nil
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// Domain returns the lower-case A-label form of a domain, or the address
// literal unchanged ("[192.0.2.1]", "[IPv6:2001:db8::1]").
func Domain(d string) (string, error) {
	if strings.HasPrefix(d, "[") {
		if _, err := Literal(d); err != nil {
			return "", err
		}
		return d, nil
	}
	if len(d) > MaxDomain {
		return "", errors.New("domain too long")
	}
	if !utf8.ValidString(d) {
		return "", errors.New("domain is not valid UTF-8")
	}
	d = strings.TrimSuffix(d, ".")
	ascii, err := profile.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("invalid domain %q: %v", d, err)
	}
	ascii = strings.TrimSuffix(ascii, ".") // a mapped root dot, e.g. U+3002
	for _, label := range strings.Split(ascii, ".") {
		if label == "" || len(label) > 63 {
			// Empty labels would also make empty NATS subject tokens.
			return "", fmt.Errorf("invalid domain %q: empty or over-long label", d)
		}
	}
	if !strings.Contains(ascii, ".") && ascii != "localhost" {
		// A dotless name is almost always a typo on a relay; sendmail would
		// append its own domain, which mailfwd never does.
		return "", fmt.Errorf("domain %q is not fully qualified", d)
	}
	return strings.ToLower(ascii), nil
}

// Literal parses an address literal domain.
func Literal(d string) (netip.Addr, error) {
	if !strings.HasPrefix(d, "[") || !strings.HasSuffix(d, "]") {
		return netip.Addr{}, fmt.Errorf("invalid address literal %q", d)
	}
	in := d[1 : len(d)-1]
	v6 := false
	if len(in) > 5 && strings.EqualFold(in[:5], "IPv6:") {
		in, v6 = in[5:], true
	}
	ip, err := netip.ParseAddr(in)
	if err != nil || ip.Is6() != v6 || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("invalid address literal %q", d)
	}
	return ip, nil
}

// SubjectToken turns an A-label domain into NATS subject tokens with the
// labels reversed, so that "mail.ready.com.example.>" selects example.com's
// subdomains: "mail.ready.net.example" for "example.net". Address literals
// become "_lit.<hex of the address>".
func SubjectToken(ascii string) string {
	if strings.HasPrefix(ascii, "[") {
		ip, err := Literal(ascii)
		if err != nil {
			return "_lit.invalid"
		}
		return "_lit." + strings.NewReplacer(".", "-", ":", "-").Replace(ip.String())
	}
	labels := strings.Split(ascii, ".")
	for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
		labels[i], labels[j] = labels[j], labels[i]
	}
	return strings.Join(labels, ".")
}

// DomainFromToken reverses SubjectToken for domain names (not literals).
func DomainFromToken(tok string) string {
	labels := strings.Split(tok, ".")
	for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
		labels[i], labels[j] = labels[j], labels[i]
	}
	return strings.Join(labels, ".")
}
