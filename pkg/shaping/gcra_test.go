package shaping_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// Two GCRA views (two processes) share a key with two paces (a per-second
// rate with a burst and an hourly count): on a frozen clock the burst of
// the tighter pace is what both together get, the refusal names that
// pace, and Give hands one event back.
func TestGCRAPacesAreSharedAllOrNone(t *testing.T) {
	_, b := bucket(t)
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	a, c := shaping.NewGCRA(b, 0, clock), shaping.NewGCRA(b, 0, clock)
	paces := []shaping.Pace{{Rate: 10, Burst: 10}, {Rate: 5.0 / 3600, Burst: 5}}
	took := 0
	for i := range 8 {
		g := a
		if i%2 == 1 {
			g = c
		}
		wait, refused, err := g.Take(ctx, "q.x", paces)
		if err != nil {
			t.Fatal(err)
		}
		if wait == 0 {
			took++
			continue
		}
		if refused != 1 || wait < 10*time.Minute {
			t.Fatalf("refusal %d: pace %d, wait %v; want the hourly pace, about 12 minutes", i, refused, wait)
		}
	}
	if took != 5 {
		t.Fatalf("%d events admitted, want the hourly burst 5", took)
	}
	if err := a.Give(ctx, "q.x", paces); err != nil {
		t.Fatal(err)
	}
	if wait, _, err := c.Take(ctx, "q.x", paces); err != nil || wait != 0 {
		t.Fatalf("after a Give: wait %v, err %v", wait, err)
	}
	if wait, refused, _ := a.Take(ctx, "q.x", paces); wait == 0 || refused != 1 {
		t.Fatalf("a sixth event was admitted (wait %v, pace %d)", wait, refused)
	}
	// The per-second pace refuses on its own when it is the tighter one.
	fast := []shaping.Pace{{Rate: 2, Burst: 2}, {Rate: 1000.0 / 3600, Burst: 1000}}
	for range 2 {
		if wait, _, _ := a.Take(ctx, "q.y", fast); wait != 0 {
			t.Fatal("the burst of 2 was refused")
		}
	}
	if wait, refused, _ := c.Take(ctx, "q.y", fast); refused != 0 || wait <= 0 || wait > time.Second {
		t.Fatalf("third at 2/s: pace %d, wait %v", refused, wait)
	}
}

// With NATS gone Rates falls back to a local share of each pace (a quarter
// of the burst), never no limit, and says so once.
func TestRatesFallBackToLocalShare(t *testing.T) {
	n, b := bucket(t)
	n.Stop()
	var fallbacks atomic.Int32
	r := shaping.NewRates(b, shaping.RatesConfig{OpTimeout: 300 * time.Millisecond, OnFallback: func() { fallbacks.Add(1) },
		Now: func() time.Time { return time.Unix(1_800_000_000, 0) }})
	paces := []shaping.Pace{{}, {Rate: 100.0 / 3600, Burst: 100}}
	took := 0
	for range 40 {
		wait, refused, local := r.Take(context.Background(), "u.x", paces)
		if !local {
			t.Fatal("a decision without the fleet state was not local")
		}
		if wait == 0 {
			took++
		} else if refused != 1 {
			t.Fatalf("refused by pace %d", refused)
		}
	}
	if took != 100/shaping.LocalShareDivisor {
		t.Fatalf("%d admitted on the local share, want %d", took, 100/shaping.LocalShareDivisor)
	}
	if fallbacks.Load() != 1 {
		t.Fatalf("%d fallbacks reported, want 1", fallbacks.Load())
	}
}

// hanging is a Bucket whose reads and writes wait until their context ends
// (a NATS that accepts requests and never answers), counting the calls.
type hanging struct {
	shaping.Bucket
	calls atomic.Int32
}

func (h *hanging) wait(ctx context.Context) error {
	h.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

func (h *hanging) Get(ctx context.Context, _ string) ([]byte, uint64, error) {
	return nil, 0, h.wait(ctx)
}

func (h *hanging) Create(ctx context.Context, _ string, _ []byte, _ time.Duration) (uint64, error) {
	return 0, h.wait(ctx)
}

func (h *hanging) Swap(ctx context.Context, _ string, _ []byte, _ uint64, _ time.Duration) (uint64, error) {
	return 0, h.wait(ctx)
}

// Sessions queued on one key while the bucket hangs go to the local share
// as soon as the first one's round trip times out: one round trip in all,
// not one timeout each in turn (ten MAILs of one sender domain would have
// waited 1, 2, … 10 timeouts).
func TestRatesWaitersSkipAHangingBucket(t *testing.T) {
	h := &hanging{}
	r := shaping.NewRates(h, shaping.RatesConfig{OpTimeout: 200 * time.Millisecond})
	paces := []shaping.Pace{{Rate: 100, Burst: 100}}
	done := make(chan bool, 10)
	for range 10 {
		go func() {
			_, _, local := r.Take(context.Background(), "d.x", paces)
			done <- local
		}()
	}
	for range 10 {
		if !<-done {
			t.Fatal("a Take with the bucket hanging was not decided on the local share")
		}
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("%d round trips to the hanging bucket, want 1 (the waiters behind it go to the local share)", n)
	}
}
