package worker

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// Dialer opens a TCP connection (delivery.Config.Dial).
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// dialDest is what a delivery's dials are for: its recipient domain and
// the hops its route chose.
type dialDest struct {
	domain string
	hops   []delivery.Hop
}

type dialDestKey struct{}

// withDialDest records in ctx the destination of the connections a
// delivery may open, for ShapedDial.
func withDialDest(ctx context.Context, domain string, hops []delivery.Hop) context.Context {
	return context.WithValue(ctx, dialDestKey{}, dialDest{domain: domain, hops: hops})
}

// ShapedDial wraps dial so that every new connection of a delivery to a
// destination limited in new connections per second (new-conns=R/s, for
// its recipient domain or for the next hop dialled) takes one from the
// fleet's pace first, waiting for it. A pooled connection reused takes
// none. The scheduler starts such mail only when a connection is due
// (Shaper.Acquire looks), so the wait is short; a wait longer than the
// dial's deadline (--connect-timeout) fails the connection attempt as a
// timeout would. shaper returns the worker's Shaper (nil: none yet, no
// limit applies).
func ShapedDial(shaper func() *shaping.Shaper, rules func() *shaping.Rules, dial Dialer) Dialer {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		dd, _ := ctx.Value(dialDestKey{}).(dialDest)
		if sh := shaper(); sh != nil {
			if err := takeConn(ctx, sh, connLimited(rules(), dd, addr)); err != nil {
				return nil, err
			}
		}
		return dial(ctx, network, addr)
	}
}

// takeConn waits until sh gives a new connection to every one of dests;
// after a wait it asks again only for those not given yet (each step is
// taken once per connection). If ctx ends while it waits, the steps
// already given stay taken.
func takeConn(ctx context.Context, sh *shaping.Shaper, dests []shaping.Dest) error {
	for len(dests) > 0 {
		rest, wait, err := sh.TakeConn(ctx, dests)
		if err != nil || len(rest) == 0 {
			return err
		}
		dests = rest
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for a new connection to %s within its fleet-wide pace: %w", dests[0].Name, context.Cause(ctx))
		case <-t.C:
		}
	}
	return nil
}

// connLimited are the destinations of a dial to addr whose rules limit new
// connections: the delivery's recipient domain and the hop at addr.
func connLimited(rules *shaping.Rules, dd dialDest, addr string) []shaping.Dest {
	if rules == nil {
		return nil
	}
	var out []shaping.Dest
	if dd.domain != "" {
		if d, ok := rules.Domain(dd.domain); ok && d.Limit.NewConns > 0 {
			out = append(out, d)
		}
	}
	if rules.HasHosts() {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return out
		}
		name := ""
		for _, h := range dd.hops {
			if h.Addr == ap {
				name = h.Name
				break
			}
		}
		if d, ok := rules.Host(name, ap.Addr()); ok && d.Limit.NewConns > 0 {
			out = append(out, d)
		}
	}
	return out
}
