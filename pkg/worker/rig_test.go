package worker

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// rig is a real queue (embedded nats-server), a file body store and a
// delivery client for worker tests.
type rig struct {
	t     testing.TB
	ctx   context.Context
	url   string
	q     *queue.Queue
	cons  *queue.Consumer
	store *blob.FS
	table *route.Table
	dc    *delivery.Client
}

// bootstrapped starts a nats-server and returns a queue client of it with
// the stream, consumers and buckets made; the client closes with the test.
func bootstrapped(t testing.TB, ctx context.Context) (*testenv.NATS, *queue.Queue) {
	t.Helper()
	n := testenv.StartNATS(t)
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: t.Name(), PublishWait: 5 * time.Second})
	if err != nil {
		t.Fatalf("queue connect: %v", err)
	}
	t.Cleanup(q.Close)
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return n, q
}

func newRig(t testing.TB, ctx context.Context, dcfg delivery.Config) *rig {
	t.Helper()
	n, q := bootstrapped(t, ctx)
	cons, err := q.Consumer(ctx)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	store, err := blob.NewFS(t.TempDir(), false)
	if err != nil {
		t.Fatalf("blob store: %v", err)
	}
	if dcfg.HeloName == "" {
		dcfg.HeloName = "worker.test"
	}
	if dcfg.ConnectTimeout == 0 {
		dcfg.ConnectTimeout = 5 * time.Second
	}
	if dcfg.CommandTimeout == 0 {
		dcfg.CommandTimeout = 10 * time.Second
	}
	if dcfg.DataTimeout == 0 {
		dcfg.DataTimeout = 10 * time.Second
	}
	dc, err := delivery.New(dcfg)
	if err != nil {
		t.Fatalf("delivery: %v", err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	return &rig{t: t, ctx: ctx, url: n.URL(), q: q, cons: cons, store: store, table: route.NewTable(), dc: dc}
}

// route sends domain ("." for all) to a loopback address.
func (r *rig) route(domain, addr string) {
	r.t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		r.t.Fatalf("address %q: %v", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	if err := r.table.Add(domain, "smtp:["+host+"]:"+port); err != nil {
		r.t.Fatalf("route: %v", err)
	}
}

// run starts a worker with cfg (test-friendly defaults filled in) and stops
// it at cleanup.
func (r *rig) run(cfg Config, router Router, d Deliverer) *Worker {
	r.t.Helper()
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 4
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = 200 * time.Millisecond
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = 20 * time.Second
	}
	if cfg.RetryFirst == 0 {
		cfg.RetryFirst = 200 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	if router == nil {
		router = &route.Router{Table: r.table}
	}
	if d == nil {
		d = r.dc
	}
	w := New(cfg, r.cons, r.q, r.store, router, d)
	ctx, stop := context.WithCancel(r.ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	r.t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			r.t.Error("worker did not stop")
		}
	})
	return w
}

// message stores body and enqueues one envelope per domain.
func (r *rig) message(from string, body []byte, rcpts map[string][]string) string {
	r.t.Helper()
	qid := envelope.NewQueueID()
	if err := r.store.Put(r.ctx, qid, body); err != nil {
		r.t.Fatalf("put body: %v", err)
	}
	var envs []*envelope.Envelope
	for dom, addrs := range rcpts {
		e := &envelope.Envelope{QueueID: qid, From: from, Domain: dom, BodyKey: qid, Size: int64(len(body)),
			Parts: len(rcpts), Arrived: time.Now().UTC(), MsgID: "<" + qid + "@client.test>"}
		for _, a := range addrs {
			e.Recipients = append(e.Recipients, envelope.Recipient{Addr: a})
		}
		envs = append(envs, e)
	}
	if err := r.q.Enqueue(r.ctx, envs); err != nil {
		r.t.Fatalf("enqueue: %v", err)
	}
	return qid
}

// entries lists what the stream holds in state st.
func (r *rig) entries(st queue.State) []queue.Entry {
	r.t.Helper()
	var out []queue.Entry
	err := r.q.Scan(r.ctx, queue.Filter{States: []queue.State{st}}, func(e queue.Entry) error {
		out = append(out, e)
		return nil
	})
	if err != nil {
		r.t.Fatalf("scan %s: %v", st, err)
	}
	return out
}

// waitFor polls cond every 50ms until it holds or the test context ends.
func waitFor(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func testBody(qid string) []byte {
	return []byte("Message-ID: <" + qid + "@client.test>\r\nSubject: poison test\r\n\r\nHello.\r\n")
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
