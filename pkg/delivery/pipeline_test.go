package delivery_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/testenv"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// observed records what a go-smtp destination read, one entry per Read
// call of the session (in plain text, inside TLS after STARTTLS), and can
// hide EHLO keywords from the client (a destination without PIPELINING or
// CHUNKING).
type observed struct {
	strip []string // EHLO keywords removed from the server's replies

	mu    sync.Mutex
	reads []string
}

func (o *observed) record(b []byte) {
	o.mu.Lock()
	o.reads = append(o.reads, string(b))
	o.mu.Unlock()
}

// readWith returns the Read that contains s (one TCP/TLS read of the
// destination), or "".
func (o *observed) readWith(s string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range o.reads {
		if strings.Contains(r, s) {
			return r
		}
	}
	return ""
}

type observedConn struct {
	net.Conn
	o *observed
}

func (c *observedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.o.record(p[:n])
	}
	return n, err
}

func (c *observedConn) Write(p []byte) (int, error) {
	q := p
	for _, kw := range c.o.strip {
		q = bytes.ReplaceAll(q, []byte("250-"+kw+"\r\n"), nil)
	}
	if _, err := c.Conn.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

// NetConn exposes the conn below (go-smtp finds the *tls.Conn through it).
func (c *observedConn) NetConn() net.Conn { return c.Conn }

type observedListener struct {
	net.Listener
	o *observed
}

func (l observedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &observedConn{Conn: c, o: l.o}, nil
}

// startObserved serves be like startFake, recording what the server reads.
func startObserved(t *testing.T, be smtp.Backend, o *observed, configure func(*smtp.Server)) string {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = "fake.test"
	srv.ErrorLog = discardLog{}
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	srv.WrapTLSConn = func(tc *tls.Conn, _ net.Conn) net.Conn { return &observedConn{Conn: tc, o: o} }
	if configure != nil {
		configure(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(observedListener{ln, o})
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// mixBackend answers RCPT per local part: "tempN" 450, "permN" 550,
// others 250; it keeps the bodies and the recipients of each.
type mixBackend struct {
	fakeBackend
	mu     sync.Mutex
	got    []string
	rcptOf [][]string
}

func newMix() *mixBackend {
	b := &mixBackend{}
	b.rcpt = func(c *smtp.Conn, to string) error {
		switch {
		case strings.HasPrefix(to, "temp"):
			return errSMTP(450, smtp.EnhancedCode{4, 2, 1}, "mailbox busy")
		case strings.HasPrefix(to, "perm"):
			return errSMTP(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		}
		return nil
	}
	return b
}

func (b *mixBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &mixSession{fakeSession: fakeSession{b: &b.fakeBackend, c: c}, mb: b}, nil
}

type mixSession struct {
	fakeSession
	mb    *mixBackend
	rcpts []string
}

func (s *mixSession) Rcpt(to string, o *smtp.RcptOptions) error {
	if err := s.fakeSession.Rcpt(to, o); err != nil {
		return err
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *mixSession) Reset() { s.rcpts = nil }

func (s *mixSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mb.mu.Lock()
	s.mb.got = append(s.mb.got, string(b))
	s.mb.rcptOf = append(s.mb.rcptOf, append([]string(nil), s.rcpts...))
	s.mb.mu.Unlock()
	s.b.datas.Add(1)
	return nil
}

func (b *mixBackend) bodies() ([]string, [][]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.got...), append([][]string(nil), b.rcptOf...)
}

// mixRcpts are ten recipients: six accepted, three refused for good, one
// deferred.
var mixRcpts = []string{"a1@x.test", "perm1@x.test", "a2@x.test", "temp1@x.test", "a3@x.test",
	"perm2@x.test", "a4@x.test", "a5@x.test", "perm3@x.test", "a6@x.test"}

// checkMix checks each recipient's outcome against its reply and that the
// destination got the body once, for exactly the accepted recipients.
func checkMix(t *testing.T, out *delivery.Outcome, be *mixBackend, body string) {
	t.Helper()
	var accepted []string
	for i, rc := range mixRcpts {
		st := out.Statuses[i]
		switch {
		case strings.HasPrefix(rc, "perm"):
			if !st.Permanent() || st.Code != 550 {
				t.Errorf("%s: %+v, want 550", rc, st)
			}
		case strings.HasPrefix(rc, "temp"):
			if st.Permanent() || st.Delivered() || st.Code != 450 {
				t.Errorf("%s: %+v, want 450", rc, st)
			}
		default:
			accepted = append(accepted, rc)
			if !st.Delivered() {
				t.Errorf("%s: %+v, want delivered", rc, st)
			}
		}
	}
	bodies, rcpts := be.bodies()
	if len(bodies) != 1 || bodies[0] != body {
		t.Fatalf("destination got %d bodies (want 1, exact)", len(bodies))
	}
	if strings.Join(rcpts[0], ",") != strings.Join(accepted, ",") {
		t.Errorf("destination delivered to %v, want %v", rcpts[0], accepted)
	}
}

// With PIPELINING (and no CHUNKING), MAIL, the ten RCPTs and DATA reach the
// destination in one read, and each recipient gets its own reply's outcome.
func TestPipelinedMailRcptData(t *testing.T) {
	be := newMix()
	o := &observed{strip: []string{"CHUNKING"}}
	addr := startObserved(t, be, o, nil)
	c := newClient(t, nil)
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(testBody, mixRcpts...))
	checkMix(t, out, be, testBody)
	group := o.readWith("MAIL FROM")
	if strings.Count(group, "RCPT TO:") != len(mixRcpts) || !strings.HasSuffix(group, "DATA\r\n") {
		t.Errorf("MAIL, RCPTs and DATA not in one read: %q", group)
	}
	if strings.Contains(group, "Subject:") {
		t.Errorf("body sent before the 354: %q", group)
	}
	// The connection is reused for the next message, pipelined again.
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(testBody, "b1@x.test", "perm9@x.test"))
	if !out.Statuses[0].Delivered() || !out.Statuses[1].Permanent() {
		t.Errorf("second message: %+v", out.Statuses)
	}
	if be.mails.Load() != 2 {
		t.Errorf("%d MAIL commands, want 2", be.mails.Load())
	}
}

// A destination without PIPELINING gets one command per round trip: each
// read holds a single command.
func TestNoPipeliningWithoutExtension(t *testing.T) {
	be := newMix()
	o := &observed{strip: []string{"PIPELINING"}}
	addr := startObserved(t, be, o, nil)
	c := newClient(t, nil)
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(testBody, mixRcpts...))
	checkMix(t, out, be, testBody)
	if g := o.readWith("MAIL FROM"); strings.Contains(g, "RCPT") {
		t.Errorf("pipelined to a destination without PIPELINING: %q", g)
	}
	if g := o.readWith("BDAT"); g != "" {
		t.Errorf("BDAT without PIPELINING: %q", g)
	}
}

// With CHUNKING too, MAIL, the RCPTs and "BDAT n LAST" with the body reach
// the destination in one read; a body over one chunk arrives whole.
func TestPipelinedBdat(t *testing.T) {
	for _, size := range []int{len(testBody), 200 << 10} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			be := newMix()
			o := &observed{}
			addr := startObserved(t, be, o, nil)
			c := newClient(t, nil)
			body := testBody
			if size > len(body) {
				body = string(bigBody(size))
			}
			out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(body, mixRcpts...))
			checkMix(t, out, be, body)
			if size == len(testBody) {
				group := o.readWith("MAIL FROM")
				want := fmt.Sprintf("BDAT %d LAST\r\n%s", len(testBody), testBody)
				if strings.Count(group, "RCPT TO:") != len(mixRcpts) || !strings.HasSuffix(group, want) {
					t.Errorf("MAIL, RCPTs and BDAT LAST not in one read: %q", group)
				}
			}
			if o.readWith("DATA\r\n") != "" {
				t.Error("DATA sent to a destination offering CHUNKING")
			}
		})
	}
}

// A streamed body (Message.Open) goes by BDAT too, and a refused
// transaction (every RCPT refused) leaves the connection usable.
func TestBdatStreamedAndAllRefused(t *testing.T) {
	be := newMix()
	addr := startObserved(t, be, &observed{}, nil)
	c := newClient(t, nil)
	body := bigBody(150 << 10)
	m := msg("", "perm1@x.test", "temp1@x.test")
	m.Open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	m.Size = int64(len(body))
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, m)
	if st := out.Statuses; !st[0].Permanent() || st[1].Code != 450 {
		t.Fatalf("statuses %+v", st)
	}
	m.Recipients = []string{"a1@x.test"}
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, m)
	if !out.Statuses[0].Delivered() {
		t.Fatalf("status %+v", out.Statuses[0])
	}
	if got, _ := be.bodies(); len(got) != 1 || got[0] != string(body) {
		t.Errorf("destination got %d bodies, want the streamed one", len(got))
	}
}

// After STARTTLS and AUTH the transaction is pipelined as well (MAIL, the
// RCPTs and BDAT LAST in one read inside TLS).
func TestPipelinedAfterStartTLSAndAuth(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			ca := testenv.NewCA(t)
			cert := ca.Issue(t, "relay.test")
			r := &relayServer{user: "u", pass: "p", requireAuth: true}
			o := &observed{}
			if !chunking {
				o.strip = []string{"CHUNKING"}
			}
			addr := startObserved(t, r, o, func(s *smtp.Server) {
				s.Domain = "relay.test"
				s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			})
			pol := tlsPolicy(t, map[string]string{"[relay.test]:587": "secure"}, map[string]string{"[relay.test]:587": "u:p"})
			c := newClient(t, func(cfg *delivery.Config) {
				cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
				cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
			})
			out := c.Deliver(testCtx(t), []delivery.Hop{relayHop(t, "relay.test", addr, 587)}, msg(testBody, "x@example.net", "y@example.net"))
			if !out.Statuses[0].Delivered() || !out.Statuses[1].Delivered() || !strings.HasPrefix(out.TLS, "tls=TLSv1.") {
				t.Fatalf("outcome %+v %s", out.Statuses, out.TLS)
			}
			if _, auths, _, _ := r.snapshot(); len(auths) != 1 {
				t.Fatalf("auths %q", auths)
			}
			group := o.readWith("MAIL FROM")
			tail := "DATA\r\n"
			if chunking {
				tail = "BDAT " + strconv.Itoa(len(testBody)) + " LAST\r\n" + testBody
			}
			if strings.Count(group, "RCPT TO:") != 2 || !strings.HasSuffix(group, tail) {
				t.Errorf("not pipelined inside TLS: %q", group)
			}
		})
	}
}

// scripted is a destination that advertises PIPELINING (and CHUNKING when
// asked), reads one pipelined group and answers with a fixed script, then
// closes or goes on reading. It records whether a body arrived after it.
type scripted struct {
	chunking bool
	answer   string // written after the group was read
	thenBody bool   // after answering, read what follows until the dot or EOF
	final    string // when set: after answering, read the body up to the dot and write this

	mu       sync.Mutex
	afterRaw string // what the client sent after the group
	conns    atomic.Int32
}

func (s *scripted) start(t *testing.T) string {
	t.Helper()
	return serveLoopback(t, func(c net.Conn) {
		s.conns.Add(1)
		s.serve(c)
	})
}

func (s *scripted) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "220 scripted.test ESMTP\r\n")
	if _, err := br.ReadString('\n'); err != nil {
		return
	}
	caps := "250-scripted.test\r\n250-PIPELINING\r\n"
	if s.chunking {
		caps += "250-CHUNKING\r\n"
	}
	io.WriteString(c, caps+"250 8BITMIME\r\n")
	// The group: up to DATA, or up to the BDAT LAST chunk.
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if line == "DATA\r\n" {
			break
		}
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "BDAT" {
			n, _ := strconv.Atoi(f[1])
			io.CopyN(io.Discard, br, int64(n))
			if len(f) == 3 {
				break
			}
		}
	}
	io.WriteString(c, s.answer)
	if s.final != "" {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == ".\r\n" {
				break
			}
		}
		io.WriteString(c, s.final)
		br.ReadString('\n') // QUIT or the next command
		return
	}
	if s.thenBody {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(br)
		s.mu.Lock()
		s.afterRaw = string(b)
		s.mu.Unlock()
	}
}

func (s *scripted) after() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.afterRaw
}

// A destination that advertises PIPELINING but misbehaves: no recipient is
// lost (reported delivered or bounced without its own reply) and none is
// delivered twice; an unknown outcome is a deferral (4xx), and the
// connection is not reused.
func TestPipeliningMisbehavingDestination(t *testing.T) {
	rcpts := []string{"r1@x.test", "r2@x.test", "r3@x.test", "r4@x.test"}
	cases := []struct {
		name string
		s    *scripted
		// want per recipient: "d" delivered, "p" permanent, "t" temporary
		want string
		// noBody: the body must not have been sent after the group
		noBody bool
	}{
		{"drops the connection mid-batch", &scripted{answer: "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n"}, "tptt", true},
		{"garbage reply", &scripted{answer: "250 ok\r\n250 ok\r\nhello there\r\n"}, "tttt", true},
		{"one reply too many", &scripted{answer: "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n", thenBody: true}, "tttt", true},
		{"a reply missing, then the connection closed", &scripted{answer: "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n", thenBody: true}, "tttt", true},
		{"2xx to DATA", &scripted{answer: "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n", thenBody: true}, "tttt", true},
		{"354 with every RCPT refused", &scripted{answer: "250 ok\r\n550 no\r\n550 no\r\n550 no\r\n550 no\r\n354 go\r\n", thenBody: true}, "tttt", true},
		{"3xx to RCPT", &scripted{answer: "250 ok\r\n354 go\r\n", thenBody: true}, "tttt", true},
		{"endless RCPT reply", &scripted{answer: "250 ok\r\n" + strings.Repeat("250-"+strings.Repeat("x", 990)+"\r\n", 100)}, "tttt", true},
		{"421 mid-batch", &scripted{answer: "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n421 4.3.2 bye\r\n"}, "tptt", true},
		{"BDAT: drops after LAST without a reply", &scripted{chunking: true, answer: "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n"}, "tttt", false},
		{"BDAT: one reply too many", &scripted{chunking: true, answer: "250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 extra\r\n"}, "tttt", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.s
			addr := s.start(t)
			c := newClient(t, nil)
			hop := hopFor(t, "mx.test", addr)
			out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, rcpts...))
			for i, st := range out.Statuses {
				var got byte
				switch {
				case st.Delivered():
					got = 'd'
				case st.Permanent():
					got = 'p'
				default:
					got = 't'
				}
				if got != tc.want[i] {
					t.Errorf("%s: %+v, want %c", rcpts[i], st, tc.want[i])
				}
			}
			if tc.noBody && strings.Contains(s.after(), "Hello.") {
				t.Errorf("body sent after a broken group: %q", s.after())
			}
			// The connection was dropped: the next message opens a new one.
			c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r9@x.test"))
			if n := s.conns.Load(); n != 2 {
				t.Errorf("%d connections, want 2 (the broken one not reused)", n)
			}
		})
	}
}

// A 20000-character line (the ingress takes them) arrives at the
// destination broken into lines of at most 998 octets plus CRLF, by DATA
// and by BDAT; removing the inserted CRLF SP gives the body back. A
// destination with go-smtp's default 2000-octet line limit refuses the
// unfolded line.
func TestLongLineFolded(t *testing.T) {
	long := strings.Repeat("0123456789", 2000)
	body := "From: a@example.com\r\nSubject: long\r\n\r\n" + long + "\r\nshort line\r\n"
	for _, strip := range []string{"CHUNKING", ""} {
		t.Run("strip="+strip, func(t *testing.T) {
			be := newMix()
			addr := startObserved(t, be, &observed{strip: []string{strip}}, nil)
			c := newClient(t, nil)
			out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(body, "a1@x.test"))
			if !out.Statuses[0].Delivered() {
				t.Fatalf("status %+v", out.Statuses[0])
			}
			got, _ := be.bodies()
			for i, l := range strings.SplitAfter(got[0], "\n") {
				if len(l) > 1000 {
					t.Errorf("line %d has %d octets with CRLF", i, len(l))
				}
			}
			if strings.ReplaceAll(got[0], "\r\n ", "") != body {
				t.Errorf("content changed beyond the folding")
			}
		})
	}
	// LineLengthLimit < 0 sends lines as they are. (go-smtp's server counts
	// the chunk bytes it read ahead with the BDAT line against its line
	// limit, hence the larger one.)
	be := newMix()
	addr := startObserved(t, be, &observed{}, func(s *smtp.Server) { s.MaxLineLength = 1 << 20 })
	c := newClient(t, func(cfg *delivery.Config) { cfg.LineLengthLimit = -1 })
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(body, "a1@x.test"))
	if got, _ := be.bodies(); !out.Statuses[0].Delivered() || got[0] != body {
		t.Errorf("unfolded: %+v", out.Statuses[0])
	}
}

// The replies to a pipelined group share the reply budget of one write:
// fifty long RCPT replies (12 KiB together) must not trip a 4 KiB
// MaxReplyBytes, which bounds one reply.
func TestPipelinedRepliesBudgetPerReply(t *testing.T) {
	var rcpts []string
	answer := "250 ok\r\n"
	for i := range 50 {
		rcpts = append(rcpts, fmt.Sprintf("r%d@x.test", i))
		answer += "250 2.1.5 " + strings.Repeat("x", 240) + "\r\n"
	}
	s := &scripted{answer: answer + "354 go\r\n", final: "250 2.0.0 queued\r\n"}
	addr := s.start(t)
	c := newClient(t, func(cfg *delivery.Config) { cfg.MaxReplyBytes = 4096 })
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(testBody, rcpts...))
	for i, st := range out.Statuses {
		if !st.Delivered() {
			t.Fatalf("%s: %+v", rcpts[i], st)
		}
	}
}

// A message with more recipients than one pipelined group may hold goes one
// command per round trip (the replies of a group are read only after it is
// written, and must fit in the socket buffers).
func TestLargeRecipientListNotPipelined(t *testing.T) {
	be := newMix()
	o := &observed{}
	addr := startObserved(t, be, o, func(s *smtp.Server) { s.MaxRecipients = 0 })
	c := newClient(t, nil)
	var rcpts []string
	for i := range 501 {
		rcpts = append(rcpts, fmt.Sprintf("a%d@x.test", i))
	}
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, msg(testBody, rcpts...))
	for i, st := range out.Statuses {
		if !st.Delivered() {
			t.Fatalf("%s: %+v", rcpts[i], st)
		}
	}
	if g := o.readWith("MAIL FROM"); strings.Contains(g, "RCPT") {
		t.Errorf("a group of 501 RCPTs was pipelined")
	}
}
