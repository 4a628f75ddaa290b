// Package shaping keeps every destination's limits for the whole worker
// fleet: concurrency as leases in a NATS KV bucket (one key per slot, with
// a TTL, refreshed while a delivery runs: a dead pod's slots expire), the
// message rate as GCRA (one theoretical arrival time per destination,
// advanced with a compare-and-swap), and suspensions set by reply rules.
// When the bucket cannot be reached a worker falls back to a small local
// share of each limit, never to no limit.
//
// A destination is a recipient domain (a rule covers its subdomains) or a
// next hop (an MX host, a mailertable relay host or an IP address). The
// rules come from the policy key "shaping" and from the worker's
// --domain-limit flags (the defaults policy entries override).
package shaping

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// Limit is what one destination may get from the whole fleet.
type Limit struct {
	Concurrency int     // deliveries in flight at once (0: no fleet limit)
	Rate        float64 // messages per second (0: no limit)
	Burst       int     // messages the rate may run ahead of its pace (0 and 1: none)
	MsgsPerConn int     // SMTP transactions per connection (0: the worker's --max-msgs-per-conn)
	NewConns    float64 // new SMTP connections per second (0: no limit)
	ConnBurst   int     // new connections the pace may run ahead of it (0 and 1: none)
}

// Zero reports whether l limits nothing.
func (l Limit) Zero() bool { return l == Limit{} }

// Fleet reports whether l needs the fleet state (a concurrency or a rate
// of messages or of new connections).
func (l Limit) Fleet() bool { return l.Concurrency > 0 || l.Rate > 0 || l.NewConns > 0 }

// String is the canonical spelling ParseLimit reads back.
func (l Limit) String() string {
	var parts []string
	if l.Concurrency > 0 {
		parts = append(parts, "concurrency="+strconv.Itoa(l.Concurrency))
	}
	if l.Rate > 0 {
		parts = append(parts, "rate="+strconv.FormatFloat(l.Rate, 'g', -1, 64)+"/s")
	}
	if l.Burst > 0 {
		parts = append(parts, "burst="+strconv.Itoa(l.Burst))
	}
	if l.MsgsPerConn > 0 {
		parts = append(parts, "msgs-per-conn="+strconv.Itoa(l.MsgsPerConn))
	}
	if l.NewConns > 0 {
		parts = append(parts, "new-conns="+strconv.FormatFloat(l.NewConns, 'g', -1, 64)+"/s")
	}
	if l.ConnBurst > 0 {
		parts = append(parts, "conn-burst="+strconv.Itoa(l.ConnBurst))
	}
	return strings.Join(parts, ",")
}

// Bounds of one limit: beyond them a value is a typo, not a limit.
const (
	MaxConcurrency = 1000    // slots of one destination (each is a KV key)
	MaxRate        = 100_000 // messages per second
	MaxBurst       = 100_000
	MaxMsgsPerConn = 100_000
	MinRate        = 1.0 / 3600 // per second: one an hour, the slowest rate or pace
	MaxSuspend     = 7 * 24 * time.Hour
	maxPattern     = 512 // bytes of one reply pattern
)

// ParseLimit reads "concurrency=N,rate=R/s,burst=B,msgs-per-conn=M,
// new-conns=R/s,conn-burst=B" (any subset, separated by commas or blanks;
// "conns" is new-conns too). A rate is per second unless it says /m or /h.
func ParseLimit(spec string) (Limit, error) {
	var l Limit
	items := strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	if len(items) == 0 {
		return l, errors.New("no limit (want concurrency=N, rate=R/s, burst=B, msgs-per-conn=M, new-conns=R/s, conn-burst=B)")
	}
	for _, kv := range items {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return l, fmt.Errorf("%q: want NAME=VALUE", kv)
		}
		var err error
		switch k {
		case "concurrency":
			l.Concurrency, err = BoundedInt(v, MaxConcurrency)
		case "rate":
			l.Rate, err = ParseRate(v)
		case "burst":
			l.Burst, err = BoundedInt(v, MaxBurst)
		case "msgs-per-conn":
			l.MsgsPerConn, err = BoundedInt(v, MaxMsgsPerConn)
		case "new-conns", "conns":
			l.NewConns, err = ParseRate(v)
		case "conn-burst":
			l.ConnBurst, err = BoundedInt(v, MaxBurst)
		default:
			return l, fmt.Errorf("unknown limit %q (concurrency, rate, burst, msgs-per-conn, new-conns, conn-burst)", k)
		}
		if err != nil {
			return l, fmt.Errorf("%s: %w", k, err)
		}
	}
	return l, nil
}

// BoundedInt reads a count from 0 to hi.
func BoundedInt(v string, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a number", v)
	case n < 0:
		return 0, fmt.Errorf("negative value %d", n)
	case n > hi:
		return 0, fmt.Errorf("%d is above the maximum %d", n, hi)
	}
	return n, nil
}

// ParseRate reads "4/s", "4", "120/m", "3600/h" as messages per second.
func ParseRate(v string) (float64, error) {
	num, unit, _ := strings.Cut(v, "/")
	per := 1.0
	switch unit {
	case "", "s":
	case "m":
		per = 60
	case "h":
		per = 3600
	default:
		return 0, fmt.Errorf("%q: unit must be /s, /m or /h", v)
	}
	f, err := strconv.ParseFloat(num, 64)
	switch {
	case err != nil || f != f: // NaN
		return 0, fmt.Errorf("%q is not a number", v)
	case f < 0:
		return 0, fmt.Errorf("negative rate %q", v)
	case f/per > MaxRate:
		return 0, fmt.Errorf("%q is above the maximum %d/s", v, MaxRate)
	case f > 0 && f/per < MinRate:
		// Slower is a typo (and a tiny rate would overflow its interval).
		return 0, fmt.Errorf("%q is below the minimum 1/h", v)
	}
	return f / per, nil
}

// Kind says what a destination is.
type Kind byte

const (
	KindDomain Kind = 'd' // a recipient domain and its subdomains
	KindHost   Kind = 'h' // a next hop: host name or IP address
)

// Dest is one limited destination: its key in the fleet state and its limit.
type Dest struct {
	Key   string // "d.example.com", "h.relay.example.net", "h.10.1.1.1"
	Name  string // as operators write it: "example.com", "[relay.example.net]"
	Limit Limit
}

// ReplyRule suspends a destination whose reply matches Pattern.
type ReplyRule struct {
	Pattern *regexp.Regexp // matched against "CODE ENHANCED TEXT"
	Suspend time.Duration
	Line    int
}

// Rules are the parsed shaping rules; immutable once built.
type Rules struct {
	domains map[string]Limit
	hosts   map[string]Limit
	replies []ReplyRule
	order   []string // canonical lines, for String
}

// NewRules returns empty rules.
func NewRules() *Rules { return &Rules{domains: map[string]Limit{}, hosts: map[string]Limit{}} }

// HostKey is a next hop's name in the rules and in the fleet state: a
// lower-case host name without brackets or trailing dot, or an IP address
// (an IPv6 address with '_' for ':', as KV keys allow no colon).
func HostKey(name string) string {
	name = strings.ToLower(strings.TrimSuffix(strings.Trim(name, "[]"), "."))
	if a, err := netip.ParseAddr(name); err == nil {
		return strings.ReplaceAll(a.Unmap().String(), ":", "_")
	}
	return name
}

// Add reads one line of the shaping key, lhs its first field and rhs the
// rest: "example.com LIMITS" (a recipient domain; ".example.com" is the
// same), "[relay.example.net] LIMITS" or "[10.1.1.1] LIMITS" (a next hop),
// or "reply: PATTERN suspend=DURATION" (a reply rule). line is recorded
// with reply rules.
func (r *Rules) Add(lhs, rhs string, line int) error {
	if strings.EqualFold(lhs, "reply:") {
		return r.addReply(rhs, line)
	}
	if rhs == "" {
		return fmt.Errorf("%q has no limits (e.g. concurrency=5,rate=10/s)", lhs)
	}
	lim, err := ParseLimit(rhs)
	if err != nil {
		return fmt.Errorf("%s: %v", lhs, err)
	}
	if lim.Zero() {
		return fmt.Errorf("%s: every limit is 0 (leave the line out for no limit)", lhs)
	}
	if lhs == AnyHost {
		if _, dup := r.hosts[anyHostKey]; dup {
			return fmt.Errorf("duplicate entry %s", AnyHost)
		}
		if lim != (Limit{Concurrency: lim.Concurrency}) {
			return fmt.Errorf("%s: only concurrency=N (each next hop gets its own N); other limits need a named next hop", AnyHost)
		}
		r.hosts[anyHostKey] = lim
		r.order = append(r.order, AnyHost+"\t"+lim.String())
		return nil
	}
	if strings.HasPrefix(lhs, "[") {
		if !strings.HasSuffix(lhs, "]") || len(lhs) < 3 {
			return fmt.Errorf("bad next hop %q (want [host] or [IP])", lhs)
		}
		h := HostKey(lhs)
		if _, err := netip.ParseAddr(strings.ReplaceAll(h, "_", ":")); err != nil {
			if h, err = address.Domain(h); err != nil {
				return fmt.Errorf("bad next hop %q: %v", lhs, err)
			}
		}
		if _, dup := r.hosts[h]; dup {
			return fmt.Errorf("duplicate entry [%s]", h)
		}
		r.hosts[h] = lim
		r.order = append(r.order, "["+h+"]\t"+lim.String())
		return nil
	}
	d, err := address.Domain(strings.TrimPrefix(lhs, "."))
	if err != nil {
		return fmt.Errorf("bad domain %q: %v", lhs, err)
	}
	if _, dup := r.domains[d]; dup {
		return fmt.Errorf("duplicate entry %s", d)
	}
	r.domains[d] = lim
	r.order = append(r.order, d+"\t"+lim.String())
	return nil
}

// addReply reads "PATTERN suspend=DURATION".
func (r *Rules) addReply(rhs string, line int) error {
	i := strings.LastIndexAny(rhs, " \t")
	if i < 0 {
		return errors.New("reply: want PATTERN suspend=DURATION")
	}
	pat, action := strings.TrimSpace(rhs[:i]), rhs[i+1:]
	if pat == "" {
		return errors.New("reply: empty pattern")
	}
	if len(pat) > maxPattern {
		return fmt.Errorf("reply: pattern longer than %d bytes", maxPattern)
	}
	v, ok := strings.CutPrefix(action, "suspend=")
	if !ok {
		return fmt.Errorf("reply: unknown action %q (suspend=DURATION)", action)
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second || d > MaxSuspend {
		return fmt.Errorf("reply: suspend=%s: want a duration from 1s to %s", v, MaxSuspend)
	}
	re, err := regexp.Compile("(?i)" + pat)
	if err != nil {
		return fmt.Errorf("reply: pattern %q: %v", pat, err)
	}
	r.replies = append(r.replies, ReplyRule{Pattern: re, Suspend: d, Line: line})
	r.order = append(r.order, "reply:\t"+pat+"\tsuspend="+d.String())
	return nil
}

// Len is the number of rules.
func (r *Rules) Len() int { return len(r.order) }

// String is the canonical text of the rules (one line each).
func (r *Rules) String() string {
	if len(r.order) == 0 {
		return ""
	}
	return strings.Join(r.order, "\n") + "\n"
}

// Merge returns r with defaults' domain rules added where r has none (the
// --domain-limit flags under the policy key).
func (r *Rules) Merge(defaults map[string]Limit) *Rules {
	out := &Rules{domains: map[string]Limit{}, hosts: r.hosts, replies: r.replies, order: r.order}
	for d, l := range defaults {
		out.domains[d] = l
	}
	for d, l := range r.domains {
		out.domains[d] = l
	}
	return out
}

// Domain finds the rule of a recipient domain (the most specific of it
// and its parents).
func (r *Rules) Domain(domain string) (Dest, bool) {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	for {
		if l, ok := r.domains[d]; ok {
			return Dest{Key: string(KindDomain) + "." + d, Name: d, Limit: l}, true
		}
		i := strings.IndexByte(d, '.')
		if i < 0 {
			return Dest{}, false
		}
		d = d[i+1:]
	}
}

// AnyHost is the shaping key's entry for every next hop without a rule of
// its own: "[*] concurrency=N" caps the sessions the fleet holds to each
// next hop address.
const AnyHost = "[*]"

const anyHostKey = "*"

// Host finds the rule of a next hop by its name or its IP address, else
// the [*] rule as the address's own.
func (r *Rules) Host(name string, addr netip.Addr) (Dest, bool) {
	for _, k := range []string{HostKey(name), hostAddrKey(addr)} {
		if l, ok := r.hosts[k]; ok && k != "" && k != anyHostKey {
			return hostDest(k, l), true
		}
	}
	if l, ok := r.hosts[anyHostKey]; ok {
		if k := hostAddrKey(addr); k != "" {
			return hostDest(k, l), true
		}
		if k := HostKey(name); k != "" && k != anyHostKey {
			return hostDest(k, l), true
		}
	}
	return Dest{}, false
}

func hostDest(k string, l Limit) Dest {
	return Dest{Key: string(KindHost) + "." + k, Name: "[" + strings.ReplaceAll(k, "_", ":") + "]", Limit: l}
}

func hostAddrKey(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return HostKey(a.String())
}

// Named reports whether a destination key has a rule of its own.
func (r *Rules) Named(key string) bool {
	if h, ok := strings.CutPrefix(key, string(KindHost)+"."); ok {
		_, found := r.hosts[h]
		return found
	}
	_, found := r.domains[strings.TrimPrefix(key, string(KindDomain)+".")]
	return found
}

// HasHosts reports whether any rule names a next hop.
func (r *Rules) HasHosts() bool { return len(r.hosts) > 0 }

// Replies are the reply rules in file order.
func (r *Rules) Replies() []ReplyRule { return slices.Clone(r.replies) }

// MatchReply returns the first reply rule matching reply ("421 4.7.0 text").
func (r *Rules) MatchReply(reply string) (ReplyRule, bool) {
	for _, rr := range r.replies {
		if rr.Pattern.MatchString(reply) {
			return rr, true
		}
	}
	return ReplyRule{}, false
}
