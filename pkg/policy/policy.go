// Package policy implements mailfwd's sendmail-compatible policy: the access
// map, mailertable, aliases, virtusertable, local-host-names and a few
// settings, parsed from the text users keep in /etc/mail (makemap input
// format), and the decisions sendmail 8.x makes from them (FEATURE access_db,
// blacklist_recipients, delay_checks, mailertable, virtusertable, use_cw_file
// and redirect).
//
// A Policy is immutable once parsed and safe for concurrent use; a Watcher
// hot-reloads one from a directory (a mounted Kubernetes ConfigMap).
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// The policy keys (file names in the policy directory / ConfigMap keys).
const (
	KeyAccess         = "access"
	KeyMailertable    = "mailertable"
	KeyAliases        = "aliases"
	KeyVirtusertable  = "virtusertable"
	KeyLocalHostNames = "local-host-names"
	KeySettings       = "settings"
)

// Keys lists every policy key, in the order Files and error reports use.
func Keys() []string {
	return []string{KeyAccess, KeyMailertable, KeyAliases, KeyVirtusertable, KeyLocalHostNames, KeySettings,
		KeyTLSPolicy, KeyUsers, KeyAuthinfo, KeyDKIM, // smarthost.go
		KeyMasquerade, KeyGenericstable, KeySenderRoutes, KeySRS, // senders.go
		KeyShaping, // shaping.go
		KeyQuota}   // quota.go
}

// Reply is an SMTP reply: code, RFC 3463 enhanced status and text.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// String formats the reply as it goes on the wire: "550 5.7.1 text".
func (r Reply) String() string {
	if r.Enhanced == "" {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// Settings are the mailfwd-specific switches of the "settings" key.
type Settings struct {
	// FromWhitelist enables the MMS gateway's patch: a client without
	// Connect: RELAY may relay to a To: RELAY domain only when its envelope
	// sender matches a From: OK or RELAY entry.
	FromWhitelist bool
	// SRSDomain turns SRS on for forwarded mail (senders.go); SRSMaxAge is
	// how long an SRS address stays valid (0: srs.DefaultMaxAge).
	SRSDomain string
	SRSMaxAge time.Duration
}

// ParseError is one problem in one line of one policy file.
type ParseError struct {
	File string
	Line int // 0 when the problem is not tied to a line
	Msg  string
}

func (e *ParseError) Error() string {
	if e.Line == 0 {
		return e.File + ": " + e.Msg
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Policy is a parsed, immutable policy set.
type Policy struct {
	// Mailertable holds the static routes (never nil).
	Mailertable *route.Table
	Settings    Settings
	// Version identifies the input text: a short hex sha256 over all keys.
	Version string

	// Smart-host keys (smarthost.go). Users: nil or empty means no AUTH
	// is offered. TLS: tls_policy and authinfo (never nil). DKIM: nil or
	// empty means nothing is signed.
	Users *smtpauth.Users
	TLS   *tlspolicy.Policy
	DKIM  *dkim.Keys
	// Shaping: fleet-wide destination limits and reply rules (never nil).
	Shaping *shaping.Rules
	// Quotas: outbound quotas per sender domain and AUTH user (never nil).
	Quotas *Quotas

	access      accessMap
	mailertable []mtEntry
	aliases     map[string]*aliasEntry
	aliasOrder  []*aliasEntry
	virt        map[string]*virtEntry
	virtOrder   []*virtEntry
	virtDomains map[string]int // A-label domain → line of its first entry
	local       map[string]int // A-label domain → line in local-host-names
	localOrder  []string

	senders senders // senders.go
}

// Empty returns a policy without entries: it relays for nobody.
func Empty() *Policy {
	p := newPolicy()
	p.Version = version(nil)
	return p
}

func newPolicy() *Policy {
	return &Policy{
		Mailertable: route.NewTable(),
		TLS:         tlspolicy.New(),
		Shaping:     shaping.NewRules(),
		Quotas:      NewQuotas(),
		access:      newAccessMap(),
		aliases:     map[string]*aliasEntry{},
		virt:        map[string]*virtEntry{},
		virtDomains: map[string]int{},
		local:       map[string]int{},
		senders:     newSenders(),
	}
}

// Parse parses a complete policy set. files maps policy keys (see Keys) to
// their text; missing keys are empty, unknown keys are an error. Every
// problem is reported (joined), each naming file and line; on any error no
// policy is returned, so a set is never half-applied.
func Parse(files map[string][]byte) (*Policy, error) {
	p := newPolicy()
	known := map[string]bool{}
	for _, k := range Keys() {
		known[k] = true
	}
	var errs []error
	var unknown []string
	for k := range files {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		errs = append(errs, &ParseError{File: k, Msg: fmt.Sprintf("unknown policy key %q (known: %s)", k, strings.Join(Keys(), ", "))})
	}
	// local-host-names before aliases/virtusertable is not required (lookups
	// happen at run time), but keep the documented order for error output.
	parsers := []struct {
		key   string
		parse func(*Policy, []line) []error
	}{
		{KeyAccess, (*Policy).parseAccess},
		{KeyMailertable, (*Policy).parseMailertable},
		{KeyAliases, (*Policy).parseAliases},
		{KeyVirtusertable, (*Policy).parseVirtusertable},
		{KeyLocalHostNames, (*Policy).parseLocalHostNames},
		{KeySettings, (*Policy).parseSettings},
		{KeyTLSPolicy, (*Policy).parseTLSPolicy},
		{KeyUsers, (*Policy).parseUsers},
		{KeyAuthinfo, (*Policy).parseAuthinfo},
		{KeyDKIM, (*Policy).parseDKIM},
		{KeyMasquerade, (*Policy).parseMasquerade},
		{KeyGenericstable, (*Policy).parseGenericstable},
		{KeySenderRoutes, (*Policy).parseSenderRoutes},
		{KeySRS, (*Policy).parseSRS},
		{KeyShaping, (*Policy).parseShaping},
		{KeyQuota, (*Policy).parseQuota},
	}
	for _, ps := range parsers {
		lines, lerrs := splitLines(ps.key, files[ps.key])
		errs = append(errs, lerrs...)
		errs = append(errs, ps.parse(p, lines)...)
	}
	errs = append(errs, p.finishSenders(files)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	p.Version = version(files)
	return p, nil
}

// version hashes the input set: key names and contents, sorted by key.
func version(files map[string][]byte) string {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		if len(files[k]) == 0 {
			continue // an empty file and a missing one are the same policy
		}
		fmt.Fprintf(h, "%s\x00%d\x00", k, len(files[k]))
		h.Write(files[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// line is one non-empty, non-comment input line.
type line struct {
	file string
	no   int
	text string // without the line terminator; leading space kept
}

func (l line) errorf(format string, args ...any) error {
	return &ParseError{File: l.file, Line: l.no, Msg: fmt.Sprintf(format, args...)}
}

// splitLines splits text into lines, dropping blank lines and lines whose
// first non-blank character is '#'.
func splitLines(file string, data []byte) ([]line, []error) {
	var out []line
	var errs []error
	for i, s := range strings.Split(string(data), "\n") {
		s = strings.TrimSuffix(s, "\r")
		t := strings.TrimSpace(s)
		if t == "" || t[0] == '#' {
			continue
		}
		l := line{file: file, no: i + 1, text: s}
		if !utf8.ValidString(s) {
			errs = append(errs, l.errorf("line is not valid UTF-8"))
			continue
		}
		if j := strings.IndexFunc(s, isControl); j >= 0 {
			errs = append(errs, l.errorf("control character %q in line", s[j]))
			continue
		}
		out = append(out, l)
	}
	return out, errs
}

func isControl(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }

// fields splits a map line (makemap input) into the key and the rest.
func fields(s string) (key, rest string) {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i:])
}

// stripComment removes a trailing "# comment" (a '#' after whitespace).
func stripComment(s string) string {
	for i := 1; i < len(s); i++ {
		if s[i] == '#' && (s[i-1] == ' ' || s[i-1] == '\t') {
			return strings.TrimSpace(s[:i])
		}
	}
	return s
}

// normDomain returns the lower-case A-label form of d, or d lower-cased when
// it is not a valid domain (lookups then simply find nothing).
func normDomain(d string) string {
	if a, err := address.Domain(d); err == nil {
		return a
	}
	return strings.ToLower(strings.TrimSuffix(d, "."))
}

// parents returns d and its parent domains, longest first. Address literals
// have no parents.
func parents(d string) []string {
	if strings.HasPrefix(d, "[") {
		return []string{d}
	}
	out := []string{d}
	for {
		i := strings.IndexByte(d, '.')
		if i < 0 || i == len(d)-1 {
			return out
		}
		d = d[i+1:]
		out = append(out, d)
	}
}

// IsLocal reports whether domain is listed in local-host-names.
func (p *Policy) IsLocal(domain string) bool {
	_, ok := p.local[normDomain(domain)]
	return ok
}

// Files returns the canonical text of each key, for mailfwdctl: comments and
// blank lines are dropped, keys are lower-cased, tags and actions spelled the
// canonical way; Parse(p.Files()) yields an equal policy.
func (p *Policy) Files() map[string][]byte {
	out := map[string][]byte{
		KeyAccess:         lineEach(p.access.rules, func(r *accessRule) string { return r.String() }),
		KeyMailertable:    lineEach(p.mailertable, func(e mtEntry) string { return e.Key + "\t" + e.RHS }),
		KeyAliases:        lineEach(p.aliasOrder, func(a *aliasEntry) string { return a.Name + ": " + strings.Join(a.Items, ", ") }),
		KeyVirtusertable:  lineEach(p.virtOrder, func(v *virtEntry) string { return v.Key + "\t" + v.RHS }),
		KeyLocalHostNames: lineEach(p.localOrder, func(d string) string { return d }),
	}
	out[KeySettings] = []byte(p.Settings.text())
	p.smarthostFiles(out)
	p.sendersFiles(out)
	out[KeyShaping] = []byte(p.Shaping.String())
	out[KeyQuota] = []byte(p.Quotas.String())
	return out
}

// lineEach is the text of items, one line each as line makes it.
func lineEach[T any](items []T, line func(T) string) []byte {
	var b strings.Builder
	for _, it := range items {
		b.WriteString(line(it))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

func ruleRef(file string, line int, text string) string {
	return fmt.Sprintf("%s:%d: %s", file, line, text)
}
