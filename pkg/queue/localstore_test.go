package queue

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/syncfs"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// storeFiles returns the contents of every message block of stream name in
// the nats-server store dir, read through the kernel (what a syncfs would
// write to disk).
func storeFiles(t *testing.T, dir, name string) []byte {
	t.Helper()
	blks, err := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", name, "msgs", "*.blk"))
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, b := range blks {
		data, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, data...)
	}
	return all
}

// flushProbe replaces the queue's flush with one that records, at the
// moment each flush starts, which of the wanted markers nats-server has
// already written to its block files. The real syncfs runs after that, so
// the test also proves the flush works on that directory.
type flushProbe struct {
	t       *testing.T
	dir     string
	mu      sync.Mutex
	flushes int
	seen    map[string]bool
	fail    error
}

func probe(t *testing.T, q *Queue) *flushProbe {
	p := &flushProbe{t: t, dir: q.cfg.LocalStore, seen: map[string]bool{}}
	real, _, err := syncfs.Flusher(q.cfg.LocalStore) // open until the process ends, as the queue's own
	if err != nil || real == nil {
		t.Skipf("no syncfs here: %v", err)
	}
	q.flush = syncfs.NewGroup(func() error {
		data := storeFiles(t, p.dir, q.cfg.Stream)
		p.mu.Lock()
		p.flushes++
		for m := range p.seen {
			if bytes.Contains(data, []byte(m)) {
				p.seen[m] = true
			}
		}
		fail := p.fail
		p.mu.Unlock()
		if fail != nil {
			return fail
		}
		return real()
	})
	return p
}

func (p *flushProbe) want(marker string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen[marker] = false
}

func (p *flushProbe) check(what, marker string) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.seen[marker] {
		p.t.Errorf("%s: no flush started after nats-server had written %q to its store (flushes so far: %d); the durability of a 250 with --nats-store-dir rests on it",
			what, marker, p.flushes)
	}
}

func localQueue(t *testing.T) (*Queue, *testenv.NATS) {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := Connect(ctx, Config{URL: n.URL(), ClientName: t.Name(), PublishWait: 5 * time.Second, LocalStore: n.Dir})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(q.Close)
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return q, n
}

func testEnvelope(qid, domain, body string) *envelope.Envelope {
	return &envelope.Envelope{QueueID: qid, From: "s@src.test", Domain: domain,
		Recipients: []envelope.Recipient{{Addr: "r@" + domain}}, Body: []byte(body), Size: int64(len(body)), Parts: 1,
		Arrived: time.Now().UTC()}
}

// Every write that must survive a crash of the machine is flushed after
// nats-server wrote it: the accept, a multi-domain accept record and its
// fan-out, a deferral, a move to held, a requeue, a move to failed, a due-now.
func TestLocalStoreFlushesAfterNATSWroteIt(t *testing.T) {
	q, _ := localQueue(t)
	p := probe(t, q)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p.want("marker-accept-1")
	acc := testEnvelope("cv0s6tbp0n8g00c2s6r1", "one.test", "body")
	acc.LastError = "marker-accept-1"
	if err := q.Enqueue(ctx, []*envelope.Envelope{acc}); err != nil {
		t.Fatal(err)
	}
	p.check("Enqueue", "marker-accept-1")

	multi := []*envelope.Envelope{
		{QueueID: "cv0s6tbp0n8g00c2s6r2", Domain: "a.test", Recipients: []envelope.Recipient{{Addr: "x@a.test"}}, BodyKey: "key-multi-2", Parts: 2},
		{QueueID: "cv0s6tbp0n8g00c2s6r2", Domain: "b.test", Recipients: []envelope.Recipient{{Addr: "x@b.test"}}, BodyKey: "key-multi-2", Parts: 2},
	}
	p.want("x@a.test")
	if err := q.Enqueue(ctx, multi); err != nil {
		t.Fatal(err)
	}
	p.check("Enqueue of an accept record", "x@a.test")

	e := testEnvelope("cv0s6tbp0n8g00c2s6r3", "later.test", "deferred-one")
	e.LastError = "marker-defer"
	p.want("marker-defer")
	if err := q.Defer(ctx, e, time.Now().Add(time.Hour), "1"); err != nil {
		t.Fatal(err)
	}
	p.check("Defer", "marker-defer")

	h := testEnvelope("cv0s6tbp0n8g00c2s6r4", "held.test", "held-one")
	h.LastError = "marker-held"
	p.want("marker-held")
	if err := q.MoveToHeld(ctx, h, "1"); err != nil {
		t.Fatal(err)
	}
	p.check("MoveToHeld", "marker-held")

	f := testEnvelope("cv0s6tbp0n8g00c2s6r5", "bad.test", "failed-one")
	p.want("marker-failed")
	if err := q.Fail(ctx, f, "marker-failed", "1"); err != nil {
		t.Fatal(err)
	}
	p.check("Fail", "marker-failed")

	var deferred, held []Entry
	if err := q.Scan(ctx, Filter{}, func(en Entry) error {
		switch en.State {
		case StateDeferred:
			deferred = append(deferred, en)
		case StateHeld:
			held = append(held, en)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(deferred) != 1 || len(held) != 1 {
		t.Fatalf("scan: %d deferred, %d held; want 1 and 1", len(deferred), len(held))
	}
	deferred[0].Env.LastError = "marker-due"
	p.want("marker-due")
	if err := q.MakeDue(ctx, deferred[0]); err != nil {
		t.Fatal(err)
	}
	p.check("MakeDue", "marker-due")

	rq := *held[0].Env
	rq.LastError = "marker-requeue"
	p.want("marker-requeue")
	if err := q.Requeue(ctx, held[0], &rq); err != nil {
		t.Fatal(err)
	}
	p.check("Requeue", "marker-requeue")

	// The fan-out of the accept record: its envelopes are flushed before
	// the record is acked. A fan-out envelope carries the record's bytes,
	// so look for its ready subject instead.
	p.want(ReadySubject("b.test"))
	if _, err := q.Consumer(ctx); err != nil { // starts the fan-out
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		ok := p.seen[ReadySubject("b.test")]
		p.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			p.check("fan-out", ReadySubject("b.test"))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A failed flush is a failed accept (the ingress answers 4xx), and it stays
// failed: the next writes are refused too.
func TestLocalStoreFlushFailureFailsTheAccept(t *testing.T) {
	q, _ := localQueue(t)
	p := probe(t, q)
	p.fail = errors.New("EIO from the disk")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := q.Enqueue(ctx, []*envelope.Envelope{testEnvelope("cv0s6tbp0n8g00c2s6r6", "one.test", "x")})
	if err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("Enqueue with a failing flush = %v, want the flush's error", err)
	}
	p.mu.Lock()
	p.fail = nil
	p.mu.Unlock()
	if err := q.Enqueue(ctx, []*envelope.Envelope{testEnvelope("cv0s6tbp0n8g00c2s6r7", "one.test", "y")}); err == nil {
		t.Fatal("Enqueue after a failed flush succeeded; a flush failure must stick (the lost pages are never reported again)")
	}
}

// Without LocalStore nothing is flushed by the queue.
func TestNoLocalStoreNoFlush(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, _ := ConnectTest(t, ctx, Config{})
	if q.FlushesLocalStore() {
		t.Fatal("FlushesLocalStore without LocalStore")
	}
}

// A directory that is not the server's store is refused, at Connect when it
// has no jetstream directory, at Bootstrap when it lacks the stream.
func TestLocalStoreMustBeTheServersStore(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if q, err := Connect(ctx, Config{URL: n.URL(), LocalStore: t.TempDir()}); err == nil {
		q.Close()
		t.Fatal("Connect with an empty directory as LocalStore succeeded")
	} else if !strings.Contains(err.Error(), "store_dir") {
		t.Errorf("error %q does not say what the directory must be", err)
	}
	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(other, "jetstream"), 0o750); err != nil {
		t.Fatal(err)
	}
	q, err := Connect(ctx, Config{URL: n.URL(), LocalStore: other})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Bootstrap(ctx); !errors.Is(err, ErrUnsafeStream) {
		t.Fatalf("Bootstrap with another directory as LocalStore = %v, want ErrUnsafeStream", err)
	}
}

// After a failed flush, readiness fails too: the pod takes no mail and must
// be restarted, so it must not look ready.
func TestLocalStoreFlushFailureFailsReadiness(t *testing.T) {
	q, _ := localQueue(t)
	p := probe(t, q)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := q.Check(ctx); err != nil {
		t.Fatalf("Check before any failure: %v", err)
	}
	p.fail = errors.New("EIO from the disk")
	_ = q.Enqueue(ctx, []*envelope.Envelope{testEnvelope("cv0s6tbp0n8g00c2s6r8", "one.test", "x")})
	if err := q.Check(ctx); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("Check after a failed flush = %v, want the flush's error", err)
	}
}
