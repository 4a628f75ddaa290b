package mxresolve

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// maxNameLen is the longest domain name in presentation form without the
// trailing dot (RFC 1035 §2.3.4: 255 octets on the wire).
const maxNameLen = 253

// normalizeDomain turns a mail domain (U-labels or A-labels, optionally with
// one trailing dot) into lower-case A-labels without the trailing dot. It
// rejects names that are not valid host names (RFC 5321 Domain: letters,
// digits and hyphens; labels of 1 to 63 octets).
func normalizeDomain(s string) (string, error) {
	name := strings.TrimSuffix(s, ".")
	if name == "" {
		return "", errors.New("empty domain name")
	}
	if !utf8.ValidString(name) {
		return "", fmt.Errorf("invalid domain name %q: not UTF-8", s)
	}
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil {
		return "", fmt.Errorf("invalid domain name %q: %w", s, err)
	}
	ascii = strings.ToLower(ascii)
	if len(ascii) > maxNameLen {
		return "", fmt.Errorf("invalid domain name %q: longer than %d octets", s, maxNameLen)
	}
	for label := range strings.SplitSeq(ascii, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("invalid domain name %q: %w", s, err)
		}
	}
	// A-labels must decode to valid U-labels (rejects e.g. "xn--zz").
	if again, err := idna.Lookup.ToASCII(ascii); err != nil || again != ascii {
		return "", fmt.Errorf("invalid domain name %q: A-labels do not round-trip", s)
	}
	return ascii, nil
}

func checkLabel(label string) error {
	if label == "" {
		return errors.New("empty label")
	}
	if len(label) > 63 {
		return fmt.Errorf("label %q longer than 63 octets", label)
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with a hyphen", label)
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Errorf("label %q has character %q", label, c)
		}
	}
	return nil
}

// parseAddressLiteral recognises an RFC 5321 address literal ("[192.0.2.1]",
// "[IPv6:2001:db8::1]") and returns the address and its canonical literal
// form. ok is false when s is not bracketed.
func parseAddressLiteral(s string) (addr netip.Addr, literal string, ok bool, err error) {
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") || len(s) < 2 {
		return netip.Addr{}, "", false, nil
	}
	inner := s[1 : len(s)-1]
	v6 := false
	if len(inner) >= 5 && strings.EqualFold(inner[:5], "IPv6:") {
		inner, v6 = inner[5:], true
	}
	addr, err = netip.ParseAddr(inner)
	if err != nil || addr.Zone() != "" || addr.Is4() == v6 {
		return netip.Addr{}, "", true, fmt.Errorf("invalid address literal %q", s)
	}
	if v6 {
		return addr, "[IPv6:" + addr.String() + "]", true, nil
	}
	return addr, "[" + addr.String() + "]", true, nil
}
