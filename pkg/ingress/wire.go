package ingress

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/mailfwd/mailfwd/pkg/smtptrace"
)

// The edge of the ingress: every byte from a client passes through conn, so
// the limits on the input live here, once: the idle timeout per read, the
// end of a session after a read error, and (at accept) the per-client
// session and connection-rate limits. (The error budget is go-smtp's
// Server.MaxErrors, where every reply is written in plain text.)

// errInputClosed is what reads return after the first read error of a
// session: nothing more is read from that client. It wraps net.ErrClosed
// so go-smtp ends the session quietly.
var errInputClosed = fmt.Errorf("ingress: input closed after an earlier read error: %w", net.ErrClosed)

// listener enforces the session limits (421 beyond them) and builds each
// session's stack of conns, from the socket up:
//
//	*conn       the limits above (reads, close after a reply)
//	*tls.Conn   implicit TLS only (ServeTLS; STARTTLS adds it later, inside go-smtp)
//	trace       smtptrace's recorder, when a running trace matches the client
//	*greetConn  the configurable greeting in place of go-smtp's fixed one
//
// so the trace records the plaintext dialog as the client sees it.
type listener struct {
	net.Listener
	s          *Server
	tls        *tls.Config // implicit TLS when set
	submission bool        // 587 or 465: MAIL needs AUTH
}

// clientState is what the ingress remembers about one client address.
type clientState struct {
	sessions int
	limiter  *rate.Limiter // nil without a connection rate limit
	inFlight int64         // in-flight budget held (MaxInFlightBytesPerClient)
}

// clientKey groups IPv6 clients by /64 (one host usually has a whole /64).
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cn := l.s.admit(c, l.tls)
		if cn == nil {
			continue
		}
		cn.submission = l.submission
		var nc net.Conn = cn
		if l.tls != nil {
			nc = tls.Server(cn, l.tls) // go-smtp runs the handshake; *conn bounds each read
		}
		nc = l.s.cfg.Trace.Wrap(nc, smtptrace.Ingress, c.RemoteAddr().String(), "")
		return &greetConn{Conn: nc, greeting: cn.greeting}, nil
	}
}

// admit applies the session limits to a new connection: a *conn to serve,
// or nil when it was refused (the refusal is written in the background so a
// client that does not read cannot stall Accept; on an implicit-TLS
// listener, tlsCfg set, inside TLS after the handshake).
func (s *Server) admit(c net.Conn, tlsCfg *tls.Config) *conn {
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	key := clientKey(ap.Addr())
	now := time.Now()
	s.mu.Lock()
	s.sweepClients(now)
	cs := s.clients[key]
	if cs == nil {
		cs = &clientState{}
		if n := s.cfg.MaxConnectionsPerClientPerMinute; n > 0 {
			cs.limiter = rate.NewLimiter(rate.Every(time.Minute/time.Duration(n)), n)
		}
		s.clients[key] = cs
	}
	exempt := false
	for _, p := range s.cfg.ClientLimitExceptions {
		if p.Contains(ap.Addr().Unmap()) {
			exempt = true
			break
		}
	}
	var refusal, why string
	switch {
	case s.sessions >= s.cfg.MaxSessions:
		refusal, why = "421 4.3.2 "+s.cfg.Hostname+" Too many sessions, try again later", "session limit reached"
	case exempt:
		s.sessions++
		cs.sessions++
	case cs.sessions >= s.cfg.MaxSessionsPerClient:
		refusal, why = "421 4.7.0 "+s.cfg.Hostname+" Error: too many sessions from "+ap.Addr().Unmap().String(), "per-client session limit reached"
	case cs.limiter != nil && !cs.limiter.AllowN(now, 1):
		refusal, why = "421 4.7.0 "+s.cfg.Hostname+" Error: too many connections from "+ap.Addr().Unmap().String(), "per-client connection rate limit reached"
	default:
		s.sessions++
		cs.sessions++
	}
	open := s.sessions
	s.mu.Unlock()
	s.cfg.Metrics.Sessions(open)
	if refusal != "" {
		s.log.Warn(why+"; refused connection", "client", ap.Addr().Unmap().String(),
			"max_sessions", s.cfg.MaxSessions, "max_sessions_per_client", s.cfg.MaxSessionsPerClient,
			"max_connections_per_client_per_minute", s.cfg.MaxConnectionsPerClientPerMinute)
		s.refuse(c, refusal, tlsCfg)
		return nil
	}
	greeting := "220 " + s.cfg.Hostname
	if s.cfg.Banner != "" {
		greeting += " " + s.cfg.Banner
	}
	cn := &conn{Conn: c, s: s, key: key, greeting: greeting + "\r\n", cs: cs, exempt: exempt}
	s.mu.Lock()
	s.conns[cn] = struct{}{}
	s.mu.Unlock()
	return cn
}

// refuse writes a 421 and closes c, in the background, with at most
// maxRefusing such writes at once (beyond that the connection is just
// closed). With tlsCfg (implicit TLS, port 465) the 421 goes inside TLS
// after the handshake: a TLS client would take plain text for a broken
// record (and a client that does not finish the handshake in time is just
// closed).
func (s *Server) refuse(c net.Conn, line string, tlsCfg *tls.Config) {
	select {
	case s.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-s.refusing }()
		defer c.Close()
		var w net.Conn = c
		if tlsCfg != nil {
			_ = c.SetDeadline(time.Now().Add(refuseHandshakeTimeout))
			tc := tls.Server(c, tlsCfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			w = tc
		}
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.WriteString(w, line+"\r\n")
		if tc, ok := w.(*tls.Conn); ok {
			_ = tc.CloseWrite() // close_notify after the 421
		}
	}()
}

// refuseHandshakeTimeout bounds the TLS handshake before a refusal.
const refuseHandshakeTimeout = 5 * time.Second

const maxRefusing = 64

// sweepClients forgets clients with no session and a full token bucket,
// at most once a minute. Called with s.mu held.
func (s *Server) sweepClients(now time.Time) {
	if now.Sub(s.swept) < time.Minute {
		return
	}
	s.swept = now
	for k, cs := range s.clients {
		if cs.sessions == 0 && (cs.limiter == nil || cs.limiter.TokensAt(now) >= float64(cs.limiter.Burst())) {
			delete(s.clients, k)
		}
	}
}

// conn is one client connection as go-smtp sees it.
type conn struct {
	net.Conn
	s          *Server
	key        netip.Addr
	greeting   string // for the greetConn above
	submission bool   // accepted on a submission listener
	once       sync.Once

	cs     *clientState // the client's (kept in s.clients while it has sessions)
	exempt bool         // in ClientLimitExceptions

	// Read and Write are called from the session's goroutine only; these
	// fields need no lock.
	readErr error // the first read error; reads after it return errInputClosed
	nread   int64

	// Set by the session's Data, which runs in another goroutine for BDAT.
	inData     atomic.Bool  // a DATA transfer is being read (the session logs what ends it)
	closeAfter atomic.Bool  // close once the next reply is written
	dataStart  atomic.Int64 // unix nanoseconds when the transfer began (MinDataRate)
	dataBytes  atomic.Int64 // bytes read since
	rateCut    atomic.Bool  // a read timed out on the MinDataRate deadline
	dataEnded  atomic.Bool  // the session's Data returned (go-smtp reads the rest)
}

// startData marks the start of a message transfer (DATA or BDAT): reads
// are bounded by MinDataRate from now until endData.
func (c *conn) startData() {
	c.dataStart.Store(time.Now().UnixNano())
	c.dataBytes.Store(0)
	c.rateCut.Store(false)
	c.dataEnded.Store(false)
	c.inData.Store(true)
}

func (c *conn) endData() { c.inData.Store(false) }

// readDeadline is the idle timeout from now, or, during a transfer with a
// minimum data rate, the time by which the bytes read so far must have
// come (as Postfix's smtpd_min_data_rate: the idle timeout from the start,
// plus one second per MinDataRate bytes read), whichever is earlier.
func (c *conn) readDeadline(now time.Time) (deadline time.Time, byRate bool) {
	deadline = now.Add(c.s.cfg.ReadTimeout)
	rate := int64(c.s.cfg.MinDataRate)
	if rate <= 0 || !c.inData.Load() {
		return deadline, false
	}
	credit := time.Duration(c.dataBytes.Load() * int64(time.Second) / rate)
	if d := time.Unix(0, c.dataStart.Load()).Add(c.s.cfg.ReadTimeout + credit); d.Before(deadline) {
		return d, true
	}
	return deadline, false
}

// wireOf finds the ingress's conn under a go-smtp connection (the layers
// above it, and a *tls.Conn after STARTTLS, expose NetConn).
func wireOf(c net.Conn) *conn {
	for c != nil {
		switch x := c.(type) {
		case *conn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// Read is an idle timeout per read (as Postfix's smtpd_timeout and
// sendmail's Timeout.datablock): a silent client is cut off, and during a
// message transfer one slower than MinDataRate too (readDeadline). After the first error nothing more
// is read: the rest of an interrupted DATA is never taken for commands.
func (c *conn) Read(p []byte) (int, error) {
	if c.readErr != nil {
		return 0, errInputClosed
	}
	deadline, byRate := c.readDeadline(time.Now())
	if err := c.Conn.SetReadDeadline(deadline); err != nil {
		c.readErr = err
		return 0, err
	}
	n, err := c.Conn.Read(p)
	c.nread += int64(n)
	if c.inData.Load() {
		c.dataBytes.Add(int64(n))
	}
	if err == nil {
		return n, nil
	}
	c.readErr = err
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	if timeout && byRate {
		c.rateCut.Store(true)
	}
	switch {
	case c.inData.Load() && !c.dataEnded.Load():
		// The session reports it with its queue id.
	case timeout && byRate:
		c.s.log.Info("client sent the rest of a refused message slower than the minimum data rate; closing", "client", c.key.String(), "min_data_rate", c.s.cfg.MinDataRate)
	case timeout:
		c.s.log.Info("timeout waiting for input from client; closing", "client", c.key.String(), "timeout", c.s.cfg.ReadTimeout)
	case c.nread == 0:
		// A load balancer's health probe: connect, leave.
		c.s.log.Debug("client left without a word", "client", c.key.String())
	default:
		c.s.log.Debug("client closed the connection", "client", c.key.String(), "err", err)
	}
	if errors.Is(err, syscall.ECONNRESET) {
		// A reset is how many clients say goodbye; go-smtp would log it as
		// an error.
		return n, io.EOF
	}
	return n, err
}

// SetReadDeadline is ignored: Read sets the idle deadline itself (go-smtp
// sets one per command, which would bound a whole DATA transfer).
func (c *conn) SetReadDeadline(time.Time) error { return nil }

// SetDeadline sets only the write deadline, for the same reason.
func (c *conn) SetDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

// closeAfterReply ends the session once the next reply is written.
func (c *conn) closeAfterReply() { c.closeAfter.Store(true) }

// greetConn replaces the first line go-smtp writes (its fixed 220
// greeting) with the configured one. It sits above TLS, so implicit-TLS
// sessions get the same greeting.
type greetConn struct {
	net.Conn
	greeting string
	greeted  bool // Write is called from the session's goroutine only
}

// NetConn exposes the conn below (wireOf, go-smtp's TLS detection, the
// trace's lookups).
func (g *greetConn) NetConn() net.Conn { return g.Conn }

func (g *greetConn) Write(p []byte) (int, error) {
	if !g.greeted {
		g.greeted = true
		if len(p) > 4 && string(p[:4]) == "220 " {
			for i := 0; i+1 < len(p); i++ {
				if p[i] == '\r' && p[i+1] == '\n' {
					if _, err := g.Conn.Write(append([]byte(g.greeting), p[i+2:]...)); err != nil {
						return 0, err
					}
					return len(p), nil
				}
			}
		}
	}
	return g.Conn.Write(p)
}

// Write closes the connection after the reply that closeAfterReply asked for.
func (c *conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		return n, err
	}
	if c.closeAfter.Load() {
		c.readErr = errInputClosed
		c.Close()
	}
	return n, nil
}

func (c *conn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.sessions--
		if cs := c.s.clients[c.key]; cs != nil {
			cs.sessions--
		}
		open := c.s.sessions
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.s.cfg.Metrics.Sessions(open)
	})
	return c.Conn.Close()
}
