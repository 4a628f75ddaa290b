package ingress_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

const hostname = "mx.test"

// ---------------------------------------------------------------------------
// Fixture: a real ingress on loopback, a real queue on embedded NATS, a real
// FS blob store.

type fixture struct {
	tb        testing.TB
	nats      *testenv.NATS
	q         *queue.Queue
	cons      *queue.Consumer
	js        jetstream.JetStream
	storeDir  string
	store     *blob.FS
	srv       *ingress.Server
	cfg       ingress.Config
	addr      string
	serveDone chan error
	panics    *panicWatch
}

func start(tb testing.TB, mutate func(*ingress.Config)) *fixture {
	tb.Helper()
	return startWith(tb, mutate, nil)
}

// startWith is start with the queue the ingress publishes to wrapped (nil:
// the real queue as it is).
func startWith(tb testing.TB, mutate func(*ingress.Config), wrap func(ingress.Queue) ingress.Queue) *fixture {
	tb.Helper()
	f := &fixture{tb: tb, panics: &panicWatch{}}
	f.nats = testenv.StartNATS(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: f.nats.URL(), ClientName: tb.Name(), PublishWait: 3 * time.Second})
	if err != nil {
		tb.Fatalf("queue connect: %v", err)
	}
	tb.Cleanup(q.Close)
	if err := q.Bootstrap(ctx); err != nil {
		tb.Fatalf("queue bootstrap: %v", err)
	}
	f.q = q
	if f.cons, err = q.Consumer(ctx); err != nil {
		tb.Fatalf("consumer: %v", err)
	}
	nc, err := nats.Connect(f.nats.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	if err != nil {
		tb.Fatalf("test nats connection: %v", err)
	}
	tb.Cleanup(nc.Close)
	if f.js, err = jetstream.New(nc); err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	f.storeDir = tb.TempDir()
	if f.store, err = blob.NewFS(f.storeDir, false); err != nil {
		tb.Fatalf("blob store: %v", err)
	}

	f.cfg = ingress.Config{
		Hostname:        hostname,
		Banner:          "mailfwd ESMTP ready",
		ReadTimeout:     30 * time.Second,
		WriteTimeout:    30 * time.Second,
		StoreTimeout:    5 * time.Second,
		Policy:          &ingress.StaticRelay{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		Logger:          slog.New(f.panics),
		RepanicForTests: true,
	}
	if mutate != nil {
		mutate(&f.cfg)
	}
	var iq ingress.Queue = q
	if wrap != nil {
		iq = wrap(q)
	}
	f.srv, err = ingress.New(f.cfg, iq, f.store)
	if err != nil {
		tb.Fatalf("ingress.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	f.addr = ln.Addr().String()
	f.serveDone = make(chan error, 1)
	go func() { f.serveDone <- f.srv.Serve(ln) }()
	tb.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.srv.Shutdown(sctx); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
		select {
		case err := <-f.serveDone:
			if err != nil {
				tb.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Serve did not return after Shutdown")
		}
		if p := f.panics.get(); p != "" {
			tb.Errorf("server logged a panic: %s", p)
		}
	})
	return f
}

// storedFiles lists the regular files in the blob store directory.
func (f *fixture) storedFiles() []string {
	f.tb.Helper()
	var out []string
	err := filepath.WalkDir(f.storeDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		f.tb.Fatalf("walk store: %v", err)
	}
	return out
}

func (f *fixture) streamMsgs() uint64 {
	f.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := f.js.Stream(ctx, "MAIL")
	if err != nil {
		f.tb.Fatalf("stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		f.tb.Fatalf("stream info: %v", err)
	}
	return info.State.Msgs
}

// fetch reads up to n ready envelopes (acking them), waiting at most wait.
func (f *fixture) fetch(n int, wait time.Duration) []*queue.Job {
	f.tb.Helper()
	var jobs []*queue.Job
	err := f.cons.Fetch(n, wait, func(j *queue.Job) {
		jobs = append(jobs, j)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := j.Ack(ctx); err != nil {
			f.tb.Errorf("ack: %v", err)
		}
	})
	if err != nil {
		f.tb.Fatalf("fetch: %v", err)
	}
	return jobs
}

// panicWatch is a slog handler that remembers messages mentioning a panic
// (go-smtp recovers panics in command handlers and logs them).
type panicWatch struct {
	mu  sync.Mutex
	msg string
}

func (p *panicWatch) Enabled(context.Context, slog.Level) bool { return true }
func (p *panicWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(strings.ToLower(r.Message), "panic") {
		p.mu.Lock()
		if p.msg == "" {
			p.msg = r.Message
		}
		p.mu.Unlock()
	}
	return nil
}
func (p *panicWatch) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *panicWatch) WithGroup(string) slog.Handler      { return p }
func (p *panicWatch) get() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.msg
}

// ---------------------------------------------------------------------------
// A minimal SMTP client speaking raw lines, so every reply can be checked.

type reply struct {
	Code  int
	Lines []string // text after "NNN-" / "NNN "
}

func (r reply) Text() string { return strings.Join(r.Lines, "\n") }
func (r reply) String() string {
	return fmt.Sprintf("%d %s", r.Code, strings.Join(r.Lines, " | "))
}

type client struct {
	tb   testing.TB
	conn net.Conn
	tp   *textproto.Conn
}

func dialRaw(tb testing.TB, addr string) *client {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &client{tb: tb, conn: conn, tp: textproto.NewConn(conn)}
}

// dial connects and checks for a 220 greeting.
func dial(tb testing.TB, addr string) *client {
	tb.Helper()
	c := dialRaw(tb, addr)
	if r := c.read(); r.Code != 220 {
		tb.Fatalf("greeting = %v, want 220", r)
	}
	return c
}

func (c *client) readReply() (reply, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var r reply
	for {
		line, err := c.tp.ReadLine()
		if err != nil {
			return r, err
		}
		if len(line) < 3 {
			return r, fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 100 || code > 599 {
			return r, fmt.Errorf("reply line %q does not start with a 3-digit code", line)
		}
		if r.Code != 0 && code != r.Code {
			return r, fmt.Errorf("reply code changed within a multi-line reply: %q", line)
		}
		r.Code = code
		if len(line) == 3 {
			r.Lines = append(r.Lines, "")
			return r, nil
		}
		switch line[3] {
		case ' ':
			r.Lines = append(r.Lines, line[4:])
			return r, nil
		case '-':
			r.Lines = append(r.Lines, line[4:])
		default:
			return r, fmt.Errorf("bad separator in reply line %q", line)
		}
	}
}

func (c *client) read() reply {
	c.tb.Helper()
	r, err := c.readReply()
	if err != nil {
		c.tb.Fatalf("read reply: %v", err)
	}
	return r
}

func (c *client) writeLine(line string) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
	_, err := io.WriteString(c.conn, line+"\r\n")
	return err
}

func (c *client) cmd(format string, args ...any) reply {
	c.tb.Helper()
	line := fmt.Sprintf(format, args...)
	if err := c.writeLine(line); err != nil {
		c.tb.Fatalf("send %q: %v", line, err)
	}
	r, err := c.readReply()
	if err != nil {
		c.tb.Fatalf("reply to %q: %v", line, err)
	}
	return r
}

// expect sends a command and checks the reply code.
func (c *client) expect(code int, format string, args ...any) reply {
	c.tb.Helper()
	r := c.cmd(format, args...)
	if r.Code != code {
		c.tb.Fatalf("%s: got %v, want %d", fmt.Sprintf(format, args...), r, code)
	}
	return r
}

// sendData sends DATA, then data (CRLF lines; dot-stuffed here), then the
// terminating dot, and returns the final reply.
func (c *client) sendData(data string) reply {
	c.tb.Helper()
	c.expect(354, "DATA")
	_ = c.conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
	w := bufio.NewWriter(c.conn)
	for _, line := range strings.SplitAfter(data, "\r\n") {
		if strings.HasPrefix(line, ".") {
			w.WriteString(".")
		}
		w.WriteString(line)
	}
	if !strings.HasSuffix(data, "\r\n") && data != "" {
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
	if err := w.Flush(); err != nil {
		c.tb.Fatalf("write data: %v", err)
	}
	return c.read()
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.tb.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.tp.ReadLine()
	if err == nil {
		c.tb.Fatalf("connection still open, read %q", line)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.tb.Fatalf("connection still open (read timed out)")
	}
}

var queuedRE = regexp.MustCompile(`^2\.0\.0 Ok: queued as ([0-9a-v]{20})$`)

// queueID extracts the queue id from a 250 reply to DATA.
func queueID(tb testing.TB, r reply) string {
	tb.Helper()
	if r.Code != 250 {
		tb.Fatalf("DATA reply = %v, want 250", r)
	}
	m := queuedRE.FindStringSubmatch(r.Text())
	if m == nil {
		tb.Fatalf("250 reply %q does not name a queue id", r.Text())
	}
	return m[1]
}

// ---------------------------------------------------------------------------

func TestGreeting(t *testing.T) {
	t.Run("with banner", func(t *testing.T) {
		f := start(t, nil)
		c := dialRaw(t, f.addr)
		line, err := c.tp.ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		if want := "220 " + hostname + " mailfwd ESMTP ready"; line != want {
			t.Errorf("greeting = %q, want %q", line, want)
		}
		c.expect(250, "NOOP")
		c.expect(221, "QUIT")
		c.expectClosed()
	})
	t.Run("empty banner", func(t *testing.T) {
		f := start(t, func(c *ingress.Config) { c.Banner = "" })
		c := dialRaw(t, f.addr)
		line, err := c.tp.ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		if want := "220 " + hostname; line != want {
			t.Errorf("greeting = %q, want %q", line, want)
		}
	})
}

func TestEHLOCapabilities(t *testing.T) {
	want := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "SIZE 20000000"}
	t.Run("plain", func(t *testing.T) {
		f := start(t, nil)
		c := dial(t, f.addr)
		r := c.expect(250, "EHLO client.test")
		for _, w := range want {
			if !slices.Contains(r.Lines, w) {
				t.Errorf("EHLO reply lacks %q: %q", w, r.Lines)
			}
		}
		if slices.Contains(r.Lines, "STARTTLS") {
			t.Errorf("STARTTLS advertised without a TLS config: %q", r.Lines)
		}
		c.expect(502, "STARTTLS")
		// HELO still works and gets a one-line 250.
		if r := c.expect(250, "HELO client.test"); len(r.Lines) != 1 {
			t.Errorf("HELO reply has %d lines", len(r.Lines))
		}
	})
	t.Run("configured size", func(t *testing.T) {
		f := start(t, func(c *ingress.Config) { c.MaxMessageBytes = 12345 })
		c := dial(t, f.addr)
		r := c.expect(250, "EHLO client.test")
		if !slices.Contains(r.Lines, "SIZE 12345") {
			t.Errorf("EHLO reply lacks SIZE 12345: %q", r.Lines)
		}
	})
}

func TestSTARTTLS(t *testing.T) {
	serverTLS := testenv.TLSConfig(t)
	f := start(t, func(c *ingress.Config) { c.TLSConfig = serverTLS })
	c := dial(t, f.addr)
	r := c.expect(250, "EHLO client.test")
	if !slices.Contains(r.Lines, "STARTTLS") {
		t.Fatalf("STARTTLS not advertised: %q", r.Lines)
	}
	c.expect(220, "STARTTLS")

	roots := x509.NewCertPool()
	roots.AddCert(serverTLS.Certificates[0].Leaf)
	tc := tls.Client(c.conn, &tls.Config{ServerName: "localhost", RootCAs: roots, MinVersion: tls.VersionTLS12})
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	c.conn, c.tp = tc, textproto.NewConn(tc)

	r = c.expect(250, "EHLO client.test")
	if slices.Contains(r.Lines, "STARTTLS") {
		t.Errorf("STARTTLS advertised again inside TLS: %q", r.Lines)
	}
	c.expect(250, "MAIL FROM:<alice@src.test>")
	c.expect(250, "RCPT TO:<bob@dst.test>")
	data := "Subject: over TLS\r\n\r\nsecret\r\n"
	qid := queueID(t, c.sendData(data))
	body, err := f.store.Get(context.Background(), qid)
	if err != nil {
		t.Fatalf("body %s: %v", qid, err)
	}
	hdr, rest, ok := strings.Cut(string(body), "\r\nSubject:")
	if !ok || "Subject:"+rest != data {
		t.Fatalf("stored body = %q", body)
	}
	if !strings.Contains(hdr, " with ESMTPS id "+qid) {
		t.Errorf("Received header does not say ESMTPS: %q", hdr)
	}
	c.expect(221, "QUIT")
}

func TestVRFYAndEXPNDiscloseNothing(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	r := c.expect(252, "VRFY postmaster")
	if strings.Contains(r.Text(), "postmaster") {
		t.Errorf("VRFY reply discloses the user: %q", r.Text())
	}
	r = c.expect(502, "EXPN staff")
	if strings.Contains(r.Text(), "staff") {
		t.Errorf("EXPN reply discloses the list: %q", r.Text())
	}
	c.expect(250, "NOOP")
}

func TestSizeLimits(t *testing.T) {
	t.Run("MAIL SIZE over the limit", func(t *testing.T) {
		f := start(t, nil)
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.test")
		r := c.expect(552, "MAIL FROM:<alice@src.test> SIZE=20000001")
		if !strings.HasPrefix(r.Text(), "5.3.4 ") {
			t.Errorf("reply = %v, want enhanced 5.3.4", r)
		}
		c.expect(250, "MAIL FROM:<alice@src.test> SIZE=20000000")
	})
	t.Run("DATA over the limit", func(t *testing.T) {
		f := start(t, func(c *ingress.Config) { c.MaxMessageBytes = 1000 })
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.test")
		c.expect(250, "MAIL FROM:<alice@src.test>")
		c.expect(250, "RCPT TO:<bob@dst.test>")
		big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 40)
		r := c.sendData(big)
		if r.Code != 552 || !strings.HasPrefix(r.Text(), "5.3.4 ") {
			t.Fatalf("oversize DATA reply = %v, want 552 5.3.4", r)
		}
		if files := f.storedFiles(); len(files) != 0 {
			t.Errorf("oversize message stored: %v", files)
		}
		if n := f.streamMsgs(); n != 0 {
			t.Errorf("oversize message queued: %d stream messages", n)
		}
		// The session goes on; a message under the limit is accepted.
		c.expect(250, "MAIL FROM:<alice@src.test>")
		c.expect(250, "RCPT TO:<bob@dst.test>")
		queueID(t, c.sendData("Subject: small\r\n\r\nok\r\n"))
		if n := f.streamMsgs(); n != 1 {
			t.Errorf("stream holds %d messages, want 1", n)
		}
	})
}

func TestRelayPolicy(t *testing.T) {
	t.Run("domains for any client", func(t *testing.T) {
		f := start(t, func(c *ingress.Config) {
			c.Policy = &ingress.StaticRelay{
				Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
				Domains:  []string{"relay.test"},
			}
		})
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.test")
		c.expect(250, "MAIL FROM:<alice@src.test>")
		for _, denied := range []string{"bob@other.test", "bob@evilrelay.test", "bob@relay.test.example"} {
			r := c.cmd("RCPT TO:<%s>", denied)
			if got := r.String(); got != "550 5.7.1 Relaying denied" {
				t.Errorf("RCPT %s: %q, want \"550 5.7.1 Relaying denied\"", denied, got)
			}
		}
		c.expect(250, "RCPT TO:<bob@relay.test>")
		c.expect(250, "RCPT TO:<carol@sub.relay.test>")
		c.expect(250, "RCPT TO:<dave@RELAY.TEST>")
		qid := queueID(t, c.sendData("Subject: relayed\r\n\r\nhi\r\n"))
		jobs := f.fetch(2, 5*time.Second)
		if len(jobs) != 2 {
			t.Fatalf("got %d envelopes, want 2", len(jobs))
		}
		var rcpts []string
		for _, j := range jobs {
			if j.Env.QueueID != qid {
				t.Errorf("envelope for %s has queue id %s, want %s", j.Env.Domain, j.Env.QueueID, qid)
			}
			rcpts = append(rcpts, j.Env.Addrs()...)
		}
		slices.Sort(rcpts)
		if want := []string{"bob@relay.test", "carol@sub.relay.test", "dave@RELAY.TEST"}; !slices.Equal(rcpts, want) {
			t.Errorf("queued recipients %v, want %v (denied ones must not be queued)", rcpts, want)
		}
	})
	t.Run("networks for any domain", func(t *testing.T) {
		f := start(t, func(c *ingress.Config) {
			c.Policy = &ingress.StaticRelay{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
		})
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.test")
		c.expect(250, "MAIL FROM:<alice@src.test>")
		c.expect(250, "RCPT TO:<bob@other.test>")
		c.expect(250, "RCPT TO:<bob@[192.0.2.1]>")
	})
	t.Run("zero value relays for nobody", func(t *testing.T) {
		f := start(t, func(c *ingress.Config) { c.Policy = &ingress.StaticRelay{} })
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.test")
		c.expect(250, "MAIL FROM:<alice@src.test>")
		c.expect(550, "RCPT TO:<bob@other.test>")
		c.expect(503, "DATA") // no accepted recipient
	})
}

func TestMalformedAddresses(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	// Paths go-smtp's parser cannot read get its 501 5.5.2 before the
	// ingress sees them; mailboxes that parse but are invalid get the
	// ingress's 5.1.x from pkg/address. Either way the session continues.
	tests := []struct {
		cmd      string
		enhanced string
	}{
		{"MAIL FROM:<a..b@src.test>", "5.1.3"},
		{"MAIL FROM:<.a@src.test>", "5.1.3"},
		{"MAIL FROM:<alice@dotless>", "5.1.2"},
		{"MAIL FROM:<alice@bad_domain.test>", "5.1.2"},
		{"MAIL FROM:<alice>", "5.5.2"},            // no @
		{"MAIL FROM:<\"alice@src.test>", "5.5.2"}, // unbalanced quote
	}
	for _, tt := range tests {
		r := c.cmd("%s", tt.cmd)
		if r.Code/100 != 5 || !strings.HasPrefix(r.Text(), tt.enhanced+" ") {
			t.Errorf("%s: %v, want 5xx %s", tt.cmd, r, tt.enhanced)
		}
	}
	c.expect(250, "MAIL FROM:<alice@src.test>")
	rcpts := []struct {
		cmd      string
		enhanced string
	}{
		{"RCPT TO:<bob>", "5.5.2"},             // no @
		{"RCPT TO:<a..b@dst.test>", "5.1.3"},   // double dot
		{"RCPT TO:<\"bob@dst.test>", "5.5.2"},  // unbalanced quote
		{"RCPT TO:<bob\"@dst.test>", "5.5.2"},  // stray quote
		{"RCPT TO:<bob@dotless>", "5.1.2"},     // not fully qualified
		{"RCPT TO:<bob@[300.1.1.1]>", "5.1.2"}, // bad literal
		{"RCPT TO:<bob@dst..test>", "5.1.2"},   // empty label
		{"RCPT TO:<" + strings.Repeat("l", 65) + "@dst.test>", "5.1.3"},
	}
	for _, tt := range rcpts {
		r := c.cmd("%s", tt.cmd)
		if r.Code/100 != 5 || !strings.HasPrefix(r.Text(), tt.enhanced+" ") {
			t.Errorf("%s: %v, want 5xx %s", tt.cmd, r, tt.enhanced)
		}
	}
	c.expect(250, "RCPT TO:<bob@dst.test>")
	qid := queueID(t, c.sendData("Subject: after errors\r\n\r\nstill here\r\n"))
	jobs := f.fetch(1, 5*time.Second)
	if len(jobs) != 1 || jobs[0].Env.QueueID != qid || !slices.Equal(jobs[0].Env.Addrs(), []string{"bob@dst.test"}) {
		t.Fatalf("queued %d envelopes, want one for bob@dst.test", len(jobs))
	}
}

func TestMaxRecipients(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxRecipients = 2 })
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<alice@src.test>")
	c.expect(250, "RCPT TO:<r1@dst.test>")
	c.expect(250, "RCPT TO:<r2@dst.test>")
	r := c.expect(452, "RCPT TO:<r3@dst.test>")
	if !strings.HasPrefix(r.Text(), "4.5.3 ") {
		t.Errorf("reply = %v, want 452 4.5.3", r)
	}
	queueID(t, c.sendData("Subject: two\r\n\r\nx\r\n"))
	jobs := f.fetch(1, 5*time.Second)
	if len(jobs) != 1 || !slices.Equal(jobs[0].Env.Addrs(), []string{"r1@dst.test", "r2@dst.test"}) {
		t.Fatalf("queued envelopes %d, want one with r1 and r2", len(jobs))
	}
}

func TestSMTPUTF8(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")

	r := c.expect(553, "MAIL FROM:<jörg@src.test>")
	if !strings.HasPrefix(r.Text(), "5.6.7 ") {
		t.Errorf("non-ASCII sender without SMTPUTF8: %v, want 553 5.6.7", r)
	}
	c.expect(250, "MAIL FROM:<alice@src.test>")
	r = c.expect(553, "RCPT TO:<用户@例子.test>")
	if !strings.HasPrefix(r.Text(), "5.6.7 ") {
		t.Errorf("non-ASCII recipient without SMTPUTF8: %v, want 553 5.6.7", r)
	}
	c.expect(250, "RSET")

	c.expect(250, "MAIL FROM:<jörg@src.test> SMTPUTF8")
	c.expect(250, "RCPT TO:<用户@例子.test>")
	qid := queueID(t, c.sendData("Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\n\r\nhallo\r\n"))
	body, err := f.store.Get(context.Background(), qid)
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	if !strings.Contains(string(body), " with UTF8SMTP id "+qid) {
		t.Errorf("Received header does not say UTF8SMTP: %q", body)
	}
	jobs := f.fetch(1, 5*time.Second)
	if len(jobs) != 1 {
		t.Fatalf("got %d envelopes, want 1", len(jobs))
	}
	ascii, err := address.Domain("例子.test")
	if err != nil {
		t.Fatal(err)
	}
	e := jobs[0].Env
	if e.Domain != ascii || !e.UTF8 || e.From != "jörg@src.test" || !slices.Equal(e.Addrs(), []string{"用户@例子.test"}) {
		t.Errorf("envelope = %+v, want domain %s, UTF8, verbatim addresses", e, ascii)
	}
	if want := "mail.ready." + address.SubjectToken(ascii); jobs[0].Subject != want {
		t.Errorf("subject = %q, want %q", jobs[0].Subject, want)
	}
}

func TestNullSender(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<>")
	c.expect(250, "RCPT TO:<bob@dst.test>")
	qid := queueID(t, c.sendData("Subject: bounce\r\n\r\nreturned\r\n"))
	jobs := f.fetch(1, 5*time.Second)
	if len(jobs) != 1 || jobs[0].Env.QueueID != qid || jobs[0].Env.From != "" {
		t.Fatalf("envelope for the null sender missing or wrong")
	}
}

func TestMaxSessions(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxSessions = 2 })
	c1 := dial(t, f.addr)
	c2 := dial(t, f.addr)
	c1.expect(250, "EHLO one.test")
	c2.expect(250, "EHLO two.test")
	if n := f.srv.Sessions(); n != 2 {
		t.Errorf("Sessions() = %d, want 2", n)
	}

	c3 := dialRaw(t, f.addr)
	r := c3.read()
	if r.Code != 421 || !strings.Contains(r.Text(), hostname) {
		t.Errorf("third connection got %v, want 421 naming %s", r, hostname)
	}
	c3.expectClosed()

	// The first two sessions are unaffected.
	c1.expect(250, "NOOP")
	c2.expect(250, "NOOP")

	// A freed slot takes a new session.
	c1.expect(221, "QUIT")
	c1.expectClosed()
	var got reply
	for range 100 {
		c := dialRaw(t, f.addr)
		got = c.read()
		if got.Code == 220 {
			c.expect(221, "QUIT")
			break
		}
		c.conn.Close()
		time.Sleep(50 * time.Millisecond)
	}
	if got.Code != 220 {
		t.Fatalf("after a session ended, a new connection still gets %v", got)
	}
}

func TestAcceptedMessage(t *testing.T) {
	f := start(t, nil)

	t.Run("one recipient", func(t *testing.T) {
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.example")
		c.expect(250, "MAIL FROM:<alice@src.test> BODY=8BITMIME")
		c.expect(250, "RCPT TO:<Bob@Dst.Test>")
		data := "Message-ID: <m1@client.example>\r\n" +
			"Subject: test\r\n" +
			"\r\n" +
			".leading dot\r\n" +
			"..two dots\r\n" +
			"caf\xc3\xa9 8bit\r\n" +
			"last line\r\n"
		r := c.sendData(data)
		qid := queueID(t, r)

		body, err := f.store.Get(context.Background(), qid)
		if err != nil {
			t.Fatalf("body under the queue id %s: %v", qid, err)
		}
		hdr, ok := strings.CutSuffix(string(body), data)
		if !ok {
			t.Fatalf("stored body does not end with the exact DATA bytes:\n%q", body)
		}
		wantPrefix := "Received: from client.example ([127.0.0.1])\r\n" +
			"\tby " + hostname + " (mailfwd) with ESMTP id " + qid + "\r\n" +
			"\tfor <Bob@Dst.Test>; "
		date, ok := strings.CutPrefix(hdr, wantPrefix)
		if !ok {
			t.Fatalf("Received header = %q, want prefix %q", hdr, wantPrefix)
		}
		date, ok = strings.CutSuffix(date, "\r\n")
		if !ok {
			t.Fatalf("Received header does not end with CRLF: %q", hdr)
		}
		if ts, err := time.Parse(time.RFC1123Z, date); err != nil {
			t.Errorf("Received date %q: %v", date, err)
		} else if d := time.Since(ts); d < -time.Minute || d > time.Hour {
			t.Errorf("Received date %v is not now", ts)
		}

		jobs := f.fetch(2, time.Second) // waits the full second: there must be only one
		if len(jobs) != 1 {
			t.Fatalf("got %d envelopes, want 1", len(jobs))
		}
		e := jobs[0].Env
		if jobs[0].Subject != "mail.ready.test.dst" {
			t.Errorf("subject = %q", jobs[0].Subject)
		}
		if e.QueueID != qid || e.BodyKey != qid || e.Domain != "dst.test" || e.From != "alice@src.test" ||
			e.Parts != 1 || e.Size != int64(len(body)) || e.MsgID != "<m1@client.example>" ||
			!e.EightBit || e.UTF8 || e.ClientAddr != "127.0.0.1" || e.ClientHelo != "client.example" ||
			!slices.Equal(e.Addrs(), []string{"Bob@Dst.Test"}) || e.Arrived.IsZero() {
			t.Errorf("envelope = %+v", e)
		}
		c.expect(221, "QUIT")
	})

	t.Run("two domains", func(t *testing.T) {
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.example")
		c.expect(250, "MAIL FROM:<alice@src.test>")
		c.expect(250, "RCPT TO:<a@one.example.com>")
		c.expect(250, "RCPT TO:<b@two.test>")
		c.expect(250, "RCPT TO:<c@ONE.example.com>")
		data := "Subject: no message id\r\nX-Message-ID: <not-this@x>\r\n\r\nMessage-ID: <not-body@x>\r\n"
		qid := queueID(t, c.sendData(data))
		body, err := f.store.Get(context.Background(), qid)
		if err != nil {
			t.Fatalf("body: %v", err)
		}
		hdr, ok := strings.CutSuffix(string(body), data)
		if !ok {
			t.Fatalf("stored body = %q", body)
		}
		if strings.Contains(hdr, "\tfor <") {
			t.Errorf("Received header names a recipient of a multi-recipient message: %q", hdr)
		}
		jobs := f.fetch(2, 5*time.Second)
		if len(jobs) != 2 {
			t.Fatalf("got %d envelopes, want 2", len(jobs))
		}
		want := map[string]struct {
			subject string
			rcpts   []string
		}{
			"one.example.com": {"mail.ready.com.example.one", []string{"a@one.example.com", "c@ONE.example.com"}},
			"two.test":        {"mail.ready.test.two", []string{"b@two.test"}},
		}
		for _, j := range jobs {
			e := j.Env
			w, ok := want[e.Domain]
			if !ok {
				t.Errorf("unexpected envelope domain %q", e.Domain)
				continue
			}
			delete(want, e.Domain)
			if j.Subject != w.subject {
				t.Errorf("%s: subject %q, want %q", e.Domain, j.Subject, w.subject)
			}
			if !slices.Equal(e.Addrs(), w.rcpts) {
				t.Errorf("%s: recipients %v, want %v", e.Domain, e.Addrs(), w.rcpts)
			}
			if e.QueueID != qid || e.BodyKey != qid || e.Parts != 2 || e.Size != int64(len(body)) || e.MsgID != "" || e.From != "alice@src.test" {
				t.Errorf("%s: envelope = %+v", e.Domain, e)
			}
		}
		// Every envelope of the message holds a reference to the body.
		for _, j := range jobs {
			if done, err := f.q.PartDone(context.Background(), j.Env); err != nil || done {
				t.Errorf("PartDone(%s) = %v, %v; want pending", j.Env.Domain, done, err)
			}
		}
	})

	t.Run("pipelined transactions", func(t *testing.T) {
		c := dial(t, f.addr)
		c.expect(250, "EHLO client.example")
		var qids []string
		for i := range 3 {
			// MAIL, RCPT and DATA in one write (RFC 2920), then the replies.
			batch := fmt.Sprintf("MAIL FROM:<alice@src.test>\r\nRCPT TO:<p%d@dst.test>\r\nDATA\r\n", i)
			if _, err := io.WriteString(c.conn, batch); err != nil {
				t.Fatal(err)
			}
			for _, want := range []int{250, 250, 354} {
				if r := c.read(); r.Code != want {
					t.Fatalf("pipelined reply %v, want %d", r, want)
				}
			}
			if _, err := fmt.Fprintf(c.conn, "Message-ID: <p%d@x>\r\n\r\nbody %d\r\n.\r\n", i, i); err != nil {
				t.Fatal(err)
			}
			qids = append(qids, queueID(t, c.read()))
		}
		if u := slices.Compact(slices.Sorted(slices.Values(qids))); len(u) != 3 {
			t.Errorf("queue ids not unique: %v", qids)
		}
		jobs := f.fetch(3, 5*time.Second)
		if len(jobs) != 3 {
			t.Fatalf("got %d envelopes, want 3", len(jobs))
		}
		for _, j := range jobs {
			i := slices.Index(qids, j.Env.QueueID)
			if i < 0 || j.Env.MsgID != fmt.Sprintf("<p%d@x>", i) || !slices.Equal(j.Env.Addrs(), []string{fmt.Sprintf("p%d@dst.test", i)}) {
				t.Errorf("envelope %+v does not match a transaction", j.Env)
			}
		}
	})
}

func TestNATSOutage(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")

	f.nats.Stop()
	c.expect(250, "MAIL FROM:<alice@src.test>")
	c.expect(250, "RCPT TO:<bob@dst.test>")
	r := c.sendData("Subject: during outage\r\n\r\nx\r\n")
	if r.Code != 451 {
		t.Fatalf("DATA with NATS down: %v, want 451", r)
	}
	if strings.Contains(strings.ToLower(r.Text()), "nats") {
		t.Errorf("451 reply leaks internals: %q", r.Text())
	}

	f.nats.Start()
	var qid string
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		if attempt > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		if err := c.writeLine("MAIL FROM:<alice@src.test>"); err != nil {
			c = dial(t, f.addr)
			c.expect(250, "EHLO client.test")
			continue
		}
		if r, err := c.readReply(); err != nil || r.Code != 250 {
			c = dial(t, f.addr)
			c.expect(250, "EHLO client.test")
			continue
		}
		c.expect(250, "RCPT TO:<bob@dst.test>")
		r := c.sendData("Subject: after outage\r\n\r\ny\r\n")
		if r.Code == 250 {
			qid = queueID(t, r)
			break
		}
		if r.Code/100 != 4 {
			t.Fatalf("DATA while NATS recovers: %v, want 4xx or 250", r)
		}
	}
	if qid == "" {
		t.Fatal("no 250 within 20s after NATS came back")
	}
	var found bool
	for range 5 {
		for _, j := range f.fetch(5, time.Second) {
			if j.Env.QueueID == qid {
				found = true
			}
		}
		if found {
			break
		}
	}
	if !found {
		t.Errorf("message %s answered 250 but its envelope is not in the queue", qid)
	}
	if _, err := f.store.Get(context.Background(), qid); err != nil {
		t.Errorf("message %s answered 250 but its body is not stored: %v", qid, err)
	}
}

func TestShutdownDrainsOpenSession(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<alice@src.test>")
	c.expect(250, "RCPT TO:<bob@dst.test>")

	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shutdownDone <- f.srv.Shutdown(ctx)
	}()
	// Serve returns once Shutdown has closed the listener.
	select {
	case err := <-f.serveDone:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		f.serveDone <- nil // for the fixture's cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Shutdown started")
	}
	if conn, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("new connections still accepted during shutdown")
	}

	// The open session finishes its transaction.
	qid := queueID(t, c.sendData("Subject: drained\r\n\r\nlast one\r\n"))
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) while a session was still open", err)
	default:
	}
	c.expect(221, "QUIT")
	c.expectClosed()
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last session ended")
	}
	if _, err := f.store.Get(context.Background(), qid); err != nil {
		t.Errorf("drained message body: %v", err)
	}
	if jobs := f.fetch(1, 3*time.Second); len(jobs) != 1 || jobs[0].Env.QueueID != qid {
		t.Errorf("drained message not queued")
	}
}

func TestShutdownDeadlineClosesSessions(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<alice@src.test>")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	c.expectClosed()
	for range 100 {
		if f.srv.Sessions() == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := f.srv.Sessions(); n != 0 {
		t.Errorf("Sessions() = %d after Shutdown, want 0", n)
	}
}
