package worker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// tarpit accepts TCP connections and never says a word.
type tarpit struct {
	addr  string
	open  atomic.Int64
	total atomic.Int64
}

func startTarpit(t testing.TB) *tarpit {
	t.Helper()
	ln := listen(t)
	tp := &tarpit{addr: ln.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tp.open.Add(1)
			tp.total.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				var b [512]byte
				for {
					if _, err := c.Read(b[:]); err != nil {
						tp.open.Add(-1)
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return tp
}

// The scenario: five domains routed to one tarpit next hop (each
// under the per-domain cap), 30 messages each, then 6 messages for a
// healthy domain. All 6 must be delivered while the tarpit still holds
// its connections: many domains sharing one stuck next hop must not take
// every worker slot.
func TestSharedStuckNextHopLeavesSlotsForHealthyMail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The tarpit never greets: each connection is stuck for the whole
	// command timeout (longer than this test).
	r := newRig(t, ctx, delivery.Config{CommandTimeout: 5 * time.Minute})
	tp := startTarpit(t)
	snk := sink.New(sink.Config{})
	healthy := snk.Start(t, "127.0.0.1:0")
	for i := range 5 {
		r.route(fmt.Sprintf("tarpit%d.test", i), tp.addr)
	}
	r.route("healthy.test", healthy)
	r.run(Config{Concurrency: 64, DomainConcurrency: 20, AttemptTimeout: 5 * time.Minute,
		StallAfter: time.Second, BusyDelay: 2 * time.Second, RetryMax: 10 * time.Second, RepanicForTests: true}, nil, nil)

	for i := range 5 {
		d := fmt.Sprintf("tarpit%d.test", i)
		for range 30 {
			r.message(sender, testBody("tarpit"), map[string][]string{d: {"u@" + d}})
		}
	}
	waitFor(t, ctx, "the tarpit holding connections", func() bool { return tp.open.Load() > 0 })
	for i := range 6 {
		r.message(sender, testBody(fmt.Sprint("healthy", i)), map[string][]string{"healthy.test": {fmt.Sprintf("h%d@healthy.test", i)}})
	}
	if err := snk.WaitCount(ctx, 6); err != nil {
		t.Fatalf("healthy mail starved behind a stuck next hop: %v (tarpit holds %d connections)", err, tp.open.Load())
	}
	if tp.open.Load() == 0 {
		t.Errorf("the tarpit holds no connection any more; the scenario did not hold")
	}
	t.Logf("all 6 healthy messages delivered; the tarpit holds %d connections (%d opened in all)", tp.open.Load(), tp.total.Load())
}

// slowReader reads a body in 1 MB steps, 100ms apart.
type slowMX struct{ done atomic.Int64 }

func (m *slowMX) NewSession(*smtp.Conn) (smtp.Session, error) { return &slowSession{m: m}, nil }

type slowSession struct{ m *slowMX }

func (s *slowSession) Reset()                               {}
func (s *slowSession) Logout() error                        { return nil }
func (s *slowSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *slowSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *slowSession) Data(r io.Reader) error {
	for {
		_, err := io.CopyN(io.Discard, r, 1<<20)
		if err == io.EOF {
			s.m.done.Add(1)
			return nil
		}
		if err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// One long transfer of a big message is progress, not congestion: the
// domain's waiting mail is not handed back while bytes move.
func TestLongTransferIsNotCongestion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{DataTimeout: time.Minute})
	mx := &slowMX{}
	srv := smtp.NewServer(mx)
	srv.Domain, srv.MaxMessageBytes, srv.MaxLineLength = "slow.test", 64<<20, 0
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	ln := listen(t)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	r.route(".", ln.Addr().String())
	var logs syncBuffer
	r.run(Config{RepanicForTests: true, StallAfter: time.Second, BusyDelay: time.Second,
		DomainLimits: map[string]DomainLimit{"big.test": {Concurrency: 1}},
		Logger:       slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, nil, nil)
	body := bigBody(32 << 20)
	r.message(sender, body, map[string][]string{"big.test": {"a@big.test"}})
	r.message(sender, body, map[string][]string{"big.test": {"b@big.test"}})
	waitFor(t, ctx, "both messages delivered", func() bool { return mx.done.Load() == 2 })
	if strings.Contains(logs.String(), "handed back") {
		t.Errorf("the waiting message was handed back while the first one's transfer was moving bytes:\n%s", grep(logs.String(), "handed back"))
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Mail handed back again and again waits longer each time (a tarpit's
// backlog is not cycled every BusyDelay forever), up to RetryMax.
func TestBusyDelayBacksOff(t *testing.T) {
	w := New(Config{BusyDelay: time.Second, RetryMax: time.Minute}, nil, nil, nil, nil, nil)
	for _, tt := range []struct {
		n    int
		base time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {100, time.Minute}} {
		for range 50 {
			d := w.busyDelay(tt.n)
			if d < tt.base/2 || d > tt.base*3/2 {
				t.Fatalf("busyDelay(%d) = %v, want %v ±50%%", tt.n, d, tt.base)
			}
		}
	}
}

// A delivery whose body was sent and that waits for the final reply is
// never cancelled for congestion: the remote may already have the message,
// and a retry would deliver it twice.
func TestCongestionNeverPreemptsDATA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{DataDelay: func() time.Duration { return 3 * time.Second }})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	var logs syncBuffer
	r.run(Config{Concurrency: 4, CongestedConcurrency: 1, StallAfter: 300 * time.Millisecond, RepanicForTests: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, nil, nil)
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		r.message(sender, testBody(d), map[string][]string{d: {"u@" + d}})
	}
	if err := snk.WaitCount(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := waitStreamEmpty(ctx, r.url); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		if n := snk.RecipientsDelivered()["u@"+d]; n != 1 {
			t.Errorf("u@%s delivered %d times, want 1", d, n)
		}
	}
	if strings.Contains(logs.String(), "preempted") {
		t.Errorf("a delivery in DATA was preempted:\n%s", grep(logs.String(), "preempted"))
	}
}
