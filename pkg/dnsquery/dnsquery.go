// Package dnsquery sends single DNS questions with miekg/dns for the
// lookups the MX resolver does not do: TXT (MTA-STS, DKIM) and TLSA (DANE).
// It asks with the AD and DO bits set, so a validating resolver says
// whether the answer is DNSSEC-authenticated (RFC 6840 §5.7); it retries a
// truncated UDP answer over TCP and checks that the answer is for the
// question.
package dnsquery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// MaxTXTBytes bounds the joined strings of one TXT record that TXT returns.
const MaxTXTBytes = 64 << 10

// Client asks a list of recursive resolvers.
type Client struct {
	// Servers are "host:port" resolvers, tried in order.
	Servers []string
	// Timeout bounds one exchange with one server (default 5s).
	Timeout time.Duration
}

// Answer is a response with the facts callers need.
type Answer struct {
	Msg *dns.Msg
	// Authenticated: the resolver set AD (the answer is DNSSEC-validated).
	// Meaningful only when the path to the resolver is trusted (loopback
	// or a cluster-local validating resolver).
	Authenticated bool
	// NXDomain: the name does not exist.
	NXDomain bool
}

// ErrNoServers: the client has no resolver.
var ErrNoServers = errors.New("dnsquery: no name servers configured")

// Query asks name/qtype. NOERROR and NXDOMAIN are answers; SERVFAIL and
// other rcodes, timeouts and mismatched answers move on to the next server
// and, when all fail, are the error (callers treat it as temporary).
func (c *Client) Query(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	if len(c.Servers) == 0 {
		return nil, ErrNoServers
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	name = dns.Fqdn(name)
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true
	m.SetEdns0(1232, true)
	udp := &dns.Client{Net: "udp", Timeout: timeout, UDPSize: 1232}
	tcp := &dns.Client{Net: "tcp", Timeout: timeout}
	var lastErr error
	for _, server := range c.Servers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m.Id = dns.Id()
		resp, _, err := udp.ExchangeContext(ctx, m, server)
		if err == nil && resp.Truncated {
			resp, _, err = tcp.ExchangeContext(ctx, m, server)
		}
		if err != nil {
			lastErr = fmt.Errorf("query %s %s at %s: %w", name, dns.TypeToString[qtype], server, err)
			continue
		}
		if len(resp.Question) != 1 || resp.Question[0].Qtype != qtype || !strings.EqualFold(resp.Question[0].Name, name) {
			lastErr = fmt.Errorf("query %s %s at %s: answer for another question", name, dns.TypeToString[qtype], server)
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			return &Answer{Msg: resp, Authenticated: resp.AuthenticatedData, NXDomain: resp.Rcode == dns.RcodeNameError}, nil
		}
		lastErr = fmt.Errorf("query %s %s at %s: %s", name, dns.TypeToString[qtype], server, dns.RcodeToString[resp.Rcode])
	}
	return nil, lastErr
}

// TXT returns the TXT records of name, each record's strings joined; a
// name without TXT records (NODATA or NXDOMAIN) is an empty list, no error.
// Records longer than MaxTXTBytes are dropped.
func (c *Client) TXT(ctx context.Context, name string) ([]string, error) {
	a, err := c.Query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range a.Msg.Answer {
		t, ok := rr.(*dns.TXT)
		if !ok { // the answer section may also hold the CNAMEs leading there
			continue
		}
		s := strings.Join(t.Txt, "")
		if len(s) > MaxTXTBytes {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}
