// Package syncfs makes writes durable in groups: many writers wait for one
// flush of the filesystem (syncfs(2) on Linux) that started after their
// writes, instead of an fsync each (group commit). The body store uses it for
// its files, and the queue for the local nats-server's store, whose writes
// reach the kernel before their PubAck but not the disk (see queue.Config
// LocalStore).
package syncfs

import (
	"context"
	"fmt"
	"sync"
)

// Group makes many writers' files durable with few flushes (group
// commit): each writer registers after its file is written and renamed, then
// waits for a flush that started after its registration. One flush at a
// time runs; everyone who registered while it ran is covered by the next
// one. Under load N concurrent Puts cost about one flush instead of 2N
// fsyncs, with the same guarantee: Put returns only when the body and its
// directory entry are on stable storage.
//
// A failed flush fails the store for good (until the process restarts):
// syncfs(2) reports a writeback error once, to the next flush of the
// filesystem, not to the writer whose pages were lost. A body whose
// background writeback failed before its own round began is reported to an
// earlier round, and its own round would see success. Failing every later
// wait is the only way to tell that writer too; the ingress answers 4xx,
// readiness fails (Check), and a restarted pod starts with fresh state.
type Group struct {
	flush func() error // syncfs of the store's filesystem (or an equivalent)

	mu      sync.Mutex
	done    chan struct{} // closed when the running flush ends
	seq     uint64        // writes registered
	synced  uint64        // writes covered by a completed flush
	running bool
	failed  error // the first failed flush; sticky
}

// NewGroup returns a group commit over flush, which must make durable every
// write that completed before it was called.
func NewGroup(flush func() error) *Group {
	return &Group{flush: flush}
}

// Err reports the sticky failure, if any.
func (g *Group) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failed
}

// Wait returns once a flush that started after the call has completed; an
// error if that flush or any flush before it failed, or ctx's error if ctx
// ends first. The flush runs on its own goroutine, so a flush stalled in the
// kernel (a hung disk) holds no waiter past its context: each returns at its
// deadline (the ingress answers 451), and the flush, when it ends, still
// counts for those who wait then.
func (g *Group) Wait(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seq++
	my := g.seq
	for g.synced < my && g.failed == nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !g.running {
			g.start()
		}
		done := g.done
		g.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
		}
		g.mu.Lock()
	}
	if g.failed != nil {
		return fmt.Errorf("flush to stable storage failed; the store takes no more bodies until restarted: %w", g.failed)
	}
	return nil
}

// start runs one flush covering every write registered so far. g.mu is held.
func (g *Group) start() {
	g.running = true
	to := g.seq
	done := make(chan struct{})
	g.done = done
	go func() {
		err := g.flush()
		g.mu.Lock()
		defer g.mu.Unlock()
		g.running = false
		g.synced = to
		if err != nil && g.failed == nil {
			g.failed = err
		}
		close(done)
	}()
}
