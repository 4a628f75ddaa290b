package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
)

type action int

const (
	actRelay action = iota + 1
	actOK
	actReject
	actDiscard
	actError
	actSkip
)

var actionNames = map[string]action{
	"RELAY": actRelay, "OK": actOK, "REJECT": actReject, "DISCARD": actDiscard, "SKIP": actSkip,
}

func (a action) String() string {
	for n, v := range actionNames {
		if v == a {
			return n
		}
	}
	return "ERROR"
}

// Access tags, as stored (lower case); "" is an untagged entry.
const (
	tagConnect = "connect"
	tagFrom    = "from"
	tagTo      = "to"
)

var tagNames = map[string]string{tagConnect: "Connect:", tagFrom: "From:", tagTo: "To:", "": ""}

// sendmail tags that mailfwd does not implement: named in the error so users
// know the entry was understood, not mistyped.
var unsupportedTags = map[string]bool{
	"spam": true, "greetpause": true, "clientrate": true, "clientconn": true, "auth": true,
	"srv_features": true, "try_tls": true, "tls_clt": true, "tls_srv": true, "tls_rcpt": true,
	"certissuer": true, "certsubject": true, "qgrp": true, "mail": true, "rcpt": true, "ehlo": true,
}

// accessRule is one access map line.
type accessRule struct {
	Tag  string // tagConnect, tagFrom, tagTo or ""
	Key  string // the LHS without tag, lower case, as written
	Act  action
	Err  errSpec // for actError
	Line int
}

// String is the canonical access map line: "To:example.com\tRELAY".
func (r *accessRule) String() string {
	rhs := r.Act.String()
	if r.Act == actError {
		rhs = r.Err.accessText()
	}
	return tagNames[r.Tag] + r.Key + "\t" + rhs
}

func (r *accessRule) ref() string {
	return ruleRef(KeyAccess, r.Line, strings.Replace(r.String(), "\t", " ", 1))
}

type netKey struct {
	tag    string // tagConnect or ""
	prefix netip.Prefix
}

type nameKey struct {
	tag string
	key string // A-label domain, "local@domain", "local@", or host name
}

type accessMap struct {
	rules []*accessRule // file order
	nets  map[netKey]*accessRule
	names map[nameKey]*accessRule
	// hostNames: Connect: host name entries (tagged or untagged) other than
	// "localhost", which need the client's PTR name.
	hostNames int
}

func newAccessMap() accessMap {
	return accessMap{nets: map[netKey]*accessRule{}, names: map[nameKey]*accessRule{}}
}

func (p *Policy) parseAccess(lines []line) []error {
	var errs []error
	m := &p.access
	for _, l := range lines {
		r, nk, hk, err := parseAccessLine(l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if nk != nil {
			if prev, ok := m.nets[*nk]; ok {
				errs = append(errs, l.errorf("%s%s is the same network as line %d (%s%s)", tagNames[r.Tag], r.Key, prev.Line, tagNames[prev.Tag], prev.Key))
				continue
			}
			m.nets[*nk] = r
		} else {
			if prev, ok := m.names[*hk]; ok {
				errs = append(errs, l.errorf("duplicate entry %s%s (first on line %d)", tagNames[r.Tag], r.Key, prev.Line))
				continue
			}
			m.names[*hk] = r
			if (r.Tag == tagConnect || r.Tag == "") && !strings.Contains(hk.key, "@") && hk.key != "localhost" {
				m.hostNames++
			}
		}
		m.rules = append(m.rules, r)
	}
	return errs
}

func parseAccessLine(l line) (*accessRule, *netKey, *nameKey, error) {
	lhs, rhs := fields(l.text)
	r := &accessRule{Line: l.no}
	if rhs == "" {
		return nil, nil, nil, l.errorf("%q has no action (RELAY, OK, REJECT, DISCARD, SKIP or ERROR:...)", lhs)
	}
	// Tag.
	key := lhs
	if t, rest, ok := strings.Cut(lhs, ":"); ok && !strings.HasPrefix(lhs, "[") {
		lt := strings.ToLower(t)
		switch {
		case lt == tagConnect || lt == tagFrom || lt == tagTo:
			r.Tag, key = lt, rest
		case lt == "ipv6":
			// untagged IPv6 address
		case unsupportedTags[lt]:
			return nil, nil, nil, l.errorf("tag %s: is not supported by mailfwd (Connect:, From: and To: are)", t)
		default:
			if _, err := netip.ParseAddr(lhs); err != nil {
				if _, err := netip.ParsePrefix(lhs); err != nil {
					return nil, nil, nil, l.errorf("unknown tag %q (Connect:, From: and To: are supported)", t+":")
				}
			}
		}
	}
	if key == "" {
		return nil, nil, nil, l.errorf("empty key in %q", lhs)
	}
	r.Key = strings.ToLower(key)

	// Action.
	word, after := fields(rhs)
	switch {
	case len(rhs) >= 6 && strings.EqualFold(rhs[:6], "ERROR:"):
		e, err := parseErrorSpec(rhs[6:], false, "Access denied")
		if err != nil {
			return nil, nil, nil, l.errorf("%v", err)
		}
		r.Act, r.Err = actError, e
	case len(rhs) >= 3 && isDigit(rhs[0]):
		// Old style "550 text" without ERROR:.
		e, err := parseErrorSpec(rhs, false, "Access denied")
		if err != nil {
			return nil, nil, nil, l.errorf("%v", err)
		}
		r.Act, r.Err = actError, e
	default:
		a, ok := actionNames[strings.ToUpper(word)]
		if !ok {
			return nil, nil, nil, l.errorf("unknown action %q (RELAY, OK, REJECT, DISCARD, SKIP or ERROR:...)", word)
		}
		if after != "" && after[0] != '#' {
			return nil, nil, nil, l.errorf("unexpected %q after %s", after, strings.ToUpper(word))
		}
		r.Act = a
	}

	// Key.
	if r.Tag == tagConnect || r.Tag == "" {
		if pfx, ok, err := parseNet(r.Key); err != nil {
			return nil, nil, nil, l.errorf("%v", err)
		} else if ok {
			return r, &netKey{tag: r.Tag, prefix: pfx}, nil, nil
		}
	}
	k, err := nameKeyOf(r.Tag, r.Key)
	if err != nil {
		return nil, nil, nil, l.errorf("%v", err)
	}
	return r, nil, &nameKey{tag: r.Tag, key: k}, nil
}

// parseNet parses a Connect: network key: an IP address, a CIDR, a sendmail
// IPv4 prefix ("10", "10.70", "10.70.80"), "IPv6:" addresses and group
// prefixes ("IPv6:2001:db8" = 2001:db8::/32), "[192.0.2.1]". ok is false
// when s is not a network (a host or domain name).
func parseNet(s string) (netip.Prefix, bool, error) {
	in := s
	v6 := false
	if len(s) > 5 && strings.EqualFold(s[:5], "ipv6:") {
		s, v6 = s[5:], true
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		ip, err := address.Literal(in)
		if err != nil {
			return netip.Prefix{}, false, fmt.Errorf("invalid address literal %q", in)
		}
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), true, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			return netip.Prefix{}, false, fmt.Errorf("invalid network %q", in)
		}
		if v6 && !p.Addr().Is6() {
			return netip.Prefix{}, false, fmt.Errorf("invalid IPv6 network %q", in)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), true, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		if ip.Zone() != "" || (v6 && !ip.Is6()) {
			return netip.Prefix{}, false, fmt.Errorf("invalid IP address %q", in)
		}
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), true, nil
	}
	if v6 {
		// Group prefix: 1-7 groups of 1-4 hex digits.
		groups := strings.Split(s, ":")
		if len(groups) >= 8 {
			return netip.Prefix{}, false, fmt.Errorf("invalid IPv6 address %q", in)
		}
		var b [16]byte
		for i, g := range groups {
			if g == "" || len(g) > 4 {
				return netip.Prefix{}, false, fmt.Errorf("invalid IPv6 prefix %q (write IPv6:2001:db8 or 2001:db8::/32)", in)
			}
			n, err := strconv.ParseUint(g, 16, 16)
			if err != nil {
				return netip.Prefix{}, false, fmt.Errorf("invalid IPv6 prefix %q", in)
			}
			b[2*i], b[2*i+1] = byte(n>>8), byte(n)
		}
		return netip.PrefixFrom(netip.AddrFrom16(b), 16*len(groups)), true, nil
	}
	// sendmail IPv4 prefix: 1-3 decimal octets.
	parts := strings.Split(s, ".")
	if len(parts) > 3 {
		return netip.Prefix{}, false, nil
	}
	var b [4]byte
	for i, part := range parts {
		if part == "" || len(part) > 3 || strings.Trim(part, "0123456789") != "" {
			return netip.Prefix{}, false, nil
		}
		if len(part) > 1 && part[0] == '0' {
			return netip.Prefix{}, false, fmt.Errorf("invalid IPv4 prefix %q (leading zero)", in)
		}
		n, _ := strconv.Atoi(part)
		if n > 255 {
			return netip.Prefix{}, false, fmt.Errorf("invalid IPv4 prefix %q", in)
		}
		b[i] = byte(n)
	}
	return netip.PrefixFrom(netip.AddrFrom4(b), 8*len(parts)), true, nil
}

// nameKeyOf normalizes a host, domain or address key.
func nameKeyOf(tag, k string) (string, error) {
	local, dom, hasAt := cutLastAt(k)
	if !hasAt {
		d, err := address.Domain(k)
		if err != nil {
			return "", fmt.Errorf("bad host or domain %q: %v", k, err)
		}
		return d, nil
	}
	if tag == tagConnect {
		return "", fmt.Errorf("Connect: entries are IP addresses, networks or host names, not %q", k)
	}
	if local == "" {
		return "", fmt.Errorf("bad key %q: write the domain without @ (or user@ / user@domain)", k)
	}
	if strings.ContainsAny(local, " \t") {
		return "", fmt.Errorf("bad local part in %q", k)
	}
	if dom == "" {
		return local + "@", nil
	}
	d, err := address.Domain(dom)
	if err != nil {
		return "", fmt.Errorf("bad domain in %q: %v", k, err)
	}
	return local + "@" + d, nil
}

func cutLastAt(s string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return "", s, false
	}
	return s[:i], s[i+1:], true
}

// lookupAddr finds the access entry for an address under tag: the full
// user@domain, then the domain and its parents (longest first), then user@.
// At each key a tagged entry beats an untagged one. SKIP ends the search
// with no result.
func (m *accessMap) lookupAddr(tag string, a address.Address) *accessRule {
	local := strings.ToLower(a.Local)
	keys := []string{local + "@" + a.ASCII}
	keys = append(keys, parents(a.ASCII)...)
	keys = append(keys, local+"@")
	for _, k := range keys {
		if r, found := pick(m.names[nameKey{tag, k}], m.names[nameKey{"", k}]); found {
			return r
		}
	}
	return nil
}

// pick is one step of a longest-match search: the tagged entry for a key
// beats the untagged one; found ends the search, and SKIP ends it with no
// result.
func pick(tagged, untagged *accessRule) (r *accessRule, found bool) {
	r = tagged
	if r == nil {
		r = untagged
	}
	switch {
	case r == nil:
		return nil, false
	case r.Act == actSkip:
		return nil, true
	}
	return r, true
}

// lookupConnect finds the Connect: entry for a client: its IP address and the
// networks containing it (longest prefix first), then its host name and the
// parent domains. 127.0.0.1 or ::1 without a host name is "localhost".
func (m *accessMap) lookupConnect(c Client) *accessRule {
	if c.Addr.IsValid() {
		ip := c.Addr.Unmap().WithZone("")
		for bits := ip.BitLen(); bits >= 0; bits-- {
			pfx, err := ip.Prefix(bits)
			if err != nil {
				break
			}
			if r, found := pick(m.nets[netKey{tagConnect, pfx}], m.nets[netKey{"", pfx}]); found {
				return r
			}
		}
	}
	host := c.Hostname
	if host == "" && c.Addr.IsValid() && (c.Addr.Unmap() == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || c.Addr == netip.IPv6Loopback()) {
		// What /etc/hosts calls localhost; other 127/8 addresses have no name.
		host = "localhost"
	}
	if host == "" {
		return nil
	}
	for _, k := range parents(normDomain(host)) {
		if r, found := pick(m.names[nameKey{tagConnect, k}], m.names[nameKey{"", k}]); found {
			return r
		}
	}
	return nil
}

// NeedsClientHostname reports whether access has Connect: host name entries
// (tagged, or untagged host/domain entries, which apply to Connect too), so
// the ingress does a PTR lookup only when one can matter. "localhost" does
// not count: 127.0.0.1 and ::1 without a PTR name are taken as localhost.
func (p *Policy) NeedsClientHostname() bool { return p.access.hostNames > 0 }

// ConnectRelay reports whether the client's Connect: entry (by address,
// network or host name, as CheckRcpt finds it) is RELAY: a client that may
// relay anywhere by itself. The ingress DKIM-signs such clients' mail by
// default (OpenDKIM's InternalHosts).
func (p *Policy) ConnectRelay(c Client) bool {
	r := p.access.lookupConnect(c)
	return r != nil && r.Act == actRelay
}

// Client is the connecting SMTP client.
type Client struct {
	Addr     netip.Addr
	Hostname string // forward-confirmed PTR name, "" if unknown
	// User is the SMTP AUTH user of the session ("" when not
	// authenticated): an authenticated user may relay; every other access
	// rule (To:, From:, Connect: REJECT…) still applies.
	User string
}

// Verdict is the decision on one recipient.
type Verdict struct {
	Reject  *Reply // non-nil: refuse this recipient with this reply
	Discard bool   // accept but drop silently (DISCARD)
	Rule    string // the deciding entry, e.g. "access:5: To:example.com RELAY"
}

func (r *accessRule) reply(prefix string) *Reply {
	if r.Act == actError {
		rep := r.Err.Reply
		rep.Text = prefix + rep.Text
		return &rep
	}
	return &Reply{Code: 550, Enhanced: "5.7.1", Text: prefix + "Access denied"}
}

// CheckRcpt decides on one RCPT TO (all checks at RCPT time, as with
// FEATURE(delay_checks)). from is the envelope sender ("" = null sender),
// rcpt the recipient as sent.
//
//  1. To: entry for rcpt: REJECT/ERROR refuse, DISCARD discards, RELAY makes
//     it relayable, OK accepts it as a local recipient.
//  2. From: entry for the sender: REJECT/ERROR refuse, DISCARD discards,
//     OK/RELAY make the sender a friend, exempt from Connect: rejections.
//  3. Connect: entry for the client: REJECT/ERROR/DISCARD apply unless the
//     sender is a friend; RELAY lets the client relay anywhere.
//  4. Relaying: allowed for Connect: RELAY clients, To: OK recipients,
//     local-host-names and virtusertable domains, and To: RELAY (with
//     from_whitelist only for senders with a From: OK/RELAY entry).
func (p *Policy) CheckRcpt(c Client, from, rcpt string) Verdict {
	ra, err := address.Parse(rcpt)
	if err != nil {
		enh, reason := "5.1.3", err.Error()
		var ae *address.Error
		if errors.As(err, &ae) {
			enh, reason = ae.Enhanced, ae.Reason
		}
		return Verdict{
			Reject: &Reply{Code: 553, Enhanced: enh, Text: fmt.Sprintf("<%s>... %s", rcpt, reason)},
			Rule:   "invalid recipient address",
		}
	}
	prefix := "<" + rcpt + ">... "
	m := &p.access

	// 1. To:
	toRule := m.lookupAddr(tagTo, ra)
	if toRule != nil {
		switch toRule.Act {
		case actReject, actError:
			return Verdict{Reject: toRule.reply(prefix), Rule: toRule.ref()}
		case actDiscard:
			return Verdict{Discard: true, Rule: toRule.ref()}
		}
	}

	// 2. From:
	var friend *accessRule
	if from != "" {
		if fa, err := address.Parse(from); err == nil {
			if fr := m.lookupAddr(tagFrom, fa); fr != nil {
				switch fr.Act {
				case actReject, actError:
					return Verdict{Reject: fr.reply(""), Rule: fr.ref()}
				case actDiscard:
					return Verdict{Discard: true, Rule: fr.ref()}
				case actOK, actRelay:
					friend = fr
				}
			}
		}
	}

	// 3. Connect:
	waived := ""
	cr := m.lookupConnect(c)
	if cr != nil {
		switch cr.Act {
		case actReject, actError, actDiscard:
			if friend == nil && cr.Act == actDiscard {
				return Verdict{Discard: true, Rule: cr.ref()}
			}
			if friend == nil {
				return Verdict{Reject: cr.reply(""), Rule: cr.ref()}
			}
			waived = " (" + cr.ref() + " waived for friend " + friend.ref() + ")"
		case actRelay:
			return Verdict{Rule: cr.ref()}
		}
	}

	// 4. Relaying. As in sendmail, To: OK accepts a recipient that other
	// checks would refuse, but "accept does not mean relay": it never makes
	// a non-local domain relayable (a typo there must not open the relay).
	if line, ok := p.local[ra.ASCII]; ok {
		return Verdict{Rule: ruleRef(KeyLocalHostNames, line, ra.ASCII) + waived}
	}
	if line, ok := p.virtDomains[ra.ASCII]; ok {
		return Verdict{Rule: ruleRef(KeyVirtusertable, line, "virtual domain "+ra.ASCII) + waived}
	}
	if c.User != "" {
		return Verdict{Rule: "authenticated as " + c.User + waived}
	}
	denied := &Reply{Code: 550, Enhanced: "5.7.1", Text: prefix + "Relaying denied"}
	if toRule != nil && toRule.Act == actRelay {
		if !p.Settings.FromWhitelist {
			return Verdict{Rule: toRule.ref() + waived}
		}
		if friend != nil {
			return Verdict{Rule: toRule.ref() + "; " + friend.ref() + " (from_whitelist)" + waived}
		}
		return Verdict{Reject: denied, Rule: toRule.ref() + ": sender not whitelisted (from_whitelist: no From: OK/RELAY entry)"}
	}
	return Verdict{Reject: denied, Rule: "no access entry grants relay" + waived}
}
