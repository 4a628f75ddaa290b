package blob

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
	g := newGroupSync(func() error {
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
			if err := g.wait(context.Background()); err != nil {
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
	g := newGroupSync(func() error {
		if calls.Add(1) == 1 {
			close(started)
			<-release
		}
		return nil
	})
	go g.wait(context.Background())
	<-started // flush 1 is running
	done := make(chan struct{})
	go func() { g.wait(context.Background()); close(done) }()
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

func TestGroupSyncReportsFlushErrorToItsRound(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	g := newGroupSync(func() error {
		if fail.Load() {
			return errors.New("EIO")
		}
		return nil
	})
	if err := g.wait(context.Background()); err == nil || !errors.Is(err, errors.Unwrap(err)) {
		t.Fatalf("failed flush not reported: %v", err)
	}
	fail.Store(false)
	if err := g.wait(context.Background()); err != nil {
		t.Fatalf("later round inherited an old error: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}
