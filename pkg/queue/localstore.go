package queue

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/syncfs"
)

// openLocalStore sets up the group commit over Config.LocalStore.
func (q *Queue) openLocalStore() error {
	dir := q.cfg.LocalStore
	if fi, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil || !fi.IsDir() {
		return fmt.Errorf("queue: --nats-store-dir %s: no jetstream directory in it; give the store_dir of the nats-server at --nats-url, on this machine", dir)
	}
	// The jetstream directory itself: it may be a mount of its own.
	flush, _, err := syncfs.Flusher(filepath.Join(dir, "jetstream"))
	if err != nil {
		return fmt.Errorf("queue: --nats-store-dir %s: %w", dir, err)
	}
	if flush == nil {
		return fmt.Errorf("queue: --nats-store-dir needs syncfs(2), which this system does not have; run nats-server with jetstream { sync_interval: always } instead")
	}
	q.flush = syncfs.NewGroup(flush)
	return nil
}

// durable makes every write this process got a PubAck for before the call
// durable: a no-op without LocalStore (the server's own sync, or the
// replicas, give what durability there is).
func (q *Queue) durable(ctx context.Context) error {
	if q.flush == nil {
		return nil
	}
	if err := q.flush.Wait(ctx); err != nil {
		return fmt.Errorf("queue: flush of the local NATS store %s: %w", q.cfg.LocalStore, err)
	}
	return nil
}

// Flush makes every write this process got an answer for before the call
// durable (with LocalStore; a no-op without). The worker calls it between
// an envelope's ack and the deletion of its body.
func (q *Queue) Flush(ctx context.Context) error { return q.durable(ctx) }

// CheckLocalStore refuses a LocalStore the flush cannot make durable: a
// directory that does not hold the stream (not that server's store_dir, or
// not on this machine), or a stream whose writes do not reach the kernel
// before the PubAck (replicated streams flush asynchronously behind their
// raft log; async persist mode likewise). Without LocalStore it checks
// nothing. Bootstrap calls it.
func (q *Queue) CheckLocalStore(ctx context.Context) error {
	if q.cfg.LocalStore == "" {
		return nil
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	}
	c := st.CachedInfo().Config
	switch {
	case c.Replicas > 1:
		return fmt.Errorf("queue: %w: --nats-store-dir is for a single node, and stream %s has %d replicas (their quorum is what makes a PubAck durable; drop --nats-store-dir)",
			ErrUnsafeStream, c.Name, c.Replicas)
	case c.PersistMode == jetstream.AsyncPersistMode:
		return fmt.Errorf("queue: %w: stream %s uses async persist mode, whose writes may not have reached the kernel at the PubAck; --nats-store-dir cannot make them durable",
			ErrUnsafeStream, c.Name)
	case c.Storage != jetstream.FileStorage:
		return fmt.Errorf("queue: %w: stream %s is in memory; nothing can make it durable", ErrUnsafeStream, c.Name)
	}
	found, _ := filepath.Glob(filepath.Join(q.cfg.LocalStore, "jetstream", "*", "streams", c.Name))
	if len(found) == 0 {
		return fmt.Errorf("queue: %w: --nats-store-dir %s holds no stream %s (looked for %s); it must be the store_dir of the nats-server at the NATS URL, on this machine",
			ErrUnsafeStream, q.cfg.LocalStore, c.Name, filepath.Join(q.cfg.LocalStore, "jetstream", "*", "streams", c.Name))
	}
	return nil
}

// FlushesLocalStore reports whether durable writes are flushed by this
// process (Config.LocalStore).
func (q *Queue) FlushesLocalStore() bool { return q.flush != nil }
