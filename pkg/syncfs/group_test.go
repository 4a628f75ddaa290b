package syncfs

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupSyncCoversEveryWaiterWithFewFlushes(t *testing.T) {
	var flushes atomic.Int32
	var inFlush atomic.Int32
	g := NewGroup(func() error {
		if inFlush.Add(1) != 1 {
			t.Error("two flushes ran at once")
		}
		flushes.Add(1)
		time.Sleep(2 * time.Millisecond)
		inFlush.Add(-1)
		return nil
	})
	const n = 200
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.Wait(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if f := flushes.Load(); f < 1 || f >= n/2 {
		t.Fatalf("%d flushes for %d concurrent writers; want at least one and far fewer than writers", f, n)
	}
}

// A waiter must be covered by a flush that started after it registered: a
// flush already running when it arrives does not count.
func TestGroupSyncNeedsAFlushStartedAfterRegistration(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	g := NewGroup(func() error {
		if calls.Add(1) == 1 {
			close(started)
			<-release
		}
		return nil
	})
	go g.Wait(context.Background())
	<-started // flush 1 is running
	done := make(chan struct{})
	go func() { g.Wait(context.Background()); close(done) }()
	time.Sleep(20 * time.Millisecond)
	close(release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("second waiter never returned")
	}
	if c := calls.Load(); c != 2 {
		t.Fatalf("%d flushes; the second waiter needed its own flush", c)
	}
}

// syncfs(2) reports a writeback error once, to whichever flush runs next,
// not to the writer whose pages failed: a write that failed in the
// background before its round began is reported to an earlier round, and
// its own round sees success. So after any failed flush the store is
// failed: every later wait reports it, whatever the later flushes say.
func TestGroupSyncFailsTheStoreOnAnyFlushError(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	g := NewGroup(func() error {
		if fail.Load() {
			return errors.New("EIO")
		}
		return nil
	})
	if err := g.Wait(context.Background()); err == nil {
		t.Fatal("failed flush not reported")
	}
	fail.Store(false)
	for i := range 100 {
		if err := g.Wait(context.Background()); err == nil {
			t.Fatalf("wait %d after a failed flush succeeded: the error may belong to this writer", i)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Wait(ctx); err == nil {
		t.Fatal("cancelled wait succeeded")
	}
}

// Many failed rounds while a writer waits for the lock must not push its
// round's error out of what it is told.
func TestGroupSyncReportsEveryFailedRound(t *testing.T) {
	var n atomic.Int32
	g := NewGroup(func() error {
		if n.Add(1)%2 == 0 {
			return errors.New("EIO")
		}
		return nil
	})
	var wg sync.WaitGroup
	var ok, failed atomic.Int32
	for range 400 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g.Wait(context.Background()) == nil {
				ok.Add(1)
			} else {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n.Load() >= 2 && failed.Load() == 0 {
		t.Fatalf("%d flushes, every second one failing, and no writer was told", n.Load())
	}
	if err := g.Wait(context.Background()); err == nil {
		t.Fatal("a wait after failed flushes succeeded")
	}
}

// A stalled disk (a flush that never returns) must not hang its waiters past
// their context: the one that started the flush and the ones queued behind it
// both return the context's error, so the ingress answers 451 at
// --store-timeout instead of holding every session forever.
func TestGroupSyncWaitersHonourTheContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{}, 1)
	g := NewGroup(func() error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	go func() { errs <- g.Wait(ctx) }() // starts the flush that stalls
	<-started
	go func() { errs <- g.Wait(ctx) }() // queued behind the stalled flush
	cancel()
	for i := range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("waiter %d: %v, want context.Canceled", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("waiter %d still blocked in a stalled flush after its context ended", i)
		}
	}
	if g.Err() != nil {
		t.Fatalf("an abandoned wait failed the store: %v", g.Err())
	}
}
