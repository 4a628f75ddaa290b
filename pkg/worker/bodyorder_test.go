package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// deleteWatch is the rig's body store; at each Delete it records whether
// the envelope of that body was still in the stream.
type deleteWatch struct {
	*blob.FS
	r       *rig
	mu      sync.Mutex
	deleted []string
	early   []string // deleted while their envelope was still queued
}

func (d *deleteWatch) Delete(ctx context.Context, key string) error {
	queued := false
	_ = d.r.q.Scan(ctx, queue.Filter{}, func(e queue.Entry) error {
		if e.Env != nil && e.Env.BodyKey == key {
			queued = true
		}
		return nil
	})
	d.mu.Lock()
	d.deleted = append(d.deleted, key)
	if queued {
		d.early = append(d.early, key)
	}
	d.mu.Unlock()
	return d.FS.Delete(ctx, key)
}

// A stored body is deleted only after its envelope's ack is stored: a crash
// (or, on one node, a power cut) between the two must leave an orphan body,
// never an envelope that comes back without its body and bounces.
func TestBodyDeletedOnlyAfterTheAck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	watch := &deleteWatch{FS: r.store, r: r}
	const n = 5
	for i := 0; i < n; i++ {
		r.message("s@src.test", testBody("order"), map[string][]string{"one.test": {"a@one.test"}})
	}
	w := New(Config{Concurrency: 2, FetchWait: 200 * time.Millisecond, AttemptTimeout: 20 * time.Second,
		RetryFirst: 200 * time.Millisecond, RetryMax: time.Second, DrainTimeout: 2 * time.Second, RepanicForTests: true},
		r.cons, r.q, watch, &route.Router{Table: r.table}, r.dc)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = w.Run(wctx) }()
	waitFor(t, ctx, "every body deleted", func() bool {
		watch.mu.Lock()
		defer watch.mu.Unlock()
		return len(watch.deleted) == n
	})
	watch.mu.Lock()
	defer watch.mu.Unlock()
	if len(watch.early) > 0 {
		t.Fatalf("%d of %d bodies deleted while their envelope was still queued (before the ack)", len(watch.early), n)
	}
}
