// Package delivery is mailfwd's outbound SMTP client: it runs one SMTP
// transaction per message against an ordered list of hops (MX fallback on
// connection-level failures), keeps per-recipient outcomes, and pools
// connections per destination address.
package delivery

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
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/dane"
	"github.com/mailfwd/mailfwd/pkg/mtasts"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// Hop is one address to try.
type Hop struct {
	Name string // host name for logs/TLS SNI ("mx1.example.com" or "[10.1.1.1]")
	Addr netip.AddrPort
	// Policy is the hop as the TLS policy and authinfo see it: the
	// recipient domain and, for a static route, the relay as the
	// mailertable names it. The zero value finds only the "." entries.
	Policy tlspolicy.Hop
	// MX: the hop is one of the recipient domain's MX hosts (not a static
	// route), so MTA-STS and DANE apply to it.
	MX bool
}

// Message is what Deliver sends.
type Message struct {
	QueueID    string
	From       string   // "" = null reverse-path
	Recipients []string // verbatim addresses
	Body       []byte   // complete RFC 5322 message, CRLF line endings
	// Open, when set, streams the body instead of Body: it is called once
	// the remote accepted DATA, and what it returns is copied to the remote
	// and closed. Size is then the body's size (for SIZE=).
	Open func() (io.ReadCloser, error)
	Size int64
	// Activity, when set, is called on progress: a command or body chunk
	// written, a reply line received (a destination that does not answer,
	// or dribbles its replies, makes none).
	Activity func()
	// DataStarted, when set, is called once the remote accepted DATA: from
	// then on, aborting may leave a delivered message behind.
	DataStarted func()
	EightBit    bool // client used BODY=8BITMIME
	// MaxMsgsPerConn, when > 0, overrides Config.MaxMsgsPerConn for the
	// connection this message used (a per-domain limit).
	MaxMsgsPerConn int
	UTF8           bool // SMTPUTF8 needed
}

// Outcome is the result of one Deliver call.
type Outcome struct {
	Hop      Hop          // the hop the transaction ran on (zero if none connected)
	Tried    Hop          // the last hop tried (connected or not), for logs ("relay=")
	Statuses []RcptStatus // one per Message.Recipients, same order
	Reply    string       // final DATA reply text without reply code, for logs ("stat=Sent (...)")
	// TLS says what protected the connection the transaction ran on:
	// "tls=TLSv1.3 verified=yes", "tls=TLSv1.2 verified=no" or "tls=none"
	// ("" when no connection was used).
	TLS string
	// Verify is sendmail's verify= for the same connection: OK (the
	// certificate was verified: PKIX for the hop's name, or DANE), FAIL (a
	// certificate that does not verify, accepted under may/encrypt), NO (no
	// certificate), NONE (no TLS).
	Verify string
}

// Config configures a Client.
type Config struct {
	HeloName        string        // required
	ConnectTimeout  time.Duration // default 30s
	CommandTimeout  time.Duration // default 5m (per command incl. greeting)
	DataTimeout     time.Duration // default 10m (whole DATA transfer + final reply)
	MaxConnsPerHost int           // default 10: cap of concurrent connections per Hop.Addr
	// MaxReplyBytes bounds what one reply of the remote may take (all its
	// lines; go-smtp already bounds a line to 2000 bytes), default 64 KiB.
	// Beyond it the step fails temporarily and the connection is dropped.
	MaxReplyBytes  int
	MaxMsgsPerConn int // default 100: close a connection after this many transactions
	// NoPipelining: never pipeline commands, even when the remote offers
	// PIPELINING (RFC 2920). Off by default: MAIL, every RCPT and DATA go
	// in one write.
	NoPipelining bool
	// NoChunking: never send the body with BDAT, even when the remote
	// offers CHUNKING (RFC 3030) with PIPELINING. Off by default: MAIL, the
	// RCPTs and the body (BDAT … LAST) go in one round trip.
	NoChunking bool
	// LineLengthLimit is the longest line, CRLF not counted, sent to a
	// remote: a longer line of the header or body is broken by inserting
	// CRLF and a space, as Postfix's smtp_line_length_limit does. 0: 998
	// (RFC 5322 §2.1.1); negative: lines are sent as they are.
	LineLengthLimit int
	IdleTimeout     time.Duration // default 30s: idle pooled connections closed after this
	// StartTLS: the built-in default level is may (opportunistic STARTTLS
	// when advertised); false makes it none. tls_policy entries and
	// credentials (at least encrypt) override it.
	StartTLS bool
	// TLSConfig, when set, replaces the configuration of STARTTLS at the
	// levels may and encrypt (tests); ServerName is filled from Hop.Name
	// when that is a host name. verify, secure and DANE always use their own.
	TLSConfig *tls.Config
	// TLSPolicy returns the tls_policy and authinfo in force (hot-reloaded
	// with the policy directory); nil, or a nil result: every hop gets the
	// default level and no credentials.
	TLSPolicy func() *tlspolicy.Policy
	// TLSBuilder makes the tls.Config of each decision and checks
	// certificates (Roots: --tls-ca-file); nil: the system roots.
	TLSBuilder *tlspolicy.Builder
	// Tokens fetches XOAUTH2 access tokens for authinfo entries that name an
	// OAuth 2.0 client; nil: such entries fail (deferred).
	Tokens *tlspolicy.Tokens
	// MTASTS, when set (--mta-sts), looks up the recipient domain's MTA-STS
	// policy for MX hops: under enforce an MX the policy does not list is
	// not used and the certificate must verify for the MX name.
	MTASTS *mtasts.Client
	// DANE, when set (--dane), looks up TLSA records for MX hops; they are
	// used only when the resolver sets AD.
	DANE dane.Resolver
	// HostDownTTL: after a connect failure to an Addr, further Deliver calls
	// skip that Addr for this long with the remembered error; 0 disables.
	HostDownTTL time.Duration
	Dial        func(ctx context.Context, network, addr string) (net.Conn, error) // nil → net.Dialer
	Logger      *slog.Logger                                                      // nil → discard
	// Trace, when set, returns the watcher of the running SMTP traces
	// (mailfwdctl trace --destination; nil while there is none yet). Every
	// connection is then tapped (smtptrace.Tap) and a matching trace
	// records its dialog: from the greeting on for a new connection, from
	// the next transaction on for a pooled one, inside STARTTLS too; a
	// connect that fails or is skipped (HostDownTTL) is recorded as such.
	Trace func() *smtptrace.Watcher
}

const (
	// noTLSTTL is how long an Addr whose TLS handshake failed is contacted
	// without STARTTLS.
	noTLSTTL = 30 * time.Minute
	// checkTimeout bounds the NOOP that checks a pooled connection.
	checkTimeout = 30 * time.Second
	// quitTimeout bounds the QUIT sent when a connection is retired.
	quitTimeout = 10 * time.Second
	// quitCloseWait bounds the wait, after QUIT's 221, for the server to
	// close the connection before it counts as closed (conn.awaitClose):
	// what a server that keeps it open costs a retired connection.
	quitCloseWait = 500 * time.Millisecond
	// quitDrainBytes bounds what is read after QUIT's 221 while waiting
	// for the close (a TLS close_notify record is 24 to 31 bytes).
	quitDrainBytes = 4096
	// pruneAt is the size at which the host-status maps are swept of
	// expired entries.
	pruneAt = 512
)

// Client delivers messages over SMTP. It is safe for concurrent use.
type Client struct {
	cfg  Config
	log  *slog.Logger
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	closedCh chan struct{}

	mu     sync.Mutex
	closed bool
	hosts  map[netip.AddrPort]*hostState
	down   map[netip.AddrPort]downEntry
	noTLS  map[netip.AddrPort]time.Time
}

// downEntry remembers a connect failure of an address; its text is made
// for the hop asking (several host names may share the address).
type downEntry struct {
	until time.Time
	err   error
}

// New validates cfg, fills defaults and returns a Client.
func New(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.HeloName) == "" {
		return nil, errors.New("delivery: HeloName is required")
	}
	if strings.ContainsAny(cfg.HeloName, " \t\r\n") {
		return nil, fmt.Errorf("delivery: HeloName %q contains white space", cfg.HeloName)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = 5 * time.Minute
	}
	if cfg.DataTimeout <= 0 {
		cfg.DataTimeout = 10 * time.Minute
	}
	if cfg.MaxReplyBytes <= 0 {
		cfg.MaxReplyBytes = 64 << 10
	}
	if cfg.MaxConnsPerHost <= 0 {
		cfg.MaxConnsPerHost = 10
	}
	if cfg.MaxMsgsPerConn <= 0 {
		cfg.MaxMsgsPerConn = 100
	}
	if cfg.LineLengthLimit == 0 {
		cfg.LineLengthLimit = DefaultLineLengthLimit
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.HostDownTTL < 0 {
		cfg.HostDownTTL = 0
	}
	if cfg.TLSBuilder == nil {
		cfg.TLSBuilder = &tlspolicy.Builder{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dial := cfg.Dial
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	return &Client{
		cfg:      cfg,
		log:      logger.With("component", "delivery"),
		dial:     dial,
		closedCh: make(chan struct{}),
		hosts:    make(map[netip.AddrPort]*hostState),
		down:     make(map[netip.AddrPort]downEntry),
		noTLS:    make(map[netip.AddrPort]time.Time),
	}, nil
}

// Deliver runs one SMTP transaction for msg, trying hops in order. A hop that
// cannot be connected, or whose greeting/EHLO fails, is skipped; once MAIL
// FROM was sent on a hop its result is final for this call. It never returns
// nil, and Statuses always has one entry per recipient.
func (c *Client) Deliver(ctx context.Context, hops []Hop, msg *Message) *Outcome {
	out := &Outcome{Statuses: make([]RcptStatus, len(msg.Recipients))}
	fill := func(r result) {
		for i, rcpt := range msg.Recipients {
			out.Statuses[i] = r.forRcpt(rcpt)
		}
	}
	if len(msg.Recipients) == 0 {
		return out
	}
	if c.isClosed() {
		fill(closedResult)
		return out
	}
	if len(hops) == 0 {
		fill(result{Enhanced: "4.4.4", Text: "No hosts to deliver to."})
		return out
	}
	log := c.log.With("queue_id", msg.QueueID)
	pl := c.newPlanner(hops, log)
	var last result
	for _, hop := range hops {
		if ctx.Err() != nil {
			last = result{Enhanced: "4.4.1", Text: fmt.Sprintf("Delivery aborted before connecting to %s: %v", hop.Name, context.Cause(ctx))}
			break
		}
		out.Tried = hop
		sec, r, ok := pl.plan(ctx, hop)
		if !ok {
			log.Info("hop not used", "relay", hop.Name, "addr", hop.Addr, "status", r.String())
			last = r
			continue
		}
		cn, r, ok := c.getConn(ctx, hop, sec, log)
		if !ok {
			log.Debug("hop failed", "relay", hop.Name, "addr", hop.Addr, "status", r.String())
			last = r
			continue
		}
		out.Hop = hop
		cn.wire.setActivity(msg.Activity)
		reusable, stale := c.transact(ctx, cn, msg, out)
		if stale {
			// A pooled connection reused without a check was dead before
			// anything was sent: try once more on a fresh connection.
			log.Debug("reused connection was closed by the server; reconnecting", "relay", hop.Name, "addr", hop.Addr)
			c.discard(cn)
			c.purgeIdle(hop.Addr)
			if cn, r, ok = c.getConn(ctx, hop, sec, log); !ok {
				last = r
				continue
			}
			cn.wire.setActivity(msg.Activity)
			reusable, _ = c.transact(ctx, cn, msg, out)
		}
		cn.wire.setActivity(nil)
		out.TLS, out.Verify = cn.tlsDesc, cn.verify
		c.finish(cn, reusable)
		return out
	}
	fill(last)
	return out
}

// bodyReader marks the errors of the body source, to tell them from
// errors writing to the remote.
type bodyReader struct{ r io.Reader }

type bodyError struct{ err error }

func (e bodyError) Error() string { return e.err.Error() }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = bodyError{err}
	}
	return n, err
}

// Close closes idle pooled connections (with QUIT) and makes later Deliver
// calls fail temporarily. Connections in use are closed when their
// transaction ends.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closedCh)
	var idle []*conn
	for addr, hs := range c.hosts {
		for _, cn := range hs.idle {
			cn.timer.Stop()
			idle = append(idle, cn)
		}
		hs.open -= len(hs.idle)
		hs.idle = nil
		if hs.open == 0 {
			delete(c.hosts, addr)
		}
	}
	c.mu.Unlock()

	var wg sync.WaitGroup
	for _, cn := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn.quit()
		}()
	}
	wg.Wait()
	return nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

var closedResult = result{Enhanced: "4.3.2", Text: "Delivery client is shut down."}

// tx is the per-recipient bookkeeping of one transaction.
type tx struct {
	msg   *Message
	out   *Outcome
	final []bool
}

// set records recipient i's outcome.
func (t *tx) set(i int, r result) {
	t.out.Statuses[i] = r.forRcpt(t.msg.Recipients[i])
	t.final[i] = true
}

// setRest records r for every recipient without an outcome yet.
func (t *tx) setRest(r result) {
	for i := range t.final {
		if !t.final[i] {
			t.set(i, r)
		}
	}
}

// transact runs one transaction on cn (MAIL/RCPT/DATA, pipelined when the
// remote offers PIPELINING) and fills out.Statuses. It reports whether cn
// is still in a clean state and may be reused. stale reports a connection
// reused without a check that failed at MAIL FROM without a reply: nothing
// was sent, and the caller may retry on a fresh connection.
func (c *Client) transact(ctx context.Context, cn *conn, msg *Message, out *Outcome) (reusable, stale bool) {
	name := cn.hop.Name
	t := &tx{msg: msg, out: out, final: make([]bool, len(msg.Recipients))}
	set, setRest := t.set, t.setRest

	if msg.UTF8 {
		if ok, _ := cn.sc.Extension("SMTPUTF8"); !ok {
			setRest(result{Code: 553, Enhanced: "5.6.7",
				Text: fmt.Sprintf("SMTPUTF8 is required, but was not offered by host %s.", name)})
			return true, false
		}
	}
	size := int64(len(msg.Body))
	if msg.Open != nil {
		size = msg.Size
	}
	if limit, ok := cn.sc.MaxMessageSize(); ok && limit > 0 && size > int64(limit) {
		setRest(result{Code: 552, Enhanced: "5.3.4",
			Text: fmt.Sprintf("Message is too large; %d bytes max at %s.", limit, name)})
		return true, false
	}
	if strings.ContainsAny(msg.From, "\r\n") {
		setRest(result{Code: 553, Enhanced: "5.1.7", Text: "Invalid sender address."})
		return true, false
	}

	stop := context.AfterFunc(ctx, func() { cn.raw.Close() })
	defer func() {
		if !stop() {
			reusable = false // ctx closed the connection
		}
	}()

	cn.msgs++
	cn.limit = msg.MaxMsgsPerConn
	// go-smtp adds SIZE only when advertised, and BODY=8BITMIME whenever the
	// server advertises 8BITMIME (harmless for 7-bit bodies).
	opts := &smtp.MailOptions{Size: size, UTF8: msg.UTF8}
	if c.pipelining(cn) && len(msg.Recipients) <= maxPipelinedRcpts {
		return c.transactPipelined(ctx, cn, t, opts)
	}
	if err := cn.sc.Mail(msg.From, opts); err != nil {
		r, isReply := stepError(ctx, name, "MAIL FROM", err)
		if !isReply && cn.reused && ctx.Err() == nil {
			cn.msgs--
			return false, true
		}
		setRest(r)
		return isReply && r.Code != 421, false
	}

	var accepted int
	for i, rcpt := range msg.Recipients {
		if strings.ContainsAny(rcpt, "\r\n") {
			set(i, invalidRcpt)
			continue
		}
		err := cn.sc.Rcpt(rcpt, nil)
		if err == nil {
			accepted++
			continue
		}
		r, isReply := stepError(ctx, name, "RCPT TO", err)
		if !isReply || r.Code == 421 {
			setRest(r)
			return false, false
		}
		set(i, r)
	}
	if accepted == 0 {
		return cn.reset(c.cfg.HeloName) == nil, false
	}

	w, err := cn.sc.Data()
	if err != nil {
		r, isReply := stepError(ctx, name, "DATA", err)
		setRest(r)
		out.Reply = r.Text
		return isReply && r.Code != 421 && cn.reset(c.cfg.HeloName) == nil, false
	}
	return c.sendData(ctx, cn, t, w), false
}

var invalidRcpt = result{Code: 553, Enhanced: "5.1.3", Text: "Invalid recipient address."}

// sendData sends the body on a DATA command the remote accepted (354) and
// reads the final reply; it reports whether cn may be reused.
func (c *Client) sendData(ctx context.Context, cn *conn, t *tx, w *smtp.DataCommand) bool {
	name, msg := cn.hop.Name, t.msg
	if msg.DataStarted != nil {
		msg.DataStarted()
	}
	deadline := time.Now().Add(c.cfg.DataTimeout)
	if err := cn.raw.SetDeadline(deadline); err != nil {
		t.setRest(lostResult(ctx, name, "DATA", err))
		return false
	}
	rc, r, ok := c.writeBody(ctx, name, msg, w)
	if rc != nil {
		// Closed once the remote answered: the transfer is over only then.
		defer rc.Close()
	}
	if !ok {
		t.setRest(r)
		return false
	}
	cn.sc.SubmissionTimeout = max(time.Until(deadline), time.Millisecond)
	resp, err := w.CloseWithResponse()
	cn.sc.SubmissionTimeout = c.cfg.DataTimeout
	if err != nil {
		r, isReply := stepError(ctx, name, "end of DATA", err)
		t.setRest(r)
		t.out.Reply = r.Text
		return isReply && r.Code != 421
	}
	r = okResult(resp.StatusText)
	t.setRest(r)
	t.out.Reply = r.Text
	return true
}

// writeBody copies msg's body to w, long lines folded (foldWriter). On
// failure it returns the result for the recipients: the connection must
// then be dropped (without the end of the body the remote discards what
// it got). rc, when not nil, is the opened body, to close once the remote
// answered.
func (c *Client) writeBody(ctx context.Context, name string, msg *Message, w io.Writer) (rc io.ReadCloser, _ result, ok bool) {
	fw := newFoldWriter(w, c.cfg.LineLengthLimit)
	if msg.Open == nil {
		if _, err := fw.Write(msg.Body); err != nil {
			return nil, lostResult(ctx, name, "message transfer", err), false
		}
		if err := fw.Flush(); err != nil {
			return nil, lostResult(ctx, name, "message transfer", err), false
		}
		return nil, result{}, true
	}
	rc, err := msg.Open()
	if err != nil {
		return nil, result{Enhanced: "4.3.0", Text: fmt.Sprintf("Could not read the message body: %v", err)}, false
	}
	_, err = io.Copy(fw, bodyReader{rc})
	if err == nil {
		err = fw.Flush()
	}
	var be bodyError
	switch {
	case errors.As(err, &be):
		return rc, result{Enhanced: "4.3.0", Text: fmt.Sprintf("Could not read the message body: %v", be.err)}, false
	case err != nil:
		return rc, lostResult(ctx, name, "message transfer", err), false
	}
	return rc, result{}, true
}
