package worker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// dataMX is a go-smtp server that discards bodies. Each DATA waits at a
// barrier until `barrier` transfers are in DATA at once (or 20s), calls
// atBarrier once when it is reached, and records the peak concurrency.
type dataMX struct {
	barrier   int
	atBarrier func()
	mu        sync.Mutex
	in, peak  int
	xfer      int // bodies being transferred
	xferPeak  int
	done      int
	reached   chan struct{}
	once      sync.Once
	bytes     atomic.Int64
}

func (m *dataMX) NewSession(*smtp.Conn) (smtp.Session, error) { return &dataSession{m: m}, nil }

type dataSession struct{ m *dataMX }

func (s *dataSession) Reset()                               {}
func (s *dataSession) Logout() error                        { return nil }
func (s *dataSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *dataSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *dataSession) Data(r io.Reader) error {
	m := s.m
	m.mu.Lock()
	m.in++
	m.peak = max(m.peak, m.in)
	if m.in >= m.barrier {
		m.once.Do(func() {
			if m.atBarrier != nil {
				m.atBarrier()
			}
			close(m.reached)
		})
	}
	m.mu.Unlock()
	select {
	case <-m.reached:
	case <-time.After(20 * time.Second):
	}
	// A transfer counts from its first body byte to its end.
	var first [1]byte
	n0, err := io.ReadFull(r, first[:])
	m.mu.Lock()
	m.xfer++
	m.xferPeak = max(m.xferPeak, m.xfer)
	m.mu.Unlock()
	n := int64(n0)
	if err == nil {
		var n1 int64
		n1, err = io.Copy(io.Discard, r)
		n += n1
	}
	m.bytes.Add(n)
	m.mu.Lock()
	m.xfer--
	m.in--
	m.done++
	m.mu.Unlock()
	return err
}

func startDataMX(t *testing.T, m *dataMX) string {
	t.Helper()
	m.reached = make(chan struct{})
	srv := smtp.NewServer(m)
	srv.Domain = "mx.test"
	srv.MaxMessageBytes = 64 << 20
	srv.MaxLineLength = 0
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	ln := listen(t)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func bigBody(size int) []byte {
	var b bytes.Buffer
	b.WriteString("Message-ID: <big@client.test>\r\nSubject: big\r\n\r\n")
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// One 20 MB message to many domains must not load a copy of the body per
// delivery: bodies are streamed from the store.
func TestBigMessageToManyDomainsIsStreamed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const domains = 4
	r := newRig(t, ctx, delivery.Config{DataTimeout: 150 * time.Second})
	var heapAtBarrier uint64
	mx := &dataMX{barrier: domains, atBarrier: func() {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heapAtBarrier = ms.HeapAlloc
	}}
	r.route(".", startDataMX(t, mx))
	// Stalls at the barrier are expected: nothing may be taken for congestion.
	r.run(Config{Concurrency: domains, RepanicForTests: true, MaxBodyBytesInFlight: 1 << 30,
		AttemptTimeout: 150 * time.Second, StallAfter: 5 * time.Minute}, nil, nil)

	rcpts := map[string][]string{}
	for i := range domains {
		d := fmt.Sprintf("d%d.test", i)
		rcpts[d] = []string{"u@" + d}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc // before the body exists at all
	qid := r.message(sender, bigBody(20<<20), rcpts)

	waitFor(t, ctx, "every domain delivered", func() bool {
		mx.mu.Lock()
		defer mx.mu.Unlock()
		return mx.done == domains
	})
	if mx.peak != domains {
		t.Fatalf("only %d transfers at once, want %d (the measurement needs them all in DATA)", mx.peak, domains)
	}
	grown := int64(heapAtBarrier) - int64(base)
	t.Logf("heap with %d transfers of a 20 MB body in flight: %+d MB over the baseline", domains, grown>>20)
	if grown > 30<<20 {
		t.Errorf("heap grew by %d MB with %d deliveries of one 20 MB body in flight; the body is loaded per delivery", grown>>20, domains)
	}
	if got, want := mx.bytes.Load(), int64(domains)*int64(len(bigBody(20<<20))); got < want {
		t.Errorf("MX received %d bytes, want at least %d", got, want)
	}
	_ = qid
}

// --max-body-bytes-in-flight bounds the body bytes being transferred at once.
func TestBodyBytesInFlightBound(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	mx := &dataMX{barrier: 1}
	r.route(".", startDataMX(t, mx))
	body := bigBody(1 << 20)
	r.run(Config{Concurrency: 4, RepanicForTests: true, MaxBodyBytesInFlight: int64(len(body))}, nil, nil)
	r.message(sender, body, map[string][]string{"a.test": {"u@a.test"}, "b.test": {"u@b.test"}, "c.test": {"u@c.test"}})
	waitFor(t, ctx, "every domain delivered", func() bool {
		mx.mu.Lock()
		defer mx.mu.Unlock()
		return mx.done == 3
	})
	if mx.xferPeak != 1 {
		t.Errorf("%d bodies transferred at once with a budget of one body, want 1", mx.xferPeak)
	}
}

// A body missing from the store ends in a DSN to the sender and the failed
// state, not a silent drop.
func TestMissingBodySendsDSN(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	r.run(Config{RepanicForTests: true}, nil, nil)
	qid := envelope.NewQueueID()
	e := &envelope.Envelope{QueueID: qid, From: sender, Domain: "lost.test", BodyKey: qid, Size: 100, Parts: 1,
		Arrived: time.Now().UTC(), Recipients: []envelope.Recipient{{Addr: "u@lost.test"}}}
	if err := r.q.Enqueue(ctx, []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the DSN", func() bool { return len(dsnsTo(snk, sender)) > 0 })
	d := dsnsTo(snk, sender)[0]
	if !strings.Contains(string(d.Data), "Final-Recipient: rfc822; u@lost.test") || !strings.Contains(string(d.Data), "Action: failed") {
		t.Errorf("DSN:\n%s", d.Data)
	}
	waitFor(t, ctx, "the failed entry", func() bool { return len(r.entries(queue.StateFailed)) == 1 })
	if n := snk.RecipientsDelivered()["u@lost.test"]; n != 0 {
		t.Errorf("u@lost.test delivered %d times without a body", n)
	}
}
