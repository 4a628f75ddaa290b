package policy

import (
	"fmt"
	"sort"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// The smart-host keys. users, authinfo and dkim hold secrets and belong in
// the policy Secret; tls_policy in the ConfigMap. A projected volume mounts
// both into the one policy directory, which LoadDir and the Watcher read
// as a whole.
const (
	KeyUsers     = "users"
	KeyAuthinfo  = "authinfo"
	KeyTLSPolicy = "tls_policy"
	KeyDKIM      = "dkim"
)

// SecretKeys are the keys that belong in the policy Secret.
func SecretKeys() []string { return []string{KeyUsers, KeyAuthinfo, KeyDKIM, KeySRS} }

// parseUsers reads "NAME HASH SENDER[,SENDER…]" lines (smtpauth.User).
// A password that is not a bcrypt or argon2id hash is refused.
func (p *Policy) parseUsers(lines []line) []error {
	list, errs := parseKeyedLines(lines, smtpauth.ParseUserLine, func(u smtpauth.User) string { return u.Name },
		"user %s listed twice (first on line %d)")
	us, err := smtpauth.NewUsers(list)
	if err != nil { // duplicates were reported above
		return append(errs, &ParseError{File: KeyUsers, Msg: err.Error()})
	}
	p.Users = us
	return errs
}

// parseKeyedLines parses each line (comments stripped) with parse and
// returns the items in order, refusing a line whose key is that of an
// earlier one with dup (formatted with the key and the earlier line).
func parseKeyedLines[T any](lines []line, parse func(string) (T, error), key func(T) string, dup string) ([]T, []error) {
	var errs []error
	var list []T
	seen := map[string]int{}
	for _, l := range lines {
		it, err := parse(stripComment(l.text))
		if err != nil {
			errs = append(errs, l.errorf("%v", err))
			continue
		}
		if prev, ok := seen[key(it)]; ok {
			errs = append(errs, l.errorf(dup, key(it), prev))
			continue
		}
		seen[key(it)] = l.no
		list = append(list, it)
	}
	return list, errs
}

// parseAuthinfo reads Postfix sasl_passwd lines: "[host]:port user:password".
// The password is the rest of the line (no comments: it may hold '#').
func (p *Policy) parseAuthinfo(lines []line) []error {
	return parseHopLines(lines, func(l line) string { return l.text }, func(key, rhs string) error {
		c, err := tlspolicy.ParseCredentials(rhs)
		if err == nil {
			p.TLS.AddAuth(key, c)
		}
		return err
	})
}

// parseTLSPolicy reads Postfix smtp_tls_policy_maps lines:
// "NEXTHOP-OR-DOMAIN LEVEL [match=…] [ca=PATH]", "." for the default.
func (p *Policy) parseTLSPolicy(lines []line) []error {
	return parseHopLines(lines, func(l line) string { return stripComment(l.text) }, func(key, rhs string) error {
		e, err := tlspolicy.ParseEntry(rhs)
		if err == nil {
			p.TLS.AddTLS(key, e)
		}
		return err
	})
}

// parseHopLines reads "NEXTHOP-OR-DOMAIN VALUE" lines keyed as tls_policy
// and authinfo are (tlspolicy.ParseKey), refusing a key listed twice; add
// parses a line's value and files it under the key.
func parseHopLines(lines []line, text func(line) string, add func(key, rhs string) error) []error {
	var errs []error
	seen := map[string]int{}
	for _, l := range lines {
		lhs, rhs := fields(text(l))
		key, err := tlspolicy.ParseKey(lhs)
		if err != nil {
			errs = append(errs, l.errorf("%v", err))
			continue
		}
		if prev, ok := seen[key]; ok {
			errs = append(errs, l.errorf("duplicate entry %s (first on line %d)", key, prev))
			continue
		}
		if err := add(key, rhs); err != nil {
			errs = append(errs, l.errorf("%s: %v", key, err))
			continue
		}
		seen[key] = l.no
	}
	return errs
}

// parseDKIM reads "DOMAIN SELECTOR KEY [h=…]" lines (dkim.Key).
func (p *Policy) parseDKIM(lines []line) []error {
	list, errs := parseKeyedLines(lines, dkim.ParseKeyLine, func(k dkim.Key) string { return k.Domain },
		"domain %s has a key already (line %d)")
	ks, err := dkim.NewKeys(list)
	if err != nil {
		return append(errs, &ParseError{File: KeyDKIM, Msg: err.Error()})
	}
	p.DKIM = ks
	return errs
}

// smarthostFiles adds the canonical text of the smart-host keys to out.
func (p *Policy) smarthostFiles(out map[string][]byte) {
	out[KeyUsers] = []byte(p.Users.Text())

	auth := p.TLS.AuthEntries()
	out[KeyAuthinfo] = lineEach(sortedKeys(auth), func(k string) string { return fmt.Sprintf("%s\t%s", k, auth[k]) })
	tls := p.TLS.TLSEntries()
	out[KeyTLSPolicy] = lineEach(sortedKeys(tls), func(k string) string { return fmt.Sprintf("%s\t%s", k, tls[k]) })

	var b strings.Builder
	for _, k := range p.DKIM.List() {
		if l, err := k.Line(); err == nil {
			b.WriteString(l + "\n")
		}
	}
	out[KeyDKIM] = []byte(b.String())
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
