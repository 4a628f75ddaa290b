package worker

import (
	"net"
	"net/netip"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/route"
)

// self recognises this mail system as a next hop: its host names and the
// addresses it listens on.
type self struct {
	names map[string]bool
	addrs map[netip.AddrPort]bool
	ports map[uint16]bool // listening on every address of this host
	own   map[netip.Addr]bool
}

func newSelf(names []string, addrs []netip.AddrPort) *self {
	s := &self{names: map[string]bool{}, addrs: map[netip.AddrPort]bool{}, ports: map[uint16]bool{}, own: map[netip.Addr]bool{}}
	for _, n := range names {
		if n = hostKey(n); n != "" {
			s.names[n] = true
		}
	}
	for _, a := range addrs {
		if a.Addr().IsUnspecified() {
			s.ports[a.Port()] = true
			continue
		}
		s.addrs[netip.AddrPortFrom(a.Addr().Unmap(), a.Port())] = true
	}
	if len(s.ports) > 0 {
		if ifs, err := net.InterfaceAddrs(); err == nil {
			for _, ia := range ifs {
				if pfx, err := netip.ParsePrefix(ia.String()); err == nil {
					s.own[pfx.Addr().Unmap()] = true
				}
			}
		}
	}
	return s
}

func hostKey(n string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))
}

// is reports whether hop is this mail system.
func (s *self) is(hop delivery.Hop) bool {
	if s.names[hostKey(hop.Name)] {
		return true
	}
	ap := netip.AddrPortFrom(hop.Addr.Addr().Unmap(), hop.Addr.Port())
	if s.addrs[ap] {
		return true
	}
	return s.ports[ap.Port()] && (s.own[ap.Addr()] || ap.Addr().IsLoopback() || ap.Addr().IsUnspecified())
}

// notSelf cuts hops at the first one that is this mail system, as
// sendmail drops MX hosts at or after its own preference. When nothing is
// left the route loops back: a permanent 5.4.6.
func (s *self) notSelf(hops []delivery.Hop) ([]delivery.Hop, error) {
	if s == nil {
		return hops, nil
	}
	for i, h := range hops {
		if s.is(h) {
			if i == 0 {
				return nil, &route.Error{Permanent: true, Enhanced: "5.4.6",
					Msg: "mail loops back to me (MX problem?): " + strings.Trim(h.Name, "[]") + " is this host"}
			}
			return hops[:i], nil
		}
	}
	return hops, nil
}
