package ingress

import (
	"context"
	"errors"
	"net/netip"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/rewrite"
	"github.com/mailfwd/mailfwd/pkg/srs"
)

// Client describes the SMTP client of a session, for policy decisions.
type Client struct {
	Addr     netip.Addr
	Hostname string // forward-confirmed reverse DNS name, "" if unknown or not looked up
	Helo     string
	TLS      bool
	User     string // SMTP AUTH user name; "" when not authenticated
}

// Policy decides who may relay where. SendmailPolicy (the access map,
// aliases and virtusertable) and StaticRelay (flags) implement it.
type Policy interface {
	// CheckConnect runs when a client connects; an error refuses the session.
	CheckConnect(ctx context.Context, c Client) error
	// CheckRcpt runs for each RCPT TO. It returns the addresses to queue for
	// this recipient (itself, or its alias/virtusertable expansion; none for
	// a DISCARD), or an *Error that rejects it.
	CheckRcpt(ctx context.Context, c Client, from string, rcpt address.Address) ([]string, error)
	// NeedsClientHostname says whether CheckRcpt looks at Client.Hostname,
	// so the ingress does a reverse lookup only when it matters.
	NeedsClientHostname() bool
	// RelayClient says whether the client itself may relay anywhere (by
	// its address or host name, not by AUTH or a recipient's domain): the
	// default DKIM signing clients (Config.DKIMSignRelayClients).
	RelayClient(c Client) bool
}

// SenderRewriter is implemented by policies that rewrite senders
// (SendmailPolicy: genericstable, masquerade, SRS). The ingress applies it
// as it accepts a message, before DKIM signs it, so a signature covers the
// rewritten header and the DSN of a rewritten message returns to the
// rewritten sender.
type SenderRewriter interface {
	// ReverseSRS turns an SRS address of ours back into the address it
	// stands for. isSRS is false when rcpt is not in the SRS domain (or SRS
	// is off); err refuses a forged or expired one.
	ReverseSRS(rcpt string) (orig string, isSRS bool, err error)
	// EnvelopeSender is the sender an envelope leaves with, and why.
	EnvelopeSender(from string, forwarded bool) (string, []string)
	// HeaderRewrite maps the addresses of From:, Sender: and Reply-To:; nil
	// when no entry covers headers.
	HeaderRewrite() rewrite.Func
}

// StaticRelay allows relaying for clients in Networks and SMTP AUTH users
// to any domain, and for any client to Domains (a domain also covers its subdomains). Everything
// else is "550 5.7.1 Relaying denied". The zero value relays for nobody.
type StaticRelay struct {
	Networks []netip.Prefix
	Domains  []string // A-label, lower case
}

var _ Policy = (*StaticRelay)(nil)

// CheckConnect accepts every client: relay is decided per recipient.
func (p *StaticRelay) CheckConnect(context.Context, Client) error { return nil }

// NeedsClientHostname implements Policy.
func (p *StaticRelay) NeedsClientHostname() bool { return false }

// RelayClient implements Policy: a client in Networks.
func (p *StaticRelay) RelayClient(c Client) bool { return containsAddr(p.Networks, c.Addr) }

// containsAddr reports whether a network of nets contains a.
func containsAddr(nets []netip.Prefix, a netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// CheckRcpt implements Policy.
func (p *StaticRelay) CheckRcpt(_ context.Context, c Client, _ string, rcpt address.Address) ([]string, error) {
	if c.User != "" {
		return []string{rcpt.Raw}, nil
	}
	if containsAddr(p.Networks, c.Addr) {
		return []string{rcpt.Raw}, nil
	}
	for _, d := range p.Domains {
		if rcpt.ASCII == d || strings.HasSuffix(rcpt.ASCII, "."+d) {
			return []string{rcpt.Raw}, nil
		}
	}
	return nil, ErrRelayDenied
}

// SendmailPolicy applies the sendmail-style policy in force (hot-reloaded:
// Current is called for every decision).
type SendmailPolicy struct {
	Current func() *policy.Policy
	// MaxExpansion refuses a recipient whose aliases / virtusertable
	// expansion has more addresses (452 4.5.3; 0: no limit). The daemon
	// sets it to the recipient limit.
	MaxExpansion int
}

var _ Policy = (*SendmailPolicy)(nil)

// CheckConnect accepts every client: as with FEATURE(delay_checks), Connect:
// entries are applied at RCPT time, where From: entries can waive them.
func (p *SendmailPolicy) CheckConnect(context.Context, Client) error { return nil }

// NeedsClientHostname implements Policy.
func (p *SendmailPolicy) NeedsClientHostname() bool { return p.Current().NeedsClientHostname() }

// RelayClient implements Policy: the client's Connect: entry is RELAY.
func (p *SendmailPolicy) RelayClient(c Client) bool {
	return p.Current().ConnectRelay(policy.Client{Addr: c.Addr, Hostname: c.Hostname})
}

// CheckRcpt implements Policy: access map, then virtusertable and aliases.
func (p *SendmailPolicy) CheckRcpt(_ context.Context, c Client, from string, rcpt address.Address) ([]string, error) {
	pol := p.Current()
	v := pol.CheckRcpt(policy.Client{Addr: c.Addr, Hostname: c.Hostname, User: c.User}, from, rcpt.Raw)
	if v.Reject != nil {
		return nil, fromReply(v.Reject, v.Rule)
	}
	if v.Discard {
		return nil, nil
	}
	x := pol.ExpandMax(rcpt.Raw, p.MaxExpansion)
	if x.Reject != nil {
		return nil, fromReply(x.Reject, strings.Join(x.Steps, "; "))
	}
	return x.Addrs, nil
}

var _ SenderRewriter = (*SendmailPolicy)(nil)

// ReverseSRS implements SenderRewriter.
func (p *SendmailPolicy) ReverseSRS(rcpt string) (string, bool, error) {
	r := p.Current().SRS()
	if r == nil {
		return "", false, nil
	}
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 || !strings.EqualFold(strings.TrimSuffix(rcpt[at+1:], "."), r.Domain()) || !srs.IsSRS(rcpt[:at]) {
		return "", false, nil
	}
	orig, err := r.Reverse(rcpt)
	return orig, true, err
}

// EnvelopeSender implements SenderRewriter.
func (p *SendmailPolicy) EnvelopeSender(from string, forwarded bool) (string, []string) {
	return p.Current().EnvelopeSender(from, forwarded)
}

// HeaderRewrite implements SenderRewriter.
func (p *SendmailPolicy) HeaderRewrite() rewrite.Func {
	pol := p.Current()
	if !pol.RewritesHeaders() {
		return nil
	}
	return func(addr string) (string, bool) {
		r := pol.RewriteSender(addr)
		return r.Addr, r.Changed && r.Headers
	}
}

func fromReply(r *policy.Reply, rule string) *Error {
	e := Reject(r.Code, r.Enhanced, r.Text)
	e.Err = errors.New(rule)
	return e
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
