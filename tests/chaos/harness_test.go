//go:build chaos

// Package chaos is mailfwd's fault suite (make chaos): separate nats-server,
// MinIO, ingress and worker processes on loopback, killed and restarted
// while mail flows, with a ledger of every message the SMTP client got a 250
// for. Every accepted message must reach the destination at least once.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/bench/rig"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// tools holds the binaries, built once in TestMain.
var tools rig.Tools

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailfwd-chaos-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tools = rig.FindTools()
	if tools.NATSServer == "" {
		fmt.Fprintln(os.Stderr, "chaos: no nats-server binary (make tools, or MAILFWD_NATS_SERVER_BIN)")
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	err = tools.BuildMailfwd(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fastWorker keeps every timeout short so faults resolve in seconds.
var fastWorker = []string{
	"--ack-wait", "5s", "--attempt-timeout", "4s", "--retry-first", "1s", "--retry-max", "2s",
	"--connect-timeout", "2s", "--command-timeout", "3s", "--data-timeout", "3s",
	"--host-down-ttl", "1s", "--stall-after", "2s", "--busy-delay", "1s", "--drain-timeout", "2s",
}

var fastIngress = []string{"--ack-wait", "5s", "--store-timeout", "5s"}

// startStack starts nats-server, an ingress and workers in dir/ (a file
// body store unless blob says otherwise).
func startStack(t *testing.T, blob string, minio *rig.Minio, workers int, dest string) *rig.Mailfwd {
	t.Helper()
	in := fastIngress
	if blob == "s3" {
		// The MinIO row is about the body store: every body goes there
		// (by default bodies up to 128 KiB ride in the envelope).
		in = append(append([]string{}, fastIngress...), "--inline-body-max", "0")
	}
	m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{
		Dir: t.TempDir(), Blob: blob, Minio: minio, Workers: workers, Route: dest,
		IngressArgs: in, WorkerArgs: fastWorker,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append(m.Procs(), m.NATS.Proc) {
				t.Logf("--- %s log (tail) ---\n%s", p.Name, tail(p.LogPath, 3000))
			}
		}
		m.Close()
	})
	return m
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// dest is the destination: a recording sink behind a front door that can
// refuse connections (listener closed), hang (accept, never greet) or serve.
type dest struct {
	t    *testing.T
	Addr string
	Sink *sink.Server

	mu    sync.Mutex
	mode  string // "up", "refuse", "hang"
	ln    net.Listener
	held  []net.Conn
	feed  chan net.Conn
	stop  chan struct{}
	wg    sync.WaitGroup
	fwdLn *chanListener
}

func startDest(t *testing.T) *dest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dest{t: t, Addr: ln.Addr().String(), Sink: sink.New(sink.Config{Hostname: "dest.chaos.test"}),
		mode: "up", feed: make(chan net.Conn), stop: make(chan struct{})}
	d.fwdLn = &chanListener{addr: ln.Addr(), ch: d.feed, done: d.stop}
	go func() { _ = d.Sink.Serve(d.fwdLn) }()
	d.serve(ln)
	t.Cleanup(func() {
		d.setListener(nil)
		close(d.stop)
		d.wg.Wait()
		_ = d.Sink.Close()
		d.mu.Lock()
		for _, c := range d.held {
			c.Close()
		}
		d.mu.Unlock()
	})
	return d
}

func (d *dest) setListener(ln net.Listener) {
	d.mu.Lock()
	old := d.ln
	d.ln = ln
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

func (d *dest) serve(ln net.Listener) {
	d.setListener(ln)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.mu.Lock()
			mode := d.mode
			if mode == "hang" {
				d.held = append(d.held, c)
			}
			d.mu.Unlock()
			if mode == "hang" {
				continue
			}
			select {
			case d.feed <- c:
			case <-d.stop:
				c.Close()
				return
			}
		}
	}()
}

// Set switches the destination's behaviour.
func (d *dest) Set(mode string) {
	d.t.Helper()
	d.mu.Lock()
	prev := d.mode
	d.mode = mode
	held := d.held
	if mode != "hang" {
		d.held = nil
	}
	d.mu.Unlock()
	if mode != "hang" {
		for _, c := range held {
			c.Close()
		}
	}
	switch {
	case mode == "refuse":
		d.setListener(nil)
	case prev == "refuse":
		var ln net.Listener
		var err error
		for range 50 {
			if ln, err = net.Listen("tcp", d.Addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			d.t.Fatalf("destination: listen again on %s: %v", d.Addr, err)
		}
		d.serve(ln)
	}
}

// chanListener hands the sink connections accepted by dest.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// ledger records what the client was told and what the destination got.
type ledger struct {
	mu       sync.Mutex
	accepted map[string]string // message id → queue id of the 250
	tried    map[string]bool
	refused  atomic.Int64 // 4xx/5xx/IO errors seen by the client (retried)
}

func newLedger() *ledger {
	return &ledger{accepted: map[string]string{}, tried: map[string]bool{}}
}

func (l *ledger) Accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// account compares the ledger with the destination.
type account struct {
	Attempted, Accepted, Delivered, Duplicates, Lost, UnackedDelivered int
	LostIDs                                                            []string
}

func (a account) String() string {
	return fmt.Sprintf("attempted %d, accepted (250) %d, delivered %d, duplicate deliveries %d, lost %d, delivered without a 250 %d",
		a.Attempted, a.Accepted, a.Delivered, a.Duplicates, a.Lost, a.UnackedDelivered)
}

func (l *ledger) Account(s *sink.Server) account {
	got := map[string]int{}
	for _, m := range s.Messages() {
		got[messageID(m.Data)]++
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	a := account{Attempted: len(l.tried), Accepted: len(l.accepted)}
	for id, n := range got {
		if n > 1 {
			a.Duplicates += n - 1
		}
		if _, ok := l.accepted[id]; !ok && id != "" {
			a.UnackedDelivered++
		}
	}
	for id, qid := range l.accepted {
		if got[id] > 0 {
			a.Delivered++
		} else {
			a.Lost++
			if len(a.LostIDs) < 20 {
				a.LostIDs = append(a.LostIDs, id+" (queue id "+qid+")")
			}
		}
	}
	return a
}

// Missing is the number of accepted messages not yet at the destination.
func (l *ledger) Missing(s *sink.Server) int {
	a := l.Account(s)
	return a.Lost
}

func messageID(data []byte) string {
	i := bytes.Index(data, []byte("\r\nMessage-ID: <"))
	if i < 0 {
		return ""
	}
	rest := data[i+len("\r\nMessage-ID: <"):]
	j := bytes.IndexByte(rest, '>')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// load sends n messages over sessions parallel SMTP sessions to addr(). A
// message that does not get a 250 is retried (same Message-ID) until it does
// or until the deadline, as a sending MTA would.
type load struct {
	name     string
	n        int
	sessions int
	size     int
	addr     func() string
	deadline time.Duration
	next     atomic.Int64
}

func (ld *load) Run(ctx context.Context, l *ledger) {
	ctx, cancel := context.WithTimeout(ctx, ld.deadline)
	defer cancel()
	pad := strings.Repeat("chaos chaos chaos chaos chaos chaos chaos chaos chaos chaos chaos chaos\r\n", max(1, ld.size/74))
	var wg sync.WaitGroup
	for range ld.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for {
				i := ld.next.Add(1)
				if i > int64(ld.n) {
					return
				}
				id := fmt.Sprintf("%s-%d@chaos.test", ld.name, i)
				body := fmt.Sprintf("From: <sender@client.chaos.test>\r\nTo: <r%d@dest.chaos.test>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n\r\n%s", i, id, id, pad)
				for attempt := 0; ctx.Err() == nil; attempt++ {
					l.mu.Lock()
					l.tried[id] = true
					l.mu.Unlock()
					qid, err := sendOne(&c, ld.addr(), fmt.Sprintf("r%d@dest.chaos.test", i), body)
					if err == nil {
						l.mu.Lock()
						l.accepted[id] = qid
						l.mu.Unlock()
						break
					}
					l.refused.Add(1)
					if c != nil {
						c.Close()
						c = nil
					}
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(min(attempt+1, 10)) * 100 * time.Millisecond):
					}
				}
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// sendOne delivers one message over *cp (dialled if nil) and returns the
// queue id from the 250 reply.
func sendOne(cp **smtp.Client, addr, rcpt, body string) (string, error) {
	if *cp == nil {
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return "", err
		}
		c := smtp.NewClient(conn)
		c.CommandTimeout = 10 * time.Second
		c.SubmissionTimeout = 15 * time.Second
		if err := c.Hello("client.chaos.test"); err != nil {
			c.Close()
			return "", err
		}
		*cp = c
	}
	c := *cp
	if err := c.Mail("sender@client.chaos.test", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	qid := resp.StatusText
	if i := strings.LastIndex(qid, " "); i >= 0 {
		qid = qid[i+1:]
	}
	if qid == "" {
		return "", errors.New("250 without a queue id")
	}
	return qid, nil
}

// drain waits (at most timeout) until every accepted message reached the
// destination and returns the time from recovered until then.
func drain(t *testing.T, l *ledger, d *dest, recovered time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l.Missing(d.Sink) == 0 {
			return time.Since(recovered)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(recovered)
}

// report logs the account and fails the test on any loss.
func report(t *testing.T, scenario string, l *ledger, d *dest, drained time.Duration) {
	t.Helper()
	a := l.Account(d.Sink)
	line := fmt.Sprintf("%-28s %s; client retries %d; all delivered %v after recovery", scenario, a, l.refused.Load(), drained.Round(10*time.Millisecond))
	t.Log(line)
	appendSummary(line)
	if a.Lost > 0 {
		t.Errorf("%d accepted messages never reached the destination, e.g. %v", a.Lost, a.LostIDs)
	}
	if a.Accepted == 0 {
		t.Errorf("no message was accepted at all")
	}
}

// summary lines are written to $CHAOS_SUMMARY if set (make chaos prints it).
func appendSummary(line string) {
	p := os.Getenv("CHAOS_SUMMARY")
	if p == "" {
		return
	}
	_ = os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, time.Now().Format(time.RFC3339), line)
}
