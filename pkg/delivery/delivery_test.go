package delivery_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

type wantStatus struct {
	code      int
	enhanced  string
	delivered bool
	permanent bool
}

func checkStatuses(t *testing.T, out *delivery.Outcome, rcpts []string, want []wantStatus) {
	t.Helper()
	if len(out.Statuses) != len(rcpts) {
		t.Fatalf("got %d statuses, want %d", len(out.Statuses), len(rcpts))
	}
	for i, st := range out.Statuses {
		w := want[i]
		if st.Rcpt != rcpts[i] || st.Code != w.code || st.Enhanced != w.enhanced ||
			st.Delivered() != w.delivered || st.Permanent() != w.permanent {
			t.Errorf("status %d = %+v (delivered %v permanent %v), want rcpt %q %+v",
				i, st, st.Delivered(), st.Permanent(), rcpts[i], w)
		}
		if st.Text == "" && st.Code/100 != 2 {
			t.Errorf("status %d has no text", i)
		}
	}
}

func TestPerRecipientMix(t *testing.T) {
	s, addr := startSink(t, sink.Config{
		OnRcpt: func(rcpt string, _ int) *smtp.SMTPError {
			switch {
			case strings.HasPrefix(rcpt, "busy"):
				return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}
			case strings.HasPrefix(rcpt, "gone"):
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
	})
	c := newClient(t, nil)
	hop := hopFor(t, "mx1.example.org", addr)
	rcpts := []string{"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs", "busy@example.org", "gone@example.org"}
	out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, rcpts...))

	checkStatuses(t, out, rcpts, []wantStatus{
		{250, "2.0.0", true, false},
		{450, "4.2.1", false, false},
		{550, "5.1.1", false, true},
	})
	if out.Hop != hop {
		t.Errorf("Outcome.Hop = %+v, want %+v", out.Hop, hop)
	}
	if out.Statuses[2].Text != "no such user" {
		t.Errorf("550 text = %q", out.Statuses[2].Text)
	}
	if out.Reply == "" {
		t.Errorf("Outcome.Reply is empty after a 250")
	}
	msgs := s.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].Recipients, rcpts[:1]) {
		t.Fatalf("sink got %+v, want one message to %q", msgs, rcpts[0])
	}
	if msgs[0].From != "a@example.com" {
		t.Errorf("From = %q", msgs[0].From)
	}
}

func TestNoRecipientAcceptedResetsAndReuses(t *testing.T) {
	s, addr := startSink(t, sink.Config{
		OnRcpt: func(rcpt string, _ int) *smtp.SMTPError {
			if rcpt == "gone@example.org" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
	})
	c := newClient(t, nil)
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	out := c.Deliver(testCtx(t), hops, msg(testBody, "gone@example.org"))
	checkStatuses(t, out, []string{"gone@example.org"}, []wantStatus{{550, "5.1.1", false, true}})

	out = c.Deliver(testCtx(t), hops, msg(testBody, "ok@example.org"))
	checkStatuses(t, out, []string{"ok@example.org"}, []wantStatus{{250, "2.0.0", true, false}})
	if s.Connections() != 1 || s.Count() != 1 {
		t.Errorf("Connections %d Count %d, want 1 and 1 (RSET then reuse)", s.Connections(), s.Count())
	}
}

func TestMailFromTemporary(t *testing.T) {
	be := &fakeBackend{mail: func(string, *smtp.MailOptions) error {
		return errSMTP(451, smtp.EnhancedCode{4, 7, 1}, "greylisted")
	}}
	addr := startFake(t, be, nil)
	c := newClient(t, nil)
	rcpts := []string{"a@example.org", "b@example.org"}
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr)}, msg(testBody, rcpts...))
	checkStatuses(t, out, rcpts, []wantStatus{{451, "4.7.1", false, false}, {451, "4.7.1", false, false}})
	if out.Statuses[0].Text != "greylisted" {
		t.Errorf("text = %q", out.Statuses[0].Text)
	}
	if be.datas.Load() != 0 {
		t.Errorf("DATA was sent after MAIL FROM failed")
	}
}

func TestDataPermanent(t *testing.T) {
	s, addr := startSink(t, sink.Config{
		OnData: func(string, []string, int) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"}
		},
	})
	c := newClient(t, nil)
	rcpts := []string{"a@example.org", "b@example.org"}
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr)}, msg(testBody, rcpts...))
	checkStatuses(t, out, rcpts, []wantStatus{{554, "5.6.0", false, true}, {554, "5.6.0", false, true}})
	if out.Reply != "content rejected" {
		t.Errorf("Reply = %q", out.Reply)
	}
	if s.Count() != 0 {
		t.Errorf("sink stored %d messages", s.Count())
	}
}

func TestFallbackToSecondHop(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	d := &countingDialer{}
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.Dial = d.Dial
		cfg.HostDownTTL = time.Minute
	})
	dead := closedPort(t)
	hops := []delivery.Hop{hopFor(t, "mx1.example.org", dead), hopFor(t, "mx2.example.org", addr)}
	out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
	checkStatuses(t, out, []string{"r@example.org"}, []wantStatus{{250, "2.0.0", true, false}})
	if out.Hop != hops[1] {
		t.Errorf("Outcome.Hop = %+v, want second hop", out.Hop)
	}
	if s.Count() != 1 {
		t.Errorf("sink Count = %d", s.Count())
	}

	// HostDownTTL: the dead address is skipped without a new dial.
	out = c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() || out.Hop != hops[1] {
		t.Errorf("second delivery: %+v via %+v", out.Statuses[0], out.Hop)
	}
	out = c.Deliver(testCtx(t), hops[:1], msg(testBody, "r@example.org"))
	st := out.Statuses[0]
	if st.Code != 0 || st.Enhanced != "4.4.1" || st.Permanent() || st.Text != "Connection refused by mx1.example.org." {
		t.Errorf("dead hop status = %+v", st)
	}
	if (out.Hop != delivery.Hop{}) {
		t.Errorf("Outcome.Hop = %+v, want zero", out.Hop)
	}
	if n := d.count(dead); n != 1 {
		t.Errorf("dials to the dead address = %d, want 1 (host status cache)", n)
	}
}

func TestNoHostDownCacheWhenDisabled(t *testing.T) {
	d := &countingDialer{}
	c := newClient(t, func(cfg *delivery.Config) { cfg.Dial = d.Dial })
	dead := closedPort(t)
	hops := []delivery.Hop{hopFor(t, "mx1.example.org", dead)}
	for range 2 {
		out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
		if out.Statuses[0].Enhanced != "4.4.1" {
			t.Errorf("status = %+v", out.Statuses[0])
		}
	}
	if n := d.count(dead); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

func TestGreeting421NextHop(t *testing.T) {
	busy, accepted := startRaw(t, "421 4.3.2 busy, try later\r\n")
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, nil)
	hops := []delivery.Hop{hopFor(t, "mx1", busy), hopFor(t, "mx2", addr)}
	out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() || out.Hop != hops[1] {
		t.Fatalf("status %+v via %+v, want delivered via mx2", out.Statuses[0], out.Hop)
	}
	if accepted.Load() != 1 || s.Count() != 1 {
		t.Errorf("busy hop connections %d, sink count %d", accepted.Load(), s.Count())
	}

	// Only the busy hop: its greeting is the result.
	out = c.Deliver(testCtx(t), hops[:1], msg(testBody, "r@example.org"))
	checkStatuses(t, out, []string{"r@example.org"}, []wantStatus{{421, "4.3.2", false, false}})
}

func TestConnectionReuse(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, nil)
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	for i := range 5 {
		out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
		if !out.Statuses[0].Delivered() {
			t.Fatalf("message %d: %+v", i, out.Statuses[0])
		}
	}
	if s.Count() != 5 || s.Connections() != 1 {
		t.Errorf("Count %d Connections %d, want 5 and 1", s.Count(), s.Connections())
	}
}

func TestMaxMsgsPerConn(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, func(cfg *delivery.Config) { cfg.MaxMsgsPerConn = 2 })
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	for i := range 5 {
		out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
		if !out.Statuses[0].Delivered() {
			t.Fatalf("message %d: %+v", i, out.Statuses[0])
		}
	}
	if s.Count() != 5 || s.Connections() != 3 {
		t.Errorf("Count %d Connections %d, want 5 and 3", s.Count(), s.Connections())
	}
	// Retired connections were closed with QUIT; one stays pooled.
	waitFor(t, "retired connections to close", func() bool { return s.ActiveConnections() == 1 })
}

// A message's MaxMsgsPerConn (a per-domain limit) overrides the client's.
func TestMaxMsgsPerConnPerMessage(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, nil) // default 100 per connection
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	for i := range 6 {
		m := msg(testBody, "r@example.org")
		m.MaxMsgsPerConn = 3
		if out := c.Deliver(testCtx(t), hops, m); !out.Statuses[0].Delivered() {
			t.Fatalf("message %d: %+v", i, out.Statuses[0])
		}
	}
	if s.Count() != 6 || s.Connections() != 2 {
		t.Errorf("Count %d Connections %d, want 6 and 2", s.Count(), s.Connections())
	}
}

func TestMaxConnsPerHost(t *testing.T) {
	const limit = 3
	s, addr := startSink(t, sink.Config{
		DataDelay: func() time.Duration { return 100 * time.Millisecond },
	})
	c := newClient(t, func(cfg *delivery.Config) { cfg.MaxConnsPerHost = limit })
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	var wg sync.WaitGroup
	outs := make([]*delivery.Outcome, 10)
	for i := range outs {
		wg.Go(func() {
			outs[i] = c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
		})
	}
	wg.Wait()
	for i, out := range outs {
		if !out.Statuses[0].Delivered() {
			t.Errorf("delivery %d: %+v", i, out.Statuses[0])
		}
	}
	if s.Count() != 10 {
		t.Errorf("Count = %d, want 10", s.Count())
	}
	if p := s.PeakConnections(); p > limit || p < 1 {
		t.Errorf("peak concurrent connections = %d, want 1..%d", p, limit)
	}
	if n := s.Connections(); n > limit {
		t.Errorf("connections = %d, want at most %d", n, limit)
	}
}

func TestSlotWaitCanceled(t *testing.T) {
	release := make(chan struct{})
	inData := make(chan struct{}, 1)
	_, addr := startSink(t, sink.Config{
		DataDelay: func() time.Duration {
			inData <- struct{}{}
			<-release
			return 0
		},
	})
	defer close(release)
	c := newClient(t, func(cfg *delivery.Config) { cfg.MaxConnsPerHost = 1 })
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	first := make(chan *delivery.Outcome, 1)
	go func() { first <- c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org")) }()
	<-inData

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	out := c.Deliver(ctx, hops, msg(testBody, "s@example.org"))
	st := out.Statuses[0]
	if st.Code != 0 || st.Permanent() || st.Enhanced != "4.4.5" {
		t.Errorf("waiting for a slot: %+v", st)
	}
	release <- struct{}{}
	if out := <-first; !out.Statuses[0].Delivered() {
		t.Errorf("first delivery: %+v", out.Statuses[0])
	}
}

func TestStartTLS(t *testing.T) {
	s, addr := startSink(t, sink.Config{TLS: testenv.TLSConfig(t)})
	c := newClient(t, func(cfg *delivery.Config) { cfg.StartTLS = true })
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "localhost", addr)}, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() {
		t.Fatalf("status %+v", out.Statuses[0])
	}
	if m := s.Messages(); len(m) != 1 || !m[0].TLS || string(m[0].Data) != testBody {
		t.Fatalf("sink got %+v, want one message over TLS", m)
	}

	// Verified TLS works with the right roots and SNI from the hop name.
	cert := testenv.SelfSignedCert(t, "mx.example.org")
	s2, addr2 := startSink(t, sink.Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	c2 := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.TLSConfig = &tls.Config{RootCAs: pool}
	})
	out = c2.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.example.org.", addr2)}, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() || !s2.Messages()[0].TLS {
		t.Fatalf("verified TLS: %+v", out.Statuses[0])
	}
}

func TestStartTLSHandshakeFailureFallsBackToPlain(t *testing.T) {
	s, addr := startSink(t, sink.Config{TLS: testenv.TLSConfig(t)})
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()} // verification fails
		cfg.MaxMsgsPerConn = 1                                   // every message needs a new connection
	})
	hops := []delivery.Hop{hopFor(t, "localhost", addr)}
	out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() {
		t.Fatalf("status %+v", out.Statuses[0])
	}
	if m := s.Messages(); len(m) != 1 || m[0].TLS {
		t.Fatalf("want one plaintext message, got %+v", m)
	}
	if n := s.Connections(); n != 2 {
		t.Errorf("connections = %d, want 2 (TLS attempt, then plaintext)", n)
	}
	// The address is remembered as "no TLS": one plaintext connection only.
	out = c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() {
		t.Fatalf("second status %+v", out.Statuses[0])
	}
	if n := s.Connections(); n != 3 {
		t.Errorf("connections = %d, want 3", n)
	}
}

func TestSizeTooLarge(t *testing.T) {
	be := &fakeBackend{}
	addr := startFake(t, be, func(srv *smtp.Server) { srv.MaxMessageBytes = 100 })
	c := newClient(t, nil)
	body := testBody + strings.Repeat("x", 200) + "\r\n"
	rcpts := []string{"a@example.org", "b@example.org"}
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr)}, msg(body, rcpts...))
	checkStatuses(t, out, rcpts, []wantStatus{{552, "5.3.4", false, true}, {552, "5.3.4", false, true}})
	if be.mails.Load() != 0 || be.datas.Load() != 0 {
		t.Errorf("server saw MAIL %d DATA %d, want none", be.mails.Load(), be.datas.Load())
	}

	// A body that fits is sent with SIZE=.
	var size int64
	be.mail = func(_ string, o *smtp.MailOptions) error { size = o.Size; return nil }
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr)}, msg("Subject: s\r\n\r\nx\r\n", "a@example.org"))
	if !out.Statuses[0].Delivered() || size != int64(len("Subject: s\r\n\r\nx\r\n")) {
		t.Errorf("small message: %+v, SIZE=%d", out.Statuses[0], size)
	}
}

func TestUTF8NotAdvertised(t *testing.T) {
	be := &fakeBackend{}
	addr := startFake(t, be, nil) // EnableSMTPUTF8 is false
	c := newClient(t, nil)
	m := msg(testBody, "jörg@example.org")
	m.UTF8 = true
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr)}, m)
	st := out.Statuses[0]
	if !st.Permanent() || st.Enhanced != "5.6.7" {
		t.Errorf("status = %+v, want permanent 5.6.7", st)
	}
	if be.mails.Load() != 0 {
		t.Errorf("MAIL FROM was sent")
	}

	// With SMTPUTF8 advertised, MAIL FROM carries it.
	var utf8 bool
	be2 := &fakeBackend{mail: func(_ string, o *smtp.MailOptions) error { utf8 = o.UTF8; return nil }}
	addr2 := startFake(t, be2, func(srv *smtp.Server) { srv.EnableSMTPUTF8 = true })
	out = c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr2)}, m)
	if !out.Statuses[0].Delivered() || !utf8 {
		t.Errorf("SMTPUTF8 delivery: %+v, utf8 param %v", out.Statuses[0], utf8)
	}
}

func TestCancelMidData(t *testing.T) {
	inData := make(chan struct{}, 1)
	s, addr := startSink(t, sink.Config{
		DataDelay: func() time.Duration {
			inData <- struct{}{}
			return time.Hour // cut short by the sink's Close
		},
	})
	c := newClient(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *delivery.Outcome, 1)
	rcpts := []string{"a@example.org", "b@example.org"}
	go func() { done <- c.Deliver(ctx, []delivery.Hop{hopFor(t, "mx", addr)}, msg(testBody, rcpts...)) }()
	<-inData
	cancel()
	out := <-done
	checkStatuses(t, out, rcpts, []wantStatus{{0, "4.4.2", false, false}, {0, "4.4.2", false, false}})
	if s.Count() != 0 {
		t.Errorf("sink Count = %d", s.Count())
	}
}

func TestLostConnectionMidTransaction(t *testing.T) {
	be := &fakeBackend{rcpt: func(c *smtp.Conn, to string) error {
		if to == "drop@example.org" {
			c.Close()
		}
		return nil
	}}
	addr := startFake(t, be, nil)
	c := newClient(t, nil)
	rcpts := []string{"ok@example.org", "drop@example.org", "later@example.org"}
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx", addr)}, msg(testBody, rcpts...))
	w := wantStatus{0, "4.4.2", false, false}
	checkStatuses(t, out, rcpts, []wantStatus{w, w, w})
	if be.datas.Load() != 0 {
		t.Errorf("DATA was accepted")
	}
}

func TestDeadPooledConnectionIsReplaced(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	d := &countingDialer{}
	c := newClient(t, func(cfg *delivery.Config) { cfg.Dial = d.Dial })
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	if out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org")); !out.Statuses[0].Delivered() {
		t.Fatalf("first: %+v", out.Statuses[0])
	}
	d.closeAll() // the pooled connection dies
	out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org"))
	if !out.Statuses[0].Delivered() {
		t.Fatalf("second: %+v", out.Statuses[0])
	}
	if s.Count() != 2 || d.count(addr) != 2 {
		t.Errorf("Count %d dials %d, want 2 and 2", s.Count(), d.count(addr))
	}
}

func TestIdleTimeoutClosesPooledConnection(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, func(cfg *delivery.Config) { cfg.IdleTimeout = 20 * time.Millisecond })
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	if out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org")); !out.Statuses[0].Delivered() {
		t.Fatalf("%+v", out.Statuses[0])
	}
	waitFor(t, "idle connection to close", func() bool { return s.ActiveConnections() == 0 })
	if out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org")); !out.Statuses[0].Delivered() {
		t.Fatalf("%+v", out.Statuses[0])
	}
	if s.Connections() != 2 {
		t.Errorf("Connections = %d, want 2", s.Connections())
	}
}

func TestClose(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, nil)
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	if out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org")); !out.Statuses[0].Delivered() {
		t.Fatalf("%+v", out.Statuses[0])
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitFor(t, "pooled connection to close", func() bool { return s.ActiveConnections() == 0 })
	out := c.Deliver(testCtx(t), hops, msg(testBody, "r@example.org", "s@example.org"))
	for _, st := range out.Statuses {
		if st.Code != 0 || st.Permanent() || st.Delivered() || st.Enhanced[0] != '4' {
			t.Errorf("after Close: %+v", st)
		}
	}
	if s.Count() != 1 {
		t.Errorf("Count = %d", s.Count())
	}
}

// bigBody builds a CRLF message of about n bytes with 8-bit content and
// lines that need dot-stuffing.
func bigBody(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	b.WriteString("From: a@example.com\r\nSubject: big\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString(".\r\n..\r\n.leading dot\r\nØresund æble på\r\n\r\n")
	for b.Len() < n {
		line := make([]byte, 1+r.IntN(120))
		for i := range line {
			c := byte(0x20 + r.IntN(0x100-0x20))
			if c == 0x7f {
				c = '.'
			}
			line[i] = c
		}
		if r.IntN(10) == 0 {
			line[0] = '.'
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func TestBodyBytesExact(t *testing.T) {
	s, addr := startSink(t, sink.Config{})
	c := newClient(t, nil)
	hops := []delivery.Hop{hopFor(t, "mx", addr)}
	bodies := [][]byte{
		[]byte("Subject: dots\r\n\r\n.\r\n..\r\n...x\r\n. \r\nend\r\n"),
		bigBody(4 << 10),
		bigBody(5 << 20),
	}
	for i, body := range bodies {
		m := &delivery.Message{QueueID: "Q", From: "", Recipients: []string{"r@example.org"}, Body: body, EightBit: true}
		out := c.Deliver(testCtx(t), hops, m)
		if !out.Statuses[0].Delivered() {
			t.Fatalf("body %d: %+v", i, out.Statuses[0])
		}
	}
	msgs := s.Messages()
	if len(msgs) != len(bodies) {
		t.Fatalf("got %d messages", len(msgs))
	}
	for i, m := range msgs {
		if !bytes.Equal(m.Data, bodies[i]) {
			t.Errorf("body %d: received %d bytes differing from the %d sent", i, len(m.Data), len(bodies[i]))
		}
		if m.From != "" {
			t.Errorf("body %d: From = %q, want null reverse-path", i, m.From)
		}
	}
}

func TestNewRequiresHeloName(t *testing.T) {
	if _, err := delivery.New(delivery.Config{}); err == nil {
		t.Error("New without HeloName succeeded")
	}
	if _, err := delivery.New(delivery.Config{HeloName: "a b"}); err == nil {
		t.Error("New with a space in HeloName succeeded")
	}
}

func TestEdgeInputs(t *testing.T) {
	c := newClient(t, nil)
	out := c.Deliver(testCtx(t), nil, msg(testBody, "r@example.org"))
	if len(out.Statuses) != 1 || out.Statuses[0].Delivered() || out.Statuses[0].Permanent() {
		t.Errorf("no hops: %+v", out.Statuses)
	}
	out = c.Deliver(testCtx(t), nil, msg(testBody))
	if out == nil || len(out.Statuses) != 0 {
		t.Errorf("no recipients: %+v", out)
	}
}
