package worker

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// dribbler is an MX that greets and answers EHLO at once, then sends every
// later reply one byte at a time, every gap.
type dribbler struct {
	addr string
	open atomic.Int64 // sessions open now
	done atomic.Int64 // messages it accepted
}

func startDribbler(t testing.TB, gap time.Duration) *dribbler {
	t.Helper()
	return startSlowMX(t, gap, false)
}

// startLineTarpit is an MX that greets and answers EHLO at once, then
// answers every later command with continuation lines ("250-please
// wait"), one every gap, and never the last line: each line is progress
// for the worker, but no delivery ever ends.
func startLineTarpit(t testing.TB, gap time.Duration) *dribbler {
	t.Helper()
	return startSlowMX(t, gap, true)
}

func startSlowMX(t testing.TB, gap time.Duration, linesForever bool) *dribbler {
	t.Helper()
	ln := listen(t)
	d := &dribbler{addr: ln.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	closed := make(chan struct{})
	t.Cleanup(func() {
		close(closed)
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	slow := func(c net.Conn, s string) error {
		for linesForever {
			select {
			case <-closed:
				return net.ErrClosed
			case <-time.After(gap):
			}
			if _, err := c.Write([]byte("250-please wait\r\n")); err != nil {
				return err
			}
		}
		for i := range len(s) {
			select {
			case <-closed:
				return net.ErrClosed
			case <-time.After(gap):
			}
			if _, err := c.Write([]byte{s[i]}); err != nil {
				return err
			}
		}
		return nil
	}
	serve := func(c net.Conn) {
		defer c.Close()
		d.open.Add(1)
		defer d.open.Add(-1)
		br := bufio.NewReader(c)
		if _, err := c.Write([]byte("220 dribble.test ESMTP\r\n")); err != nil {
			return
		}
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.TrimSpace(line))
			switch {
			case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
				_, err = c.Write([]byte("250-dribble.test\r\n250 8BITMIME\r\n"))
			case cmd == "DATA":
				if err = slow(c, "354 go ahead\r\n"); err != nil {
					return
				}
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if l == ".\r\n" {
						break
					}
				}
				if err = slow(c, "250 2.0.0 ok\r\n"); err == nil {
					d.done.Add(1)
				}
			case cmd == "QUIT":
				_ = slow(c, "221 bye\r\n")
				return
			default:
				err = slow(c, "250 2.0.0 ok\r\n")
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go serve(c)
		}
	}()
	return d
}

// The dribbling case: four domains whose MXs dribble their replies
// (a byte every 1.5 s) and 20 messages each, then 5 messages to a healthy
// domain. The healthy mail is delivered while the dribblers still hold
// their sessions and before any dribbled message gets through: the slow
// destinations never hold the slots healthy mail needs. (Before, they
// held every worker slot and healthy mail waited for one of them to end.)
func TestDribblingDestinationsDoNotHoldHealthyMail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{CommandTimeout: 5 * time.Minute, DataTimeout: 5 * time.Minute})
	snk := sink.New(sink.Config{})
	healthy := snk.Start(t, "127.0.0.1:0")
	var drib []*dribbler
	for i := range 4 {
		d := startDribbler(t, 1500*time.Millisecond)
		drib = append(drib, d)
		r.route(fmt.Sprintf("drip%d.test", i), d.addr)
	}
	r.route("healthy.test", healthy)
	var logs syncBuffer
	r.run(Config{Concurrency: 64, DomainConcurrency: 20, AttemptTimeout: 5 * time.Minute,
		StallAfter: 10 * time.Second, BusyDelay: 30 * time.Second, RepanicForTests: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, nil, nil)
	for i := range 4 {
		d := fmt.Sprintf("drip%d.test", i)
		for range 20 {
			r.message(sender, testBody("drip"), map[string][]string{d: {"u@" + d}})
		}
	}
	open := func() (n int64) {
		for _, d := range drib {
			n += d.open.Load()
		}
		return n
	}
	through := func() (n int64) {
		for _, d := range drib {
			n += d.done.Load()
		}
		return n
	}
	waitFor(t, ctx, "every dribbling MX holding sessions", func() bool {
		for _, d := range drib {
			if d.open.Load() == 0 {
				return false
			}
		}
		return true
	})
	for i := range 5 {
		r.message(sender, testBody(fmt.Sprint("healthy", i)), map[string][]string{"healthy.test": {fmt.Sprintf("h%d@healthy.test", i)}})
	}
	waitFor(t, ctx, "healthy mail delivered or a dribbled message through", func() bool {
		return snk.Count() >= 5 || through() > 0
	})
	if snk.Count() < 5 {
		t.Fatalf("a dribbled message got through (%d) before the healthy mail (%d of 5): healthy mail waited for the slow destinations", through(), snk.Count())
	}
	if open() == 0 {
		t.Errorf("the dribbling MXs hold no session any more; the scenario did not hold")
	}
}

// The tarpit case: five domains on one next hop that accepts TCP
// and never greets, 30 messages each, then 5 healthy messages. With the
// stall detection far away (a minute), the healthy mail must not need it:
// it is delivered before any tarpit delivery is found not responding
// (and handed back or preempted for it).
// (Before, the tarpit's deliveries, running or waiting for a connection,
// held every worker slot until they were found stuck.)
func TestTarpitDomainsDoNotDelayHealthyMail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{CommandTimeout: 5 * time.Minute})
	tp := startTarpit(t)
	snk := sink.New(sink.Config{})
	healthy := snk.Start(t, "127.0.0.1:0")
	for i := range 5 {
		r.route(fmt.Sprintf("tarpit%d.test", i), tp.addr)
	}
	r.route("healthy.test", healthy)
	var logs syncBuffer
	r.run(Config{Concurrency: 64, DomainConcurrency: 20, AttemptTimeout: 5 * time.Minute,
		StallAfter: time.Minute, BusyDelay: 30 * time.Second, RepanicForTests: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, nil, nil)
	for i := range 5 {
		d := fmt.Sprintf("tarpit%d.test", i)
		for range 30 {
			r.message(sender, testBody("tarpit"), map[string][]string{d: {"u@" + d}})
		}
	}
	waitFor(t, ctx, "the tarpit holding connections", func() bool { return tp.open.Load() > 0 })
	for i := range 5 {
		r.message(sender, testBody(fmt.Sprint("healthy", i)), map[string][]string{"healthy.test": {fmt.Sprintf("h%d@healthy.test", i)}})
	}
	released := func() bool {
		l := logs.String()
		return strings.Contains(l, "not responding") || strings.Contains(l, "preempted")
	}
	waitFor(t, ctx, "healthy mail delivered or tarpit mail released", func() bool { return snk.Count() >= 5 || released() })
	if snk.Count() < 5 {
		t.Fatalf("healthy mail (%d of 5) waited until the tarpit's deliveries were found stuck:\n%s", snk.Count(), grep(logs.String(), "not responding"))
	}
	if tp.open.Load() == 0 {
		t.Errorf("the tarpit holds no connection any more; the scenario did not hold")
	}
}

// BenchmarkHealthyBesideSlowHops: the delivery latency of one healthy
// message (queued → accepted by its MX) while four dribbling domains (20
// messages each) and five tarpit domains (30 each, one next hop) hold a
// backlog in the same worker. Goal: under a second, as Postfix.
func BenchmarkHealthyBesideSlowHops(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRig(b, ctx, delivery.Config{CommandTimeout: 5 * time.Minute, DataTimeout: 5 * time.Minute})
	snk := sink.New(sink.Config{})
	r.route("healthy.test", snk.Start(b, "127.0.0.1:0"))
	tp := startTarpit(b)
	for i := range 5 {
		r.route(fmt.Sprintf("tarpit%d.test", i), tp.addr)
	}
	for i := range 4 {
		r.route(fmt.Sprintf("drip%d.test", i), startDribbler(b, 1500*time.Millisecond).addr)
	}
	r.run(Config{Concurrency: 64, DomainConcurrency: 20, AttemptTimeout: 5 * time.Minute,
		StallAfter: 10 * time.Second, BusyDelay: 30 * time.Second}, nil, nil)
	for i := range 5 {
		d := fmt.Sprintf("tarpit%d.test", i)
		for range 30 {
			r.message(sender, testBody("tarpit"), map[string][]string{d: {"u@" + d}})
		}
	}
	for i := range 4 {
		d := fmt.Sprintf("drip%d.test", i)
		for range 20 {
			r.message(sender, testBody("drip"), map[string][]string{d: {"u@" + d}})
		}
	}
	waitFor(b, ctx, "the tarpit holding connections", func() bool { return tp.open.Load() > 0 })
	var worst time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		r.message(sender, testBody(fmt.Sprint("healthy", i)), map[string][]string{"healthy.test": {fmt.Sprintf("h%d@healthy.test", i)}})
		if err := snk.WaitCount(ctx, i+1); err != nil {
			b.Fatal(err)
		}
		worst = max(worst, time.Since(start))
	}
	b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
}

// A worker whose fetch buffer (2 × Concurrency) is full of mail for a
// tarpit makes room for the mail behind it by itself: the slow lane's
// waiting mail goes back to the queue as soon as the lane is found slow,
// not at the scheduler's next periodic look (StallAfter/4, here 15
// minutes). (Before, nothing woke the scheduler when the lane became slow:
// the healthy message, behind the tarpit's backlog in the stream, was not
// even fetched until that look; in the benchmark, 2.45 s.)
func TestFullBufferOfSlowMailMakesRoomForHealthyMail(t *testing.T) {
	tp := startTarpit(t)
	logs := healthyBehindBacklog(t, tp.addr, &tp.open, time.Hour)
	if !strings.Contains(logs, "destination slow") {
		t.Errorf("no tarpit mail was handed back as slow; the scenario did not hold")
	}
}

// A destination that answers with a continuation line every 300 ms and
// never ends a reply makes progress but delivers nothing. Its backlog must
// still go back to the queue when the fetch buffer is full (no delivery of
// it ended for StallAfter), or the healthy message behind it in the stream
// is never fetched.
func TestProgressingTarpitDoesNotHoldTheFetchBuffer(t *testing.T) {
	lt := startLineTarpit(t, 300*time.Millisecond)
	healthyBehindBacklog(t, lt.addr, &lt.open, 2*time.Second)
	if lt.done.Load() != 0 {
		t.Errorf("the line tarpit accepted %d messages; the scenario did not hold", lt.done.Load())
	}
}

// healthyBehindBacklog fills a worker's fetch buffer (Concurrency 8: 16)
// with 40 messages for the slow MX at slowAddr, then queues one healthy
// message behind them and fails unless it is delivered; it returns the
// worker's log.
func healthyBehindBacklog(t *testing.T, slowAddr string, open *atomic.Int64, stallAfter time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{CommandTimeout: 5 * time.Minute})
	snk := sink.New(sink.Config{})
	r.route("slow.test", slowAddr)
	r.route("healthy.test", snk.Start(t, "127.0.0.1:0"))
	var logs syncBuffer
	r.run(Config{Concurrency: 8, DomainConcurrency: 20, AttemptTimeout: time.Hour, StallAfter: stallAfter,
		BusyDelay: time.Hour, RepanicForTests: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, nil, nil)
	for range 40 {
		r.message(sender, testBody("slow"), map[string][]string{"slow.test": {"u@slow.test"}})
	}
	waitFor(t, ctx, "the slow MX holding connections", func() bool { return open.Load() > 0 })
	r.message(sender, testBody("healthy"), map[string][]string{"healthy.test": {"h@healthy.test"}})
	if err := snk.WaitCount(ctx, 1); err != nil {
		t.Fatalf("the healthy message behind the slow MX's backlog was not delivered: %v\n%s", err, grep(logs.String(), "handed back"))
	}
	return logs.String()
}
