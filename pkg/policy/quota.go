package policy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// KeyQuota holds the outbound quotas per sender domain and per SMTP AUTH
// user (docs/quotas.md), kept for the whole ingress fleet.
const KeyQuota = "quota"

// Bounds of a quota: beyond them a value is a typo.
const (
	MaxQuotaHourly = 10_000_000
	MaxQuotaBurst  = shaping.MaxBurst
)

// QuotaLimit is what one sender may send, fleet-wide, counted in accepted
// messages.
type QuotaLimit struct {
	Rate   float64 // messages per second (0: no rate)
	Burst  int     // messages the rate lets through at once (0: one second's worth, at least 1)
	Hourly int     // messages per hour (0: no hourly count)
}

// ParseQuotaLimit reads "rate=R/s,burst=B,hourly=N" (any subset, separated
// by commas or blanks; a rate may say /m or /h).
func ParseQuotaLimit(spec string) (QuotaLimit, error) {
	var l QuotaLimit
	items := strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	if len(items) == 0 {
		return l, errors.New("no quota (want rate=R/s, burst=B, hourly=N)")
	}
	seen := map[string]bool{}
	for _, kv := range items {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return l, fmt.Errorf("%q: want NAME=VALUE", kv)
		}
		if seen[k] {
			return l, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		var err error
		switch k {
		case "rate":
			l.Rate, err = shaping.ParseRate(v)
		case "burst":
			l.Burst, err = shaping.BoundedInt(v, MaxQuotaBurst)
		case "hourly":
			l.Hourly, err = shaping.BoundedInt(v, MaxQuotaHourly)
		default:
			return l, fmt.Errorf("unknown quota %q (rate, burst, hourly)", k)
		}
		if err != nil {
			return l, fmt.Errorf("%s: %w", k, err)
		}
	}
	switch {
	case l.Rate == 0 && l.Hourly == 0:
		return l, errors.New("no rate and no hourly count (leave the line out for no quota)")
	case l.Burst > 0 && l.Rate == 0:
		return l, errors.New("burst without a rate")
	}
	return l, nil
}

// String is the canonical spelling ParseQuotaLimit reads back.
func (l QuotaLimit) String() string {
	var parts []string
	if l.Rate > 0 {
		parts = append(parts, "rate="+formatRate(l.Rate))
	}
	if l.Burst > 0 {
		parts = append(parts, "burst="+strconv.Itoa(l.Burst))
	}
	if l.Hourly > 0 {
		parts = append(parts, "hourly="+strconv.Itoa(l.Hourly))
	}
	return strings.Join(parts, ",")
}

func formatRate(r float64) string { return strconv.FormatFloat(r, 'g', -1, 64) + "/s" }

// Paces are the quota as the fleet keeps it: the rate (its burst one
// second's worth unless given) and the hourly count (a pace of Hourly per
// hour whose burst is the whole count). Always two, in that order.
func (l QuotaLimit) Paces() []shaping.Pace {
	p := make([]shaping.Pace, 2)
	if l.Rate > 0 {
		b := l.Burst
		if b == 0 {
			b = max(int(math.Ceil(l.Rate)), 1)
		}
		p[0] = shaping.Pace{Rate: l.Rate, Burst: b}
	}
	if l.Hourly > 0 {
		p[1] = shaping.Pace{Rate: float64(l.Hourly) / 3600, Burst: l.Hourly}
	}
	return p
}

// Describe names pace i of Paces for a reply: "10/s", "5000/hour".
func (l QuotaLimit) Describe(i int) string {
	if i == 1 {
		return strconv.Itoa(l.Hourly) + "/hour"
	}
	return formatRate(l.Rate)
}

// Quota is one quota a transaction is counted against.
type Quota struct {
	Rule  string // the rule as written: "example.com", "user:alice", "*", "user:*"
	User  bool   // a user's quota (else a sender domain's)
	Name  string // whose count it is: the rule's domain, the sender domain, the user name
	Key   string // its key in the fleet state: "d.example.com", "u.alice"
	Limit QuotaLimit
}

// Quotas are the parsed quota rules; immutable once built.
type Quotas struct {
	domains   map[string]QuotaLimit
	users     map[string]QuotaLimit
	anyDomain *QuotaLimit // "*": every sender domain without a rule, each its own count
	anyUser   *QuotaLimit // "user:*": every AUTH user without a rule
	order     []string    // canonical lines, for String
}

// NewQuotas returns empty quota rules.
func NewQuotas() *Quotas {
	return &Quotas{domains: map[string]QuotaLimit{}, users: map[string]QuotaLimit{}}
}

// Rule names of the defaults.
const (
	QuotaAnyDomain = "*"
	QuotaAnyUser   = "user:*"
	quotaUser      = "user:"
)

// add reads one line: "DOMAIN LIMITS", ".DOMAIN LIMITS", "* LIMITS",
// "user:NAME LIMITS" or "user:* LIMITS".
func (q *Quotas) add(lhs, rhs string) error {
	if rhs == "" {
		return fmt.Errorf("%q has no quota (e.g. rate=10/s,hourly=5000)", lhs)
	}
	lim, err := ParseQuotaLimit(rhs)
	if err != nil {
		return fmt.Errorf("%s: %v", lhs, err)
	}
	switch name, isUser := cutFold(lhs, quotaUser); {
	case lhs == QuotaAnyDomain:
		if q.anyDomain != nil {
			return errors.New("duplicate entry *")
		}
		q.anyDomain = &lim
		lhs = QuotaAnyDomain
	case isUser && name == "*":
		if q.anyUser != nil {
			return errors.New("duplicate entry user:*")
		}
		q.anyUser = &lim
		lhs = QuotaAnyUser
	case isUser:
		if err := smtpauth.CheckName(name); err != nil {
			return fmt.Errorf("bad user %q: %v", name, err)
		}
		name = strings.ToLower(name)
		if _, dup := q.users[name]; dup {
			return fmt.Errorf("duplicate entry user:%s", name)
		}
		q.users[name] = lim
		lhs = quotaUser + name
	default:
		d, err := address.Domain(strings.TrimPrefix(lhs, "."))
		if err != nil || strings.HasPrefix(d, "[") {
			return fmt.Errorf("bad sender domain %q (want a domain, *, user:NAME or user:*)", lhs)
		}
		if _, dup := q.domains[d]; dup {
			return fmt.Errorf("duplicate entry %s", d)
		}
		q.domains[d] = lim
		lhs = d
	}
	q.order = append(q.order, lhs+"\t"+lim.String())
	return nil
}

func cutFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// Len is the number of rules.
func (q *Quotas) Len() int { return len(q.order) }

// String is the canonical text of the rules (one line each).
func (q *Quotas) String() string {
	if len(q.order) == 0 {
		return ""
	}
	return strings.Join(q.order, "\n") + "\n"
}

// WithDefaults returns q with sender and user (the ingress's
// --sender-quota and --user-quota; nil: none) as its "*" and "user:*"
// rules where q has none.
func (q *Quotas) WithDefaults(sender, user *QuotaLimit) *Quotas {
	out := *q
	if out.anyDomain == nil {
		out.anyDomain = sender
	}
	if out.anyUser == nil {
		out.anyUser = user
	}
	return &out
}

// Empty reports whether no quota applies to anyone.
func (q *Quotas) Empty() bool {
	return q == nil || (len(q.domains) == 0 && len(q.users) == 0 && q.anyDomain == nil && q.anyUser == nil)
}

// For returns the quotas a transaction is counted against: the AUTH
// user's (user "" is none) and the sender domain's (senderDomain in
// lower-case A-labels; "" for the null sender: none). The most specific
// domain rule wins (it covers its subdomains, all in one count), else "*"
// gives the domain a count of its own.
func (q *Quotas) For(senderDomain, user string) []Quota {
	var out []Quota
	if user != "" {
		name := strings.ToLower(user)
		if l, ok := q.users[name]; ok {
			out = append(out, Quota{Rule: quotaUser + name, User: true, Name: name, Key: "u." + keyToken(name), Limit: l})
		} else if q.anyUser != nil {
			out = append(out, Quota{Rule: QuotaAnyUser, User: true, Name: name, Key: "u." + keyToken(name), Limit: *q.anyUser})
		}
	}
	if senderDomain == "" {
		return out
	}
	d := strings.ToLower(strings.TrimSuffix(senderDomain, "."))
	for p := d; ; {
		if l, ok := q.domains[p]; ok {
			return append(out, Quota{Rule: p, Name: p, Key: "d." + p, Limit: l})
		}
		i := strings.IndexByte(p, '.')
		if i < 0 || strings.HasPrefix(d, "[") {
			break
		}
		p = p[i+1:]
	}
	if q.anyDomain != nil {
		out = append(out, Quota{Rule: QuotaAnyDomain, Name: d, Key: "d." + keyToken(d), Limit: *q.anyDomain})
	}
	return out
}

// keyToken is s as one token of a KV key: itself when it holds only
// [a-z0-9-] and dots between non-empty labels, else "=" and its
// base64url form (no domain or rule name starts with "=").
func keyToken(s string) string {
	safe := s != "" && !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..")
	for i := 0; safe && i < len(s); i++ {
		c := s[i]
		safe = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.'
	}
	if safe {
		return s
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(s))
}

// parseQuota reads the quota key into p.Quotas.
func (p *Policy) parseQuota(lines []line) []error {
	var errs []error
	for _, l := range lines {
		lhs, rhs := fields(stripComment(l.text))
		if err := p.Quotas.add(lhs, rhs); err != nil {
			errs = append(errs, l.errorf("%v", err))
		}
	}
	return errs
}
