package mxresolve

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	// maxCNAMEChain is the number of CNAME links followed per lookup.
	maxCNAMEChain = 8
	// ednsUDPSize is the advertised EDNS0 buffer size (DNS flag day 2020).
	ednsUDPSize = 1232
	// maxCacheEntries bounds the cache; past it expired entries are swept
	// and, if still full, the cache is cleared.
	maxCacheEntries = 1 << 14
)

// rrset is the outcome of one (name, type) lookup after CNAME chasing.
type rrset struct {
	nxdomain bool     // the name (or the end of its CNAME chain) does not exist
	records  []dns.RR // records of the asked type; empty for NODATA and NXDOMAIN
	extra    []dns.RR // A and AAAA records of the additional section
}

type cacheKey struct {
	name  string // lower-case FQDN
	qtype uint16
}

type cacheEntry struct {
	set     *rrset
	expires time.Time
}

// rcodeError is a DNS answer with an error rcode (SERVFAIL, REFUSED...).
type rcodeError struct {
	server string
	rcode  int
}

func (e *rcodeError) Error() string {
	return fmt.Sprintf("server %s answered %s", e.server, dns.RcodeToString[e.rcode])
}

// query returns the (cached) answer for name and qtype. Concurrent callers
// share one lookup; a caller whose ctx ends stops waiting without ending the
// lookup for the others.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*rrset, error) {
	key := cacheKey{name: name, qtype: qtype}
	if set, ok := r.cached(key); ok {
		return set, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	flight := r.flights.DoChan(key.name+"/"+dns.TypeToString[qtype], func() (any, error) {
		if set, ok := r.cached(key); ok {
			return set, nil
		}
		// Detached from the first caller's cancellation: the lookup is
		// shared. Every exchange is bounded by the per-query timeout and
		// every loop by a count, so the lookup ends on its own.
		return r.resolve(context.WithoutCancel(ctx), key)
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-flight:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*rrset), nil
	}
}

func (r *Resolver) cached(key cacheKey) (*rrset, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[key]
	if !ok {
		return nil, false
	}
	if !r.now().Before(e.expires) {
		delete(r.cache, key)
		return nil, false
	}
	return e.set, true
}

func (r *Resolver) store(key cacheKey, set *rrset, ttl time.Duration) {
	if r.maxTTL <= 0 {
		return // caching disabled
	}
	ttl = min(max(ttl, r.minTTL), r.maxTTL)
	if ttl <= 0 {
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= maxCacheEntries {
		for k, e := range r.cache {
			if !now.Before(e.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= maxCacheEntries {
			clear(r.cache)
		}
	}
	r.cache[key] = cacheEntry{set: set, expires: now.Add(ttl)}
}

// resolve queries the servers for key, follows the CNAME chain in the answer
// (the servers are recursive and chase aliases themselves) and caches the
// outcome.
func (r *Resolver) resolve(ctx context.Context, key cacheKey) (*rrset, error) {
	msg, err := r.exchange(ctx, key.name, key.qtype)
	if err != nil {
		return nil, err
	}
	ttl := uint32(math.MaxUint32)
	cur := key.name
	var records []dns.RR
	for hops := 0; ; hops++ {
		records = ownedRecords(msg.Answer, cur, key.qtype)
		if len(records) > 0 {
			break
		}
		cname := ownedCNAME(msg.Answer, cur)
		if cname == nil {
			break
		}
		if hops == maxCNAMEChain {
			return nil, fmt.Errorf("CNAME chain from %s longer than %d", key.name, maxCNAMEChain)
		}
		ttl = min(ttl, cname.Hdr.Ttl)
		cur = strings.ToLower(dns.Fqdn(cname.Target))
	}

	switch {
	case len(records) > 0:
		for _, rr := range records {
			ttl = min(ttl, rr.Header().Ttl)
		}
		set := &rrset{records: records, extra: addressRecords(msg.Extra)}
		r.store(key, set, time.Duration(ttl)*time.Second)
		return set, nil
	case msg.Rcode == dns.RcodeNameError:
		set := &rrset{nxdomain: true}
		r.store(key, set, negativeTTL(msg, ttl))
		return set, nil
	default: // NODATA, possibly at the end of a CNAME chain
		set := &rrset{}
		r.store(key, set, negativeTTL(msg, ttl))
		return set, nil
	}
}

// negativeTTL is the RFC 2308 negative-caching TTL: the SOA record's TTL or
// its MINIMUM field, whichever is lower, and no more than the CNAME chain's
// TTL. Without a SOA it is 0 (the resolver's minimum TTL then applies).
func negativeTTL(msg *dns.Msg, chainTTL uint32) time.Duration {
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl, chainTTL)) * time.Second
		}
	}
	return 0
}

func ownedRecords(rrs []dns.RR, owner string, qtype uint16) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		h := rr.Header()
		if h.Rrtype == qtype && h.Class == dns.ClassINET && strings.EqualFold(h.Name, owner) {
			out = append(out, rr)
		}
	}
	return out
}

func ownedCNAME(rrs []dns.RR, owner string) *dns.CNAME {
	for _, rr := range rrs {
		if c, ok := rr.(*dns.CNAME); ok && c.Hdr.Class == dns.ClassINET && strings.EqualFold(c.Hdr.Name, owner) {
			return c
		}
	}
	return nil
}

func addressRecords(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		switch rr.(type) {
		case *dns.A, *dns.AAAA:
			if rr.Header().Class == dns.ClassINET {
				out = append(out, rr)
			}
		}
	}
	return out
}

// exchange sends one question to the servers in order: each server gets
// r.attempts tries while it times out; any other failure, or an answer other
// than NOERROR or NXDOMAIN, moves on to the next server. A truncated UDP
// answer is retried over TCP.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsUDPSize, false)

	var lastErr error
	for _, server := range r.servers {
	attempts:
		for range r.attempts {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			m.Id = dns.Id()
			resp, _, err := r.udp.ExchangeContext(ctx, m, server)
			if err == nil && resp.Truncated {
				resp, _, err = r.tcp.ExchangeContext(ctx, m, server)
			}
			if err != nil {
				lastErr = fmt.Errorf("query %s %s at %s: %w", name, dns.TypeToString[qtype], server, err)
				if isTimeout(err) {
					continue
				}
				break attempts
			}
			if !answersQuestion(resp, name, qtype) {
				lastErr = fmt.Errorf("query %s %s at %s: answer for another question", name, dns.TypeToString[qtype], server)
				break attempts
			}
			switch resp.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return resp, nil
			}
			lastErr = fmt.Errorf("query %s %s: %w", name, dns.TypeToString[qtype], &rcodeError{server: server, rcode: resp.Rcode})
			break attempts
		}
	}
	if lastErr == nil {
		return nil, errors.New("no name servers configured")
	}
	return nil, lastErr
}

func answersQuestion(resp *dns.Msg, name string, qtype uint16) bool {
	if len(resp.Question) != 1 {
		return false
	}
	q := resp.Question[0]
	return q.Qtype == qtype && strings.EqualFold(q.Name, name)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
