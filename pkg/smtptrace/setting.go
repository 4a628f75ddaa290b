// Package smtptrace is mailfwd's live SMTP traffic trace, sendmail's -X
// without a restart and without tracing everyone: an operator stores a
// Setting in the MAIL_TRACE bucket (mailfwdctl trace), every ingress and
// worker watches the bucket (Watcher.Run), and Watcher.Wrap (the ingress's
// sessions) or Tap and Watcher.Attach (the worker's connections, pooled
// ones included) tee the sessions that match into bounded, redacting slog
// records; a worker's connect that gets no session is recorded as such
// (Watcher.ConnectFailed, ConnectSkipped).
//
// AUTH credentials are always redacted, message bodies unless the setting
// asks for them; every record is bounded by Limits (line length, lines per
// session, bytes per second per process, settings honoured, sessions traced
// at once), so a hostile peer cannot inflate the logs through a trace.
package smtptrace

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Side says which end of SMTP this process is on.
type Side string

const (
	// Ingress is the server side: peers are clients, matched by --client.
	Ingress Side = "ingress"
	// Delivery is the client side (the worker): peers are next hops,
	// matched by --destination.
	Delivery Side = "delivery"
)

// MaxDuration is the longest a trace may run; it is also the bucket's
// max age, so a setting never outlives it even if nobody removes it.
const MaxDuration = 24 * time.Hour

// Setting is one trace, stored as JSON under its ID.
type Setting struct {
	ID          string    `json:"id"`
	Client      string    `json:"client,omitempty"`      // IP or CIDR of SMTP clients (ingress side)
	Destination string    `json:"destination,omitempty"` // next-hop host name, ".suffix" or IP (worker side)
	WithBodies  bool      `json:"with_bodies,omitempty"` // record message bodies too
	Created     time.Time `json:"created"`
	Until       time.Time `json:"until"`
	By          string    `json:"by,omitempty"` // who started it (user@host)
}

// Active reports whether s is in force at now.
func (s Setting) Active(now time.Time) bool { return now.Before(s.Until) }

// Validate checks a setting before it is stored (and again when read, so a
// hand-written bucket value cannot widen a trace).
func (s Setting) Validate() error {
	if !validID(s.ID) {
		return fmt.Errorf("trace id %q: want 1-64 letters, digits, '-' or '_'", s.ID)
	}
	if (s.Client == "") == (s.Destination == "") {
		return errors.New("a trace needs exactly one of --client or --destination")
	}
	if s.Client != "" {
		if _, err := parseClient(s.Client); err != nil {
			return err
		}
	}
	if s.Destination != "" {
		if _, err := parseDestination(s.Destination); err != nil {
			return err
		}
	}
	if !s.Until.After(s.Created) {
		return errors.New("trace ends before it starts (--for must be positive)")
	}
	if s.Until.Sub(s.Created) > MaxDuration {
		return fmt.Errorf("trace of %s: at most %s", s.Until.Sub(s.Created).Round(time.Second), MaxDuration)
	}
	return nil
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// parseClient reads an IP or a CIDR. A CIDR wider than /8 (IPv4) or /32
// (IPv6) is refused: that is tracing everyone.
func parseClient(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--client %q: want an IP address or a CIDR (10.1.2.3, 10.1.2.0/24)", s)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked()
	if p.Addr().Is4() && p.Bits() < 8 || p.Addr().Is6() && p.Bits() < 32 {
		return netip.Prefix{}, fmt.Errorf("--client %q: wider than /8 (IPv4) or /32 (IPv6) traces nearly everyone; narrow it", s)
	}
	return p, nil
}

// destination is a parsed --destination.
type destination struct {
	host   string     // lower-case, no trailing dot; "" when ip is set
	suffix bool       // host was ".example.com": any name under it
	ip     netip.Addr // set when the destination is an address
}

func parseDestination(s string) (destination, error) {
	t := strings.Trim(s, "[]")
	if a, err := netip.ParseAddr(t); err == nil {
		return destination{ip: a.Unmap()}, nil
	}
	h := strings.ToLower(strings.TrimSuffix(s, "."))
	d := destination{host: h}
	if strings.HasPrefix(h, ".") {
		d.suffix, d.host = true, h[1:]
	}
	if d.host == "" || len(d.host) > 253 {
		return destination{}, fmt.Errorf("--destination %q: want a host name (mx.example.com), .suffix (.example.com) or an IP", s)
	}
	for _, l := range strings.Split(d.host, ".") {
		if !isLabel(l) {
			return destination{}, fmt.Errorf("--destination %q: %q is not a DNS label", s, l)
		}
	}
	if d.suffix && !strings.Contains(d.host, ".") {
		return destination{}, fmt.Errorf("--destination %q: a whole top-level domain traces nearly everyone; name a domain (.example.com)", s)
	}
	return d, nil
}

func isLabel(l string) bool {
	if l == "" || len(l) > 63 {
		return false
	}
	for _, r := range l {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// compiled is a setting ready for per-connection matching.
type compiled struct {
	Setting
	client netip.Prefix
	dest   destination
}

func compile(s Setting) (compiled, error) {
	if err := s.Validate(); err != nil {
		return compiled{}, err
	}
	c := compiled{Setting: s}
	if s.Client != "" {
		c.client, _ = parseClient(s.Client)
	} else {
		c.dest, _ = parseDestination(s.Destination)
	}
	return c, nil
}

// peerIP takes "ip:port", "[ip]:port" or "ip".
func peerIP(addr string) netip.Addr {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().Unmap()
	}
	if h, _, err := net.SplitHostPort(addr); err == nil {
		addr = h
	}
	a, _ := netip.ParseAddr(strings.Trim(addr, "[]"))
	return a.Unmap()
}

// matches reports whether a session of side with this peer is traced.
func (c *compiled) matches(side Side, ip netip.Addr, name string) bool {
	switch side {
	case Ingress:
		return c.Client != "" && ip.IsValid() && c.client.Contains(ip)
	case Delivery:
		if c.Destination == "" {
			return false
		}
		if c.dest.ip.IsValid() {
			return ip.IsValid() && c.dest.ip == ip
		}
		n := strings.ToLower(strings.TrimSuffix(name, "."))
		if c.dest.suffix {
			return strings.HasSuffix(n, "."+c.dest.host)
		}
		return n == c.dest.host
	}
	return false
}
