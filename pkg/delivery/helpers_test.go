package delivery_test

import (
	"context"

	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

const testBody = "From: a@example.com\r\nTo: b@example.org\r\nSubject: test\r\n\r\nHello.\r\n"

func hopFor(t testing.TB, name, addr string) delivery.Hop {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("parse %q: %v", addr, err)
	}
	return delivery.Hop{Name: name, Addr: ap}
}

// newClient builds a client with test-friendly defaults; mod adjusts cfg.
func newClient(t testing.TB, mod func(*delivery.Config)) *delivery.Client {
	t.Helper()
	cfg := delivery.Config{
		HeloName:       "relay.test",
		ConnectTimeout: 5 * time.Second,
		CommandTimeout: 10 * time.Second,
		DataTimeout:    30 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := delivery.New(cfg)
	if err != nil {
		t.Fatalf("delivery.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func msg(body string, rcpts ...string) *delivery.Message {
	return &delivery.Message{QueueID: "Q1", From: "a@example.com", Recipients: rcpts, Body: []byte(body)}
}

func startSink(t testing.TB, cfg sink.Config) (*sink.Server, string) {
	t.Helper()
	s := sink.New(cfg)
	return s, s.Start(t, "127.0.0.1:0")
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// fakeBackend is a go-smtp backend whose replies are set per test.
type fakeBackend struct {
	mail  func(from string, opts *smtp.MailOptions) error
	rcpt  func(c *smtp.Conn, to string) error
	data  func(b []byte) error
	mails atomic.Int32
	datas atomic.Int32
}

func (b *fakeBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &fakeSession{b: b, c: c}, nil
}

type fakeSession struct {
	b *fakeBackend
	c *smtp.Conn
}

func (s *fakeSession) Reset()        {}
func (s *fakeSession) Logout() error { return nil }
func (s *fakeSession) Mail(from string, opts *smtp.MailOptions) error {
	s.b.mails.Add(1)
	if s.b.mail != nil {
		return s.b.mail(from, opts)
	}
	return nil
}
func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.b.rcpt != nil {
		return s.b.rcpt(s.c, to)
	}
	return nil
}
func (s *fakeSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.datas.Add(1)
	if s.b.data != nil {
		return s.b.data(b)
	}
	return nil
}

// startFake serves be on loopback; configure may change the server.
func startFake(t testing.TB, be *fakeBackend, configure func(*smtp.Server)) string {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = "fake.test"
	srv.ErrorLog = discardLog{}
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
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

type discardLog struct{}

func (discardLog) Printf(string, ...interface{}) {}
func (discardLog) Println(...interface{})        {}

// serveLoopback accepts connections on a loopback port and runs serve
// on each (in its own goroutine; the connection is closed after), until
// the test ends.
func serveLoopback(t testing.TB, serve func(net.Conn)) (addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// startRaw serves a fixed greeting line and closes each connection.
func startRaw(t testing.TB, greeting string) (addr string, accepted *atomic.Int32) {
	t.Helper()
	accepted = new(atomic.Int32)
	addr = serveLoopback(t, func(c net.Conn) {
		accepted.Add(1)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, greeting)
	})
	return addr, accepted
}

// countingDialer counts dials per address and keeps the conns.
type countingDialer struct {
	mu    sync.Mutex
	dials map[string]int
	conns []net.Conn
}

func (d *countingDialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	if d.dials == nil {
		d.dials = make(map[string]int)
	}
	d.dials[addr]++
	d.mu.Unlock()
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	return c, nil
}

func (d *countingDialer) count(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[addr]
}

func (d *countingDialer) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.Close()
	}
}

// waitFor polls cond for up to 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func errSMTP(code int, ec smtp.EnhancedCode, text string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: text}
}
