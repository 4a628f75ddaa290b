// Package tlspolicy decides how the worker protects one hop: the TLS
// security level of Postfix (none, may, encrypt, verify, secure) from the
// "tls_policy" policy key, per next hop or recipient domain with a default,
// and the SASL credentials for a relayhost from the "authinfo" key (Postfix's
// sasl_passwd). Builder turns a Decision into the crypto/tls client
// configuration that enforces it.
//
// tls_policy lines (Postfix smtp_tls_policy_maps):
//
//	[email-smtp.eu-west-1.amazonaws.com]:587  secure
//	example.com        verify
//	.example.com       encrypt
//	partner.example    secure  match=mx.partner.example:.partner.example  ca=/etc/mailfwd/ca/partner.pem
//	.                  may
//
// authinfo lines (Postfix sasl_passwd):
//
//	[email-smtp.eu-west-1.amazonaws.com]:587  AKIAEXAMPLE:secret
package tlspolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// Level is a TLS security level, in increasing strength.
type Level int

const (
	// None: never STARTTLS.
	None Level = iota
	// May: STARTTLS when offered, certificate not checked; plain text
	// when not offered (opportunistic TLS, the default).
	May
	// Encrypt: TLS required (no STARTTLS offered: defer), certificate not
	// checked.
	Encrypt
	// Verify: TLS required, the certificate must chain to a trusted root
	// and name the host connected to (the MX host name or the relay).
	Verify
	// Secure: as Verify, but the certificate must name the next hop
	// (the recipient domain or a subdomain of it, or the relay host of a
	// static route), so a forged MX answer cannot redirect the mail.
	Secure
)

var levelNames = []string{"none", "may", "encrypt", "verify", "secure"}

func (l Level) String() string {
	if l >= 0 && int(l) < len(levelNames) {
		return levelNames[l]
	}
	return "level(" + strconv.Itoa(int(l)) + ")"
}

// ParseLevel parses a level name (case-insensitive).
func ParseLevel(s string) (Level, error) {
	for i, n := range levelNames {
		if strings.EqualFold(s, n) {
			return Level(i), nil
		}
	}
	return 0, fmt.Errorf("unknown TLS level %q (one of %s)", s, strings.Join(levelNames, ", "))
}

// RequiresTLS: without STARTTLS the hop is deferred.
func (l Level) RequiresTLS() bool { return l >= Encrypt }

// Verifies: the certificate is checked.
func (l Level) Verifies() bool { return l >= Verify }

// Entry is one tls_policy line.
type Entry struct {
	Level Level
	// Match lists what the certificate must name (Postfix match=):
	// "hostname" (the host connected to), "nexthop" (the next-hop
	// domain or relay), "dot-nexthop" (any subdomain of it), a name, or
	// ".name" for its subdomains. Empty: the level's default
	// (verify: hostname; secure: nexthop, dot-nexthop).
	Match []string
	// CAFile is a PEM bundle trusted instead of the default roots.
	CAFile string
}

// String formats the entry's right-hand side as tls_policy text.
func (e Entry) String() string {
	s := e.Level.String()
	if len(e.Match) > 0 {
		s += " match=" + strings.Join(e.Match, ":")
	}
	if e.CAFile != "" {
		s += " ca=" + e.CAFile
	}
	return s
}

// ParseKey checks and normalizes a left-hand side: "[host]:port", "[host]",
// "host:port", "domain", ".domain" or "." (the default).
func ParseKey(s string) (string, error) {
	if s == "." {
		return s, nil
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", fmt.Errorf("unbalanced [ in %q", s)
		}
		host, port = s[1:end], s[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return "", fmt.Errorf("junk after ] in %q", s)
		}
		port = strings.TrimPrefix(port, ":")
		h, err := normHost(host)
		if err != nil {
			return "", err
		}
		host = "[" + h + "]"
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i+1:]
		}
		d, parent := strings.CutPrefix(host, ".")
		if parent && port != "" {
			return "", fmt.Errorf("%q: a .domain key has no port", s)
		}
		h, err := normHost(d)
		if err != nil {
			return "", err
		}
		host = h
		if parent {
			host = "." + h
		}
	}
	if port == "" {
		return host, nil
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Errorf("bad port %q in %q", port, s)
	}
	return host + ":" + strconv.Itoa(int(n)), nil
}

func normHost(h string) (string, error) {
	h = strings.TrimPrefix(strings.TrimPrefix(h, "IPv6:"), "ipv6:")
	if a, err := netip.ParseAddr(h); err == nil {
		return a.String(), nil
	}
	if strings.EqualFold(h, "localhost") {
		return "localhost", nil
	}
	d, err := address.Domain(h)
	if err != nil {
		return "", fmt.Errorf("bad host or domain %q: %v", h, err)
	}
	return d, nil
}

// ParseEntry parses a tls_policy right-hand side: LEVEL [match=…] [ca=PATH].
func ParseEntry(rhs string) (Entry, error) {
	f := strings.Fields(rhs)
	if len(f) == 0 {
		return Entry{}, errors.New("no TLS level (none, may, encrypt, verify or secure)")
	}
	lv, err := ParseLevel(f[0])
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Level: lv}
	seen := map[string]bool{}
	for _, opt := range f[1:] {
		k, v, ok := strings.Cut(opt, "=")
		if !ok || v == "" {
			return Entry{}, fmt.Errorf("option %q: want name=value (match=… or ca=…)", opt)
		}
		if seen[k] {
			return Entry{}, fmt.Errorf("option %s given twice", k)
		}
		seen[k] = true
		switch k {
		case "match":
			for _, m := range strings.Split(v, ":") {
				switch m {
				case "hostname", "nexthop", "dot-nexthop":
				default:
					d, parent := strings.CutPrefix(m, ".")
					a, err := address.Domain(d)
					if err != nil {
						return Entry{}, fmt.Errorf("match=%s: %q is not hostname, nexthop, dot-nexthop or a domain: %v", v, m, err)
					}
					if parent {
						a = "." + a
					}
					m = a
				}
				e.Match = append(e.Match, m)
			}
		case "ca":
			if !filepath.IsAbs(v) {
				return Entry{}, fmt.Errorf("ca=%s: want an absolute path of a PEM file in the pod", v)
			}
			e.CAFile = filepath.Clean(v)
		default:
			return Entry{}, fmt.Errorf("unknown option %q (match, ca)", k)
		}
	}
	if !lv.Verifies() && (len(e.Match) > 0 || e.CAFile != "") {
		return Entry{}, fmt.Errorf("match= and ca= need level verify or secure, not %s", lv)
	}
	return e, nil
}

// Credentials are a relayhost's SASL user and password, or (OAuth2 set)
// an OAuth 2.0 client for XOAUTH2.
type Credentials struct {
	User     string
	Password string
	OAuth2   *OAuth2
}

// String formats the credentials as an authinfo right-hand side.
func (c Credentials) String() string {
	if o := c.OAuth2; o != nil {
		s := "xoauth2 user=" + o.User + " token_url=" + o.TokenURL + " client_id=" + o.ClientID + " client_secret=" + o.ClientSecret
		for _, sc := range o.Scopes {
			s += " scope=" + sc
		}
		return s
	}
	return c.User + ":" + c.Password
}

// ParseCredentials parses an authinfo right-hand side: "user:password"
// (the password is everything after the first colon), or "xoauth2
// user=… token_url=https://… client_id=… client_secret=… [scope=…]".
// Errors never quote the secret.
func ParseCredentials(rhs string) (Credentials, error) {
	if rest, ok := strings.CutPrefix(rhs, "xoauth2 "); ok {
		o, err := parseOAuth2(rest)
		if err != nil {
			return Credentials{}, err
		}
		return Credentials{User: o.User, OAuth2: o}, nil
	}
	user, pw, ok := strings.Cut(rhs, ":")
	if !ok || user == "" || pw == "" {
		return Credentials{}, errors.New("want user:password (or xoauth2 user=… token_url=… client_id=… client_secret=…)")
	}
	if strings.ContainsAny(user, " \t") {
		return Credentials{}, errors.New("white space in the user name")
	}
	return Credentials{User: user, Password: pw}, nil
}

// Policy is the parsed tls_policy and authinfo: immutable, safe for
// concurrent use.
type Policy struct {
	tls  map[string]Entry
	auth map[string]Credentials
}

// New returns an empty policy: every hop is "may", no credentials.
func New() *Policy {
	return &Policy{tls: map[string]Entry{}, auth: map[string]Credentials{}}
}

// AddTLS adds a tls_policy entry under a key from ParseKey. The caller
// (package policy) reports duplicates with their lines.
func (p *Policy) AddTLS(key string, e Entry) { p.tls[key] = e }

// AddAuth adds an authinfo entry under a key from ParseKey.
func (p *Policy) AddAuth(key string, c Credentials) { p.auth[key] = c }

// Hop is what the worker knows about one delivery attempt.
type Hop struct {
	// Domain is the recipient domain (A-labels).
	Domain string
	// Relay is the host of a static route (mailertable), "" for MX
	// delivery. Literal: it was written [Relay].
	Relay   string
	Literal bool
	// Port is the port connected to.
	Port uint16
}

// nextHop is the name Postfix calls the next-hop destination.
func (h Hop) nextHop() string {
	if h.Relay != "" {
		return strings.ToLower(strings.TrimSuffix(h.Relay, "."))
	}
	return strings.ToLower(strings.TrimSuffix(h.Domain, "."))
}

// keys lists the lookup keys for h, most specific first.
func (h Hop) keys() []string {
	var out []string
	if h.Relay != "" {
		r, err := normHost(strings.TrimSuffix(h.Relay, "."))
		if err != nil {
			r = strings.ToLower(h.Relay)
		}
		p := strconv.Itoa(int(h.Port))
		if h.Literal {
			out = append(out, "["+r+"]:"+p, "["+r+"]", r+":"+p, r)
		} else {
			out = append(out, r+":"+p, r, "["+r+"]:"+p, "["+r+"]")
		}
	}
	if h.Domain != "" {
		d := strings.ToLower(strings.TrimSuffix(h.Domain, "."))
		out = append(out, d)
		for {
			i := strings.IndexByte(d, '.')
			if i < 0 {
				break
			}
			d = d[i+1:]
			out = append(out, "."+d)
		}
	}
	return out
}

// Decision is what the worker must do for a hop.
type Decision struct {
	Level Level
	Entry Entry
	// Key is the tls_policy key that matched ("" when none: the built-in
	// default, may).
	Key string
	// Auth are the credentials for the hop, nil for none; AuthKey the
	// authinfo key that matched. AUTH must never be sent before TLS is
	// up: with credentials the level is at least Encrypt (Raised says the
	// tls_policy level was lower).
	Auth    *Credentials
	AuthKey string
	Raised  bool

	nextHop string
}

// NextHop is the next-hop name secure matches against.
func (d Decision) NextHop() string { return d.nextHop }

// Lookup decides the protection of a hop: the first tls_policy key of
// "[relay]:port", "relay:port", "[relay]", "relay", "domain", ".parent"…,
// then "."; and the first authinfo key of the same list.
func (p *Policy) Lookup(h Hop) Decision {
	d := Decision{Level: May, Entry: Entry{Level: May}, nextHop: h.nextHop()}
	if p == nil {
		return d
	}
	keys := append(h.keys(), ".")
	for _, k := range keys {
		if e, ok := p.tls[k]; ok {
			d.Level, d.Entry, d.Key = e.Level, e, k
			break
		}
	}
	for _, k := range keys {
		if c, ok := p.auth[k]; ok {
			c := c
			d.Auth, d.AuthKey = &c, k
			break
		}
	}
	if d.Auth != nil && d.Level < Encrypt {
		d.Level, d.Raised = Encrypt, true
	}
	return d
}

// TLSEntries and AuthKeys list the entries, for canonical text output.
func (p *Policy) TLSEntries() map[string]Entry {
	out := make(map[string]Entry, len(p.tls))
	for k, v := range p.tls {
		out[k] = v
	}
	return out
}

// AuthEntries lists the authinfo entries.
func (p *Policy) AuthEntries() map[string]Credentials {
	out := make(map[string]Credentials, len(p.auth))
	for k, v := range p.auth {
		out[k] = v
	}
	return out
}
