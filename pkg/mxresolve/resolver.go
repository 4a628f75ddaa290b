// Package mxresolve finds the next-hop mail hosts of a domain: MX records in
// preference order with their addresses, the implicit MX of RFC 5321 §5.1,
// null MX (RFC 7505), and failures classified as permanent or temporary. It
// talks DNS itself (github.com/miekg/dns) to a configured list of recursive
// servers and caches answers by TTL.
package mxresolve

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// Defaults for Config's zero values.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultAttempts    = 2
	DefaultMaxCacheTTL = time.Hour
	DefaultMinCacheTTL = 5 * time.Second

	resolvConfPath = "/etc/resolv.conf"
	// maxMXHosts bounds how many MX hosts of a domain are resolved.
	maxMXHosts = 16
	// hostLookupConcurrency bounds parallel address lookups of MX hosts.
	hostLookupConcurrency = 4
)

// Host is one next-hop mail host, with its addresses.
type Host struct {
	Name  string       // host name without trailing dot, lower-case ("mx1.example.com"); for an address literal route, the literal ("[192.0.2.1]")
	Pref  uint16       // MX preference; 0 for an implicit MX or an address literal
	Addrs []netip.Addr // A and AAAA, IPv4 first
}

// Config configures a Resolver. The zero value reads /etc/resolv.conf and
// uses the defaults above.
type Config struct {
	// Servers are recursive name servers as "host:port" (a missing port
	// means 53). Empty: the nameserver lines of /etc/resolv.conf.
	Servers []string
	// Timeout bounds each query (dial, send, receive). Default 5s.
	Timeout time.Duration
	// Attempts is the number of tries per server while it times out, before
	// moving on to the next server. Default 2.
	Attempts int
	// MaxCacheTTL caps how long an answer is cached. Default 1h; negative
	// disables caching.
	MaxCacheTTL time.Duration
	// MinCacheTTL is the least time an answer is cached, also used for
	// negative answers without a SOA record. Default 5s; negative means no
	// floor (answers with TTL 0 are then not cached).
	MinCacheTTL time.Duration
	// Now is the clock used for cache expiry (for tests); nil means time.Now.
	Now func() time.Time
}

// Resolver resolves mail routes. It is safe for concurrent use.
type Resolver struct {
	servers  []string
	attempts int
	minTTL   time.Duration
	maxTTL   time.Duration
	now      func() time.Time
	udp      *dns.Client
	tcp      *dns.Client

	flights singleflight.Group

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
}

// New returns a Resolver for cfg. It fails when no name server is configured
// or /etc/resolv.conf cannot be read.
func New(cfg Config) (*Resolver, error) {
	servers, err := serverAddrs(cfg.Servers)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	attempts := cfg.Attempts
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	maxTTL := cfg.MaxCacheTTL
	if maxTTL == 0 {
		maxTTL = DefaultMaxCacheTTL
	}
	minTTL := cfg.MinCacheTTL
	switch {
	case minTTL == 0:
		minTTL = DefaultMinCacheTTL
	case minTTL < 0:
		minTTL = 0
	}
	if maxTTL > 0 && minTTL > maxTTL {
		return nil, fmt.Errorf("mxresolve: MinCacheTTL %v is above MaxCacheTTL %v", minTTL, maxTTL)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Resolver{
		servers:  servers,
		attempts: attempts,
		minTTL:   minTTL,
		maxTTL:   maxTTL,
		now:      now,
		udp:      &dns.Client{Net: "udp", Timeout: timeout, UDPSize: ednsUDPSize},
		tcp:      &dns.Client{Net: "tcp", Timeout: timeout},
		cache:    map[cacheKey]cacheEntry{},
	}, nil
}

func serverAddrs(configured []string) ([]string, error) {
	if len(configured) == 0 {
		cc, err := dns.ClientConfigFromFile(resolvConfPath)
		if err != nil {
			return nil, fmt.Errorf("mxresolve: read name servers: %w", err)
		}
		for _, s := range cc.Servers {
			configured = append(configured, net.JoinHostPort(s, cc.Port))
		}
		if len(configured) == 0 {
			return nil, fmt.Errorf("mxresolve: no nameserver in %s", resolvConfPath)
		}
	}
	out := make([]string, 0, len(configured))
	for _, s := range configured {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			host, port = strings.Trim(s, "[]"), "53"
		}
		if host == "" {
			return nil, fmt.Errorf("mxresolve: name server %q: no host", s)
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	return out, nil
}

// LookupMX returns the hosts to try for domain, in order: MX preference
// ascending (equal preferences shuffled), each with its addresses (from the
// additional section when present, else from A and AAAA queries). Hosts
// whose address lookup fails are skipped; if no host has an address the
// error is temporary. Without MX records the domain itself is the host
// (implicit MX, Pref 0). A null MX or NXDOMAIN is a permanent *Error, as is
// an invalid domain; other failures are temporary. domain may be an IDN in
// U-labels or an address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]").
// All errors are *Error.
func (r *Resolver) LookupMX(ctx context.Context, domain string) ([]Host, error) {
	if addr, literal, ok, err := parseAddressLiteral(domain); ok {
		if err != nil {
			return nil, invalidDomain(domain, err)
		}
		return []Host{{Name: literal, Addrs: []netip.Addr{addr}}}, nil
	}
	ascii, err := normalizeDomain(domain)
	if err != nil {
		return nil, invalidDomain(domain, err)
	}

	set, err := r.query(ctx, dns.Fqdn(ascii), dns.TypeMX)
	if err != nil {
		return nil, lookupFailure(domain, ascii, err)
	}
	if set.nxdomain {
		return nil, hostUnknown(domain, ascii, nil)
	}

	var mxs []*dns.MX
	for _, rr := range set.records {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
		}
	}
	if len(mxs) == 0 {
		return r.implicitMX(ctx, domain, ascii)
	}
	if len(mxs) == 1 && mxs[0].Mx == "." {
		return nil, nullMX(domain)
	}

	hosts := orderedHosts(mxs)
	return r.resolveHosts(ctx, domain, ascii, hosts, set.extra)
}

// implicitMX is RFC 5321 §5.1: without MX records, the domain itself is the
// mail host.
func (r *Resolver) implicitMX(ctx context.Context, domain, ascii string) ([]Host, error) {
	addrs, err := r.lookupAddrs(ctx, ascii)
	if err != nil {
		if err.notFound {
			return nil, hostUnknown(domain, ascii, err.err)
		}
		return nil, noAddress(domain,
			fmt.Sprintf("Host name lookup failure (Name server: %s: no MX and no address records)", ascii), err.err)
	}
	return []Host{{Name: ascii, Pref: 0, Addrs: addrs}}, nil
}

// orderedHosts sorts MX records by preference, shuffling equal preferences,
// drops null-MX entries and duplicate targets (keeping the best preference),
// and keeps at most maxMXHosts.
func orderedHosts(mxs []*dns.MX) []Host {
	hosts := make([]Host, 0, len(mxs))
	for _, mx := range mxs {
		if mx.Mx == "." {
			continue // RFC 7505: a null MX alongside others is ignored
		}
		hosts = append(hosts, Host{Name: strings.TrimSuffix(strings.ToLower(mx.Mx), "."), Pref: mx.Preference})
	}
	rand.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
	slices.SortStableFunc(hosts, func(a, b Host) int { return cmp.Compare(a.Pref, b.Pref) })

	seen := make(map[string]bool, len(hosts))
	out := hosts[:0]
	for _, h := range hosts {
		if seen[h.Name] {
			continue
		}
		seen[h.Name] = true
		out = append(out, h)
	}
	if len(out) > maxMXHosts {
		out = out[:maxMXHosts]
	}
	return out
}

// resolveHosts fills in the addresses of hosts, from extra when it has them,
// and drops hosts without addresses.
func (r *Resolver) resolveHosts(ctx context.Context, domain, ascii string, hosts []Host, extra []dns.RR) ([]Host, error) {
	errs := make([]error, len(hosts))
	var g errgroup.Group
	g.SetLimit(hostLookupConcurrency)
	for i := range hosts {
		if addrs := addrsOf(extra, dns.Fqdn(hosts[i].Name)); len(addrs) > 0 {
			hosts[i].Addrs = addrs
			continue
		}
		g.Go(func() error {
			addrs, err := r.lookupAddrs(ctx, hosts[i].Name)
			if err != nil {
				errs[i] = fmt.Errorf("MX host %s: %w", hosts[i].Name, err.err)
				return nil
			}
			hosts[i].Addrs = addrs
			return nil
		})
	}
	_ = g.Wait() // the functions return nil; failures are in errs

	out := hosts[:0]
	for _, h := range hosts {
		if len(h.Addrs) > 0 {
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, lookupFailure(domain, ascii, err)
		}
		return nil, noAddress(domain,
			fmt.Sprintf("Host name lookup failure (Name server: %s: no address for any MX host)", ascii),
			errors.Join(errs...))
	}
	return out, nil
}

// addrsOf returns the addresses of owner (any owner if "") among rrs, IPv4
// first.
func addrsOf(rrs []dns.RR, owner string) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, rr := range rrs {
		if owner != "" && !strings.EqualFold(rr.Header().Name, owner) {
			continue
		}
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				v4 = appendUnique(v4, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok {
				v6 = appendUnique(v6, a)
			}
		}
	}
	return append(v4, v6...)
}

func appendUnique(s []netip.Addr, a netip.Addr) []netip.Addr {
	if slices.Contains(s, a) {
		return s
	}
	return append(s, a)
}

// LookupHost returns the A and AAAA addresses of name, IPv4 first (for
// static routes like smtp:[relay.example.com]). An IP address, bare or as an
// address literal, is returned as is. NXDOMAIN is a permanent *Error; other
// failures, including no address records, are temporary. Answers are cached.
func (r *Resolver) LookupHost(ctx context.Context, name string) ([]netip.Addr, error) {
	if addr, _, ok, err := parseAddressLiteral(name); ok {
		if err != nil {
			return nil, invalidDomain(name, err)
		}
		return []netip.Addr{addr}, nil
	}
	if addr, err := netip.ParseAddr(name); err == nil && addr.Zone() == "" {
		return []netip.Addr{addr}, nil
	}
	ascii, err := normalizeDomain(name)
	if err != nil {
		return nil, invalidDomain(name, err)
	}
	addrs, lerr := r.lookupAddrs(ctx, ascii)
	if lerr != nil {
		if lerr.notFound {
			return nil, hostUnknown(name, ascii, lerr.err)
		}
		return nil, lookupFailure(name, ascii, lerr.err)
	}
	return addrs, nil
}

// addrError is a failed address lookup; notFound when both the A and the
// AAAA query answered NXDOMAIN.
type addrError struct {
	notFound bool
	err      error
}

// lookupAddrs queries A and AAAA of name (lower-case A-labels, no trailing
// dot) in parallel. It succeeds when either gives addresses.
func (r *Resolver) lookupAddrs(ctx context.Context, name string) ([]netip.Addr, *addrError) {
	fqdn := dns.Fqdn(name)
	var sets [2]*rrset
	var errs [2]error
	var wg sync.WaitGroup
	for i, qtype := range [2]uint16{dns.TypeA, dns.TypeAAAA} {
		wg.Go(func() { sets[i], errs[i] = r.query(ctx, fqdn, qtype) })
	}
	wg.Wait()

	var addrs []netip.Addr
	for _, set := range sets {
		if set != nil {
			addrs = append(addrs, addrsOf(set.records, "")...)
		}
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	if err := errors.Join(errs[0], errs[1]); err != nil {
		return nil, &addrError{err: err}
	}
	if sets[0].nxdomain && sets[1].nxdomain {
		return nil, &addrError{notFound: true, err: fmt.Errorf("%s: no such domain", name)}
	}
	return nil, &addrError{err: fmt.Errorf("%s: no A or AAAA records", name)}
}
