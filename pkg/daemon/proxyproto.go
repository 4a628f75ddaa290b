package daemon

import (
	"errors"
	"flag"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/mailfwd/mailfwd/pkg/config"
)

// ProxyProtocol is the ingress listeners' PROXY protocol (v1 and v2, as
// HAProxy, NLBs, MetalLB setups and Traefik send it): when From is set,
// every connection must come from one of those networks and begin with a
// PROXY header, whose source address then is the client's for limits,
// policy, logs and Received:. Anything else is refused.
type ProxyProtocol struct {
	From        config.StringList // trusted proxies' networks (CIDR or address); empty: off
	HeaderWait  time.Duration     // time for a trusted proxy to send its header
	MaxPending  int               // connections waiting for their header at once
	trustedNets []netip.Prefix
}

// Register adds --proxy-protocol-from and its limits.
func (p *ProxyProtocol) Register(fs *flag.FlagSet) {
	fs.Var(&p.From, "proxy-protocol-from", "networks of trusted proxies (HAProxy, a load balancer) that send a PROXY protocol v1 or v2 header; when set, every listener accepts only connections from them that begin with one, and uses the header's client address for limits, policy, logs and Received: (repeatable, comma-separated); empty: off")
	config.DurationVar(fs, &p.HeaderWait, "proxy-protocol-header-timeout", 5*time.Second, "time a trusted proxy has to send the PROXY header before the connection is closed")
	fs.IntVar(&p.MaxPending, "proxy-protocol-max-pending", 1024, "connections waiting for their PROXY header at once; more are closed")
}

// parse validates From into prefixes.
func (p *ProxyProtocol) parse() error {
	p.trustedNets = nil
	for _, s := range p.From {
		if pfx, err := netip.ParsePrefix(s); err == nil {
			p.trustedNets = append(p.trustedNets, pfx.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return errors.New("--proxy-protocol-from " + s + ": want a network (10.0.0.0/8) or an address")
		}
		p.trustedNets = append(p.trustedNets, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	if len(p.From) > 0 && (p.HeaderWait <= 0 || p.MaxPending <= 0) {
		return errors.New("--proxy-protocol-header-timeout and --proxy-protocol-max-pending must be > 0")
	}
	return nil
}

func (p *ProxyProtocol) trusted(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	for _, pfx := range p.trustedNets {
		if pfx.Contains(ap.Addr().Unmap()) {
			return true
		}
	}
	return false
}

// proxyListener hands out only connections from a trusted proxy whose PROXY
// header has been read and names a client. Headers are read off the accept
// loop (one goroutine per pending connection, at most MaxPending), so a
// proxy that is slow to send one cannot stall the others.
type proxyListener struct {
	net.Listener
	p       *ProxyProtocol
	log     *slog.Logger
	kind    string
	ready   chan net.Conn
	done    chan struct{}
	once    sync.Once
	pending chan struct{} // semaphore of connections waiting for their header
	err     error         // the underlying Accept's error, after done
}

func newProxyListener(ln net.Listener, p *ProxyProtocol, kind string, log *slog.Logger) *proxyListener {
	l := &proxyListener{Listener: ln, p: p, log: log, kind: kind, ready: make(chan net.Conn),
		done: make(chan struct{}), pending: make(chan struct{}, p.MaxPending)}
	go l.acceptLoop()
	return l
}

func (l *proxyListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.once.Do(func() { l.err = err; close(l.done) })
			return
		}
		if !l.p.trusted(c.RemoteAddr()) {
			l.log.Warn("connection refused: not from a --proxy-protocol-from network", "component", "ingress", "listener", l.kind, "peer", c.RemoteAddr().String())
			c.Close()
			continue
		}
		select {
		case l.pending <- struct{}{}:
		default:
			l.log.Warn("connection refused: too many connections waiting for their PROXY header", "component", "ingress", "listener", l.kind, "peer", c.RemoteAddr().String(), "max", l.p.MaxPending)
			c.Close()
			continue
		}
		go l.handshake(c)
	}
}

func (l *proxyListener) handshake(c net.Conn) {
	defer func() { <-l.pending }()
	pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(l.p.HeaderWait))
	h := pc.ProxyHeader()
	var why string
	switch {
	case h == nil:
		why = "no valid PROXY header"
	case h.Command.IsLocal():
		why = "PROXY LOCAL (a health check): no client to serve"
	default:
		src, _, ok := h.TCPAddrs()
		if !ok || src.IP == nil {
			why = "PROXY header without a TCP source address"
		}
	}
	if why != "" {
		l.log.Warn("connection refused: "+why, "component", "ingress", "listener", l.kind, "proxy", c.RemoteAddr().String())
		c.Close()
		return
	}
	select {
	case l.ready <- pc:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next connection with a valid PROXY header.
func (l *proxyListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections still reading their header are closed.
func (l *proxyListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.done) })
	return err
}
