package queue_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// A daemon that starts before its state bucket exists (NATS up, not yet
// bootstrapped) keeps local shares until the bucket appears, then counts
// fleet-wide again without a restart. Before, it kept the local share
// until restarted.
func TestLazyQuotaBucketOpensWhenBootstrapped(t *testing.T) {
	old := queue.BucketRetry
	queue.BucketRetry = 20 * time.Millisecond
	t.Cleanup(func() { queue.BucketRetry = old })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, _ := queue.ConnectTest(t, ctx, queue.Config{})

	b, err := q.LazyQuotaBucket(ctx)
	if err == nil || b == nil {
		t.Fatalf("before bootstrap: bucket %v, err %v; want a bucket that opens later and the reason", b, err)
	}
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	r := shaping.NewRates(b, shaping.RatesConfig{Now: clock})
	paces := []shaping.Pace{{Rate: 100, Burst: 100}}
	if _, _, local := r.Take(ctx, "d.example.com", paces); !local {
		t.Fatal("a quota taken before the bucket exists was not counted on the local share")
	}

	watched := make(chan string, 1)
	go func() {
		_ = b.Watch(ctx, "", func(key string, val []byte) {
			if val != nil {
				select {
				case watched <- key:
				default:
				}
			}
		})
	}()

	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * queue.BucketRetry)
	now.Add(int64(time.Minute)) // past the local share's degraded period
	if _, _, local := r.Take(ctx, "d.example.com", paces); local {
		t.Fatal("once the bucket exists, quotas are still counted on the local share")
	}
	if _, _, err := b.Get(ctx, "d.example.com"); err != nil {
		t.Fatalf("the fleet's count is not in the bucket: %v", err)
	}
	select {
	case key := <-watched:
		if key != "d.example.com" {
			t.Fatalf("the watch saw %q", key)
		}
	case <-ctx.Done():
		t.Fatal("a watch started before the bucket existed never saw its keys")
	}
}
