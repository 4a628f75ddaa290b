package smtptrace

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-smtp"
)

// maxPending bounds the commands awaiting a reply that the recorder
// remembers (pipelining); beyond it, replies are not paired with commands
// and the redaction stays on the safe side (AUTH and body stay redacted).
const maxPending = 64

// recorder turns one session's bytes into bounded, redacted records. It is
// shared by the conns of one session (the raw one and, after TLS, the one
// Continue makes), and guarded by mu: reads and writes may be concurrent.
type recorder struct {
	w       *Watcher
	s       Setting
	side    Side
	session string
	base    []any // attributes of every record

	done atomic.Bool // trace over (stopped, expired) or session closed: pass bytes through
	end  sync.Once

	mu       sync.Mutex
	layer    int // bumped at each TLS upgrade; only the conn of the current layer records
	cli, srv lineBuf
	body     lineBuf // body lines of a BDAT chunk (with bodies)

	lines     int // records of dialog lines written
	unlogged  int // dialog lines beyond --trace-max-lines-per-session
	pending   []string
	auth      bool  // client lines are SASL responses
	data      bool  // client bytes are the body (DATA … ".")
	dataGo    bool  // the server said 354 for this body
	bdat      int64 // body bytes of a BDAT chunk still to come
	upgrading bool  // STARTTLS accepted, handshake next
	tlsNoted  int   // layer whose TLS state was noted, plus one
	bodyLines int   // of the current message, not recorded
	bodyBytes int64
	redacted  int64 // body bytes not recorded in the session

	// dot finds where a DATA body ends by the server's own rule (go-smtp's
	// state machine: only CRLF "." CRLF; a "." line ended by a bare LF is body).
	dot smtp.DataEnd
}

type lineBuf struct {
	b   []byte
	cut int // bytes of the current line beyond the limit
}

// newRecorder starts recording a session at layer. A session recorded from
// its start waits for the greeting; one joined between two transactions
// (midSession: a pooled connection) expects nothing. extra are attributes
// of the session start record.
func newRecorder(w *Watcher, s Setting, side Side, session, peerAddr, peerName string, layer int, midSession bool, extra ...any) *recorder {
	r := &recorder{w: w, s: s, side: side, session: session, layer: layer}
	if !midSession {
		r.pending = []string{"<greeting>"}
	}
	r.base = []any{"component", w.component, "trace", s.ID, "session", session, "side", string(side)}
	w.record(slog.LevelInfo, "smtp trace: session start", append(append(r.base[:len(r.base):len(r.base)],
		"peer", peerAddr, "peer_name", peerName, "with_bodies", s.WithBodies, "until", s.Until), extra...)...)
	return r
}

// live reports whether r records: its trace runs and the session is open.
func (r *recorder) live() bool { return r != nil && !r.done.Load() && r.w.live(r.s.ID) }

// from names who sent a direction's bytes.
func (r *recorder) from(read bool) string {
	if (r.side == Ingress) == read {
		return "client"
	}
	return "server"
}

// feed takes bytes that passed through the conn of layer; read is true for
// bytes read from the peer.
func (r *recorder) feed(layer int, read bool, p []byte) {
	if r.done.Load() || len(p) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	client := r.from(read) == "client"
	for len(p) > 0 && layer == r.layer && !r.done.Load() {
		if client && r.bdat > 0 {
			k := int64(len(p))
			if k > r.bdat {
				k = r.bdat
			}
			r.bodyChunk(p[:k])
			p = p[k:]
			r.bdat -= k
			if r.bdat == 0 {
				r.flushBody()
			}
			continue
		}
		if client && r.data {
			n, ended := r.dot.Scan(p)
			r.dataBytes(p[:n], ended)
			p = p[n:]
			continue
		}
		lb := &r.srv
		if client {
			lb = &r.cli
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			lb.add(p, r.w.limits.MaxLineBytes)
			return
		}
		lb.add(p[:i], r.w.limits.MaxLineBytes)
		p = p[i+1:]
		line, cut := lb.take()
		if client {
			r.clientLine(line, cut)
		} else {
			r.serverLine(line, cut)
		}
	}
}

func (lb *lineBuf) add(p []byte, max int) {
	if room := max - len(lb.b); room > 0 {
		k := min(room, len(p))
		lb.b = append(lb.b, p[:k]...)
		p = p[k:]
	}
	lb.cut += len(p)
}

// take returns the line (without CR LF) and how many bytes were cut off.
func (lb *lineBuf) take() (string, int) {
	l := lb.b
	if lb.cut == 0 {
		l = bytes.TrimSuffix(l, []byte("\r"))
	}
	s, cut := string(l), lb.cut
	lb.b, lb.cut = lb.b[:0], 0
	return s, cut
}

func (r *recorder) push(cmd string) {
	if len(r.pending) < maxPending {
		r.pending = append(r.pending, cmd)
	}
}

func (r *recorder) clientLine(line string, cut int) {
	switch {
	case r.auth:
		r.emit("client", "[redacted: SASL response]", 0)
		return
	}
	verb, rest, _ := cutSpace(line)
	switch upper(verb) {
	case "AUTH":
		mech, ir, _ := cutSpace(rest)
		shown := "AUTH " + mech
		if !mechName(mech) {
			shown, ir = "AUTH", "x" // not a mechanism name: perhaps a credential
		}
		if ir != "" || cut > 0 {
			shown += " [redacted]"
		}
		r.auth = true
		r.push("AUTH")
		r.emit("client", shown, 0)
		return
	case "DATA":
		r.data = true
		r.dot.Reset() // the server reads the body from the next byte on
		r.push("DATA")
	case "BDAT":
		r.push("BDAT")
		size, _, _ := cutSpace(rest)
		if n, err := strconv.ParseInt(size, 10, 64); err == nil && n > 0 {
			r.bdat = n
		}
	case "STARTTLS":
		r.push("STARTTLS")
	default:
		r.push(upper(verb))
	}
	r.emit("client", line, cut)
}

func (r *recorder) serverLine(line string, cut int) {
	code := 0
	if len(line) >= 3 {
		code, _ = strconv.Atoi(line[:3])
	}
	final := len(line) < 4 || line[3] != '-'
	// The server's word on what the client sends next is what counts, not
	// the pairing of replies with commands (a peer can break that): after
	// a 334 the client's next line is a SASL response, after a 354 the
	// body; AUTH ends with a final reply that is neither.
	if code == 334 {
		r.auth = true
		r.emit("server", line[:3]+" [redacted: SASL challenge]", 0)
		return // AUTH goes on; the reply that ends it comes later
	}
	r.emit("server", line, cut)
	if !final {
		return
	}
	if code == 354 {
		if !r.data {
			r.dot.Reset()
		}
		r.data, r.dataGo = true, true
	} else {
		r.auth = false
	}
	if len(r.pending) == 0 {
		return
	}
	cmd := r.pending[0]
	r.pending = r.pending[1:]
	switch cmd {
	case "DATA":
		if code != 354 && !r.dataGo {
			r.data = false
			r.flushBody() // what came before the refusal stays unrecorded
		}
	case "STARTTLS":
		if code == 220 {
			r.upgrading = true
			r.layer++
			r.pending = r.pending[:0]
			r.auth, r.data, r.dataGo, r.bdat = false, false, false, 0
			r.note("smtp trace: STARTTLS accepted, TLS handshake follows")
		}
	}
}

// dataBytes takes bytes of a DATA body; ended: they end with the end
// marker (go-smtp's DataEnd decided, as the server's reader does), whose
// line "." ends the body. Bodies are split into lines only to be shown
// (--with-bodies) or counted.
func (r *recorder) dataBytes(p []byte, ended bool) {
	if !r.s.WithBodies {
		r.bodyBytes += int64(len(p))
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.cli.add(p, r.w.limits.MaxLineBytes)
			return
		}
		r.cli.add(p[:i], r.w.limits.MaxLineBytes)
		p = p[i+1:]
		line, cut := r.cli.take()
		if ended && len(p) == 0 {
			if !r.s.WithBodies {
				r.bodyBytes -= int64(len(".\r\n"))
			}
			r.flushBody()
			r.data, r.dataGo = false, false
			r.emit("client", ".", 0)
			r.push(".")
			return
		}
		r.bodyLine(line, cut)
	}
}

func (r *recorder) bodyLine(line string, cut int) {
	if r.s.WithBodies {
		r.emit("client", line, cut)
		return
	}
	r.bodyLines++
}

func (r *recorder) bodyChunk(p []byte) {
	if !r.s.WithBodies {
		r.bodyBytes += int64(len(p))
		return
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.body.add(p, r.w.limits.MaxLineBytes)
			return
		}
		r.body.add(p[:i], r.w.limits.MaxLineBytes)
		p = p[i+1:]
		l, cut := r.body.take()
		r.emit("client", l, cut)
	}
}

// flushBody ends a message body: a summary of what was not recorded.
func (r *recorder) flushBody() {
	if r.s.WithBodies {
		if len(r.body.b) > 0 || r.body.cut > 0 {
			l, cut := r.body.take()
			r.emit("client", l, cut)
		}
		return
	}
	if r.bodyBytes > 0 || r.bodyLines > 0 {
		r.emit("client", fmt.Sprintf("[redacted: message body, %d bytes; mailfwdctl trace --with-bodies records it]", r.bodyBytes), 0)
	}
	r.redacted += r.bodyBytes
	r.bodyLines, r.bodyBytes = 0, 0
}

// emit writes one dialog record, within the session's and the process's
// bounds, while the trace is running.
func (r *recorder) emit(from, line string, cut int) {
	if !r.w.live(r.s.ID) {
		r.note("smtp trace: trace ended (stopped or expired)")
		r.done.Store(true)
		return
	}
	if r.lines >= r.w.limits.MaxLinesPerSession {
		if r.unlogged == 0 {
			r.note("smtp trace: --trace-max-lines-per-session reached, the rest is not recorded")
		}
		r.unlogged++
		return
	}
	r.lines++
	if cut > 0 {
		line += fmt.Sprintf(" …[cut: %d more bytes]", cut)
	}
	r.w.record(slog.LevelInfo, "smtp trace", append(r.base[:len(r.base):len(r.base)], "from", from, "line", line)...)
}

func (r *recorder) note(msg string, args ...any) {
	r.w.record(slog.LevelInfo, msg, append(r.base[:len(r.base):len(r.base)], args...)...)
}

// tls notes a handshake; st is from VerifyConnection (not yet marked
// complete) or from a finished conn.
func (r *recorder) tls(st tls.ConnectionState) {
	if r.done.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tlsNoted == r.layer+1 {
		return // once per upgrade, however often a caller reports it
	}
	r.tlsNoted = r.layer + 1
	args := []any{"tls_version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite),
		"server_name", st.ServerName, "resumed", st.DidResume}
	if len(st.PeerCertificates) > 0 {
		args = append(args, "peer_cert", st.PeerCertificates[0].Subject.String())
	}
	r.note("smtp trace: TLS established", args...)
}

// continued starts a new layer for a conn over the decrypted stream.
func (r *recorder) continued() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.layer++
	r.cli, r.srv, r.body = lineBuf{}, lineBuf{}, lineBuf{}
	r.auth, r.data, r.dataGo, r.bdat = false, false, false, 0
	r.pending = r.pending[:0]
	if !r.upgrading {
		r.push("<greeting>") // implicit TLS: the greeting comes inside
	}
	r.upgrading = false
	r.note("smtp trace: dialog continues inside TLS")
	return r.layer
}

func (r *recorder) close() {
	r.end.Do(func() {
		r.mu.Lock()
		r.flushBody()
		// A line the peer never ended (the conn closed inside it).
		for _, x := range []struct {
			from string
			lb   *lineBuf
		}{{"client", &r.cli}, {"server", &r.srv}} {
			if len(x.lb.b) > 0 || x.lb.cut > 0 {
				l, cut := x.lb.take()
				switch {
				case x.from == "client" && (r.auth || r.data || r.bdat > 0):
					r.emit(x.from, "[redacted: unterminated line]", 0)
				case cut == 0:
					r.emit(x.from, l+" [unterminated]", 0)
				default:
					r.emit(x.from, l, cut)
				}
			}
		}
		r.note("smtp trace: session end", "lines", r.lines, "lines_not_recorded", r.unlogged,
			"body_bytes_redacted", r.redacted)
		r.mu.Unlock()
		r.done.Store(true)
		r.w.sessions.Add(-1)
	})
}

// tap is what the conns of one connection share (the raw one and, after
// TLS, the one over the decrypted stream): the recorder of the session, nil
// while no trace records it. A client-side connection keeps its tap for its
// whole life, so a trace can start recording it between two transactions
// (Watcher.Attach); a recorder replaced there was closed first.
type tap struct{ r atomic.Pointer[recorder] }

// tracedConn tees what passes through it into the recorder of its tap;
// only the conn of the recorder's layer records.
type tracedConn struct {
	net.Conn
	t     *tap
	layer int
}

func (c *tracedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if r := c.t.r.Load(); r != nil {
		r.feed(c.layer, true, p[:n])
	}
	return n, err
}

func (c *tracedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if r := c.t.r.Load(); r != nil {
		r.feed(c.layer, false, p[:n])
	}
	return n, err
}

func (c *tracedConn) Close() error {
	if r := c.t.r.Load(); r != nil {
		r.close()
	}
	return c.Conn.Close()
}

// NetConn returns the wrapped conn (as tls.Conn does).
func (c *tracedConn) NetConn() net.Conn { return c.Conn }

// traced finds a tracedConn in conn or the conns it wraps (NetConn chain).
func traced(conn net.Conn) *tracedConn {
	for range 8 {
		switch c := conn.(type) {
		case *tracedConn:
			return c
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// recording returns the live recorder of the session over conn, or nil.
func recording(conn net.Conn) *recorder {
	if t := traced(conn); t != nil {
		if r := t.t.r.Load(); r != nil && !r.done.Load() {
			return r
		}
	}
	return nil
}

// Continue is for a caller that runs TLS over a conn Wrap returned (its
// own STARTTLS or implicit TLS): give it the *tls.Conn after the handshake
// and the conn it runs over, and use the result instead of tlsConn. The
// session's trace goes on with the decrypted dialog (same session id and
// bounds) and notes the TLS state. When raw is neither traced nor made by
// Tap, tlsConn is returned unchanged.
//
// A connection made by Tap stays tappable inside TLS: the result is a
// conn over tlsConn that Watcher.Attach can start recording later.
func Continue(tlsConn *tls.Conn, raw net.Conn) net.Conn {
	t := traced(raw)
	if t == nil {
		return tlsConn
	}
	r := t.t.r.Load()
	if r == nil || r.done.Load() {
		// Nothing records now; a recorder attached later records at the
		// new layer, never the ciphertext below it.
		return &tracedConn{Conn: tlsConn, t: t.t, layer: t.layer + 1}
	}
	layer := r.continued()
	r.tls(tlsConn.ConnectionState())
	return &tracedConn{Conn: tlsConn, t: t.t, layer: layer}
}

// NoteTLS records the TLS state of a session whose TLS the caller cannot
// re-wrap (go-smtp's client swaps the conn inside itself at STARTTLS):
// conn is the conn the session was dialled with, st from
// Client.TLSConnectionState. go-smtp's handshake is lazy, so call it after
// the first command over TLS (after Client.Mail); a state whose handshake
// is not complete is ignored, and each upgrade is noted once. A no-op when
// conn is not traced.
func NoteTLS(conn net.Conn, st tls.ConnectionState) {
	if r := recording(conn); r != nil && st.HandshakeComplete {
		r.tls(st)
	}
}

// TLSConfig returns a copy of cfg whose server handshakes note the TLS
// state in the trace of the conn they run over: the hook for servers that
// do STARTTLS inside a library (go-smtp's Server.TLSConfig). Conns that are
// not traced get cfg as it is. nil w or cfg: cfg.
func (w *Watcher) TLSConfig(cfg *tls.Config) *tls.Config {
	if w == nil || cfg == nil {
		return cfg
	}
	out := cfg.Clone()
	inner := cfg.GetConfigForClient
	out.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		base := cfg
		if inner != nil {
			c, err := inner(hello)
			if err != nil {
				return nil, err
			}
			if c != nil {
				base = c
			}
		}
		r := recording(hello.Conn)
		if r == nil {
			if base == cfg {
				return nil, nil
			}
			return base, nil
		}
		c := base.Clone()
		c.GetConfigForClient = nil
		verify := base.VerifyConnection
		c.VerifyConnection = func(st tls.ConnectionState) error {
			if verify != nil {
				if err := verify(st); err != nil {
					return err
				}
			}
			r.tls(st)
			return nil
		}
		return c, nil
	}
	return out
}

func cutSpace(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] == '\t' {
			j := i
			for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
				j++
			}
			return s[:i], s[j:], true
		}
	}
	return s, "", false
}

func upper(s string) string {
	if len(s) > 16 {
		s = s[:16]
	}
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 32
		}
	}
	return string(b)
}

// mechName reports whether s is a well-known SASL mechanism name. Anything
// else after AUTH is redacted: a malformed AUTH may carry a credential
// where the mechanism should be.
func mechName(s string) bool {
	switch upper(s) {
	case "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "XOAUTH2", "OAUTHBEARER", "EXTERNAL", "ANONYMOUS",
		"GSSAPI", "NTLM", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS":
		return true
	}
	return false
}
