// Package ingress is the SMTP front of mailfwd: it accepts mail from
// applications and MTAs, stores the body once in the blob store, publishes
// one envelope per recipient domain to JetStream, and answers 250 only when
// both are durable.
package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/semaphore"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Queue takes the envelopes of one accepted message.
type Queue interface {
	Enqueue(ctx context.Context, envs []*envelope.Envelope) error
}

// BodyStore keeps message bodies.
type BodyStore interface {
	Put(ctx context.Context, key string, data []byte) error
	// PutStream stores what r yields; when r fails nothing is stored.
	PutStream(ctx context.Context, key string, r io.Reader) (int64, error)
}

// streamBuffered is implemented by stores that hold a buffer of their own
// per PutStream (S3: one multipart part); it is counted in MaxInFlightBytes.
type streamBuffered interface {
	StreamBufferBytes() int64
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
	InlineBodyMax int
	// MaxInFlightBytes bounds the body bytes all sessions hold in memory at
	// once (read buffers and the store's upload buffers); beyond it, 452 4.3.1.
	MaxInFlightBytes int64
	// MaxSessionsPerClient bounds concurrent sessions from one client
	// address; more get 421 4.7.0.
	MaxSessionsPerClient int
	// MaxConnectionsPerClientPerMinute bounds new connections from one
	// client address (a token bucket of this size refilled over a minute).
	MaxConnectionsPerClientPerMinute int
	// ClientLimitExceptions are client networks exempt from the two limits
	// above (as Postfix's smtpd_client_event_limit_exceptions).
	ClientLimitExceptions []netip.Prefix
	// MaxErrorsPerSession closes a session with 421 4.7.0 after this many
	// error replies (Postfix smtpd_hard_error_limit).
	MaxErrorsPerSession int
	// MaxHops refuses a message with more Received: headers (554 5.4.6).
	MaxHops   int
	TLSConfig *tls.Config // enables STARTTLS when set (and ServeTLS)
	// Auth offers SMTP AUTH (PLAIN, LOGIN; over TLS only) to the users
	// Users returns (the policy in force, hot-reloaded). nil Auth, nil
	// Users or no users: no AUTH is offered.
	Auth  *smtpauth.Authenticator
	Users func() *smtpauth.Users
	// DKIM returns the signing keys in force (nil func or no keys: mail is
	// not signed); DKIMMaxHeaderBytes bounds the header a signer holds.
	DKIM               func() *dkim.Keys
	DKIMMaxHeaderBytes int
	// Whose mail is signed (issue 19): a session authenticated by SMTP AUTH
	// when its user may send as every From: address, else a client in
	// DKIMSignNetworks (OpenDKIM's InternalHosts) or, with
	// DKIMSignRelayClients, one the policy lets relay anywhere by its
	// address (Connect: RELAY, StaticRelay.Networks). Nobody else: mail a
	// client may send only to To: RELAY domains is never signed.
	DKIMSignNetworks     []netip.Prefix
	DKIMSignRelayClients bool
	// Trace records the sessions a running `mailfwdctl trace --client`
	// matches (nil: none).
	Trace    *smtptrace.Watcher
	Policy   Policy
	Resolver HostResolver       // reverse lookups for Connect: host name rules; nil: net.DefaultResolver
	Metrics  *telemetry.Metrics // nil: none
	// Events receives a "received" event per recipient before the
	// envelopes are published (nil: no events).
	Events          events.Emitter
	Logger          *slog.Logger
	TracerProvider  trace.TracerProvider
	RepanicForTests bool // let panics through instead of answering 451

	// MaxRecipientOvershoot is how many recipients over MaxRecipients a
	// transaction may be answered 452 4.5.3 before each further one counts
	// toward MaxErrorsPerSession (Postfix smtpd_recipient_overshoot_limit).
	MaxRecipientOvershoot int
	// MaxDataLineLength bounds a line of message data (RFC 5321's 998 is
	// what a sender must keep to; longer lines are common and accepted);
	// MaxLineLength then bounds command lines only.
	MaxDataLineLength int
	// SubmissionAuthExceptions are client networks that may send on the
	// submission listeners (ServeSubmission, ServeTLS) without AUTH.
	SubmissionAuthExceptions []netip.Prefix
	// MaxInFlightBytesPerClient is the part of MaxInFlightBytes one client
	// address (IPv6: /64) may hold (0: a quarter of it; at least one
	// message's buffers). ClientLimitExceptions are exempt.
	MaxInFlightBytesPerClient int64
	// MinDataRate is the slowest a message may come, in bytes per second
	// (Postfix smtpd_min_data_rate): a transfer may take ReadTimeout plus
	// one second per MinDataRate bytes; slower clients get 421 4.4.2 and
	// nothing is queued. 0: DefaultMinDataRate; negative: no minimum.
	MinDataRate int
	// Quotas are the fleet-wide sender quotas checked at MAIL FROM (nil:
	// none; quota.go).
	Quotas *Quotas
	// MaxAbandonedTransactions is how many transactions a session may end
	// before DATA (RSET, a new MAIL FROM, every recipient refused): the
	// next MAIL FROM is 421 4.7.0 and the session ends (about Postfix's
	// smtpd_junk_command_limit). It bounds the work a MAIL FROM / RSET
	// loop makes, the sender quotas' KV writes among it.
	// 0: DefaultMaxAbandonedTransactions; negative: no limit.
	MaxAbandonedTransactions int
}

// Defaults of Config's session limits.
const (
	// DefaultMaxRecipientOvershoot is Postfix's smtpd_recipient_overshoot_limit.
	DefaultMaxRecipientOvershoot = 1000
	// DefaultMaxDataLineLength: generated HTML often comes as one line of
	// tens of KB; the body is streamed, so the limit costs no memory (header
	// lines have their own bound, 64 KiB, as they are held while scanned).
	DefaultMaxDataLineLength = 1 << 20
	// DefaultMinDataRate is Postfix's smtpd_min_data_rate (bytes/s).
	DefaultMinDataRate = 500
	// DefaultMaxAbandonedTransactions: an abandoned transaction is at
	// least two commands (MAIL FROM, RSET), so 50 is about Postfix's
	// smtpd_junk_command_limit (100); a client that sends its messages
	// never comes near it.
	DefaultMaxAbandonedTransactions = 50
)

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

	budget    *semaphore.Weighted // MaxInFlightBytes
	inFlight  atomic.Int64
	storeBuf  int64 // what one PutStream holds in memory
	refusing  chan struct{}
	peekLimit int       // body bytes read before deciding inline / Put / PutStream
	peekBufs  sync.Pool // *[]byte of peekLimit and a Received: header, reused across messages
	firstBufs sync.Pool // *[]byte of firstPeekBuf: every message's first buffer

	mu       sync.Mutex
	sessions int
	conns    map[*conn]struct{} // open sessions, closed by Shutdown at its deadline
	clients  map[netip.Addr]*clientState
	swept    time.Time
	live     int           // sessions not yet logged out
	liveDone chan struct{} // closed when live drops to 0 (made by waitLoggedOut)
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
	if cfg.MaxRecipientOvershoot <= 0 {
		cfg.MaxRecipientOvershoot = DefaultMaxRecipientOvershoot
	}
	if cfg.MaxDataLineLength <= 0 {
		cfg.MaxDataLineLength = DefaultMaxDataLineLength
	}
	if cfg.MinDataRate == 0 {
		cfg.MinDataRate = DefaultMinDataRate
	}
	if cfg.MaxAbandonedTransactions == 0 {
		cfg.MaxAbandonedTransactions = DefaultMaxAbandonedTransactions
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
	if cfg.MaxSessionsPerClient <= 0 {
		cfg.MaxSessionsPerClient = cfg.MaxSessions
	}
	if cfg.MaxErrorsPerSession < 0 {
		cfg.MaxErrorsPerSession = 0
	}
	if cfg.MaxHops <= 0 {
		cfg.MaxHops = 25
	}
	if cfg.MaxInFlightBytes <= 0 {
		cfg.MaxInFlightBytes = DefaultMaxInFlightBytes
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

		clients:   map[netip.Addr]*clientState{},
		refusing:  make(chan struct{}, maxRefusing),
		budget:    semaphore.NewWeighted(cfg.MaxInFlightBytes),
		storeBuf:  32 << 10, // io.Copy's buffer
		peekLimit: max(cfg.InlineBodyMax, minPeek),
	}
	if sb, ok := bodies.(streamBuffered); ok {
		s.storeBuf = sb.StreamBufferBytes()
	}
	// A client's share is at least what one streamed message holds: the
	// peek buffer with a Received: header, a signer's header and the
	// store's buffer.
	sign := int64(cfg.DKIMMaxHeaderBytes)
	if sign <= 0 {
		sign = dkim.DefaultMaxHeaderBytes
	}
	one := int64(s.peekLimit) + 4096 + sign + s.storeBuf
	if s.cfg.MaxInFlightBytesPerClient <= 0 {
		s.cfg.MaxInFlightBytesPerClient = s.cfg.MaxInFlightBytes / 4
	}
	s.cfg.MaxInFlightBytesPerClient = min(max(s.cfg.MaxInFlightBytesPerClient, one), s.cfg.MaxInFlightBytes)
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = cfg.MaxLineLength
	srv.MaxRecipientOvershoot = cfg.MaxRecipientOvershoot
	srv.MaxDataLineLength = cfg.MaxDataLineLength
	srv.MaxErrors = cfg.MaxErrorsPerSession
	srv.OnReply, srv.OnErrorBudgetSpent = cfg.Metrics.Reply, func() { cfg.Metrics.LimitRefused("error_budget") }
	srv.OnStartTLS = cfg.Metrics.StartTLS
	srv.ReadTimeout = cfg.ReadTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.TLSConfig = cfg.TLSConfig
	// The session answers AUTH before TLS itself (538 5.7.11) and offers
	// it in EHLO only over TLS (AuthMechanisms).
	srv.AllowInsecureAuth = true
	// After STARTTLS, a traced session goes on recording inside TLS
	// (smtptrace.Continue also notes the TLS state).
	srv.WrapTLSConn = func(tc *tls.Conn, under net.Conn) net.Conn { return smtptrace.Continue(tc, under) }
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogAdapter{s.log}
	s.smtp = srv
	return s, nil
}

// Serve accepts sessions on ln until Shutdown (STARTTLS offered when
// Config.TLSConfig is set). It may run on several listeners at once (the
// port 25/2525 one and the submission port 587), sharing every limit.
func (s *Server) Serve(ln net.Listener) error {
	err := s.smtp.Serve(&listener{Listener: ln, s: s})
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeSubmission accepts sessions on the submission port (587, RFC 6409,
// STARTTLS offered when Config.TLSConfig is set): as ServeTLS, MAIL needs
// AUTH first (530 5.7.0) unless the client is in SubmissionAuthExceptions.
func (s *Server) ServeSubmission(ln net.Listener) error {
	err := s.smtp.Serve(&listener{Listener: ln, s: s, submission: true})
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeTLS accepts implicit-TLS sessions on ln (port 465, RFC 8314) until
// Shutdown: the TLS handshake comes first, then the SMTP greeting. It is a
// submission port: MAIL needs AUTH, as on ServeSubmission.
func (s *Server) ServeTLS(ln net.Listener) error {
	if s.cfg.TLSConfig == nil {
		return errors.New("ingress: implicit TLS needs a TLS configuration")
	}
	err := s.smtp.Serve(&listener{Listener: ln, s: s, tls: s.cfg.TLSConfig, submission: true})
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
		// A closed session may still be inside its quota take; its
		// Logout gives the count back (quota.go). Wait for that before
		// the caller closes NATS and the process exits, a little.
		if h := testHookClosedWait; h != nil {
			h()
		}
		if !s.waitLoggedOut(closedSessionsGrace) {
			s.log.Warn("closed sessions still running after the grace; their sender quota counts may stay taken", "grace", closedSessionsGrace)
		}
		return nil
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// closedSessionsGrace bounds how long Shutdown waits, after closing the
// sessions left at its deadline, for them to end (a quota take in progress
// and its give-back: a round trip each, 2 s at most). It is within the
// chart's terminationGraceMarginSeconds (10).
const closedSessionsGrace = 5 * time.Second

// testHookClosedWait, when set (tests), is called as Shutdown starts
// waiting for the sessions it closed.
var testHookClosedWait func()

// sessionOpened and loggedOut count sessions between newSession and their
// Logout (quota counts are given back in Logout).
func (s *Server) sessionOpened() {
	s.mu.Lock()
	s.live++
	s.mu.Unlock()
}

func (s *Server) loggedOut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live--
	if s.live == 0 && s.liveDone != nil {
		close(s.liveDone)
		s.liveDone = nil
	}
}

// waitLoggedOut waits until every session has logged out, at most d.
func (s *Server) waitLoggedOut(d time.Duration) bool {
	s.mu.Lock()
	if s.live == 0 {
		s.mu.Unlock()
		return true
	}
	if s.liveDone == nil {
		s.liveDone = make(chan struct{})
	}
	done := s.liveDone
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
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
	st, isTLS := c.TLSConnectionState()
	if isTLS {
		smtptrace.NoteTLS(c.Conn(), st) // implicit TLS; noted once per upgrade
	}
	cl := Client{Addr: ap.Addr().Unmap(), Helo: c.Hostname(), TLS: isTLS}
	if s.cfg.Policy.NeedsClientHostname() {
		cl.Hostname = s.verifiedHostname(cl.Addr)
	}
	if err := s.cfg.Policy.CheckConnect(context.Background(), cl); err != nil {
		return nil, reply(err, "")
	}
	ss := &session{s: s, conn: c, client: cl}
	if wire := wireOf(c.Conn()); wire != nil {
		ss.submission = wire.submission
	}
	s.sessionOpened()
	return ss, nil
}

// errAuthRequired: MAIL on a submission port before AUTH (RFC 4954 §6).
var errAuthRequired = Reject(530, "5.7.0", "Authentication required")

// mayMailUnauthenticated: a port-25 session, or a client listed in
// SubmissionAuthExceptions (RFC 6409 §4.3: a site may authorise clients
// by other means).
func (ss *session) mayMailUnauthenticated() bool {
	if !ss.submission {
		return true
	}
	for _, p := range ss.s.cfg.SubmissionAuthExceptions {
		if p.Contains(ss.client.Addr) {
			return true
		}
	}
	return false
}

// dkimKeys are the DKIM keys in force (nil: no signing).
func (s *Server) dkimKeys() *dkim.Keys {
	if s.cfg.DKIM == nil {
		return nil
	}
	return s.cfg.DKIM()
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
	fwd      map[string]bool   // targets (Raw) that aliases/virtusertable forwarded to another domain (SRS)

	user       *smtpauth.User // after a successful AUTH; kept across transactions
	authCancel context.CancelFunc
	submission bool // a submission listener's session: MAIL needs AUTH
	// quota is the session's count on its sender quotas: the transaction's
	// until its 250, or an abandoned one's until the next MAIL FROM or
	// Logout (quota.go; locked: a forced close's Logout may run on another
	// goroutine).
	quota quotaHold
	// abandoned counts transactions that ended before DATA
	// (MaxAbandonedTransactions); inData: this transaction's DATA or BDAT
	// began (set on go-smtp's data goroutine).
	abandoned int
	inData    atomic.Bool
	logout    sync.Once
}

var _ smtp.Session = (*session)(nil)

func (ss *session) Reset() {
	if wire := wireOf(ss.conn.Conn()); wire != nil {
		wire.endData() // go-smtp resets after a message transfer, once it has read it all
	}
	// A transaction that ended without its 250 keeps its quota charge for
	// the next MAIL FROM (quota.go); one that never got to DATA counts
	// toward MaxAbandonedTransactions.
	if ss.hasFrom && !ss.inData.Load() {
		ss.abandoned++
	}
	ss.inData.Store(false)
	ss.qid, ss.from, ss.hasFrom, ss.eightBit, ss.utf8, ss.rcpts, ss.targets, ss.fwd = "", "", false, false, false, nil, nil, nil
}

func (ss *session) Logout() error {
	ss.logout.Do(func() {
		ss.giveBack(ss.quota.end())
		if ss.authCancel != nil {
			ss.authCancel()
		}
		ss.s.loggedOut()
	})
	return nil
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.Reset()
	if limit := ss.s.cfg.MaxAbandonedTransactions; limit > 0 && ss.abandoned >= limit {
		ss.s.log.Info("MAIL refused: too many abandoned transactions; closing the session", "client", ss.client.Addr.String(),
			"from", from, "abandoned", ss.abandoned, "max_abandoned_transactions", limit)
		ss.s.cfg.Metrics.LimitRefused("abandoned_transactions")
		if wire := wireOf(ss.conn.Conn()); wire != nil {
			wire.closeAfterReply()
		}
		return reply(Reject(421, "4.7.0", fmt.Sprintf("%s Error: too many abandoned transactions (%d without DATA), closing connection", ss.s.cfg.Hostname, limit)), "")
	}
	if err := ss.checkUser(); err != nil {
		return reply(err, "")
	}
	if ss.user == nil && !ss.mayMailUnauthenticated() {
		ss.s.log.Info("MAIL refused: authentication required on the submission port", "client", ss.client.Addr.String())
		return reply(errAuthRequired, "")
	}
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
	if ss.user != nil && !ss.user.MaySend(from) {
		ss.s.log.Info("sender refused: not allowed for the authenticated user", "client", ss.client.Addr.String(), "user", ss.user.Name, "from", from)
		return reply(errSenderNotAllowed, "")
	}
	if err := ss.takeQuotas(from); err != nil {
		return reply(err, "")
	}
	ss.from, ss.hasFrom = from, true
	ss.qid = envelope.NewQueueID()
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.checkUser(); err != nil {
		return reply(err, ss.qid)
	}
	// A bounce to an SRS address of ours goes back to the sender it stands
	// for: its hash is the authorisation (Postfix accepts the SRS domain and
	// postsrsd rewrites the recipient after the checks). A forged or expired
	// one is refused before anything else looks at it.
	srsOrig, isSRS := "", false
	if sr, ok := ss.s.cfg.Policy.(SenderRewriter); ok {
		orig, is, err := sr.ReverseSRS(to)
		if is && err != nil {
			ss.s.log.Info("recipient refused: "+err.Error(), "queue_id", ss.qid, "client", ss.client.Addr, "from", ss.from, "to", to)
			ss.s.cfg.Metrics.Recipient("rejected")
			return reply(Reject(550, "5.1.1", "Invalid or expired SRS address"), ss.qid)
		}
		srsOrig, isSRS = orig, is
	}
	if isSRS {
		ss.s.log.Info(ss.qid+": to=<"+to+">: SRS address of <"+srsOrig+">", "queue_id", ss.qid)
		to = srsOrig
	}
	a, err := address.Parse(to)
	if err != nil {
		return reply(err, ss.qid)
	}
	if a.UTF8 && !ss.utf8 {
		return reply(Reject(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"), ss.qid)
	}
	targets := []string{a.Raw}
	if !isSRS {
		targets, err = ss.s.cfg.Policy.CheckRcpt(context.Background(), ss.client, ss.from, a)
	}
	if err != nil {
		ss.s.log.Info("recipient refused", append([]any{"queue_id", ss.qid, "client", ss.client.Addr, "from", ss.from, "to", to}, refusalAttrs(err, ss.qid)...)...)
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
	if n := ss.newTargets(parsed); len(ss.targets)+n > ss.s.cfg.MaxRecipients {
		// go-smtp counts what the client gave; expansions count too.
		ss.s.log.Info("recipient refused: its expansion exceeds the recipient limit", "queue_id", ss.qid, "to", to, "targets", len(ss.targets)+n, "max_recipients", ss.s.cfg.MaxRecipients)
		return reply(Reject(452, "4.5.3", fmt.Sprintf("Too many recipients (more than %d after expansion)", ss.s.cfg.MaxRecipients)), ss.qid)
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
		if policy.Forwarded(to, ta.Raw) {
			if ss.fwd == nil {
				ss.fwd = map[string]bool{}
			}
			ss.fwd[ta.Raw] = true
		}
	}
	return nil
}

// newTargets counts the addresses of parsed not yet among the targets.
func (ss *session) newTargets(parsed []address.Address) int {
	n := 0
	for i, ta := range parsed {
		dup := false
		for _, have := range ss.targets {
			if have.Raw == ta.Raw {
				dup = true
				break
			}
		}
		for _, prev := range parsed[:i] {
			if prev.Raw == ta.Raw {
				dup = true
				break
			}
		}
		if !dup {
			n++
		}
	}
	return n
}

func (ss *session) proto() string {
	p := "ESMTP"
	if ss.utf8 {
		p = "UTF8SMTP"
	}
	if ss.client.TLS {
		p += "S"
	}
	if ss.user != nil {
		p += "A" // RFC 3848: ESMTPA, ESMTPSA
	}
	return p
}

func (ss *session) writeReceived(w io.Writer) {
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

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) { a.log.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.log.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }
