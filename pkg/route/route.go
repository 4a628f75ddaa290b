// Package route decides where mail for a recipient domain goes: a static
// route (sendmail mailertable semantics) or the domain's MX hosts.
package route

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/mxresolve"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// Resolver is the DNS the router needs.
type Resolver interface {
	LookupMX(ctx context.Context, domain string) ([]mxresolve.Host, error)
	LookupHost(ctx context.Context, name string) ([]netip.Addr, error)
}

// Host is one next hop of a static route.
type Host struct {
	Name    string // host name or IP address
	Literal bool   // [name]: use its addresses, no MX lookup
	Port    uint16 // 0 = the router's default port
}

// Entry is a static route: hosts tried in order, or a fixed error.
type Entry struct {
	Hosts []Host
	Error *Error // mailertable "error:" entries
}

// Error is a routing failure. Permanent ones fail the recipients at once.
type Error struct {
	Permanent bool
	Enhanced  string
	Msg       string
	Err       error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}
func (e *Error) Unwrap() error { return e.Err }

// Table maps domains to routes like sendmail's mailertable: an exact
// domain, then ".parent" entries for subdomains, then "." for everything.
type Table struct {
	entries map[string]Entry
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{entries: map[string]Entry{}} }

// Add adds key → rhs, where rhs is mailertable syntax: "smtp:[10.1.1.1]:[10.1.1.2]",
// "esmtp:relay.example.com", "[127.0.0.1]:2526" (the mailer may be omitted),
// "error:5.1.1:User unknown". A purely numeric ":NNN" segment is the port of the
// host before it.
func (t *Table) Add(key, rhs string) error {
	key = strings.ToLower(strings.TrimSpace(key))
	if key == "" {
		return errors.New("route: empty domain")
	}
	if key != "." {
		d, parent := strings.CutPrefix(key, ".")
		ascii, err := address.Domain(d)
		if err != nil {
			return fmt.Errorf("route: %q: %w", key, err)
		}
		// Store the form Lookup is given: A-labels, no trailing dot.
		key = ascii
		if parent {
			key = "." + ascii
		}
	}
	e, err := ParseRHS(rhs)
	if err != nil {
		return fmt.Errorf("route %s: %w", key, err)
	}
	t.entries[key] = e
	return nil
}

// ParseRHS parses a mailertable right-hand side.
func ParseRHS(rhs string) (Entry, error) {
	rhs = strings.TrimSpace(rhs)
	mailer, rest, found := strings.Cut(rhs, ":")
	switch {
	case found && (mailer == "smtp" || mailer == "esmtp" || mailer == "smtp8" || mailer == "dsmtp" || mailer == "relay"):
	case found && mailer == "error":
		code, text, _ := strings.Cut(rest, ":")
		code = strings.TrimSpace(code)
		if strings.HasPrefix(text, "\"") || text == "" {
			text = strings.Trim(text, "\" ")
		}
		if !ValidStatus(code) {
			return Entry{}, fmt.Errorf("error: entry needs a 4.x.x or 5.x.x status, got %q", code)
		}
		if text == "" {
			text = "Routing error"
		}
		return Entry{Error: &Error{Permanent: code[0] == '5', Enhanced: code, Msg: text}}, nil
	case found && strings.HasPrefix(rhs, "["):
		rest = rhs
	case found:
		return Entry{}, fmt.Errorf("unknown mailer %q (smtp, esmtp, relay or error)", mailer)
	default:
		rest = rhs
	}
	var hosts []Host
	for _, seg := range splitHosts(rest) {
		if seg == "" {
			return Entry{}, fmt.Errorf("empty host in %q", rhs)
		}
		if n, err := strconv.ParseUint(seg, 10, 16); err == nil {
			if len(hosts) == 0 || hosts[len(hosts)-1].Port != 0 || n == 0 {
				return Entry{}, fmt.Errorf("misplaced port %q in %q", seg, rhs)
			}
			hosts[len(hosts)-1].Port = uint16(n)
			continue
		}
		h := Host{Name: seg}
		if strings.HasPrefix(seg, "[") {
			if !strings.HasSuffix(seg, "]") {
				return Entry{}, fmt.Errorf("unbalanced [ in %q", rhs)
			}
			h.Name, h.Literal = seg[1:len(seg)-1], true
			h.Name = strings.TrimPrefix(strings.TrimPrefix(h.Name, "IPv6:"), "ipv6:")
		}
		if _, err := netip.ParseAddr(h.Name); err != nil {
			if _, err := address.Domain(h.Name); err != nil && h.Name != "localhost" {
				return Entry{}, fmt.Errorf("bad host %q: %v", h.Name, err)
			}
		}
		hosts = append(hosts, h)
	}
	if len(hosts) == 0 {
		return Entry{}, fmt.Errorf("no host in %q", rhs)
	}
	return Entry{Hosts: hosts}, nil
}

// ValidStatus reports whether code is an RFC 3463 status "4.x.x" or "5.x.x"
// (subject and detail of 1-3 digits).
func ValidStatus(code string) bool {
	parts := strings.Split(code, ".")
	if len(parts) != 3 || (parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// splitHosts splits on ':' outside brackets.
func splitHosts(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ':':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

// Lookup finds the entry for domain (A-labels).
func (t *Table) Lookup(domain string) (Entry, bool) {
	_, e, ok := t.LookupKey(domain)
	return e, ok
}

// LookupKey is Lookup that also says which key matched ("example.com",
// ".example.com" or ".").
func (t *Table) LookupKey(domain string) (string, Entry, bool) {
	if t == nil {
		return "", Entry{}, false
	}
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if e, ok := t.entries[d]; ok {
		return d, e, true
	}
	for {
		i := strings.IndexByte(d, '.')
		if i < 0 {
			break
		}
		d = d[i+1:]
		if e, ok := t.entries["."+d]; ok {
			return "." + d, e, true
		}
	}
	e, ok := t.entries["."]
	return ".", e, ok
}

// String renders an entry as mailertable text.
func (e Entry) String() string {
	if e.Error != nil {
		return "error:" + e.Error.Enhanced + ":" + e.Error.Msg
	}
	parts := make([]string, 0, len(e.Hosts))
	for _, h := range e.Hosts {
		s := h.Name
		if h.Literal {
			s = "[" + s + "]"
		}
		if h.Port != 0 {
			s += ":" + strconv.Itoa(int(h.Port))
		}
		parts = append(parts, s)
	}
	return "smtp:" + strings.Join(parts, ":")
}

// Merge returns a new table with t's entries, overridden by over's.
func (t *Table) Merge(over *Table) *Table {
	out := NewTable()
	if t != nil {
		for k, v := range t.entries {
			out.entries[k] = v
		}
	}
	if over != nil {
		for k, v := range over.entries {
			out.entries[k] = v
		}
	}
	return out
}

// Len is the number of entries.
func (t *Table) Len() int { return len(t.entries) }

// Router turns a domain into hops.
type Router struct {
	Table *Table
	// Current, when set, is called for every lookup instead of using Table
	// (a hot-reloaded mailertable).
	Current  func() *Table
	Resolver Resolver
	Port     uint16 // destination SMTP port, default 25
	// BySender, when set, finds a route chosen by the sender (senderroutes).
	BySender func(sender, authUser string) (SenderRoute, bool)
}

func (r *Router) table() *Table {
	if r.Current != nil {
		return r.Current()
	}
	return r.Table
}

// SenderRoute is a route chosen by the message's sender or AUTH user
// (senderroutes, Postfix's sender_dependent_relayhost_maps).
type SenderRoute struct {
	Entry            Entry
	Relay            string // the right-hand side as written
	MailertableFirst bool   // the recipient domain's own mailertable entry wins
	Rule             string // the policy line, for logs and spans
}

// Request is what a route depends on: the recipient domain and, for
// senderroutes, the envelope sender and the AUTH user who submitted it.
type Request struct {
	Domain   string
	Sender   string
	AuthUser string
}

// Route returns the hops to try for domain, in order.
func (r *Router) Route(ctx context.Context, domain string) ([]delivery.Hop, error) {
	hops, _, err := r.RouteFor(ctx, Request{Domain: domain})
	return hops, err
}

// RouteFor returns the hops to try for req and why they were chosen: a
// sender route ("senderroutes:3: @example.com smtp:[relay]"), a mailertable
// entry ("mailertable example.com") or "" for MX routing. A sender route
// wins over the mailertable unless it says mailertable-first and the
// recipient domain has an entry of its own (not the "." default).
func (r *Router) RouteFor(ctx context.Context, req Request) ([]delivery.Hop, string, error) {
	domain := req.Domain
	port := r.Port
	if port == 0 {
		port = 25
	}
	key, e, ok := r.table().LookupKey(domain)
	why := ""
	if ok {
		why = "mailertable " + key
	}
	if r.BySender != nil {
		if sr, found := r.BySender(req.Sender, req.AuthUser); found && !(sr.MailertableFirst && ok && key != ".") {
			e, ok, why = sr.Entry, true, sr.Rule
		}
	}
	if ok {
		if e.Error != nil {
			return nil, why, e.Error
		}
		hops, err := r.entryHops(ctx, domain, e, port)
		return hops, why, err
	}
	hops, err := r.mxHops(ctx, domain, port)
	return hops, "", err
}

// entryHops resolves a static route's hosts.
func (r *Router) entryHops(ctx context.Context, domain string, e Entry, port uint16) ([]delivery.Hop, error) {
	var hops []delivery.Hop
	var lastErr error
	for _, h := range e.Hosts {
		p := h.Port
		if p == 0 {
			p = port
		}
		// The TLS policy and authinfo see the relay as the mailertable
		// names it ("[relay]:587"), whatever its addresses.
		ph := tlspolicy.Hop{Domain: domain, Relay: h.Name, Literal: h.Literal, Port: p}
		if ip, err := netip.ParseAddr(h.Name); err == nil {
			ph.Literal = true
			hops = append(hops, delivery.Hop{Name: "[" + h.Name + "]", Addr: netip.AddrPortFrom(ip, p), Policy: ph})
			continue
		}
		if h.Literal {
			addrs, err := r.Resolver.LookupHost(ctx, h.Name)
			if err != nil {
				lastErr = err
				continue
			}
			for _, a := range addrs {
				hops = append(hops, delivery.Hop{Name: h.Name, Addr: netip.AddrPortFrom(a, p), Policy: ph})
			}
			continue
		}
		mxs, err := r.Resolver.LookupMX(ctx, h.Name)
		if err != nil {
			lastErr = err
			continue
		}
		// The relay's MX hosts: a static route, so MTA-STS and DANE
		// (which are about the recipient domain's MX) do not apply.
		for _, hp := range hopsFromMX(mxs, p) {
			hp.Policy = ph
			hops = append(hops, hp)
		}
	}
	if len(hops) == 0 {
		return nil, fromResolve(domain, lastErr)
	}
	return hops, nil
}

// mxHops routes by the domain's MX (or its address literal).
func (r *Router) mxHops(ctx context.Context, domain string, port uint16) ([]delivery.Hop, error) {
	if strings.HasPrefix(domain, "[") {
		ip, err := address.Literal(domain)
		if err != nil {
			return nil, &Error{Permanent: true, Enhanced: "5.1.2", Msg: "Bad address literal " + domain}
		}
		return []delivery.Hop{{Name: domain, Addr: netip.AddrPortFrom(ip, port),
			Policy: tlspolicy.Hop{Relay: ip.String(), Literal: true, Port: port}}}, nil
	}
	mxs, err := r.Resolver.LookupMX(ctx, domain)
	if err != nil {
		return nil, fromResolve(domain, err)
	}
	hops := hopsFromMX(mxs, port)
	for i := range hops {
		hops[i].Policy = tlspolicy.Hop{Domain: domain}
		hops[i].MX = true
	}
	if len(hops) == 0 {
		return nil, &Error{Enhanced: "4.4.3", Msg: "No address for any MX host of " + domain}
	}
	return hops, nil
}

func hopsFromMX(mxs []mxresolve.Host, port uint16) []delivery.Hop {
	var hops []delivery.Hop
	for _, mx := range mxs {
		for _, a := range mx.Addrs {
			hops = append(hops, delivery.Hop{Name: mx.Name, Addr: netip.AddrPortFrom(a, port)})
		}
	}
	return hops
}

func fromResolve(domain string, err error) error {
	var re *mxresolve.Error
	if errors.As(err, &re) {
		return &Error{Permanent: re.Permanent, Enhanced: re.Enhanced, Msg: re.Msg, Err: err}
	}
	if err == nil {
		err = errors.New("no usable route")
	}
	return &Error{Enhanced: "4.4.3", Msg: "Routing to " + domain + " failed", Err: err}
}
