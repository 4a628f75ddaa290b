// Package ingress is the SMTP front of mailfwd: it accepts mail from
// applications and MTAs, stores the body once in the blob store, publishes
// one envelope per recipient domain to JetStream, and answers 250 only when
// both are durable.
package ingress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/maillog"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Queue takes the envelopes of one accepted message.
type Queue interface {
	Enqueue(ctx context.Context, envs []*envelope.Envelope) error
}

// BodyStore keeps message bodies.
type BodyStore interface {
	Put(ctx context.Context, key string, data []byte) error
}

// Config is the ingress's SMTP behaviour.
type Config struct {
	Hostname        string        // for the greeting, EHLO and Received:
	Banner          string        // greeting text after the hostname; may be empty
	MaxMessageBytes int64         // SIZE; 552 above it
	MaxRecipients   int           // per message
	MaxLineLength   int           // per command/data line
	ReadTimeout     time.Duration // per command / data read
	WriteTimeout    time.Duration
	MaxSessions     int           // concurrent sessions; more get 421
	StoreTimeout    time.Duration // body PUT + publish acks; a 451 after it
	// InlineBodyMax keeps bodies up to this many bytes of single-domain
	// messages inside the JetStream envelope instead of the blob store (0: never).
	InlineBodyMax   int
	TLSConfig       *tls.Config // enables STARTTLS when set
	Policy          Policy
	Resolver        HostResolver       // reverse lookups for Connect: host name rules; nil: net.DefaultResolver
	Metrics         *telemetry.Metrics // nil: none
	Logger          *slog.Logger
	TracerProvider  trace.TracerProvider
	RepanicForTests bool // let panics through instead of answering 451
}

// HostResolver does the forward-confirmed reverse lookup of clients.
type HostResolver interface {
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Server is one ingress.
type Server struct {
	cfg    Config
	queue  Queue
	bodies BodyStore
	log    *slog.Logger
	tracer trace.Tracer
	smtp   *smtp.Server

	mu       sync.Mutex
	sessions int
	conns    map[*conn]struct{} // open sessions, closed by Shutdown at its deadline
}

// New builds an ingress server.
func New(cfg Config, q Queue, bodies BodyStore) (*Server, error) {
	if cfg.Hostname == "" {
		return nil, errors.New("ingress: hostname is required")
	}
	if cfg.Policy == nil {
		return nil, errors.New("ingress: a relay policy is required")
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 20_000_000
	}
	if cfg.MaxRecipients <= 0 {
		cfg.MaxRecipients = 100
	}
	if cfg.MaxLineLength <= 0 {
		cfg.MaxLineLength = 2000
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 5 * time.Minute
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Minute
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 500
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	s := &Server{
		cfg:    cfg,
		queue:  q,
		bodies: bodies,
		log:    cfg.Logger.With("component", "ingress"),
		tracer: cfg.TracerProvider.Tracer("github.com/mailfwd/mailfwd/pkg/ingress"),
		conns:  map[*conn]struct{}{},
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = cfg.MaxLineLength
	srv.ReadTimeout = cfg.ReadTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.TLSConfig = cfg.TLSConfig
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogAdapter{s.log}
	s.smtp = srv
	return s, nil
}

// Serve accepts sessions on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	err := s.smtp.Serve(&listener{Listener: ln, s: s})
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets open sessions finish until ctx is done,
// then closes what is left (their clients get no 250 for unfinished mail).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.smtp.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		// smtp.Server.Close is a no-op once Shutdown has run (it returns
		// ErrServerClosed without touching connections), so close them here.
		s.closeSessions()
		return nil
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// closeSessions closes every open session's connection.
func (s *Server) closeSessions() {
	s.mu.Lock()
	open := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// Sessions returns the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	ap, _ := netip.ParseAddrPort(c.Conn().RemoteAddr().String())
	_, isTLS := c.TLSConnectionState()
	cl := Client{Addr: ap.Addr().Unmap(), Helo: c.Hostname(), TLS: isTLS}
	if s.cfg.Policy.NeedsClientHostname() {
		cl.Hostname = s.verifiedHostname(cl.Addr)
	}
	if err := s.cfg.Policy.CheckConnect(context.Background(), cl); err != nil {
		return nil, reply(err, "")
	}
	return &session{s: s, conn: c, client: cl}, nil
}

// verifiedHostname is the client's forward-confirmed reverse DNS name (a
// PTR name that resolves back to the address), or "".
func (s *Server) verifiedHostname(ip netip.Addr) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	names, err := s.cfg.Resolver.LookupAddr(ctx, ip.String())
	if err != nil {
		return ""
	}
	for _, n := range names {
		n = strings.TrimSuffix(n, ".")
		addrs, err := s.cfg.Resolver.LookupNetIP(ctx, "ip", n)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.Unmap() == ip {
				return strings.ToLower(n)
			}
		}
	}
	return ""
}

type session struct {
	s      *Server
	conn   *smtp.Conn
	client Client

	qid      string
	from     string
	hasFrom  bool
	eightBit bool
	utf8     bool
	rcpts    []address.Address // as the client gave them
	targets  []address.Address // what is queued: after aliases/virtusertable, without discarded ones
}

var _ smtp.Session = (*session)(nil)

func (ss *session) Reset() {
	ss.qid, ss.from, ss.hasFrom, ss.eightBit, ss.utf8, ss.rcpts, ss.targets = "", "", false, false, false, nil, nil
}

func (ss *session) Logout() error { return nil }

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.Reset()
	if _, isTLS := ss.conn.TLSConnectionState(); isTLS {
		ss.client.TLS = true
	}
	ss.client.Helo = ss.conn.Hostname()
	if opts != nil {
		if opts.Size > ss.s.cfg.MaxMessageBytes {
			return reply(Reject(552, "5.3.4", fmt.Sprintf("Message size exceeds fixed maximum message size (%d)", ss.s.cfg.MaxMessageBytes)), "")
		}
		ss.eightBit = opts.Body == smtp.Body8BitMIME
		ss.utf8 = opts.UTF8
	}
	if from != "" {
		a, err := address.Parse(from)
		if err != nil {
			return reply(err, "")
		}
		if a.UTF8 && !ss.utf8 {
			return reply(Reject(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"), "")
		}
	}
	ss.from, ss.hasFrom = from, true
	ss.qid = envelope.NewQueueID()
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	a, err := address.Parse(to)
	if err != nil {
		return reply(err, ss.qid)
	}
	if a.UTF8 && !ss.utf8 {
		return reply(Reject(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"), ss.qid)
	}
	targets, err := ss.s.cfg.Policy.CheckRcpt(context.Background(), ss.client, ss.from, a)
	if err != nil {
		ss.s.log.Info("recipient refused", "queue_id", ss.qid, "client", ss.client.Addr, "from", ss.from, "to", to, "reason", err)
		ss.s.cfg.Metrics.Recipient("rejected")
		return reply(err, ss.qid)
	}
	var parsed []address.Address
	for _, t := range targets {
		ta, err := address.Parse(t)
		if err != nil {
			ss.s.log.Error("policy expanded a recipient to an unusable address", "queue_id", ss.qid, "to", to, "target", t, "err", err)
			return reply(fmt.Errorf("expansion of %s: %w", to, err), ss.qid)
		}
		parsed = append(parsed, ta)
	}
	if len(targets) == 0 {
		ss.s.log.Info(ss.qid+": to=<"+to+">: discarded by policy", "queue_id", ss.qid)
	} else if len(targets) > 1 || targets[0] != to {
		ss.s.log.Info(ss.qid+": to=<"+to+">: expanded to "+strings.Join(targets, ", "), "queue_id", ss.qid)
	}
	ss.s.cfg.Metrics.Recipient("accepted")
	ss.rcpts = append(ss.rcpts, a)
	for _, ta := range parsed {
		dup := false
		for _, have := range ss.targets {
			if have.Raw == ta.Raw {
				dup = true
				break
			}
		}
		if !dup {
			ss.targets = append(ss.targets, ta)
		}
	}
	return nil
}

func (ss *session) Data(r io.Reader) (err error) {
	if !ss.s.cfg.RepanicForTests {
		defer func() {
			if p := recover(); p != nil {
				ss.s.log.Error("panic in DATA", "queue_id", ss.qid, "panic", p, "stack", string(debug.Stack()))
				err = reply(fmt.Errorf("panic: %v", p), ss.qid)
			}
		}()
	}
	buf := bytes.NewBuffer(make([]byte, 0, 8192))
	ss.writeReceived(buf)
	hdrLen := buf.Len()
	if _, err := buf.ReadFrom(r); err != nil {
		// Oversize (552 from go-smtp), a client that went away, a timeout:
		// nothing is stored or queued.
		return reply(err, ss.qid)
	}
	body := buf.Bytes()
	size := int64(len(body) - hdrLen)
	if len(ss.targets) == 0 {
		// Every recipient was discarded by policy (DISCARD): accept, keep nothing.
		ss.s.log.Info(ss.qid+": discarded: every recipient matched a DISCARD rule", "queue_id", ss.qid, "size", size)
		ss.s.cfg.Metrics.Message("discarded")
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + ss.qid}
	}
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.StoreTimeout)
	defer cancel()
	if err := ss.s.accept(ctx, ss, body, size); err != nil {
		ss.s.cfg.Metrics.Message("tempfail")
		return reply(err, ss.qid)
	}
	ss.s.cfg.Metrics.Message("accepted")
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + ss.qid}
}

func (ss *session) proto() string {
	p := "ESMTP"
	if ss.utf8 {
		p = "UTF8SMTP"
	}
	if ss.client.TLS {
		p += "S"
	}
	return p
}

func (ss *session) writeReceived(w *bytes.Buffer) {
	fmt.Fprintf(w, "Received: from %s ([%s])\r\n\tby %s (mailfwd) with %s id %s", sanitize(ss.client.Helo), ss.client.Addr, ss.s.cfg.Hostname, ss.proto(), ss.qid)
	if len(ss.rcpts) == 1 {
		fmt.Fprintf(w, "\r\n\tfor <%s>", ss.rcpts[0].Raw)
	}
	fmt.Fprintf(w, "; %s\r\n", time.Now().Format(time.RFC1123Z))
}

// sanitize keeps a client-supplied HELO name from breaking the header.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 33 || r == 127 || r == '(' || r == ')' {
			return -1
		}
		return r
	}, s)
	if s == "" {
		return "unknown"
	}
	return s
}

// accept stores the body and publishes the envelopes. nil means durable.
func (s *Server) accept(ctx context.Context, ss *session, body []byte, size int64) error {
	ctx, span := s.tracer.Start(ctx, "smtp.receive", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("mailfwd.queue_id", ss.qid),
			attribute.Int("mailfwd.recipients", len(ss.rcpts)),
			attribute.Int64("mailfwd.size", size),
			attribute.String("net.peer.ip", ss.client.Addr.String()),
		))
	defer span.End()
	fail := func(what string, err error) error {
		span.RecordError(err)
		span.SetStatus(codes.Error, what)
		s.log.Error(what, "queue_id", ss.qid, "err", err)
		return err
	}

	// Group recipients by domain, keeping the client's order.
	var envs []*envelope.Envelope
	byDomain := map[string]*envelope.Envelope{}
	now := time.Now().UTC()
	msgid := messageID(body)
	for _, a := range ss.targets {
		e := byDomain[a.ASCII]
		if e == nil {
			e = &envelope.Envelope{
				QueueID: ss.qid, From: ss.from, Domain: a.ASCII, BodyKey: ss.qid,
				Size: int64(len(body)), EightBit: ss.eightBit, UTF8: ss.utf8, MsgID: msgid,
				ClientAddr: ss.client.Addr.String(), ClientHelo: ss.client.Helo, Arrived: now,
			}
			byDomain[a.ASCII] = e
			envs = append(envs, e)
		}
		e.Recipients = append(e.Recipients, envelope.Recipient{Addr: a.Raw})
	}
	for _, e := range envs {
		e.Parts = len(envs)
	}

	if len(envs) == 1 && len(body) <= s.cfg.InlineBodyMax {
		// Small and for one domain: the body rides in the envelope, stored
		// (and synced, and replicated) by the same JetStream write.
		envs[0].Body, envs[0].BodyKey = body, ""
	} else {
		pctx, pspan := s.tracer.Start(ctx, "blob.put")
		err := s.bodies.Put(pctx, ss.qid, body)
		pspan.End()
		if err != nil {
			return fail("body store failed; answering 451", err)
		}
	}
	qctx, qspan := s.tracer.Start(ctx, "queue.publish", trace.WithSpanKind(trace.SpanKindProducer))
	err := s.queue.Enqueue(qctx, envs)
	qspan.End()
	if err != nil {
		return fail("queue publish failed; answering 451", err)
	}
	maillog.LogReceived(ctx, s.log, maillog.Received{
		QueueID: ss.qid, From: ss.from, Size: size, NRcpts: len(ss.targets), MsgID: msgid,
		Proto: ss.proto(), ClientHelo: ss.client.Helo, ClientAddr: ss.client.Addr.String(),
	})
	return nil
}

// messageID returns the Message-ID header value of body, if any.
func messageID(body []byte) string {
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		line := body
		if i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			body = nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			return "" // end of header
		}
		if len(line) > 11 && strings.EqualFold(string(line[:11]), "message-id:") {
			return strings.TrimSpace(string(line[11:]))
		}
	}
	return ""
}

// listener enforces the session limit (421 beyond it) and writes the
// configurable greeting in place of go-smtp's fixed one.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.s.mu.Lock()
		full := l.s.sessions >= l.s.cfg.MaxSessions
		if !full {
			l.s.sessions++
		}
		open := l.s.sessions
		l.s.mu.Unlock()
		l.s.cfg.Metrics.Sessions(open)
		if full {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "421 4.3.2 %s Too many sessions, try again later\r\n", l.s.cfg.Hostname)
			c.Close()
			l.s.log.Warn("session limit reached; refused connection", "client", c.RemoteAddr().String(), "limit", l.s.cfg.MaxSessions)
			continue
		}
		greeting := "220 " + l.s.cfg.Hostname
		if l.s.cfg.Banner != "" {
			greeting += " " + l.s.cfg.Banner
		}
		cn := &conn{Conn: c, s: l.s, greeting: greeting + "\r\n"}
		l.s.mu.Lock()
		l.s.conns[cn] = struct{}{}
		l.s.mu.Unlock()
		return cn, nil
	}
}

type conn struct {
	net.Conn
	s        *Server
	greeting string
	greeted  bool
	once     sync.Once
}

// Write replaces the first line go-smtp writes (its fixed 220 greeting).
func (c *conn) Write(p []byte) (int, error) {
	if !c.greeted {
		c.greeted = true
		if bytes.HasPrefix(p, []byte("220 ")) {
			if i := bytes.Index(p, []byte("\r\n")); i >= 0 {
				if _, err := c.Conn.Write(append([]byte(c.greeting), p[i+2:]...)); err != nil {
					return 0, err
				}
				return len(p), nil
			}
		}
	}
	return c.Conn.Write(p)
}

func (c *conn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.sessions--
		open := c.s.sessions
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.s.cfg.Metrics.Sessions(open)
	})
	return c.Conn.Close()
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) { a.log.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.log.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }
