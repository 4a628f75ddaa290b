package delivery_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/testenv"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// closeHookListener hands the server conns whose Close calls onClose (once)
// with the TCP conn instead of closing it: a test decides when, or whether,
// the server's side of the connection really closes.
type closeHookListener struct {
	net.Listener
	onAccept func() // nil: none
	onClose  func(tcp net.Conn)
}

func (l *closeHookListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.onAccept != nil {
		l.onAccept()
	}
	return &closeHookConn{Conn: c, onClose: l.onClose}, nil
}

type closeHookConn struct {
	net.Conn
	onClose func(net.Conn)
	once    sync.Once
}

func (c *closeHookConn) Close() error {
	c.once.Do(func() { c.onClose(c.Conn) })
	return nil
}

// startCloseHook serves a go-smtp server (STARTTLS offered with cert) whose
// connections close through onClose; after QUIT the server writes 221 and
// then closes, as go-smtp and Postfix do.
func startCloseHook(t *testing.T, cert *tls.Certificate, onClose func(net.Conn)) string {
	t.Helper()
	return startCloseHookListener(t, cert, &closeHookListener{onClose: onClose})
}

// startCloseHookListener is startCloseHook with the listener's hooks set in
// hl (its Listener is filled in).
func startCloseHookListener(t *testing.T, cert *tls.Certificate, hl *closeHookListener) string {
	t.Helper()
	srv := smtp.NewServer(&fakeBackend{})
	srv.Domain = "mx.test"
	srv.ErrorLog = discardLog{}
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hl.Listener = ln
		srv.Serve(hl)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// A retired connection (one message per connection, as a delivery holding a
// fleet concurrency slot sends) counts as closed only once the server has
// closed it: Deliver, after which the slot and the fleet lease are
// released, must not return between the server's 221 and its close, or the
// next delivery dials while the destination still counts this session
// (TestFleetConcurrency saw 3 sessions against a limit of 2). Over TLS the
// server's close_notify comes before its TCP close: the wait is for the
// latter.
func TestRetireWaitsForServerClose(t *testing.T) {
	for _, tc := range []struct {
		name     string
		startTLS bool
	}{{"plain", false}, {"starttls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			events := make(chan string, 4)
			cert := testenv.SelfSignedCert(t, "mx.test")
			addr := startCloseHook(t, &cert, func(tcp net.Conn) {
				// A server slow to close after its 221 (a busy MX).
				time.Sleep(100 * time.Millisecond)
				events <- "server closed"
				tcp.Close()
			})
			c := newClient(t, func(cfg *delivery.Config) { cfg.StartTLS = tc.startTLS })
			m := msg(testBody, "r@example.org")
			m.MaxMsgsPerConn = 1
			out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}, m)
			events <- "deliver returned"
			if !out.Statuses[0].Delivered() {
				t.Fatalf("status %+v", out.Statuses[0])
			}
			if got := <-events; got != "server closed" {
				t.Fatalf("first event %q: Deliver returned (the slot freed) before the server closed the retired connection", got)
			}
		})
	}
}

// A server that keeps the connection open after its 221 (hostile or broken)
// does not hold the client: it waits a bounded time, then closes its side.
func TestRetireServerNeverCloses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		startTLS bool
	}{{"plain", false}, {"starttls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			hungUp := make(chan struct{}, 1)
			cert := testenv.SelfSignedCert(t, "mx.test")
			addr := startCloseHook(t, &cert, func(tcp net.Conn) {
				// Never close: read until the client hangs up.
				go func() {
					io.Copy(io.Discard, tcp)
					tcp.Close()
					hungUp <- struct{}{}
				}()
			})
			c := newClient(t, func(cfg *delivery.Config) { cfg.StartTLS = tc.startTLS })
			m := msg(testBody, "r@example.org")
			m.MaxMsgsPerConn = 1
			ctx, hops := testCtx(t), []delivery.Hop{hopFor(t, "mx.test", addr)}
			done := make(chan *delivery.Outcome, 1)
			go func() { done <- c.Deliver(ctx, hops, m) }()
			select {
			case out := <-done:
				if !out.Statuses[0].Delivered() {
					t.Fatalf("status %+v", out.Statuses[0])
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Deliver hangs on a server that does not close after QUIT")
			}
			select {
			case <-hungUp:
			case <-time.After(30 * time.Second):
				t.Fatal("the client never closed its side")
			}
		})
	}
}

// At the per-host cap, a pooled connection set up under other security is
// retired to make room: its slot passes to the new connection only once the
// server has closed the old one, so the destination never sees one more
// session than the cap.
func TestRetireForOtherSecurityWaitsForServerClose(t *testing.T) {
	events := make(chan string, 8)
	var accepts int
	cert := testenv.SelfSignedCert(t, "mx.test")
	addr := startCloseHookListener(t, &cert, &closeHookListener{
		onAccept: func() { accepts++; events <- fmt.Sprintf("accepted %d", accepts) },
		onClose: func(tcp net.Conn) {
			time.Sleep(100 * time.Millisecond)
			events <- "server closed"
			tcp.Close()
		},
	})
	pol := tlsPolicy(t, map[string]string{"plain.example": "none"}, nil)
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.StartTLS = true
		cfg.MaxConnsPerHost = 1
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
	})
	for _, domain := range []string{"plain.example", "tls.example"} {
		hop := hopFor(t, "mx.test", addr)
		hop.Policy = tlspolicy.Hop{Domain: domain}
		if out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@"+domain)); !out.Statuses[0].Delivered() {
			t.Fatalf("%s: %+v", domain, out.Statuses[0])
		}
	}
	want := []string{"accepted 1", "server closed", "accepted 2"}
	for i, w := range want {
		if got := <-events; got != w {
			t.Fatalf("event %d: %q, want %q (order %q)", i, got, w, want)
		}
	}
}
