// Package mtasts implements the sending side of SMTP MTA Strict Transport
// Security (RFC 8461): the "_mta-sts" TXT record, the policy fetched over
// HTTPS from mta-sts.<domain>, parsed strictly with a size limit, cached
// by max_age, and the MX patterns it allows.
//
// What the worker does with a Policy: mode enforce: deliver only to MX
// hosts that Match, over TLS verified against the WebPKI for the MX host
// name (tlspolicy level verify, match=hostname), and defer otherwise;
// testing: deliver as usual, report what enforce would have refused; none
// (or no policy): as if the domain had none.
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// Mode is the policy mode.
type Mode string

const (
	Enforce Mode = "enforce"
	Testing Mode = "testing"
	None    Mode = "none"
)

// MaxMaxAge is the largest max_age RFC 8461 allows (about a year).
const MaxMaxAge = 31557600 * time.Second

// maxMX bounds the mx lines of one policy.
const maxMX = 128

// Policy is a parsed policy file.
type Policy struct {
	Mode   Mode
	MX     []string // patterns: "mail.example.com" or "*.example.com"
	MaxAge time.Duration
	// ID is the TXT record's id this policy was fetched under.
	ID string
	// Fetched is when it was fetched; it expires at Fetched+MaxAge.
	Fetched time.Time
}

// Expires is when the cached policy stops being valid.
func (p *Policy) Expires() time.Time { return p.Fetched.Add(p.MaxAge) }

// ParsePolicy parses a policy file (RFC 8461 §3.2) strictly: version
// STSv1, mode, max_age and, unless mode is none, at least one mx are
// required, in any order; each key once (mx excepted); lines end in LF or
// CRLF; unknown keys are extensions and are ignored, but must be
// well-formed.
func ParsePolicy(b []byte) (*Policy, error) {
	p := &Policy{}
	seen := map[string]bool{}
	text := strings.TrimRight(string(b), "\r\n")
	if text == "" {
		return nil, errors.New("mta-sts: empty policy")
	}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSuffix(line, "\r")
		bad := func(format string, args ...any) (*Policy, error) {
			return nil, fmt.Errorf("mta-sts: policy line %d: %s", i+1, fmt.Sprintf(format, args...))
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return bad("want key: value")
		}
		v = strings.TrimLeft(v, " \t")
		v = strings.TrimRight(v, " \t")
		if !validKey(k) {
			return bad("bad key %q", k)
		}
		if k != "mx" && seen[k] {
			return bad("%s given twice", k)
		}
		seen[k] = true
		switch k {
		case "version":
			if v != "STSv1" {
				return bad("version %q, want STSv1", v)
			}
		case "mode":
			switch Mode(v) {
			case Enforce, Testing, None:
				p.Mode = Mode(v)
			default:
				return bad("mode %q: want enforce, testing or none", v)
			}
		case "max_age":
			if v == "" || len(v) > 10 || strings.Trim(v, "0123456789") != "" {
				return bad("max_age %q: want 0 to 31557600 seconds", v)
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || time.Duration(n)*time.Second > MaxMaxAge {
				return bad("max_age %q: want 0 to 31557600 seconds", v)
			}
			p.MaxAge = time.Duration(n) * time.Second
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(v, "."))
			if !validPattern(pat) {
				return bad("mx %q is not a host name or *.host name", v)
			}
			if len(p.MX) >= maxMX {
				return bad("more than %d mx lines", maxMX)
			}
			p.MX = append(p.MX, pat)
		default:
			// An extension: value is printable text.
			if strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
				return bad("control character in %s", k)
			}
		}
	}
	switch {
	case !seen["version"]:
		return nil, errors.New("mta-sts: policy without version")
	case p.Mode == "":
		return nil, errors.New("mta-sts: policy without mode")
	case !seen["max_age"]:
		return nil, errors.New("mta-sts: policy without max_age")
	case p.Mode != None && len(p.MX) == 0:
		return nil, fmt.Errorf("mta-sts: mode %s without mx", p.Mode)
	}
	return p, nil
}

// validKey: sts-policy-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
func validKey(k string) bool {
	if k == "" || len(k) > 32 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '_' && c != '-' && c != '.')) {
			return false
		}
	}
	return true
}

func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 || !strings.Contains(p, ".") {
		return false
	}
	for _, l := range strings.Split(p, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// Match reports whether the MX host name mx is allowed by a pattern
// (RFC 8461 §4.1: "*.example.com" stands for exactly one leftmost label).
func (p *Policy) Match(mx string) bool {
	mx = strings.ToLower(strings.TrimSuffix(mx, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			i := strings.IndexByte(mx, '.')
			if i > 0 && mx[i+1:] == rest {
				return true
			}
			continue
		}
		if mx == pat {
			return true
		}
	}
	return false
}

// Allowed filters mx hosts: under enforce only the matching ones, under
// testing and none all of them. The second result lists those enforce
// refuses (for the testing-mode report and the log).
func (p *Policy) Allowed(mxs []string) (allowed, refused []string) {
	for _, m := range mxs {
		if p == nil || p.Match(m) {
			allowed = append(allowed, m)
			continue
		}
		refused = append(refused, m)
		if p.Mode != Enforce {
			allowed = append(allowed, m)
		}
	}
	return allowed, refused
}

// RequiresVerifiedTLS: under enforce the worker must verify the MX
// certificate (WebPKI, MX host name) and defer rather than deliver without.
func (p *Policy) RequiresVerifiedTLS() bool { return p != nil && p.Mode == Enforce }

// ParseTXT picks the policy id from the TXT records at _mta-sts.<domain>
// (RFC 8461 §3.1): exactly one record starting with "v=STSv1" must exist;
// ok is false otherwise (the domain then has no usable record).
func ParseTXT(records []string) (id string, ok bool) {
	var found []string
	for _, r := range records {
		if strings.HasPrefix(r, "v=STSv1;") || r == "v=STSv1" {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		return "", false
	}
	for _, f := range strings.Split(found[0], ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok {
			if strings.TrimSpace(f) == "" {
				continue
			}
			return "", false
		}
		if k == "id" {
			if id != "" || v == "" || len(v) > 32 || strings.IndexFunc(v, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
			}) >= 0 {
				return "", false
			}
			id = v
		}
	}
	return id, id != ""
}

// Apply adjusts the hop's TLS decision for one MX host under p: under
// enforce an MX that no pattern matches is refused (ErrMXNotAllowed: try
// the next MX, defer when none is left), and the level is raised to at
// least verify with the certificate checked for the MX host name against
// the WebPKI roots (RFC 8461 §4.2); testing and none change nothing (the
// caller logs what enforce would have refused). A nil policy changes
// nothing.
func (p *Policy) Apply(d tlspolicy.Decision, mx string) (tlspolicy.Decision, error) {
	if p == nil || p.Mode != Enforce {
		return d, nil
	}
	if !p.Match(mx) {
		return d, fmt.Errorf("%w: %s (policy %s)", ErrMXNotAllowed, mx, p)
	}
	if d.Level < tlspolicy.Verify {
		d.Level = tlspolicy.Verify
		d.Entry = tlspolicy.Entry{Level: tlspolicy.Verify, Match: []string{"hostname"}}
	}
	return d, nil
}

// ErrMXNotAllowed: the MX host is not in the enforced policy's mx list.
var ErrMXNotAllowed = errors.New("mta-sts: MX host not allowed by the domain's enforced policy")
