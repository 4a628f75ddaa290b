package policy

import (
	"fmt"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// maxExpandDepth bounds alias / virtusertable recursion.
const maxExpandDepth = 20

// aliasEntry is one aliases entry (with its continuation lines).
type aliasEntry struct {
	Name  string   // lower case
	Items []string // as written
	Addrs []string // the address of each item ("Name <a@b>" → "a@b")
	Line  int
}

// virtEntry is one virtusertable line.
type virtEntry struct {
	Key      string // LHS, lower case, as written
	RHS      string // as written, comment removed
	Line     int
	Err      *errSpec // error:...
	Redirect string   // address of a "...REDIRECT" target (may hold %n)
	Target   string   // address or local name (may hold %n)
}

func (v *virtEntry) ref() string {
	return ruleRef(KeyVirtusertable, v.Line, v.Key+" -> "+v.RHS)
}

// Expansion is the result of virtusertable and aliases for one recipient.
type Expansion struct {
	Addrs  []string // final recipients (verbatim when untouched)
	Reject *Reply   // error: target, .REDIRECT 551, unknown local user, alias loop
	Steps  []string // explanation lines
}

func (p *Policy) parseAliases(lines []line) []error {
	var errs []error
	var cur *aliasEntry
	broken := false
	finish := func() {
		if cur == nil || broken {
			cur, broken = nil, false
			return
		}
		if len(cur.Items) == 0 {
			errs = append(errs, &ParseError{File: KeyAliases, Line: cur.Line, Msg: fmt.Sprintf("alias %q has no targets", cur.Name)})
		} else if prev, ok := p.aliases[cur.Name]; ok {
			errs = append(errs, &ParseError{File: KeyAliases, Line: cur.Line, Msg: fmt.Sprintf("duplicate alias %q (first on line %d)", cur.Name, prev.Line)})
		} else {
			p.aliases[cur.Name] = cur
			p.aliasOrder = append(p.aliasOrder, cur)
		}
		cur = nil
	}
	for _, l := range lines {
		text := l.text
		if text[0] == ' ' || text[0] == '\t' {
			if cur == nil && !broken {
				errs = append(errs, l.errorf("continuation line (starts with white space) without an alias before it"))
				broken = true
				continue
			}
		} else {
			finish()
			name, rest, ok := strings.Cut(text, ":")
			name = strings.ToLower(strings.TrimSpace(name))
			switch {
			case !ok:
				errs = append(errs, l.errorf("expected \"name: address, address\", got %q", strings.TrimSpace(text)))
				broken = true
				continue
			case name == "" || strings.ContainsAny(name, " \t@,\"<>\\"):
				errs = append(errs, l.errorf("bad alias name %q (a local name such as postmaster)", name))
				broken = true
				continue
			}
			cur = &aliasEntry{Name: name, Line: l.no}
			text = rest
		}
		if broken {
			continue
		}
		items, err := splitList(text)
		if err != nil {
			errs = append(errs, l.errorf("%v", err))
			broken = true
			continue
		}
		for _, it := range items {
			addr, err := aliasTarget(it)
			if err != nil {
				errs = append(errs, l.errorf("alias %s: %v", cur.Name, err))
				broken = true
				break
			}
			cur.Items = append(cur.Items, it)
			cur.Addrs = append(cur.Addrs, addr)
		}
	}
	finish()
	return errs
}

// splitList splits an address list on commas outside quotes and <>.
func splitList(s string) ([]string, error) {
	var out []string
	inQ, depth, start := false, 0, 0
	add := func(it string) {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQ && c == '\\':
			i++
		case c == '"':
			inQ = !inQ
		case inQ:
		case c == '<':
			depth++
		case c == '>':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced > in %q", strings.TrimSpace(s))
			}
		case c == ',' && depth == 0:
			add(s[start:i])
			start = i + 1
		}
	}
	if inQ {
		return nil, fmt.Errorf("unterminated quote in %q", strings.TrimSpace(s))
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced < in %q", strings.TrimSpace(s))
	}
	add(s[start:])
	return out, nil
}

// aliasTarget checks one alias list item and returns its address.
// Programs, files, :include: lists and \user local delivery need local
// delivery, which a forwarder does not do.
func aliasTarget(it string) (string, error) {
	lower := strings.ToLower(it)
	unq := strings.TrimPrefix(it, `"`)
	quotedAddr := strings.HasPrefix(it, `"`) && strings.Contains(it, `"@`)
	switch {
	case strings.HasPrefix(lower, ":include:"):
		return "", fmt.Errorf("%q: :include: lists are not supported by a forwarder (no local files); list the addresses in the alias itself", it)
	case strings.HasPrefix(unq, "|") && !quotedAddr:
		return "", fmt.Errorf("%q: program targets (|command) are not supported by a forwarder (no local delivery); point the alias at a mail address", it)
	case strings.HasPrefix(unq, "/") && !quotedAddr:
		return "", fmt.Errorf("%q: file targets (/path) are not supported by a forwarder (no local delivery); point the alias at a mail address", it)
	case strings.HasPrefix(it, `\`):
		return "", fmt.Errorf("%q: local mailbox delivery (\\user) is not supported by a forwarder (it has no mailboxes); point the alias at a mail address", it)
	}
	addr := it
	if i := strings.LastIndexByte(it, '<'); i >= 0 && !inQuotes(it, i) {
		if !strings.HasSuffix(it, ">") || strings.IndexByte(it[i:], '>') != len(it)-i-1 {
			return "", fmt.Errorf("%q: expected Name <address>", it)
		}
		addr = strings.TrimSpace(it[i+1 : len(it)-1])
		if addr == "" {
			return "", fmt.Errorf("%q: empty address", it)
		}
	} else if spaceOutsideQuotes(it) {
		return "", fmt.Errorf("%q: white space inside an address (missing comma between addresses?)", it)
	}
	if strings.ContainsAny(addr, "<>") {
		return "", fmt.Errorf("%q: bad address", it)
	}
	if err := checkTarget(addr); err != nil {
		return "", fmt.Errorf("%q: %v", it, err)
	}
	return addr, nil
}

// checkTarget validates a mail address or a local name.
func checkTarget(addr string) error {
	if strings.LastIndexByte(addr, '@') >= 0 {
		_, err := address.Parse(addr)
		return err
	}
	if _, err := address.Parse(addr + "@localhost"); err != nil {
		return fmt.Errorf("bad local name: %v", err)
	}
	return nil
}

func inQuotes(s string, pos int) bool {
	inQ := false
	for i := 0; i < pos && i < len(s); i++ {
		switch {
		case inQ && s[i] == '\\':
			i++
		case s[i] == '"':
			inQ = !inQ
		}
	}
	return inQ
}

func spaceOutsideQuotes(s string) bool {
	inQ := false
	for i := 0; i < len(s); i++ {
		switch {
		case inQ && s[i] == '\\':
			i++
		case s[i] == '"':
			inQ = !inQ
		case !inQ && (s[i] == ' ' || s[i] == '\t'):
			return true
		}
	}
	return false
}

func (p *Policy) parseVirtusertable(lines []line) []error {
	var errs []error
	for _, l := range lines {
		lhs, rhs := fields(l.text)
		v := &virtEntry{Key: strings.ToLower(lhs), Line: l.no}
		local, dom, ok := cutLastAt(v.Key)
		if !ok {
			errs = append(errs, l.errorf("%q: key must be user@domain, user+*@domain or @domain", lhs))
			continue
		}
		d, err := address.Domain(dom)
		if err != nil {
			errs = append(errs, l.errorf("%q: bad domain: %v", lhs, err))
			continue
		}
		norm := local + "@" + d
		if rhs == "" {
			errs = append(errs, l.errorf("%q has no target", lhs))
			continue
		}
		if len(rhs) >= 6 && strings.EqualFold(rhs[:6], "error:") {
			e, err := parseErrorSpec(rhs[6:], true, "Address rejected")
			if err != nil {
				errs = append(errs, l.errorf("%v", err))
				continue
			}
			v.Err = &e
		} else {
			rhs = stripComment(rhs)
			if err := checkVirtTarget(rhs, v); err != nil {
				errs = append(errs, l.errorf("%q: %v", rhs, err))
				continue
			}
		}
		v.RHS = rhs
		if prev, ok := p.virt[norm]; ok {
			errs = append(errs, l.errorf("duplicate entry %s (first on line %d)", lhs, prev.Line))
			continue
		}
		p.virt[norm] = v
		p.virtOrder = append(p.virtOrder, v)
		if _, ok := p.virtDomains[d]; !ok {
			p.virtDomains[d] = l.no
		}
	}
	return errs
}

func checkVirtTarget(rhs string, v *virtEntry) error {
	if strings.ContainsAny(rhs, " \t") {
		return fmt.Errorf("target must be one address (use a local alias name for lists)")
	}
	if strings.Contains(rhs, ",") {
		return fmt.Errorf("target must be one address; point it at an alias (local name) for a list")
	}
	for i := 0; i+1 < len(rhs); i++ {
		if rhs[i] == '%' && isDigit(rhs[i+1]) && (rhs[i+1] < '1' || rhs[i+1] > '3') {
			return fmt.Errorf("unknown substitution %%%c (%%1 user, %%2 detail, %%3 +detail)", rhs[i+1])
		}
	}
	sample := subst(rhs, "user", "detail", "+detail")
	if len(rhs) > 9 && strings.EqualFold(rhs[len(rhs)-9:], ".REDIRECT") {
		to := rhs[:len(rhs)-9]
		if !strings.Contains(to, "@") {
			return fmt.Errorf("redirect target needs user@domain")
		}
		if _, err := address.Parse(sample[:len(sample)-9]); err != nil {
			return err
		}
		v.Redirect = to
		return nil
	}
	if err := checkTarget(sample); err != nil {
		return err
	}
	v.Target = rhs
	return nil
}

// subst replaces %1, %2 and %3.
func subst(s, user, detail, plusDetail string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+1 < len(s) {
			switch s[i+1] {
			case '1':
				b.WriteString(user)
				i++
				continue
			case '2':
				b.WriteString(detail)
				i++
				continue
			case '3':
				b.WriteString(plusDetail)
				i++
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitDetail splits "user+detail" at the first '+' after the first
// character (so MMS "+4512345678/TYPE=PLMN" has no detail).
func splitDetail(local string) (user, detail string, plus bool) {
	if i := strings.IndexByte(local, '+'); i > 0 {
		return local[:i], local[i+1:], true
	}
	return local, "", false
}

type expander struct {
	p     *Policy
	rcpt  string
	max   int // 0: no limit
	out   []string
	seen  map[string]bool // emitted addresses
	done  map[string]bool // fully expanded keys
	steps []string
}

// Expand applies virtusertable (for domains that have entries) and then
// aliases (for local-host-names domains), recursively up to 20 levels.
// Duplicates are removed, order is kept. A loop, an error: target, a
// .REDIRECT target, a local user without alias or a recipient in a virtual
// domain without entry (and without catch-all) rejects the recipient.
func (p *Policy) Expand(rcpt string) Expansion { return p.ExpandMax(rcpt, 0) }

// ExpandMax is Expand that refuses (452 4.5.3) an expansion to more than
// max addresses (0: no limit), stopping as soon as it gets there.
func (p *Policy) ExpandMax(rcpt string, max int) Expansion {
	x := &expander{p: p, rcpt: rcpt, max: max, seen: map[string]bool{}, done: map[string]bool{}}
	if rep := x.expand(rcpt, 0, nil); rep != nil {
		return Expansion{Reject: rep, Steps: x.steps}
	}
	return Expansion{Addrs: x.out, Steps: x.steps}
}

func identity(addr string) string {
	local, dom, ok := cutLastAt(addr)
	if !ok {
		return strings.ToLower(addr)
	}
	return strings.ToLower(local) + "@" + normDomain(dom)
}

func (x *expander) emit(addr string) *Reply {
	k := identity(addr)
	if !x.seen[k] {
		if x.max > 0 && len(x.out) >= x.max {
			x.steps = append(x.steps, fmt.Sprintf("stopped at %s: more than %d recipients", addr, x.max))
			return &Reply{Code: 452, Enhanced: "4.5.3", Text: fmt.Sprintf("<%s>... Too many recipients: the expansion has more than %d", x.rcpt, x.max)}
		}
		x.seen[k] = true
		x.out = append(x.out, addr)
	}
	return nil
}

func (x *expander) expand(addr string, depth int, chain []string) *Reply {
	key := identity(addr)
	for i, c := range chain {
		if c == key {
			x.steps = append(x.steps, "loop: "+strings.Join(append(chain[i:len(chain):len(chain)], key), " -> "))
			return &Reply{Code: 554, Enhanced: "5.4.6", Text: fmt.Sprintf("<%s>... Alias loop", x.rcpt)}
		}
	}
	if depth > maxExpandDepth {
		x.steps = append(x.steps, fmt.Sprintf("stopped at %s: more than %d levels", addr, maxExpandDepth))
		return &Reply{Code: 554, Enhanced: "5.4.6", Text: fmt.Sprintf("<%s>... Alias nesting too deep", x.rcpt)}
	}
	if x.done[key] {
		return nil
	}
	chain = append(chain[:len(chain):len(chain)], key)
	var rep *Reply
	local, _, hasAt := cutLastAt(addr)
	switch {
	case !hasAt:
		rep = x.alias(addr, addr, depth, chain)
	default:
		a, err := address.Parse(addr)
		if err != nil {
			rep = x.emit(addr) // not ours to judge here; CheckRcpt refuses bad syntax
			break
		}
		virtual, matched := false, false
		if _, ok := x.p.virtDomains[a.ASCII]; ok {
			virtual = true
			handled, r := x.virtuser(a, depth, chain)
			if handled {
				rep = r
				break
			}
			matched = r == errIdentity
		}
		if _, ok := x.p.local[a.ASCII]; ok {
			rep = x.alias(local, addr, depth, chain)
			break
		}
		if virtual && !matched && depth == 0 {
			// A virtual domain without a catch-all accepts only the
			// addresses it lists (sendmail: User unknown). What the policy
			// itself expands to (alias and virtusertable targets) is routed
			// as the operator wrote it.
			x.steps = append(x.steps, "virtusertable: no entry for "+a.Raw)
			rep = &Reply{Code: 550, Enhanced: "5.1.1", Text: fmt.Sprintf("<%s>... User unknown", a.Raw)}
			break
		}
		rep = x.emit(addr)
	}
	if rep == nil {
		x.done[key] = true
	}
	return rep
}

// errIdentity is virtuser's note that an entry maps the address to itself.
var errIdentity = &Reply{}

// virtuser looks a up in virtusertable, sendmail's order: user+detail@d,
// user++@d (non-empty detail), user+*@d, user@d, ++@d, +*@d, @d; without a
// detail user@d then @d. handled is false when nothing matched (or the entry
// maps the address to itself, then the reply is errIdentity), so aliases /
// pass-through apply.
func (x *expander) virtuser(a address.Address, depth int, chain []string) (bool, *Reply) {
	user, detail, plus := splitDetail(a.Local)
	lu, ld := strings.ToLower(user), strings.ToLower(detail)
	d := "@" + a.ASCII
	var keys []string
	plusDetail := ""
	if plus {
		plusDetail = "+" + detail
		keys = append(keys, lu+"+"+ld+d)
		if detail != "" {
			keys = append(keys, lu+"++"+d)
		}
		keys = append(keys, lu+"+*"+d, lu+d)
		if detail != "" {
			keys = append(keys, "++"+d)
		}
		keys = append(keys, "+*"+d, d)
	} else {
		keys = append(keys, strings.ToLower(a.Local)+d, d)
	}
	var v *virtEntry
	for _, k := range keys {
		if v = x.p.virt[k]; v != nil {
			break
		}
	}
	if v == nil {
		return false, nil
	}
	x.steps = append(x.steps, v.ref())
	switch {
	case v.Err != nil:
		r := v.Err.Reply
		r.Text = fmt.Sprintf("<%s>... %s", a.Raw, r.Text)
		return true, &r
	case v.Redirect != "":
		to := subst(v.Redirect, user, detail, plusDetail)
		return true, &Reply{Code: 551, Enhanced: "5.1.6", Text: fmt.Sprintf("User not local; please try <%s>", to)}
	}
	to := subst(v.Target, user, detail, plusDetail)
	if identity(to) == identity(a.Raw) {
		return false, errIdentity // identity mapping: passes through
	}
	return true, x.expand(to, depth+1, chain)
}

// alias expands a local name: name, then user+* and user for user+detail.
func (x *expander) alias(name, display string, depth int, chain []string) *Reply {
	ln := strings.ToLower(name)
	keys := []string{ln}
	if user, _, plus := splitDetail(ln); plus {
		keys = append(keys, user+"+*", user)
	}
	var e *aliasEntry
	for _, k := range keys {
		if e = x.p.aliases[k]; e != nil {
			break
		}
	}
	if e == nil {
		x.steps = append(x.steps, fmt.Sprintf("%s: local recipient without alias", display))
		return &Reply{Code: 550, Enhanced: "5.1.1", Text: fmt.Sprintf("<%s>... User unknown", display)}
	}
	x.steps = append(x.steps, ruleRef(KeyAliases, e.Line, e.Name+" -> "+strings.Join(e.Items, ", ")))
	for _, t := range e.Addrs {
		if rep := x.expand(t, depth+1, chain); rep != nil {
			return rep
		}
	}
	return nil
}
