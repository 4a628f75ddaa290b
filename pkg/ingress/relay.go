package ingress

import (
	"context"
	"net/netip"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// Client describes the SMTP client of a session, for policy decisions.
type Client struct {
	Addr netip.Addr
	Helo string
	TLS  bool
}

// Policy decides who may relay where. It is the seam for the sendmail-style
// access map; StaticRelay is the flag-driven implementation.
type Policy interface {
	// CheckConnect runs when a client connects; an error refuses the session.
	CheckConnect(ctx context.Context, c Client) error
	// CheckRcpt runs for each RCPT TO; an *Error rejects that recipient.
	CheckRcpt(ctx context.Context, c Client, from string, rcpt address.Address) error
}

// StaticRelay allows relaying for clients in Networks to any domain, and for
// any client to Domains (a domain also covers its subdomains). Everything
// else is "550 5.7.1 Relaying denied". The zero value relays for nobody.
type StaticRelay struct {
	Networks []netip.Prefix
	Domains  []string // A-label, lower case
}

var _ Policy = (*StaticRelay)(nil)

// CheckConnect accepts every client: relay is decided per recipient.
func (p *StaticRelay) CheckConnect(context.Context, Client) error { return nil }

// CheckRcpt implements Policy.
func (p *StaticRelay) CheckRcpt(_ context.Context, c Client, _ string, rcpt address.Address) error {
	for _, n := range p.Networks {
		if n.Contains(c.Addr.Unmap()) {
			return nil
		}
	}
	for _, d := range p.Domains {
		if rcpt.ASCII == d || strings.HasSuffix(rcpt.ASCII, "."+d) {
			return nil
		}
	}
	return ErrRelayDenied
}

// ParseNetworks parses CIDRs or single addresses ("127.0.0.1", "10.0.0.0/8").
func ParseNetworks(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, err
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
