package policy

import (
	"fmt"
	"strings"
	"time"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/srs"
)

// The sender keys: what a forwarder does to the senders of the mail it
// relays (sendmail's masquerading and genericstable, Postfix's
// sender_dependent_relayhost_maps, postsrsd's SRS). srs holds secrets and
// belongs in the policy Secret.
const (
	KeyMasquerade    = "masquerade"
	KeyGenericstable = "genericstable"
	KeySenderRoutes  = "senderroutes"
	KeySRS           = "srs"
)

// The option word that extends a rewriting entry to the From:, Sender: and
// Reply-To: header fields (without it only the envelope sender changes).
const optHeaders = "headers"

// minSRSSecret is the shortest SRS secret the policy takes: a short one can
// be guessed, and then anyone can relay through the SRS domain.
const minSRSSecret = 16

// masqEntry is one masquerade line: addresses at Host (or, for ".domain",
// at any host under it) leave as the same user at As.
type masqEntry struct {
	Key     string // "host.example" or ".example" (A-labels)
	As      string
	Headers bool
	Line    int
	Text    string
}

// genericEntry is one genericstable line: "user@host new@domain" or
// "@host %1@domain".
type genericEntry struct {
	Key     string // lower case "user@host" or "@host" (A-label host)
	RHS     string
	Headers bool
	Line    int
	Text    string
}

// senderRouteEntry is one senderroutes line.
type senderRouteEntry struct {
	Key              string // "user@domain", "@domain" or "auth:NAME"
	RHS              string
	Entry            route.Entry
	MailertableFirst bool
	Line             int
	Text             string
}

// keyed is a map file's entries by key, in file order.
type keyed[T any] struct {
	byKey map[string]*T
	lines map[string]int
	order []*T
}

// add files e under key, or says on which line key came first.
func (k *keyed[T]) add(l line, key, shown string, e *T) error {
	if prev, ok := k.lines[key]; ok {
		return l.errorf("duplicate entry %s (first on line %d)", shown, prev)
	}
	if k.byKey == nil {
		k.byKey, k.lines = map[string]*T{}, map[string]int{}
	}
	k.byKey[key], k.lines[key] = e, l.no
	k.order = append(k.order, e)
	return nil
}

// senders holds the parsed sender keys.
type senders struct {
	masq      keyed[masqEntry]
	except    map[string]int // A-label host → line (MASQUERADE_EXCEPTION)
	exposed   map[string]int // lower-case user → line (EXPOSED_USER)
	masqLines []string       // except/exposed lines, for Files

	generic keyed[genericEntry]
	routes  keyed[senderRouteEntry]

	srsSecrets []string
	srs        *srs.Rewriter
}

func newSenders() senders {
	return senders{except: map[string]int{}, exposed: map[string]int{}}
}

// takeOption removes a trailing option word from rest.
func takeOption(rest, opt string) (string, bool) {
	f := strings.Fields(rest)
	if len(f) > 1 && strings.EqualFold(f[len(f)-1], opt) {
		return strings.Join(f[:len(f)-1], " "), true
	}
	return rest, false
}

// parseMasquerade reads
//
//	server17.internal   example.com            # one host, envelope sender only
//	.internal           example.com  headers   # every host under internal, headers too
//	except  mail.internal                      # MASQUERADE_EXCEPTION
//	exposed root                               # EXPOSED_USER
func (p *Policy) parseMasquerade(lines []line) []error {
	var errs []error
	s := &p.senders
	for _, l := range lines {
		lhs, rest := fields(stripComment(l.text))
		switch strings.ToLower(lhs) {
		case "except":
			for _, h := range strings.Fields(rest) {
				d, err := address.Domain(strings.TrimPrefix(h, "."))
				if err != nil {
					errs = append(errs, l.errorf("bad exception host %q: %v", h, err))
					continue
				}
				s.except[d] = l.no
			}
			if rest == "" {
				errs = append(errs, l.errorf("except needs one or more host names"))
			}
			s.masqLines = append(s.masqLines, "except\t"+rest)
			continue
		case "exposed":
			for _, u := range strings.Fields(rest) {
				if strings.ContainsAny(u, "@<>\"") {
					errs = append(errs, l.errorf("exposed takes user names (such as root), got %q", u))
					continue
				}
				s.exposed[strings.ToLower(u)] = l.no
			}
			if rest == "" {
				errs = append(errs, l.errorf("exposed needs one or more user names"))
			}
			s.masqLines = append(s.masqLines, "exposed\t"+rest)
			continue
		}
		rest, headers := takeOption(rest, optHeaders)
		if rest == "" || strings.Contains(rest, " ") {
			errs = append(errs, l.errorf("expected \"HOST-OR-.DOMAIN  MASQUERADE-AS [headers]\", got %q", strings.TrimSpace(l.text)))
			continue
		}
		key, err := domainKey(lhs)
		if err != nil {
			errs = append(errs, l.errorf("bad host %q: %v", lhs, err))
			continue
		}
		as, err := address.Domain(rest)
		if err != nil {
			errs = append(errs, l.errorf("bad masquerade domain %q: %v", rest, err))
			continue
		}
		e := &masqEntry{Key: key, As: as, Headers: headers, Line: l.no, Text: strings.TrimSpace(stripComment(l.text))}
		if err := s.masq.add(l, key, lhs, e); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// domainKey normalises "host" or ".domain" to A-labels, keeping the dot.
// A ".domain" may be one label (".internal": every host under it).
func domainKey(k string) (string, error) {
	d, parent := strings.CutPrefix(k, ".")
	if !parent {
		return address.Domain(d)
	}
	a, err := address.Domain("x." + d)
	if err != nil {
		return "", err
	}
	return a[1:], nil
}

// parseGenericstable reads sendmail's genericstable: "user@host new@domain"
// and "@host %1@domain" (%1 is the user), with an optional "headers".
func (p *Policy) parseGenericstable(lines []line) []error {
	var errs []error
	s := &p.senders
	for _, l := range lines {
		lhs, rest := fields(stripComment(l.text))
		rest, headers := takeOption(rest, optHeaders)
		if rest == "" || strings.Contains(rest, " ") {
			errs = append(errs, l.errorf("expected \"user@host new@domain [headers]\" or \"@host %%1@domain\", got %q", strings.TrimSpace(l.text)))
			continue
		}
		user, host, ok := cutLastAt(lhs)
		if !ok {
			errs = append(errs, l.errorf("%q: a bare user needs sendmail's GENERICS_DOMAIN; write user@host or @host", lhs))
			continue
		}
		h, err := address.Domain(host)
		if err != nil {
			errs = append(errs, l.errorf("bad host %q: %v", host, err))
			continue
		}
		key := strings.ToLower(user) + "@" + h
		if user != "" {
			if _, err := address.Parse(lhs); err != nil {
				errs = append(errs, l.errorf("bad address %q: %v", lhs, err))
				continue
			}
		}
		if strings.Contains(rest, "%1") && user != "" {
			errs = append(errs, l.errorf("%%1 stands for the user of an @host entry; %q names its user", lhs))
			continue
		}
		if _, err := address.Parse(strings.ReplaceAll(rest, "%1", "user")); err != nil {
			errs = append(errs, l.errorf("bad new address %q: %v", rest, err))
			continue
		}
		e := &genericEntry{Key: key, RHS: rest, Headers: headers, Line: l.no, Text: strings.TrimSpace(stripComment(l.text))}
		if err := s.generic.add(l, key, lhs, e); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// parseSenderRoutes reads Postfix's sender_dependent_relayhost_maps with
// mailertable right-hand sides: "user@domain smtp:[relay]:587",
// "@domain [relay]", "auth:NAME smtp:[relay]" (an AUTH user), and an
// optional "mailertable-first" (a recipient's own mailertable entry wins).
func (p *Policy) parseSenderRoutes(lines []line) []error {
	var errs []error
	s := &p.senders
	for _, l := range lines {
		lhs, rest := fields(stripComment(l.text))
		rest, mtFirst := takeOption(rest, "mailertable-first")
		if rest == "" || strings.Contains(rest, " ") {
			errs = append(errs, l.errorf("expected \"SENDER RELAY [mailertable-first]\" (SENDER: user@domain, @domain or auth:NAME), got %q", strings.TrimSpace(l.text)))
			continue
		}
		key, err := senderRouteKey(lhs)
		if err != nil {
			errs = append(errs, l.errorf("%v", err))
			continue
		}
		e, err := route.ParseRHS(rest)
		if err != nil {
			errs = append(errs, l.errorf("%s: %v", lhs, err))
			continue
		}
		if e.Error != nil {
			errs = append(errs, l.errorf("%s: a sender route names a relay; refuse senders in the access map instead", lhs))
			continue
		}
		r := &senderRouteEntry{Key: key, RHS: rest, Entry: e, MailertableFirst: mtFirst, Line: l.no, Text: strings.TrimSpace(stripComment(l.text))}
		if err := s.routes.add(l, key, lhs, r); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func senderRouteKey(lhs string) (string, error) {
	if name, ok := strings.CutPrefix(lhs, "auth:"); ok {
		if name == "" || strings.ContainsAny(name, " \t") {
			return "", fmt.Errorf("bad AUTH user %q", lhs)
		}
		return "auth:" + name, nil
	}
	user, host, ok := cutLastAt(lhs)
	if !ok {
		return "", fmt.Errorf("%q: expected user@domain, @domain or auth:NAME", lhs)
	}
	h, err := address.Domain(host)
	if err != nil {
		return "", fmt.Errorf("bad domain %q: %v", host, err)
	}
	if user != "" {
		if _, err := address.Parse(lhs); err != nil {
			return "", fmt.Errorf("bad address %q: %v", lhs, err)
		}
	}
	return strings.ToLower(user) + "@" + h, nil
}

// parseSRS reads the SRS secrets, one a line; the first signs, every one
// verifies (keep the previous secret listed for the SRS max age after a
// rotation, so bounces in flight still come back).
func (p *Policy) parseSRS(lines []line) []error {
	var errs []error
	for _, l := range lines {
		sec := strings.TrimSpace(l.text)
		if len(sec) < minSRSSecret || strings.ContainsAny(sec, " \t") {
			errs = append(errs, l.errorf("an SRS secret is one word of at least %d characters", minSRSSecret))
			continue
		}
		p.senders.srsSecrets = append(p.senders.srsSecrets, sec)
	}
	if len(p.senders.srsSecrets) > srs.MaxSecrets {
		errs = append(errs, &ParseError{File: KeySRS, Msg: fmt.Sprintf("%d secrets (at most %d)", len(p.senders.srsSecrets), srs.MaxSecrets)})
	}
	return errs
}

// finishSenders ties the SRS secrets to the srs_domain setting. The two
// live in different halves of the policy (the ConfigMap and the Secret),
// which mailfwdctl validates one at a time: a half that lacks the other's
// key is not held to it; the pods read both, and there a set without the
// other is refused.
func (p *Policy) finishSenders(files map[string][]byte) []error {
	s := &p.senders
	_, haveSettings := files[KeySettings]
	_, haveSRS := files[KeySRS]
	switch {
	case p.Settings.SRSDomain == "" && len(s.srsSecrets) == 0:
		return nil
	case !haveSettings || !haveSRS:
		return nil
	case p.Settings.SRSDomain == "":
		return []error{&ParseError{File: KeySettings, Msg: "the srs key holds secrets but srs_domain is not set"}}
	case len(s.srsSecrets) == 0:
		return []error{&ParseError{File: KeySRS, Msg: "srs_domain is set but the srs key (policy Secret) holds no secret"}}
	}
	r, err := srs.New(p.Settings.SRSDomain, s.srsSecrets, p.Settings.SRSMaxAge)
	if err != nil {
		return []error{&ParseError{File: KeySettings, Msg: err.Error()}}
	}
	s.srs = r
	return nil
}

// SRS returns the SRS rewriter, or nil when SRS is off.
func (p *Policy) SRS() *srs.Rewriter { return p.senders.srs }

// isPLMN reports whether the local part is an MMS/PLMN address
// ("+4512345678/TYPE=PLMN"): those are never rewritten.
func isPLMN(local string) bool { return strings.Contains(strings.ToUpper(local), "/TYPE=") }

// SenderRewrite is what genericstable and masquerade do to one sender.
type SenderRewrite struct {
	Addr    string // the address to use (the input when nothing applies)
	Changed bool
	Headers bool   // the entry also covers From:, Sender: and Reply-To:
	Rule    string // "genericstable:3: …" or "masquerade:2: …"; "" when nothing applies
}

// RewriteSender applies genericstable, then masquerading, to addr, as
// sendmail does for a sender: a genericstable entry wins; otherwise a
// masquerade entry for the host or a parent ".domain" rewrites the domain,
// unless the host is an exception or the user is exposed. The null sender,
// PLMN addresses and unparsable addresses are never rewritten.
func (p *Policy) RewriteSender(addr string) SenderRewrite {
	out := SenderRewrite{Addr: addr}
	if addr == "" {
		return out
	}
	a, err := address.Parse(addr)
	if err != nil || isPLMN(a.Local) || strings.HasPrefix(a.ASCII, "[") {
		return out
	}
	s := &p.senders
	user := strings.ToLower(a.Local)
	for _, k := range []string{user + "@" + a.ASCII, "@" + a.ASCII} {
		if e, ok := s.generic.byKey[k]; ok {
			out.Addr = strings.ReplaceAll(e.RHS, "%1", a.Local)
			out.Changed = !strings.EqualFold(out.Addr, addr)
			out.Headers = e.Headers
			out.Rule = ruleRef(KeyGenericstable, e.Line, e.Text)
			return out
		}
	}
	if len(s.masq.order) == 0 {
		return out
	}
	if _, ok := s.exposed[user]; ok {
		return out
	}
	for _, d := range parents(a.ASCII) {
		if _, ok := s.except[d]; ok {
			return out
		}
		key := d
		if d != a.ASCII {
			key = "." + d
		}
		e, ok := s.masq.byKey[key]
		if !ok && d == a.ASCII {
			e, ok = s.masq.byKey["."+d] // ".example" also covers example itself
		}
		if ok {
			if e.As == a.ASCII {
				return out
			}
			out.Addr = a.Local + "@" + e.As
			out.Changed = true
			out.Headers = e.Headers
			out.Rule = ruleRef(KeyMasquerade, e.Line, e.Text)
			return out
		}
	}
	return out
}

// SenderRoute finds the route for mail from sender (the envelope sender as
// the ingress stored it: after genericstable, masquerade and SRS) submitted
// by AUTH user authUser ("" if none): the whole address,
// then the AUTH user, then the sender's @domain. ok is false when no entry
// matches.
func (p *Policy) SenderRoute(sender, authUser string) (r route.SenderRoute, ok bool) {
	s := &p.senders
	if len(s.routes.order) == 0 {
		return r, false
	}
	var keys []string
	if a, err := address.Parse(sender); err == nil {
		keys = append(keys, strings.ToLower(a.Local)+"@"+a.ASCII)
		if authUser != "" {
			keys = append(keys, "auth:"+authUser)
		}
		keys = append(keys, "@"+a.ASCII)
	} else if authUser != "" {
		keys = append(keys, "auth:"+authUser)
	}
	for _, k := range keys {
		if e, found := s.routes.byKey[k]; found {
			return route.SenderRoute{Entry: e.Entry, Relay: e.RHS, MailertableFirst: e.MailertableFirst,
				Rule: ruleRef(KeySenderRoutes, e.Line, e.Text)}, true
		}
	}
	return r, false
}

// sendersFiles adds the canonical text of the sender keys to out.
func (p *Policy) sendersFiles(out map[string][]byte) {
	s := &p.senders
	opt := func(on bool, word string) string {
		if on {
			return "\t" + word
		}
		return ""
	}
	same := func(l string) string { return l }
	out[KeyMasquerade] = append(lineEach(s.masq.order, func(e *masqEntry) string { return e.Key + "\t" + e.As + opt(e.Headers, optHeaders) }),
		lineEach(s.masqLines, same)...)
	out[KeyGenericstable] = lineEach(s.generic.order, func(e *genericEntry) string { return e.Key + "\t" + e.RHS + opt(e.Headers, optHeaders) })
	out[KeySenderRoutes] = lineEach(s.routes.order, func(e *senderRouteEntry) string {
		return e.Key + "\t" + e.RHS + opt(e.MailertableFirst, "mailertable-first")
	})
	out[KeySRS] = lineEach(s.srsSecrets, same)
}

// parseDays parses a duration that may be given in days ("21d").
func parseDays(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		var d int
		if _, err := fmt.Sscanf(n, "%d", &d); err != nil || d <= 0 || fmt.Sprint(d) != n {
			return 0, fmt.Errorf("bad number of days %q", v)
		}
		return time.Duration(d) * 24 * time.Hour, nil
	}
	return time.ParseDuration(v)
}

// Forwarded reports whether aliases or virtusertable sent rcpt on to target
// in another domain: mail that SRS rewrites the sender of.
func Forwarded(rcpt, target string) bool {
	a, err1 := address.Parse(rcpt)
	b, err2 := address.Parse(target)
	return err1 == nil && err2 == nil && a.ASCII != b.ASCII
}

// EnvelopeSender is the envelope sender that mail from from leaves with:
// genericstable or masquerade first, then, for mail forwarded to another
// domain, SRS (unless the sender is already in the SRS domain or one of
// local-host-names, for which this relay may send anyway). steps explain
// each change, for logs and mailfwdctl route.
func (p *Policy) EnvelopeSender(from string, forwarded bool) (sender string, steps []string) {
	rw := p.RewriteSender(from)
	sender = rw.Addr
	if rw.Changed {
		steps = append(steps, fmt.Sprintf("sender <%s> -> <%s> (%s)", from, sender, rw.Rule))
	}
	r := p.senders.srs
	if !forwarded || r == nil || sender == "" {
		return sender, steps
	}
	a, err := address.Parse(sender)
	if err != nil || a.ASCII == r.Domain() || p.IsLocal(a.ASCII) {
		return sender, steps
	}
	s, err := r.Forward(a.Local, a.Domain)
	if err != nil {
		return sender, steps
	}
	steps = append(steps, fmt.Sprintf("sender <%s> -> <%s> (SRS: forwarded to another domain)", sender, s))
	return s, steps
}

// RewritesHeaders reports whether any genericstable or masquerade entry
// covers header fields.
func (p *Policy) RewritesHeaders() bool {
	for _, e := range p.senders.masq.order {
		if e.Headers {
			return true
		}
	}
	for _, e := range p.senders.generic.order {
		if e.Headers {
			return true
		}
	}
	return false
}
