package blob

import (
	"context"
	"fmt"
	"sync"
)

// groupSync makes many writers' files durable with few flushes (group
// commit): each writer registers after its file is written and renamed, then
// waits for a flush that started after its registration. One flush at a
// time runs; everyone who registered while it ran is covered by the next
// one. Under load N concurrent Puts cost about one flush instead of 2N
// fsyncs, with the same guarantee: Put returns only when the body and its
// directory entry are on stable storage.
type groupSync struct {
	flush func() error // syncfs of the store's filesystem (or an equivalent)

	mu      sync.Mutex
	cond    *sync.Cond
	seq     uint64 // writes registered
	synced  uint64 // writes covered by a completed flush
	running bool
	failed  []failedRound // recent flushes that failed
}

type failedRound struct {
	from, to uint64 // registrations covered: from < seq <= to
	err      error
}

func newGroupSync(flush func() error) *groupSync {
	g := &groupSync{flush: flush}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// wait returns once a flush that started after the call has completed.
func (g *groupSync) wait(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seq++
	my := g.seq
	for g.synced < my {
		if err := ctx.Err(); err != nil {
			return err
		}
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		from, to := g.synced, g.seq
		g.mu.Unlock()
		err := g.flush()
		g.mu.Lock()
		g.running = false
		g.synced = to
		if err != nil {
			g.failed = append(g.failed, failedRound{from: from, to: to, err: err})
			if len(g.failed) > 64 {
				g.failed = g.failed[len(g.failed)-64:]
			}
		}
		g.cond.Broadcast()
	}
	for _, f := range g.failed {
		if my > f.from && my <= f.to {
			return fmt.Errorf("flush to stable storage: %w", f.err)
		}
	}
	return nil
}
