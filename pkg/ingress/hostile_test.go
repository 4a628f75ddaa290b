package ingress_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// Hostile and slow clients (issue 9): every case over a real socket.

// logRecorder keeps every log record as "LEVEL message attrs".
type logRecorder struct {
	mu    sync.Mutex
	lines []string
	attrs []slog.Attr
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	for _, a := range l.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logRecorder) WithAttrs(a []slog.Attr) slog.Handler {
	return &logRecorderView{l, a}
}
func (l *logRecorder) WithGroup(string) slog.Handler { return l }
func (l *logRecorder) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

type logRecorderView struct {
	l     *logRecorder
	attrs []slog.Attr
}

func (v *logRecorderView) Enabled(context.Context, slog.Level) bool { return true }
func (v *logRecorderView) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(v.attrs...)
	return v.l.Handle(ctx, r)
}
func (v *logRecorderView) WithAttrs(a []slog.Attr) slog.Handler {
	return &logRecorderView{v.l, append(append([]slog.Attr(nil), v.attrs...), a...)}
}
func (v *logRecorderView) WithGroup(string) slog.Handler { return v }

// openData runs EHLO/MAIL/RCPT/DATA up to the 354.
func openData(c *client) {
	c.tb.Helper()
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<b@dst.test>")
	c.expect(354, "DATA")
}

func writeRaw(tb testing.TB, c *client, s string) {
	tb.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		tb.Fatalf("write: %v", err)
	}
}

// waitIdle waits until the server has no open session.
func waitIdle(tb testing.TB, f *fixture) {
	tb.Helper()
	for i := 0; f.srv.Sessions() != 0; i++ {
		if i > 400 {
			tb.Fatalf("sessions still open: %d", f.srv.Sessions())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// storedKeys lists the blob store through its List (what the workers see).
func (f *fixture) storedKeys() []string {
	f.tb.Helper()
	var keys []string
	if err := f.store.List(context.Background(), func(k string, _ time.Time) error { keys = append(keys, k); return nil }); err != nil {
		f.tb.Fatalf("list: %v", err)
	}
	return keys
}

// Defect 1: a timeout inside DATA ends the session; what the client sends
// after it is never read as commands.
func TestDataTimeoutEndsSession(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.ReadTimeout = 700 * time.Millisecond })
	c := dial(t, f.addr)
	openData(c)
	writeRaw(t, c, "Subject: first\r\n\r\npart one\r\n")
	time.Sleep(1200 * time.Millisecond) // longer than the read timeout
	// Everything after the pause would be a second transaction if it were
	// read as commands.
	writeRaw(t, c, "MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@dst.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n")
	r, err := c.readReply()
	if err != nil {
		t.Fatalf("no reply after the DATA timeout: %v", err)
	}
	if r.Code != 421 {
		t.Fatalf("after a DATA timeout got %v, want 421", r)
	}
	if !strings.HasPrefix(r.Text(), "4.4.2 ") {
		t.Errorf("421 reply %q lacks 4.4.2", r.Text())
	}
	c.expectClosed()
	waitIdle(t, f)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued; the smuggled transaction ran", n)
	}
	if k := f.storedKeys(); len(k) != 0 {
		t.Errorf("bodies stored: %v", k)
	}
}

// Defect 2: --read-timeout is an idle timeout per read: a slow but steady
// client may take longer than it for the whole body.
func TestDataReadTimeoutIsPerRead(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.ReadTimeout = 600 * time.Millisecond })
	c := dial(t, f.addr)
	openData(c)
	writeRaw(t, c, "Subject: slow\r\n\r\n")
	for i := range 8 { // 8 × 250 ms: more than three read timeouts in all (at 1.2 KB/s: above the minimum data rate)
		writeRaw(t, c, fmt.Sprintf("line %d %s\r\n", i, strings.Repeat("x", 290)))
		time.Sleep(250 * time.Millisecond)
	}
	writeRaw(t, c, ".\r\n")
	queueID(t, c.read())
	if n := f.streamMsgs(); n != 1 {
		t.Errorf("stream has %d messages, want 1", n)
	}
}

// A session cut off in DATA (the client goes away mid-body, after more
// than fits in memory was sent) leaves no body and no envelope.
func TestCutOffInDataLeavesNothing(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.InlineBodyMax = 1024 })
	c := dial(t, f.addr)
	openData(c)
	chunk := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 1024) // 64 KiB
	for range 32 {                                                                                       // 2 MiB: streamed, not inline
		writeRaw(t, c, chunk)
	}
	c.conn.Close()
	waitIdle(t, f)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued for a message cut off in DATA", n)
	}
	if k := f.storedKeys(); len(k) != 0 {
		t.Errorf("bodies stored for a message cut off in DATA: %v", k)
	}
	if files := f.storedFiles(); len(files) != 0 {
		t.Errorf("files left in the store: %v", files)
	}
}

// A large body is streamed to the store byte-exact, with the Received:
// header in front.
func TestLargeBodyStreamedExact(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.InlineBodyMax = 4096 })
	c := dial(t, f.addr)
	openData(c)
	var body strings.Builder
	body.WriteString("Subject: big\r\nMessage-ID: <big@src.test>\r\n\r\n")
	for i := range 40000 {
		fmt.Fprintf(&body, "line %06d .with a dot and some padding to make it longer\r\n", i)
	}
	writeRaw(t, c, body.String()+".\r\n")
	qid := queueID(t, c.read())
	jobs := f.fetch(1, 5*time.Second)
	if len(jobs) != 1 {
		t.Fatalf("fetched %d jobs", len(jobs))
	}
	e := jobs[0].Env
	if e.BodyKey != qid || len(e.Body) != 0 {
		t.Fatalf("envelope body key %q, inline %d bytes: want the blob store", e.BodyKey, len(e.Body))
	}
	if e.MsgID != "<big@src.test>" {
		t.Errorf("MsgID = %q", e.MsgID)
	}
	got, err := f.store.Get(context.Background(), qid)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(got), "\r\nSubject: big\r\n")
	if !strings.HasPrefix(string(got), "Received: ") || i < 0 {
		t.Fatalf("stored body does not start with Received: and the message")
	}
	if string(got[i+2:]) != body.String() {
		t.Errorf("stored body differs from what was sent (%d vs %d bytes)", len(got[i+2:]), body.Len())
	}
	if e.Size != int64(len(got)) {
		t.Errorf("envelope size %d, stored %d", e.Size, len(got))
	}
}

// Defect 3: a global budget of bytes in flight: beyond it, 452 4.3.1, not
// growth. (The budget is taken as the body arrives: b fills its buffer
// before it runs out.)
func TestInFlightBudget(t *testing.T) {
	f := start(t, func(c *ingress.Config) {
		c.InlineBodyMax = 64 << 10
		// One streamed message (64 KiB read buffer + the fs store's 32 KiB)
		// fits, a second one's read buffer does not.
		c.MaxInFlightBytes = 150 << 10
		c.MaxInFlightBytesPerClient = 150 << 10
		c.StoreTimeout = 1500 * time.Millisecond
	})
	body := "Subject: a\r\n\r\n" + strings.Repeat(strings.Repeat("x", 1000)+"\r\n", 100) // 100 KB
	a := dial(t, f.addr)
	openData(a)
	writeRaw(t, a, body) // a streams, and pauses
	waitFor(t, func() bool { return f.srv.InFlightBytes() > 96<<10 })
	b := dialFrom(t, "127.0.0.2", f.addr)
	openData(b)
	r := b.sendRest(body)
	if r.Code != 452 || !strings.HasPrefix(r.Text(), "4.3.1 ") {
		t.Fatalf("second message over the in-flight budget got %v, want 452 4.3.1", r)
	}
	writeRaw(t, a, ".\r\n")
	queueID(t, a.read())
	// The budget is released: b can send now, in the same session.
	b.expect(250, "MAIL FROM:<a@src.test>")
	b.expect(250, "RCPT TO:<b@dst.test>")
	queueID(t, b.sendData(body))
	waitFor(t, func() bool { return f.srv.InFlightBytes() == 0 })
}

// sendRest sends body lines and the final dot after a 354 and reads the reply.
func (c *client) sendRest(data string) reply {
	c.tb.Helper()
	writeRaw(c.tb, c, data+".\r\n")
	return c.read()
}

// Defect 4: per-client concurrent sessions.
func TestMaxSessionsPerClient(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxSessionsPerClient = 2 })
	c1 := dial(t, f.addr)
	c2 := dial(t, f.addr)
	c3 := dialRaw(t, f.addr)
	r := c3.read()
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0 ") {
		t.Fatalf("third session from one address got %v, want 421 4.7.0", r)
	}
	c3.expectClosed()
	// Another client address is not affected.
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	d, err := dialer.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	other := &client{tb: t, conn: d, tp: textproto.NewConn(d)}
	t.Cleanup(func() { d.Close() })
	if r := other.read(); r.Code != 220 {
		t.Fatalf("other client got %v", r)
	}
	c1.expect(250, "NOOP")
	c2.expect(221, "QUIT")
	c2.expectClosed()
	waitFor(t, func() bool { return f.srv.Sessions() == 2 })
	c4 := dial(t, f.addr) // a freed slot is usable again
	c4.expect(250, "NOOP")
}

// Defect 4: per-client connection rate.
func TestConnectionRatePerClient(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxConnectionsPerClientPerMinute = 3 })
	for i := range 3 {
		c := dial(t, f.addr)
		c.expect(221, "QUIT")
		_ = i
	}
	c := dialRaw(t, f.addr)
	r := c.read()
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0 ") {
		t.Fatalf("4th connection within a minute got %v, want 421 4.7.0", r)
	}
	c.expectClosed()
}

// Defect 4: an error budget per session (Postfix smtpd_hard_error_limit),
// in plain text and after STARTTLS.
func TestErrorBudgetPerSession(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) { testErrorBudget(t, useTLS) })
	}
}

func testErrorBudget(t *testing.T, useTLS bool) {
	serverTLS := testenv.TLSConfig(t)
	f := start(t, func(c *ingress.Config) {
		c.MaxErrorsPerSession = 3
		c.Policy = &ingress.StaticRelay{Domains: []string{"dst.test"}}
		c.TLSConfig = serverTLS
	})
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	if useTLS {
		c.expect(220, "STARTTLS")
		roots := x509.NewCertPool()
		roots.AddCert(serverTLS.Certificates[0].Leaf)
		tc := tls.Client(c.conn, &tls.Config{ServerName: "localhost", RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		c.conn, c.tp = tc, textproto.NewConn(tc)
		c.expect(250, "EHLO client.test")
	}
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(550, "RCPT TO:<x1@elsewhere.test>")
	c.expect(550, "RCPT TO:<x2@elsewhere.test>")
	r := c.cmd("RCPT TO:<x3@elsewhere.test>")
	if r.Code != 550 {
		t.Fatalf("third refused recipient got %v", r)
	}
	r, err := c.readReply()
	if err != nil || r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0 ") {
		t.Fatalf("after the error budget got %v, %v; want 421 4.7.0", r, err)
	}
	c.expectClosed()
}

// Defect 5 (ingress half): Received: headers are counted while the body streams.
func TestTooManyHops(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.MaxHops = 5; c.InlineBodyMax = 0 })
	hops := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "Received: from hop%d.test\r\n\tby x.test; Tue, 1 Dec 2026 10:00:00 +0000\r\n", i)
		}
		return b.String()
	}
	c := dial(t, f.addr)
	openData(c)
	r := c.sendRest(hops(6) + "Subject: loop\r\n\r\nbody\r\n")
	if r.Code != 554 || r.Text() != "5.4.6 Too many hops" {
		t.Fatalf("6 Received: headers with max 5 got %v, want 554 5.4.6 Too many hops", r)
	}
	// The session goes on; exactly at the limit is fine, and Received:
	// lines in the body are not headers.
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<b@dst.test>")
	queueID(t, c.sendData(hops(5)+"Subject: ok\r\n\r\n"+hops(10)))
	if n := f.streamMsgs(); n != 1 {
		t.Errorf("stream has %d messages, want 1", n)
	}
	if k := f.storedKeys(); len(k) != 1 {
		t.Errorf("store has %v, want one body", k)
	}
}

// Defect 7: RFC 5321 / RFC 3463 replies.
func TestRFCReplies(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	r := c.expect(250, "EHLO client.test")
	if !strings.HasPrefix(r.Lines[0], hostname+" ") && r.Lines[0] != hostname {
		t.Errorf("EHLO first line %q does not start with the host name", r.Lines[0])
	}
	for _, tc := range []struct {
		cmd  string
		code int
		text string
	}{
		{"RCPT TO:<b@dst.test>", 503, "5.5.1 "},
		{"DATA", 503, "5.5.1 "},
		{"XYZZY", 500, "5.5.2 "},
		{"MAIL FROM:<a@src.test>", 250, "2.1.0 Ok"},
		{"DATA", 503, "5.5.1 "},
		{`RCPT TO:<"b.c"@dst.test>`, 250, "2.1.5 Ok"},
		{`RCPT TO:<"x y"@dst.test>`, 250, "2.1.5 Ok"},
	} {
		r := c.cmd("%s", tc.cmd)
		if r.Code != tc.code || !strings.HasPrefix(r.Text(), tc.text) {
			t.Errorf("%s: got %v, want %d %s…", tc.cmd, r, tc.code, tc.text)
		}
	}
	queueID(t, c.sendData("Subject: q\r\n\r\nx\r\n"))
	jobs := f.fetch(1, 5*time.Second)
	if len(jobs) != 1 {
		t.Fatalf("fetched %d", len(jobs))
	}
	var got []string
	for _, r := range jobs[0].Env.Recipients {
		got = append(got, r.Addr)
	}
	if strings.Join(got, " ") != `"b.c"@dst.test "x y"@dst.test` {
		t.Errorf("queued recipients %q; quoted local parts must pass verbatim", got)
	}
}

// Defect 8: a client that connects and leaves without a word is no warning;
// a refused recipient's log line says its reason once.
func TestQuietLogs(t *testing.T) {
	rec := &logRecorder{}
	f := start(t, func(c *ingress.Config) {
		c.Logger = slog.New(rec)
		pol, err := policy.Parse(map[string][]byte{"access": []byte("To:dst.test RELAY\n")})
		if err != nil {
			t.Fatal(err)
		}
		c.Policy = &ingress.SendmailPolicy{Current: func() *policy.Policy { return pol }}
	})
	for range 3 { // a health probe: connect, read the greeting or not, close
		c := dialRaw(t, f.addr)
		c.conn.(*net.TCPConn).SetLinger(0) // an RST, as many probes send
		c.conn.Close()
	}
	c := dial(t, f.addr)
	c.conn.Close()
	waitIdle(t, f)
	c = dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(550, "RCPT TO:<x@elsewhere.test>")
	c.expect(221, "QUIT")
	waitIdle(t, f)
	for _, l := range rec.all() {
		if strings.HasPrefix(l, "WARN") || strings.HasPrefix(l, "ERROR") {
			t.Errorf("log line at warning level for an ordinary client: %s", l)
		}
		if strings.Contains(l, "recipient refused") && strings.Count(strings.ToLower(l), "relaying denied") > 1 {
			t.Errorf("refused recipient's log line repeats itself: %s", l)
		}
	}
}

func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	for i := 0; !cond(); i++ {
		if i > 400 {
			tb.Fatal("condition not met in 10s")
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Defect 6 and issue 10 defect 6: a virtual domain without catch-all knows
// only its entries; an expansion counts against the recipient limit.
func TestVirtualUsersAndExpansionLimit(t *testing.T) {
	pol, err := policy.Parse(map[string][]byte{
		"access":           []byte("To:virt.test RELAY\nTo:local.test RELAY\nTo:dst.test RELAY\n"),
		"local-host-names": []byte("local.test\n"),
		"aliases":          []byte("team: a@dst.test, b@dst.test, c@dst.test\n"),
		"virtusertable":    []byte("known@virt.test sales@dst.test\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, func(c *ingress.Config) {
		c.MaxRecipients = 2
		c.Policy = &ingress.SendmailPolicy{Current: func() *policy.Policy { return pol }, MaxExpansion: 2}
	})
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	if r := c.cmd("RCPT TO:<stranger@virt.test>"); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.1.1 ") || !strings.Contains(r.Text(), "User unknown") {
		t.Errorf("unknown virtual user: %v, want 550 5.1.1 User unknown", r)
	}
	if r := c.cmd("RCPT TO:<team@local.test>"); r.Code != 452 || !strings.HasPrefix(r.Text(), "4.5.3 ") {
		t.Errorf("alias of 3 with a limit of 2: %v, want 452 4.5.3", r)
	}
	c.expect(250, "RCPT TO:<known@virt.test>")
	c.expect(250, "RCPT TO:<x@dst.test>")
	queueID(t, c.sendData("Subject: v\r\n\r\nx\r\n"))
}

// Exempt networks (loopback by default in the daemon) are not limited per client.
func TestClientLimitExceptions(t *testing.T) {
	f := start(t, func(c *ingress.Config) {
		c.MaxSessionsPerClient = 1
		c.MaxConnectionsPerClientPerMinute = 1
		c.ClientLimitExceptions = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	for range 3 {
		dial(t, f.addr).expect(250, "NOOP") // each stays open
	}
}

// Defect 1 with CHUNKING: a timeout inside a BDAT chunk ends the session
// with a 421, and what follows is not read as commands.
func TestBDATTimeoutEndsSession(t *testing.T) {
	f := start(t, func(c *ingress.Config) { c.ReadTimeout = 700 * time.Millisecond })
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<b@dst.test>")
	writeRaw(t, c, "BDAT 1000 LAST\r\nSubject: chunk\r\n\r\n")
	time.Sleep(1200 * time.Millisecond)
	writeRaw(t, c, "MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@dst.test>\r\nDATA\r\nx\r\n.\r\n")
	r, err := c.readReply()
	if err != nil || r.Code != 421 {
		t.Fatalf("after a timeout in BDAT: %v, %v; want 421", r, err)
	}
	if strings.Contains(r.Text(), "tcp") || strings.Contains(r.Text(), "timeout") && !strings.Contains(r.Text(), "Error: timeout exceeded") {
		t.Errorf("reply shows internal error text: %q", r.Text())
	}
	c.expectClosed()
	waitIdle(t, f)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued", n)
	}
}

// A client that goes away inside a BDAT LAST chunk has sent a truncated
// message: nothing is stored or queued.
func TestBDATCutOffLeavesNothing(t *testing.T) {
	f := start(t, nil)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<a@src.test>")
	c.expect(250, "RCPT TO:<b@dst.test>")
	writeRaw(t, c, "BDAT 100000 LAST\r\nSubject: chunk\r\n\r\nonly the start of it\r\n")
	c.conn.Close()
	waitIdle(t, f)
	time.Sleep(200 * time.Millisecond)
	if n := f.streamMsgs(); n != 0 {
		t.Errorf("%d envelopes queued for a truncated BDAT chunk", n)
	}
	if k := f.storedKeys(); len(k) != 0 {
		t.Errorf("bodies stored: %v", k)
	}
}
