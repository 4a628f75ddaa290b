package delivery

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// hostState is the connection bookkeeping for one destination address.
type hostState struct {
	open int           // connections open (in use + idle), at most MaxConnsPerHost
	idle []*conn       // pooled connections, most recently used last
	wake chan struct{} // closed and replaced when a slot or idle conn frees up
}

// conn is one SMTP session, greeted and EHLO'd (and TLS'd when possible).
type conn struct {
	raw  net.Conn  // the TCP connection; closing it aborts any operation
	wire *wireConn // raw as the SMTP client reads and writes it (reply bound, activity)
	sc   *smtp.Client
	hop  Hop
	tls  bool
	// key is the security the connection was set up under (security.key):
	// a pooled connection is reused only by a hop with the same key, so
	// never across TLS levels, certificate checks or credentials.
	key     string
	tlsDesc string      // "tls=TLSv1.3 verified=yes" / "tls=none"
	verify  string      // sendmail's verify=: OK, FAIL, NO, NONE
	msgs    int         // transactions started on this connection
	limit   int         // the last message's MaxMsgsPerConn (0: the Config's)
	timer   *time.Timer // idle expiry while pooled
	// pooledAt is when the connection was last put back in the pool. A
	// connection reused within reuseUnchecked is not probed with NOOP; if it
	// turns out dead at MAIL FROM, Deliver retries on a fresh one.
	pooledAt time.Time
	reused   bool // taken from the pool without a check
	// tap is the conn a trace records the dialog on (smtptrace.Tap, inside
	// TLS after STARTTLS); nil without Config.Trace.
	tap net.Conn
}

// reuseUnchecked: how recently a pooled connection must have been used to be
// reused without a NOOP round trip.
const reuseUnchecked = 2 * time.Second

// reset sends RSET and then EHLO again (go-smtp forgets the EHLO state on
// Reset), leaving the session ready for a new transaction. A refused RSET
// leaves a session that still answers but is not reused: it ends with QUIT
// (quit, bounded) before the error is returned. (A refused EHLO after it
// cannot: go-smtp's client keeps the EHLO error and sends nothing more.)
func (cn *conn) reset(helo string) error {
	if err := cn.sc.Reset(); err != nil {
		if refusal(err) {
			cn.quit()
		}
		return err
	}
	return cn.sc.Hello(helo)
}

// refusedError is a reply refusing a step read outside go-smtp's client
// (STARTTLS), as that client gives it (an SMTPError, for refusal), with a
// text of its own.
type refusedError struct {
	text  string
	reply *smtp.SMTPError
}

func (e *refusedError) Error() string { return e.text }
func (e *refusedError) Unwrap() error { return e.reply }

// refusal reports whether err is a reply refusing a command other than
// 421: the session is still usable, and one that is given up ends with
// QUIT, as Postfix's does. Anything else (a lost connection, a timeout, a
// reply over the bound, 421: the server is closing) just closes.
func refusal(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code != 421
}

// quit sends QUIT (bounded), waits for the server to close the connection
// after its 221 (bounded, awaitClose), and closes our side.
func (cn *conn) quit() {
	cn.sc.CommandTimeout = min(cn.sc.CommandTimeout, quitTimeout)
	if cn.sc.SendQuit() == nil {
		cn.awaitClose(min(cn.sc.CommandTimeout, quitCloseWait))
	}
	_ = cn.sc.Close()
	_ = cn.raw.Close()
}

// awaitClose waits, after QUIT's 221, until the server has closed the
// connection, at most wait. The session counts as ended only then: the
// caller releases the host slot and, above it, the worker the fleet
// concurrency lease, and another delivery may dial at once. A server
// writes 221 and then closes, so without the wait the destination can
// still count this session when the next one connects, limit+1 at once
// (TestFleetConcurrency saw 3 against a limit of 2).
//
// It reads the TCP connection itself (cn.raw), below any TLS: a server's
// close_notify comes before its TCP close, and only the end of the TCP
// stream means the socket is closed. Nothing read is used (a trace
// records the TLS layer, not the ciphertext under it); at most
// quitDrainBytes are read. A server that closes right after its 221 costs
// no more than the FIN's arrival. A hostile or broken one that keeps the
// connection open after 221 (or keeps sending) costs at most wait, then
// we close anyway.
func (cn *conn) awaitClose(wait time.Duration) { awaitClose(cn.raw, wait) }

// awaitClose is conn.awaitClose on raw.
func awaitClose(raw net.Conn, wait time.Duration) {
	if raw.SetReadDeadline(time.Now().Add(wait)) != nil {
		return
	}
	var buf [512]byte
	for left := quitDrainBytes; left > 0; {
		n, err := raw.Read(buf[:min(len(buf), left)])
		if err != nil { // EOF: closed; a reset, timeout or reply bound: done too
			return
		}
		left -= n
	}
}

// quitRefusedHello ends with QUIT a session whose EHLO (and HELO) the
// server refused: go-smtp's client keeps that error and sends nothing
// more, so QUIT and its 221 go on raw directly, bounded as quit's, then
// the bounded wait for the server's close; raw is closed after. (A
// refused greeting: go-smtp has closed the connection, the QUIT fails at
// once.)
func (c *Client) quitRefusedHello(raw net.Conn) {
	defer raw.Close()
	wait := min(c.cfg.CommandTimeout, quitTimeout)
	if raw.SetDeadline(time.Now().Add(wait)) != nil {
		return
	}
	if _, err := io.WriteString(raw, "QUIT\r\n"); err != nil {
		return
	}
	if _, _, err := textproto.NewReader(bufio.NewReaderSize(raw, 512)).ReadResponse(221); err == nil {
		awaitClose(raw, min(wait, quitCloseWait))
	}
}

// getConn returns a ready connection to hop: a live pooled one or a new one.
// On failure the result describes why the hop could not be used.
func (c *Client) getConn(ctx context.Context, hop Hop, sec *security, log *slog.Logger) (*conn, result, bool) {
	purged := false
	for range 3 {
		cn, r, ok := c.acquire(ctx, hop, sec.key)
		if !ok {
			return nil, r, false
		}
		if cn == nil { // a slot was reserved: dial
			return c.connect(ctx, hop, sec, log)
		}
		cn.hop = hop // same address; the name is this delivery's
		// A trace that started while the connection was pooled records
		// from here on (the check and the transaction).
		c.tracer().Attach(cn.tap, hop.Addr.String(), hop.Name, cn.msgs+1)
		if time.Since(cn.pooledAt) < reuseUnchecked {
			cn.reused = true
			return cn, result{}, true
		}
		err := c.check(ctx, cn)
		if err == nil {
			log.Debug("reusing connection", "relay", hop.Name, "addr", hop.Addr, "tls", cn.tls)
			return cn, result{}, true
		}
		log.Debug("pooled connection is dead", "relay", hop.Name, "addr", hop.Addr, "err", err)
		c.discard(cn)
		if ctx.Err() != nil {
			return nil, lostResult(ctx, hop.Name, "connection check", err), false
		}
		if !purged {
			c.purgeIdle(hop.Addr)
			purged = true
		}
	}
	return nil, result{Enhanced: "4.4.2", Text: fmt.Sprintf("No usable connection to %s.", hop.Name)}, false
}

// acquire takes an idle pooled connection for hop.Addr set up under the
// security key, or reserves a connection slot (nil conn, ok), waiting for
// one while the cap is reached; at the cap an idle connection under another
// key is closed to make room. It fails fast while the address is marked
// down.
func (c *Client) acquire(ctx context.Context, hop Hop, key string) (*conn, result, bool) {
	addr := hop.Addr
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, closedResult, false
		}
		hs := c.hosts[addr]
		if hs != nil {
			for i := len(hs.idle) - 1; i >= 0; i-- {
				cn := hs.idle[i]
				if cn.key != key {
					continue
				}
				hs.idle = append(hs.idle[:i], hs.idle[i+1:]...)
				cn.timer.Stop()
				c.mu.Unlock()
				return cn, result{}, true
			}
			if hs.open >= c.cfg.MaxConnsPerHost && len(hs.idle) > 0 {
				// Only connections under other keys are idle: retire the
				// oldest and take its slot, once the server has closed it
				// (quit is bounded), so the destination never sees more
				// than the cap.
				old := hs.idle[0]
				hs.idle = hs.idle[1:]
				old.timer.Stop()
				c.mu.Unlock()
				old.quit()
				return nil, result{}, true
			}
		}
		if d, ok := c.down[addr]; ok {
			if time.Now().Before(d.until) {
				c.mu.Unlock()
				c.tracer().ConnectSkipped(addr.String(), hop.Name, d.err, d.until)
				return nil, connectResult(ctx, hop.Name, d.err), false
			}
			delete(c.down, addr)
		}
		if hs == nil {
			hs = &hostState{wake: make(chan struct{})}
			c.hosts[addr] = hs
		}
		if hs.open < c.cfg.MaxConnsPerHost {
			hs.open++
			c.mu.Unlock()
			return nil, result{}, true
		}
		wake := hs.wake
		c.mu.Unlock()

		select {
		case <-wake:
		case <-c.closedCh:
			return nil, closedResult, false
		case <-ctx.Done():
			return nil, result{Enhanced: "4.4.5", Text: fmt.Sprintf(
				"Gave up waiting for a free connection to %s (%d in use): %v",
				hop.Name, c.cfg.MaxConnsPerHost, context.Cause(ctx))}, false
		}
	}
}

// release gives back the slot of a connection that was closed.
func (c *Client) release(addr netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := c.hosts[addr]
	if hs == nil {
		return
	}
	hs.open--
	hs.wakeLocked()
	if hs.open <= 0 {
		delete(c.hosts, addr)
	}
}

func (hs *hostState) wakeLocked() {
	close(hs.wake)
	hs.wake = make(chan struct{})
}

// discard closes cn without QUIT and frees its slot.
func (c *Client) discard(cn *conn) {
	_ = cn.raw.Close()
	c.release(cn.hop.Addr)
}

// retire sends QUIT, closes cn and frees its slot.
func (c *Client) retire(cn *conn) {
	cn.quit()
	c.release(cn.hop.Addr)
}

// finish returns cn to the pool after a transaction, or retires it.
func (c *Client) finish(cn *conn, reusable bool) {
	if !reusable {
		c.discard(cn)
		return
	}
	limit := c.cfg.MaxMsgsPerConn
	if cn.limit > 0 {
		limit = cn.limit
	}
	if cn.msgs >= limit {
		c.retire(cn)
		return
	}
	c.mu.Lock()
	hs := c.hosts[cn.hop.Addr]
	if c.closed || hs == nil {
		c.mu.Unlock()
		c.retire(cn)
		return
	}
	cn.pooledAt, cn.reused = time.Now(), false
	cn.timer = time.AfterFunc(c.cfg.IdleTimeout, func() { c.expire(cn) })
	hs.idle = append(hs.idle, cn)
	hs.wakeLocked()
	c.mu.Unlock()
}

// expire retires cn if it is still idle in the pool.
func (c *Client) expire(cn *conn) {
	c.mu.Lock()
	hs := c.hosts[cn.hop.Addr]
	found := false
	if hs != nil {
		for i, x := range hs.idle {
			if x == cn {
				hs.idle = append(hs.idle[:i], hs.idle[i+1:]...)
				found = true
				break
			}
		}
	}
	c.mu.Unlock()
	if found {
		c.log.Debug("closing idle connection", "relay", cn.hop.Name, "addr", cn.hop.Addr)
		c.retire(cn)
	}
}

// purgeIdle closes every idle connection to addr (after one was found dead,
// the others likely are too).
func (c *Client) purgeIdle(addr netip.AddrPort) {
	c.mu.Lock()
	hs := c.hosts[addr]
	var idle []*conn
	if hs != nil {
		idle = hs.idle
		hs.idle = nil
		for _, cn := range idle {
			cn.timer.Stop()
		}
	}
	c.mu.Unlock()
	for _, cn := range idle {
		c.discard(cn)
	}
}

// check verifies a pooled connection with NOOP.
func (c *Client) check(ctx context.Context, cn *conn) error {
	stop := context.AfterFunc(ctx, func() { cn.raw.Close() })
	old := cn.sc.CommandTimeout
	cn.sc.CommandTimeout = min(old, checkTimeout)
	err := cn.sc.Noop()
	cn.sc.CommandTimeout = old
	if !stop() && err == nil {
		err = fmt.Errorf("connection check aborted: %w", context.Cause(ctx))
	}
	return err
}

// connect opens a new session to hop in a reserved slot; the slot is
// released on failure. A failed STARTTLS handshake leads to one plaintext
// reconnect, and the address is remembered as "no TLS" for a while.
// Only at the level may: above it a failed handshake is final for the hop.
func (c *Client) connect(ctx context.Context, hop Hop, sec *security, log *slog.Logger) (*conn, result, bool) {
	lv := sec.level()
	tryTLS := lv > tlspolicy.May || (lv == tlspolicy.May && !c.isNoTLS(hop.Addr))
	cn, r, tlsFailed := c.open(ctx, hop, sec, tryTLS, log)
	if cn == nil && tlsFailed && lv == tlspolicy.May && ctx.Err() == nil {
		c.markNoTLS(hop.Addr)
		log.Debug("STARTTLS failed, reconnecting without TLS", "relay", hop.Name, "addr", hop.Addr, "status", r.String())
		cn, r, _ = c.open(ctx, hop, sec, false, log)
	}
	if cn == nil {
		c.release(hop.Addr)
		return nil, r, false
	}
	return cn, result{}, true
}

// open dials hop, reads the greeting, says EHLO and, when tryTLS and
// advertised, upgrades with STARTTLS; then it authenticates when sec has
// credentials. tlsFailed reports a failure in the TLS upgrade (the
// connection is closed then). Above the level may, TLS not offered or not
// established fails the hop (4.7.4, 4.7.5), and credentials are never sent
// without TLS.
func (c *Client) open(ctx context.Context, hop Hop, sec *security, tryTLS bool, log *slog.Logger) (_ *conn, _ result, tlsFailed bool) {
	name := hop.Name
	dctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	tcp, err := c.dial(dctx, "tcp", hop.Addr.String())
	cancel()
	if err != nil {
		r := connectResult(ctx, name, err)
		if ctx.Err() == nil {
			c.markDown(hop.Addr, err)
		}
		log.Debug("connect failed", "relay", name, "addr", hop.Addr, "err", err)
		c.tracer().ConnectFailed(hop.Addr.String(), name, err)
		return nil, r, false
	}
	c.clearDown(hop.Addr)
	log.Debug("connected", "relay", name, "addr", hop.Addr, "local", tcp.LocalAddr().String())
	// The conn a trace records (the reply bound sits above it): every
	// connection is tapped, so that a trace started while it is pooled can
	// record its later transactions; top is the tap of the layer the
	// dialog runs on (inside TLS after STARTTLS).
	traced := tcp
	if c.cfg.Trace != nil {
		traced = smtptrace.Tap(tcp)
		c.tracer().Attach(traced, hop.Addr.String(), name, 0)
	}
	top := traced
	wire := newWireConn(traced, c.cfg.MaxReplyBytes)
	var raw net.Conn = wire

	stop := context.AfterFunc(ctx, func() { raw.Close() })
	fail := func(r result, tlsFailed bool) (*conn, result, bool) {
		stop()
		smtptrace.Failed(top, r.String())
		raw.Close()
		return nil, r, tlsFailed
	}
	// refuse gives up a session that still answers (the policy or the
	// server refused the hop after EHLO): it ends with QUIT as a retired
	// connection does (bounded; ctx still aborts it), then closes.
	refuse := func(cn *conn, r result, tlsFailed bool) (*conn, result, bool) {
		smtptrace.Failed(top, r.String())
		cn.quit()
		stop()
		return nil, r, tlsFailed
	}

	sc := c.newSMTP(raw)
	if err := sc.Hello(c.cfg.HeloName); err != nil {
		r, _ := stepError(ctx, name, "greeting", err)
		log.Debug("greeting/EHLO failed", "relay", name, "addr", hop.Addr, "status", r.String())
		if refusal(err) && ctx.Err() == nil {
			smtptrace.Failed(top, r.String())
			c.quitRefusedHello(raw)
			stop()
			return nil, r, false
		}
		return fail(r, false)
	}
	cn := &conn{raw: raw, wire: wire, sc: sc, hop: hop, key: sec.key, tlsDesc: "tls=none", verify: "NONE", tap: top}
	required := sec.level().RequiresTLS()
	offered, _ := sc.Extension("STARTTLS")
	if required && !offered {
		log.Info("TLS is required, but STARTTLS was not offered", "relay", name, "addr", hop.Addr, "tls_level", sec.describe())
		return refuse(cn, result{Enhanced: "4.7.4", Text: fmt.Sprintf(
			"TLS is required (%s), but was not offered by host %s", sec.describe(), name)}, false)
	}
	if offered && tryTLS {
		tcfg, err := c.secTLSConfig(sec, hop)
		if err != nil {
			return refuse(cn, result{Enhanced: "4.7.5", Text: fmt.Sprintf("TLS policy for %s: %v", name, err)}, false)
		}
		tc, err := c.startTLS(ctx, raw, tcfg)
		if err != nil {
			log.Info("STARTTLS failed", "relay", name, "addr", hop.Addr, "tls_level", sec.describe(), "err", err)
			end := fail
			if refusal(err) && ctx.Err() == nil {
				// STARTTLS answered with an error: the plain session goes on.
				end = func(r result, tlsFailed bool) (*conn, result, bool) { return refuse(cn, r, tlsFailed) }
			}
			if required && ctx.Err() == nil {
				var ve *tlspolicy.VerifyError
				what := "the TLS handshake failed"
				if errors.As(err, &ve) || strings.Contains(err.Error(), "dane:") {
					what = "the server certificate was not verified"
				}
				return end(result{Enhanced: "4.7.5", Text: fmt.Sprintf(
					"TLS is required (%s), but %s with host %s: %s", sec.describe(), what, name, oneLine(err.Error()))}, true)
			}
			return end(lostResult(ctx, name, "STARTTLS", err), true)
		}
		// A traced session records the dialog inside TLS from here on (the
		// conn below only sees ciphertext); untraced, this is tc itself.
		inTLS := smtptrace.Continue(tc, traced)
		top = inTLS
		sc = c.newSMTP(&greetedConn{Conn: inTLS, pending: []byte("220 TLS established\r\n")})
		if err := sc.Hello(c.cfg.HeloName); err != nil {
			r, _ := stepError(ctx, name, "EHLO after STARTTLS", err)
			log.Debug("EHLO after STARTTLS failed", "relay", name, "addr", hop.Addr, "status", r.String())
			return fail(r, true)
		}
		st := tc.ConnectionState()
		cn.tlsDesc, cn.verify = c.verified(sec, st)
		log.Debug("STARTTLS established", "relay", name, "addr", hop.Addr,
			"version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite),
			"tls_level", sec.describe(), "verify", cn.verify)
		cn.sc, cn.tls, cn.tap = sc, true, inTLS
	}
	if required && !cn.tls {
		// Not reached (tryTLS is true above may); kept so that no later
		// change can make a required-TLS hop go on in plain text.
		return fail(result{Enhanced: "4.7.4", Text: fmt.Sprintf("TLS is required, but was not established with host %s", name)}, false)
	}
	if sec.d.Auth != nil {
		if r, err := c.auth(cn, sec, log); r != nil {
			if err == nil || refusal(err) {
				return refuse(cn, *r, false)
			}
			return fail(*r, false)
		}
	}
	if !stop() {
		raw.Close()
		return nil, lostResult(ctx, name, "connection setup", ctx.Err()), false
	}
	return cn, result{}, false
}

// tracer is the trace watcher in force (nil: none; its methods are no-ops).
func (c *Client) tracer() *smtptrace.Watcher {
	if c.cfg.Trace == nil {
		return nil
	}
	return c.cfg.Trace()
}

func (c *Client) newSMTP(nc net.Conn) *smtp.Client {
	sc := smtp.NewClient(nc)
	sc.CommandTimeout = c.cfg.CommandTimeout
	sc.SubmissionTimeout = c.cfg.DataTimeout
	return sc
}

// startTLS sends STARTTLS on raw (whose EHLO exchange is complete, so no
// input is pending) and runs the TLS handshake. go-smtp's client has no
// exported STARTTLS that keeps our EHLO name, hence the manual exchange.
//
// The handshake is run here, explicitly, and checked to be complete: with
// go-smtp's own StartTLS it would happen on the next command, a
// certificate error would surface there (or be swallowed by Extension),
// and TLSConnectionState reports ok before any handshake.
func (c *Client) startTLS(ctx context.Context, raw net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	if err := raw.SetDeadline(time.Now().Add(c.cfg.CommandTimeout)); err != nil {
		return nil, fmt.Errorf("set deadline: %w", err)
	}
	if _, err := io.WriteString(raw, "STARTTLS\r\n"); err != nil {
		return nil, fmt.Errorf("send STARTTLS: %w", err)
	}
	br := bufio.NewReader(raw)
	if _, msg, err := textproto.NewReader(br).ReadResponse(220); err != nil {
		var pe *textproto.Error
		if errors.As(err, &pe) {
			return nil, &refusedError{text: fmt.Sprintf("STARTTLS refused: %d %s", pe.Code, oneLine(pe.Msg)),
				reply: &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}}
		}
		return nil, fmt.Errorf("read STARTTLS reply: %w", err)
	} else if br.Buffered() > 0 {
		return nil, fmt.Errorf("unexpected data after STARTTLS reply %q", msg)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	if !tc.ConnectionState().HandshakeComplete {
		return nil, errors.New("TLS handshake did not complete")
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("clear deadline: %w", err)
	}
	return tc, nil
}

func (c *Client) tlsConfig(hop Hop) *tls.Config {
	var cfg *tls.Config
	if c.cfg.TLSConfig == nil {
		cfg = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // opportunistic TLS
	} else {
		cfg = c.cfg.TLSConfig.Clone()
	}
	if cfg.ServerName == "" {
		if n := strings.TrimSuffix(hop.Name, "."); n != "" && !strings.HasPrefix(n, "[") {
			if _, err := netip.ParseAddr(n); err != nil {
				cfg.ServerName = n
			}
		}
	}
	return cfg
}

func (c *Client) markDown(addr netip.AddrPort, err error) {
	if c.cfg.HostDownTTL <= 0 {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.down) >= pruneAt {
		for a, d := range c.down {
			if !now.Before(d.until) {
				delete(c.down, a)
			}
		}
	}
	c.down[addr] = downEntry{until: now.Add(c.cfg.HostDownTTL), err: err}
}

func (c *Client) clearDown(addr netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.down, addr)
}

func (c *Client) markNoTLS(addr netip.AddrPort) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.noTLS) >= pruneAt {
		for a, until := range c.noTLS {
			if !now.Before(until) {
				delete(c.noTLS, a)
			}
		}
	}
	c.noTLS[addr] = now.Add(noTLSTTL)
}

func (c *Client) isNoTLS(addr netip.AddrPort) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.noTLS[addr]
	if ok && !time.Now().Before(until) {
		delete(c.noTLS, addr)
		return false
	}
	return ok
}

// greetedConn replays a synthetic greeting before the real stream, so a
// fresh go-smtp Client can be put on a connection whose greeting was already
// consumed (after STARTTLS there is none).
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}
