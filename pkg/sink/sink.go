// Package sink is an SMTP server that accepts and records every message it is
// given. Tests use it as a fake destination MX; `make run` starts it as the
// dev-mode destination. Replies can be steered per recipient and per message.
package sink

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// MaxMessageBytes is the largest message the sink accepts (advertised in SIZE).
const MaxMessageBytes = 64 << 20

// Received is one accepted message.
type Received struct {
	From       string
	Recipients []string
	Data       []byte // exact bytes received in DATA (after dot-unstuffing)
	RemoteAddr string
	TLS        bool
	At         time.Time
}

// Config configures a Server.
type Config struct {
	// Hostname is the greeting/EHLO name; default "sink.test".
	Hostname string
	// Dir, if set, receives each message as Dir/<unix-nanos>-<n>.eml plus an
	// envelope file <same>.env ("MAIL FROM:<...>" and "RCPT TO:<...>" lines).
	// Both are fsynced and renamed into place; the .env file is written last.
	Dir string
	// TLS, if set, makes the server offer STARTTLS.
	TLS *tls.Config
	// OnRcpt decides the reply to RCPT TO; nil accepts. seen counts earlier
	// RCPT TO commands for the same address on this server (0 the first time).
	OnRcpt func(rcpt string, seen int) *smtp.SMTPError
	// OnData decides the final reply to DATA; nil accepts. seen counts earlier
	// DATA transfers of the same bytes on this server (0 the first time).
	OnData func(from string, rcpts []string, seen int) *smtp.SMTPError
	// DataDelay, if set, is slept before answering DATA (cut short by Close).
	DataDelay func() time.Duration
	// Logger receives debug logs; nil discards.
	Logger *slog.Logger
}

// Server is a recording SMTP sink.
type Server struct {
	cfg     Config
	log     *slog.Logger
	srv     *smtp.Server
	closeCh chan struct{}

	conns  atomic.Int64 // accepted connections, total
	active atomic.Int64 // connections open now
	peak   atomic.Int64 // highest value active has had

	mu        sync.Mutex
	closed    bool
	listeners []net.Listener
	msgs      []Received
	delivered map[string]int
	rcptSeen  map[string]int
	dataSeen  map[[sha256.Size]byte]int
	seq       int
	changed   chan struct{} // closed and replaced whenever a message is stored
}

// New returns a sink server; call Serve or Start to run it.
func New(cfg Config) *Server {
	if cfg.Hostname == "" {
		cfg.Hostname = "sink.test"
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		log:       logger.With("component", "sink"),
		closeCh:   make(chan struct{}),
		delivered: make(map[string]int),
		rcptSeen:  make(map[string]int),
		dataSeen:  make(map[[sha256.Size]byte]int),
		changed:   make(chan struct{}),
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = MaxMessageBytes
	srv.MaxLineLength = 0 // accept long lines: the sink records what it is sent
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = cfg.TLS
	srv.ReadTimeout = 10 * time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = errorLog{s.log}
	s.srv = srv
	return s
}

// Serve accepts connections on ln until Close; it returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()

	err := s.srv.Serve(&countingListener{Listener: ln, s: s})
	if s.isClosed() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sink: serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// Start listens on addr (e.g. "127.0.0.1:0"), serves in the background and
// registers Close with t.Cleanup. It returns the address actually bound.
func (s *Server) Start(t testing.TB, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("sink: listen on %s: %v", addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Serve(ln); err != nil {
			t.Errorf("sink: %v", err)
		}
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return ln.Addr().String()
}

// Close stops listening, drops open connections and stops DataDelay sleeps.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closeCh)
	var err error
	for _, ln := range s.listeners {
		if cerr := ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
			err = fmt.Errorf("sink: close listener: %w", cerr)
		}
	}
	s.mu.Unlock()
	if cerr := s.srv.Close(); cerr != nil && !errors.Is(cerr, smtp.ErrServerClosed) &&
		!errors.Is(cerr, net.ErrClosed) && err == nil {
		err = fmt.Errorf("sink: close server: %w", cerr)
	}
	return err
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Messages returns a copy of the accepted messages in arrival order.
func (s *Server) Messages() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Received, len(s.msgs))
	for i, m := range s.msgs {
		m.Recipients = append([]string(nil), m.Recipients...)
		m.Data = append([]byte(nil), m.Data...)
		out[i] = m
	}
	return out
}

// Count returns the number of messages accepted so far.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// RecipientsDelivered maps each recipient to the number of accepted messages
// it was a recipient of.
func (s *Server) RecipientsDelivered() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.delivered))
	for k, v := range s.delivered {
		out[k] = v
	}
	return out
}

// Connections returns the number of connections accepted so far.
func (s *Server) Connections() int { return int(s.conns.Load()) }

// ActiveConnections returns the number of connections open right now.
func (s *Server) ActiveConnections() int { return int(s.active.Load()) }

// PeakConnections returns the highest number of simultaneously open
// connections seen so far.
func (s *Server) PeakConnections() int { return int(s.peak.Load()) }

// WaitCount waits until Count() >= n or ctx is done.
func (s *Server) WaitCount(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, ch := len(s.msgs), s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sink: waiting for %d messages, have %d: %w", n, got, ctx.Err())
		case <-ch:
		}
	}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &session{s: s, remote: c.Conn().RemoteAddr().String(), tls: isTLS}, nil
}

func (s *Server) seenRcpt(rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.rcptSeen[rcpt]
	s.rcptSeen[rcpt] = n + 1
	return n
}

func (s *Server) seenData(data []byte) int {
	sum := sha256.Sum256(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.dataSeen[sum]
	s.dataSeen[sum] = n + 1
	return n
}

func (s *Server) store(m Received) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	if s.cfg.Dir != "" {
		if err := os.MkdirAll(s.cfg.Dir, 0o755); err != nil {
			return fmt.Errorf("sink: create %s: %w", s.cfg.Dir, err)
		}
		base := filepath.Join(s.cfg.Dir, fmt.Sprintf("%d-%d", m.At.UnixNano(), s.seq))
		if err := writeDurably(base+".eml", m.Data); err != nil {
			return err
		}
		var env strings.Builder
		fmt.Fprintf(&env, "MAIL FROM:<%s>\n", m.From)
		for _, r := range m.Recipients {
			fmt.Fprintf(&env, "RCPT TO:<%s>\n", r)
		}
		if err := writeDurably(base+".env", []byte(env.String())); err != nil {
			return err
		}
	}
	s.msgs = append(s.msgs, m)
	for _, r := range m.Recipients {
		s.delivered[r]++
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// writeDurably writes data to path via a fsynced temporary file, renames it
// into place and fsyncs the directory.
func writeDurably(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("sink: create temp file in %s: %w", dir, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("sink: write %s: %w", path, werr)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sink: open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sink: sync dir %s: %w", dir, err)
	}
	return nil
}

type session struct {
	s      *Server
	remote string
	tls    bool
	from   string
	rcpts  []string
}

var _ smtp.Session = (*session)(nil)

func (ss *session) Reset() {
	ss.from = ""
	ss.rcpts = nil
}

func (ss *session) Logout() error { return nil }

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = from
	ss.rcpts = nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	seen := ss.s.seenRcpt(to)
	if f := ss.s.cfg.OnRcpt; f != nil {
		if serr := f(to, seen); serr != nil {
			return serr
		}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		var serr *smtp.SMTPError
		if errors.As(err, &serr) {
			return serr
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Error reading message data"}
	}
	seen := ss.s.seenData(data)
	if f := ss.s.cfg.DataDelay; f != nil {
		if d := f(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ss.s.closeCh:
				t.Stop()
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Sink shutting down"}
			}
		}
	}
	rcpts := append([]string(nil), ss.rcpts...)
	if f := ss.s.cfg.OnData; f != nil {
		if serr := f(ss.from, rcpts, seen); serr != nil {
			return serr
		}
	}
	m := Received{From: ss.from, Recipients: rcpts, Data: data, RemoteAddr: ss.remote, TLS: ss.tls, At: time.Now()}
	if err := ss.s.store(m); err != nil {
		ss.s.log.Warn("storing message failed", "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Could not store message"}
	}
	ss.s.log.Debug("message accepted", "from", ss.from, "rcpts", len(rcpts), "bytes", len(data), "tls", ss.tls)
	return nil
}

// countingListener counts accepted and open connections.
type countingListener struct {
	net.Listener
	s *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.conns.Add(1)
	n := l.s.active.Add(1)
	for {
		p := l.s.peak.Load()
		if n <= p || l.s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &countingConn{Conn: c, s: l.s}, nil
}

type countingConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *countingConn) Close() error {
	c.once.Do(func() { c.s.active.Add(-1) })
	return c.Conn.Close()
}

// errorLog adapts go-smtp's Logger to slog at debug level: the errors it
// reports are mostly clients hanging up.
type errorLog struct{ l *slog.Logger }

func (e errorLog) Printf(format string, v ...interface{}) {
	e.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...interface{}) {
	e.l.Debug(strings.TrimSpace(fmt.Sprintln(v...)))
}
