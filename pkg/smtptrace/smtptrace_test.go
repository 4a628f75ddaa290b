package smtptrace_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func TestSettingsPropagateAndStopEndsThem(t *testing.T) {
	e := newEnv(t)
	w, _ := e.watcher(t, "ingress", smtptrace.DefaultLimits())
	_, raw := tcpPair(t)
	if got := w.Wrap(raw, smtptrace.Ingress, "10.1.2.3:4321", ""); got != raw {
		t.Fatal("traced before any trace was started")
	}
	s := e.start(t, smtptrace.Setting{ID: "t1", Client: "10.1.2.0/24"}, time.Minute)
	eventually(t, "the watcher sees trace t1", func() bool { return hasTrace(w, "t1") })

	traced := w.Wrap(raw, smtptrace.Ingress, "10.1.2.3:4321", "")
	if traced == raw {
		t.Fatal("a client inside 10.1.2.0/24 is not traced")
	}
	if got := w.Wrap(raw, smtptrace.Ingress, "10.1.3.3:4321", ""); got != raw {
		t.Error("a client outside 10.1.2.0/24 is traced")
	}
	if got := w.Wrap(raw, smtptrace.Delivery, "10.1.2.3:25", "mx.example.com"); got != raw {
		t.Error("a --client trace matched a delivery")
	}
	if got := w.Stats().TracedSessions; got != 1 {
		t.Errorf("traced sessions %d, want 1", got)
	}
	_ = traced.Close()
	if got := w.Stats().TracedSessions; got != 0 {
		t.Errorf("traced sessions after close %d, want 0", got)
	}

	ls, err := e.store.List(context.Background())
	if err != nil || len(ls) != 1 || ls[0].ID != "t1" || !ls[0].Until.Equal(s.Until) {
		t.Fatalf("list: %+v, %v", ls, err)
	}
	if err := e.store.Start(context.Background(), s, 16); !errors.Is(err, smtptrace.ErrExists) {
		t.Errorf("second start of t1: %v, want ErrExists", err)
	}
	ok, err := e.store.Stop(context.Background(), "t1")
	if err != nil || !ok {
		t.Fatalf("stop: %v %v", ok, err)
	}
	eventually(t, "the watcher drops trace t1 after stop", func() bool { return !hasTrace(w, "t1") })
	_, raw2 := tcpPair(t)
	if got := w.Wrap(raw2, smtptrace.Ingress, "10.1.2.3:4321", ""); got != raw2 {
		t.Error("still traced after stop")
	}
	if ok, err := e.store.Stop(context.Background(), "t1"); ok || err != nil {
		t.Errorf("stopping a stopped trace: %v %v", ok, err)
	}
}

func TestStartRefusesBeyondMaxTraces(t *testing.T) {
	e := newEnv(t)
	for i := range 2 {
		e.start(t, smtptrace.Setting{ID: fmt.Sprint("m", i), Client: "10.0.0.1"}, time.Minute)
	}
	now := time.Now()
	err := e.store.Start(context.Background(), smtptrace.Setting{ID: "m2", Client: "10.0.0.1", Created: now, Until: now.Add(time.Minute)}, 2)
	if !errors.Is(err, smtptrace.ErrTooMany) {
		t.Fatalf("third trace with max 2: %v", err)
	}
	// The daemons honour at most --trace-max-traces whatever the bucket holds.
	l := smtptrace.DefaultLimits()
	l.MaxTraces = 1
	w, _ := e.watcher(t, "ingress", l)
	eventually(t, "the watcher has its snapshot", func() bool { return len(w.Settings()) > 0 })
	if got := w.Settings(); len(got) != 1 || got[0].ID != "m0" {
		t.Errorf("honoured %+v, want only the oldest, m0", got)
	}
}

func TestExpiryEndsTracingWithoutAction(t *testing.T) {
	e := newEnv(t)
	w, lb := e.watcher(t, "ingress", smtptrace.DefaultLimits())
	e.start(t, smtptrace.Setting{ID: "short", Client: "127.0.0.1"}, 2*time.Second)
	eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "short") })
	peer, raw := tcpPair(t)
	c := w.Wrap(raw, smtptrace.Ingress, "127.0.0.1:5000", "")
	if c == raw {
		t.Fatal("not traced")
	}
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	if _, err := io.WriteString(c, "220 before expiry\r\n"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the trace expires in the watcher", func() bool { return !hasTrace(w, "short") })
	if _, err := io.WriteString(c, "250 after expiry\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	d := lb.dialog(t)
	if !slices.Contains(d, "server: 220 before expiry") || slices.Contains(d, "server: 250 after expiry") {
		t.Errorf("dialog %q: want the line before expiry and not the one after", d)
	}
	if !strings.Contains(lb.String(), "trace ended") {
		t.Error("no 'trace ended' record")
	}
	// The server forgets the setting too (per-key TTL): nothing to clean up.
	eventually(t, "the bucket drops the expired key", func() bool {
		_, err := e.b.Get(context.Background(), "short")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	_, raw2 := tcpPair(t)
	if w.Wrap(raw2, smtptrace.Ingress, "127.0.0.1:5000", "") != raw2 {
		t.Error("traced after expiry")
	}
}

const bodyMarker = "BODY-MARKER-7f3a"

// converse runs two transactions through go-smtp's client over conn: one
// after AUTH PLAIN (initial response), one after AUTH LOGIN (334
// continuations) on a second connection made by dial.
func converse(t *testing.T, dial func() net.Conn) {
	t.Helper()
	for _, auth := range []sasl.Client{sasl.NewPlainClient("", "alice", secretPass), sasl.NewLoginClient("alice", secretPass)} {
		c := smtp.NewClient(dial())
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Auth(auth); err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail("a@x.test", []string{"b@y.test"}, strings.NewReader("Subject: hi\r\n\r\n"+bodyMarker+"\r\nline two\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
	}
}

func sessionEnds(lb *logBuf) int { return strings.Count(lb.String(), "smtp trace: session end") }

func secrets() []string {
	return []string{secretPass,
		base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + secretPass)),
		base64.StdEncoding.EncodeToString([]byte(secretPass)),
		base64.StdEncoding.EncodeToString([]byte("alice"))}
}

func tracedBothSides(t *testing.T, withBodies bool) (in, out *logBuf, be *backend) {
	e := newEnv(t)
	wIn, in := e.watcher(t, "ingress", smtptrace.DefaultLimits())
	wOut, out := e.watcher(t, "worker", smtptrace.DefaultLimits())
	e.start(t, smtptrace.Setting{ID: "in", Client: "127.0.0.1", WithBodies: withBodies}, time.Minute)
	e.start(t, smtptrace.Setting{ID: "out", Destination: "MX.Test.", WithBodies: withBodies}, time.Minute)
	eventually(t, "both watchers see their trace", func() bool { return hasTrace(wIn, "in") && hasTrace(wOut, "out") })
	addr, be := startSMTP(t, wIn, false)
	converse(t, func() net.Conn {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := wOut.Wrap(raw, smtptrace.Delivery, raw.RemoteAddr().String(), "mx.test")
		if c == raw {
			t.Fatal("delivery to mx.test not traced")
		}
		return c
	})
	eventually(t, "both sides log the end of both sessions", func() bool { return sessionEnds(in) == 2 && sessionEnds(out) == 2 })
	return in, out, be
}

func TestDialogRecordedBothDirectionsCredentialsAndBodyRedacted(t *testing.T) {
	in, out, be := tracedBothSides(t, false)
	if len(be.bodies) != 2 || !strings.Contains(string(be.bodies[0]), bodyMarker) {
		t.Fatalf("the server did not get the bodies: %q", be.bodies)
	}
	for name, lb := range map[string]*logBuf{"ingress": in, "worker": out} {
		d := lb.dialog(t)
		for _, want := range []string{"client: EHLO client.test", "client: AUTH PLAIN [redacted]", "server: 235 2.0.0 Authentication succeeded",
			"client: AUTH LOGIN [redacted]", "server: 334 [redacted: SASL challenge]", "client: [redacted: SASL response]",
			"client: RCPT TO:<b@y.test>", "client: DATA", "client: .", "client: QUIT"} {
			if !slices.Contains(d, want) {
				t.Errorf("%s: no %q in the dialog:\n%s", name, want, strings.Join(d, "\n"))
			}
		}
		if !slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "client: MAIL FROM:<a@x.test>") }) ||
			!slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "server: 354 ") }) ||
			!slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "server: 220 mx.test") }) {
			t.Errorf("%s: MAIL, 354 or the greeting missing:\n%s", name, strings.Join(d, "\n"))
		}
		if !slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "client: [redacted: message body, ") }) {
			t.Errorf("%s: no body redaction note:\n%s", name, strings.Join(d, "\n"))
		}
		all := lb.String()
		for _, s := range append(secrets(), bodyMarker, "line two") {
			if strings.Contains(all, s) {
				t.Errorf("%s: %q appears in the trace", name, s)
			}
		}
		for _, r := range lb.records(t) {
			if r["time"] == nil || r["session"] == nil || r["component"] != name {
				t.Errorf("%s: record without time, session or component: %v", name, r)
			}
		}
	}
}

func TestWithBodiesRecordsBodiesButNeverCredentials(t *testing.T) {
	in, out, _ := tracedBothSides(t, true)
	for name, lb := range map[string]*logBuf{"ingress": in, "worker": out} {
		d := lb.dialog(t)
		if !slices.Contains(d, "client: "+bodyMarker) || !slices.Contains(d, "client: line two") {
			t.Errorf("%s: body not recorded with bodies on:\n%s", name, strings.Join(d, "\n"))
		}
		for _, s := range secrets() {
			if strings.Contains(lb.String(), s) {
				t.Errorf("%s: %q appears in the trace", name, s)
			}
		}
	}
}

func certPool(t *testing.T, cfg *tls.Config) *x509.CertPool {
	p := x509.NewCertPool()
	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	p.AddCert(leaf)
	return p
}

func TestSTARTTLSNotedAndCiphertextNotRecorded(t *testing.T) {
	e := newEnv(t)
	wIn, in := e.watcher(t, "ingress", smtptrace.DefaultLimits())
	wOut, out := e.watcher(t, "worker", smtptrace.DefaultLimits())
	e.start(t, smtptrace.Setting{ID: "in", Client: "127.0.0.1"}, time.Minute)
	e.start(t, smtptrace.Setting{ID: "out", Destination: "127.0.0.1"}, time.Minute)
	eventually(t, "both watchers see their trace", func() bool { return hasTrace(wIn, "in") && hasTrace(wOut, "out") })

	be := &backend{}
	srvTLS := testenv.TLSConfig(t)
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	srv.TLSConfig = wIn.TLSConfig(srvTLS)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(tracingListener{Listener: ln, w: wIn}) }()
	t.Cleanup(func() { _ = srv.Close() })

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := wOut.Wrap(raw, smtptrace.Delivery, raw.RemoteAddr().String(), "localhost")
	c, err := smtp.NewClientStartTLS(conn, &tls.Config{ServerName: "localhost", RootCAs: certPool(t, srvTLS)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@x.test", nil); err != nil {
		t.Fatal(err)
	}
	st, ok := c.TLSConnectionState()
	if !ok {
		t.Fatal("no TLS state")
	}
	smtptrace.NoteTLS(conn, st) // the delivery client's hook after the first command over TLS
	smtptrace.NoteTLS(conn, st) // per message on a reused connection: noted once
	if err := c.Rcpt("b@y.test", nil); err != nil {
		t.Fatal(err)
	}
	wc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(wc, "Subject: x\r\n\r\nsecret body\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both sessions end", func() bool { return sessionEnds(in) == 1 && sessionEnds(out) == 1 })
	for name, lb := range map[string]*logBuf{"ingress": in, "worker": out} {
		d := lb.dialog(t)
		if len(d) == 0 || d[len(d)-1] != "server: 220 2.0.0 Ready to start TLS" {
			t.Errorf("%s: the dialog should end at the 220 to STARTTLS (the rest is ciphertext):\n%s", name, strings.Join(d, "\n"))
		}
		var tlsRec map[string]any
		n := 0
		for _, r := range lb.records(t) {
			if r["msg"] == "smtp trace: TLS established" {
				tlsRec = r
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: TLS noted %d times, want 1", name, n)
		}
		if strings.Contains(lb.String(), "secret body") {
			t.Errorf("%s: the body leaked", name)
		}
		if tlsRec == nil || tlsRec["tls_version"] != "TLS 1.3" || tlsRec["cipher"] == "" {
			t.Errorf("%s: TLS state not noted: %v", name, tlsRec)
		}
		if !strings.Contains(lb.String(), "STARTTLS accepted") {
			t.Errorf("%s: the upgrade is not noted", name)
		}
	}
}

// A caller that runs TLS itself re-wraps the tls.Conn with Continue and
// the decrypted dialog goes on in the same session.
func TestContinueRecordsTheDialogInsideTLS(t *testing.T) {
	e := newEnv(t)
	wOut, out := e.watcher(t, "worker", smtptrace.DefaultLimits())
	e.start(t, smtptrace.Setting{ID: "out", Destination: "localhost"}, time.Minute)
	eventually(t, "the watcher sees the trace", func() bool { return hasTrace(wOut, "out") })
	srvTLS := testenv.TLSConfig(t)
	srv := smtp.NewServer(&backend{})
	srv.Domain = "localhost"
	srv.TLSConfig = srvTLS
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := wOut.Wrap(raw, smtptrace.Delivery, raw.RemoteAddr().String(), "localhost")
	tp := textproto.NewConn(conn)
	cmd := func(tp *textproto.Conn, line string, code int) {
		t.Helper()
		if line != "" {
			if err := tp.PrintfLine("%s", line); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := tp.ReadResponse(code); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
	}
	cmd(tp, "", 220)
	cmd(tp, "EHLO client.test", 250)
	cmd(tp, "STARTTLS", 220)
	tc := tls.Client(conn, &tls.Config{ServerName: "localhost", RootCAs: certPool(t, srvTLS)})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	pc := smtptrace.Continue(tc, conn)
	tp2 := textproto.NewConn(pc)
	cmd(tp2, "EHLO again.test", 250)
	cmd(tp2, "QUIT", 221)
	_ = pc.Close()
	d := out.dialog(t)
	for _, want := range []string{"client: EHLO client.test", "client: STARTTLS", "client: EHLO again.test", "client: QUIT"} {
		if !slices.Contains(d, want) {
			t.Errorf("no %q:\n%s", want, strings.Join(d, "\n"))
		}
	}
	if !slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "server: 221 ") }) {
		t.Errorf("no 221 from inside TLS:\n%s", strings.Join(d, "\n"))
	}
	for _, want := range []string{"dialog continues inside TLS", "TLS established"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q record", want)
		}
	}
	if sessionEnds(out) != 1 {
		t.Errorf("session ends %d, want 1 (one session across the upgrade)", sessionEnds(out))
	}
}

// flood sends n NOOPs (after one huge line when huge), reading the
// replies meanwhile.
func flood(t *testing.T, addr string, n int, huge bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(io.Discard, c) }()
	bw := bufio.NewWriter(c)
	fmt.Fprint(bw, "EHLO flood.test\r\n")
	if huge {
		fmt.Fprintf(bw, "NOOP %s\r\n", strings.Repeat("A", 50000))
	}
	for range n {
		fmt.Fprint(bw, "NOOP\r\n")
	}
	fmt.Fprint(bw, "QUIT\r\n")
	if err := bw.Flush(); err != nil {
		// The server may hang up on a flood (go-smtp does after a line
		// over its limit); what was sent is what the assertions look at.
		t.Logf("flood: %v", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	<-done
}

func TestFloodStaysWithinLineAndSessionBounds(t *testing.T) {
	e := newEnv(t)
	l := smtptrace.DefaultLimits()
	l.MaxLineBytes, l.MaxLinesPerSession, l.MaxBytesPerSecond = 200, 100, 64<<20
	w, lb := e.watcher(t, "ingress", l)
	e.start(t, smtptrace.Setting{ID: "flood", Client: "127.0.0.1"}, time.Minute)
	eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "flood") })
	addr, _ := startSMTP(t, w, false)
	flood(t, addr, 0, true)
	flood(t, addr, 5000, false)
	eventually(t, "the sessions end", func() bool { return sessionEnds(lb) == 2 })
	perSession := map[string]int{}
	cut, counted := false, false
	for _, r := range lb.records(t) {
		if r["msg"] == "smtp trace" {
			perSession[r["session"].(string)]++
		}
		line, _ := r["line"].(string)
		if len(line) > l.MaxLineBytes+len(" …[cut: 1000000 more bytes]") {
			t.Errorf("a record of %d bytes", len(line))
		}
		if strings.Contains(line, "…[cut: ") {
			cut = true
		}
		if r["msg"] == "smtp trace: session end" && r["lines_not_recorded"].(float64) >= 4000 {
			counted = true
		}
	}
	if !counted {
		t.Error("no session end counts the flood's lines as not recorded")
	}
	if !cut {
		t.Error("the 50000-byte line was not recorded cut at --trace-max-line-bytes")
	}
	if len(perSession) != 2 || slices.Max(slices.Collect(maps.Values(perSession))) != l.MaxLinesPerSession {
		t.Errorf("dialog records per session %v, want the flood's at exactly --trace-max-lines-per-session %d", perSession, l.MaxLinesPerSession)
	}
	if !strings.Contains(lb.String(), "--trace-max-lines-per-session reached") {
		t.Error("no note that the line limit was reached")
	}
}

func TestFloodStaysWithinByteRateAndSessionCount(t *testing.T) {
	e := newEnv(t)
	l := smtptrace.DefaultLimits()
	l.MaxLineBytes, l.MaxLinesPerSession, l.MaxBytesPerSecond, l.MaxTracedSessions = 200, 1<<20, 2048, 3
	began := time.Now()
	w, lb := e.watcher(t, "ingress", l)
	e.start(t, smtptrace.Setting{ID: "rate", Client: "127.0.0.1"}, time.Minute)
	eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "rate") })
	addr, _ := startSMTP(t, w, false)

	// Sessions open at once beyond --trace-max-traced-sessions go untraced.
	var open []*smtp.Client
	for range 6 {
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("many.test"); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if st := w.Stats(); st.TracedSessions != 3 || st.SkippedSessions != 3 {
		t.Errorf("stats %+v: want 3 traced, 3 skipped", st)
	}
	for _, c := range open {
		_ = c.Quit()
	}
	eventually(t, "the open sessions end", func() bool { return w.Stats().TracedSessions == 0 })

	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); flood(t, addr, 5000, false) }()
	}
	wg.Wait()
	eventually(t, "the flood sessions end", func() bool { return w.Stats().TracedSessions == 0 })
	elapsed := time.Since(began)
	// What the limiter let through, at its own cost measure, is at most
	// one burst plus the rate over the elapsed time.
	spent := 0
	for _, r := range lb.records(t) {
		if r["msg"] != "smtp trace" {
			continue
		}
		spent += 64 + len("smtp trace")
		for _, k := range []string{"component", "trace", "session", "side", "from", "line"} {
			spent += len(r[k].(string))
		}
	}
	limit := l.MaxBytesPerSecond + int(float64(l.MaxBytesPerSecond)*elapsed.Seconds())
	if spent > limit {
		t.Errorf("recorded %d bytes in %s, more than --trace-max-bytes-per-second %d allows (%d)", spent, elapsed, l.MaxBytesPerSecond, limit)
	}
	if w.Stats().DroppedRecords == 0 {
		t.Error("a flood of 15000 lines at 2 KiB/s dropped nothing")
	}
	t.Logf("recorded %d bytes of dialog in %s; dropped %d records", spent, elapsed, w.Stats().DroppedRecords)
}

func TestDestinationMatching(t *testing.T) {
	e := newEnv(t)
	w, _ := e.watcher(t, "worker", smtptrace.DefaultLimits())
	e.start(t, smtptrace.Setting{ID: "sfx", Destination: ".example.com"}, time.Minute)
	e.start(t, smtptrace.Setting{ID: "ip", Destination: "[192.0.2.25]"}, time.Minute)
	eventually(t, "the watcher sees both traces", func() bool { return hasTrace(w, "sfx") && hasTrace(w, "ip") })
	_, raw := tcpPair(t)
	for _, c := range []struct {
		addr, name string
		traced     bool
	}{
		{"198.51.100.1:25", "mx1.example.com", true},
		{"198.51.100.1:25", "MX1.EXAMPLE.COM.", true},
		{"198.51.100.1:25", "example.com", false}, // .suffix: hosts under it, as in mailertable
		{"198.51.100.1:25", "mx.example.net", false},
		{"192.0.2.25:25", "anything.test", true},
		{"[::ffff:192.0.2.25]:25", "", true},
		{"192.0.2.26:25", "", false},
	} {
		got := w.Wrap(raw, smtptrace.Delivery, c.addr, c.name)
		if (got != raw) != c.traced {
			t.Errorf("%s %s: traced %v, want %v", c.addr, c.name, got != raw, c.traced)
		}
		if got != raw {
			_ = got.Close()
		}
	}
	if got := w.Wrap(raw, smtptrace.Ingress, "192.0.2.25:4000", ""); got != raw {
		t.Error("a --destination trace matched an ingress session")
	}
}

// BDAT chunks (CHUNKING) are bodies too: counted by size, not parsed as lines.
func TestBDATBodyRedacted(t *testing.T) {
	for _, withBodies := range []bool{false, true} {
		t.Run(fmt.Sprint("with-bodies=", withBodies), func(t *testing.T) {
			e := newEnv(t)
			w, lb := e.watcher(t, "ingress", smtptrace.DefaultLimits())
			e.start(t, smtptrace.Setting{ID: "bdat", Client: "127.0.0.1", WithBodies: withBodies}, time.Minute)
			eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "bdat") })
			addr, be := startSMTP(t, w, false)
			tp, err := textproto.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer tp.Close()
			step := func(line string, code int) {
				t.Helper()
				if line != "" {
					if err := tp.PrintfLine("%s", line); err != nil {
						t.Fatal(err)
					}
				}
				if _, _, err := tp.ReadResponse(code); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
			}
			step("", 220)
			step("EHLO bdat.test", 250)
			step("MAIL FROM:<a@x.test>", 250)
			step("RCPT TO:<b@y.test>", 250)
			chunk := "Subject: c\r\n\r\n" + bodyMarker + "\r\nQUIT\r\n" // a command inside a chunk is body
			if _, err := fmt.Fprintf(tp.W, "BDAT %d LAST\r\n%s", len(chunk), chunk); err != nil {
				t.Fatal(err)
			}
			if err := tp.W.Flush(); err != nil {
				t.Fatal(err)
			}
			step("", 250)
			step("QUIT", 221)
			eventually(t, "the session ends", func() bool { return sessionEnds(lb) == 1 })
			if len(be.bodies) != 1 || !strings.Contains(string(be.bodies[0]), bodyMarker) {
				t.Fatalf("server got %q", be.bodies)
			}
			d := lb.dialog(t)
			if got := slices.Contains(d, "client: "+bodyMarker); got != withBodies {
				t.Errorf("body line recorded %v, want %v:\n%s", got, withBodies, strings.Join(d, "\n"))
			}
			if n := strings.Count(strings.Join(d, "\n"), "client: QUIT"); n != 1 && !withBodies || n != 2 && withBodies {
				t.Errorf("QUIT lines %d: the chunk's QUIT must be body, the real one a command:\n%s", n, strings.Join(d, "\n"))
			}
			if !withBodies && !slices.Contains(d, fmt.Sprintf("client: [redacted: message body, %d bytes; mailfwdctl trace --with-bodies records it]", len(chunk))) {
				t.Errorf("no body summary of %d bytes:\n%s", len(chunk), strings.Join(d, "\n"))
			}
		})
	}
}

// The server ends DATA only at CRLF "." CRLF; a "." line ended by a bare LF
// is body. The recorder follows the same rule, so what comes after such a
// line is still redacted (issue 19 item 6), and the real end is found.
func TestDotBareLFIsBodyNotEndOfData(t *testing.T) {
	for _, withBodies := range []bool{false, true} {
		t.Run(fmt.Sprint("with-bodies=", withBodies), func(t *testing.T) {
			e := newEnv(t)
			w, lb := e.watcher(t, "ingress", smtptrace.DefaultLimits())
			e.start(t, smtptrace.Setting{ID: "dot", Client: "127.0.0.1", WithBodies: withBodies}, time.Minute)
			eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "dot") })
			addr, be := startSMTP(t, w, false)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tp := textproto.NewConn(c)
			step := func(line string, code int) {
				t.Helper()
				if line != "" {
					if err := tp.PrintfLine("%s", line); err != nil {
						t.Fatal(err)
					}
				}
				if _, _, err := tp.ReadResponse(code); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
			}
			step("", 220)
			step("EHLO dot.test", 250)
			step("MAIL FROM:<a@x.test>", 250)
			step("RCPT TO:<b@y.test>", 250)
			step("DATA", 354)
			body := "Subject: pay\r\n\r\nhello\r\n.\nSALARY: 123456\r\nNOOP\r\n"
			if _, err := io.WriteString(c, body+".\r\n"); err != nil { // raw: no dot-stuffing by a writer
				t.Fatal(err)
			}
			step("", 250)
			step("QUIT", 221)
			eventually(t, "the session ends", func() bool { return sessionEnds(lb) == 1 })
			if len(be.bodies) != 1 || !strings.Contains(string(be.bodies[0]), "SALARY: 123456") {
				t.Fatalf("the server did not take the line as body: %q", be.bodies)
			}
			d := lb.dialog(t)
			if got := strings.Contains(lb.String(), "SALARY"); got != withBodies {
				t.Errorf("body line after \".\\n\" recorded %v, want %v:\n%s", got, withBodies, strings.Join(d, "\n"))
			}
			if n := slices.Index(d, "client: ."); n < 0 || !slices.Contains(d[n:], "client: QUIT") {
				t.Errorf("the end of DATA or the QUIT after it is missing:\n%s", strings.Join(d, "\n"))
			}
			if n := strings.Count(strings.Join(d, "\n"), "client: NOOP"); n != 0 && !withBodies || n != 1 && withBodies {
				t.Errorf("NOOP inside the body recorded %d times:\n%s", n, strings.Join(d, "\n"))
			}
			if !withBodies && !slices.Contains(d, fmt.Sprintf("client: [redacted: message body, %d bytes; mailfwdctl trace --with-bodies records it]", len(body))) {
				t.Errorf("no body summary of %d bytes:\n%s", len(body), strings.Join(d, "\n"))
			}
		})
	}
}
