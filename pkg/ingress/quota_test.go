package ingress_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// cuttable is the quota bucket (set once the fixture's NATS runs) with a
// switch that makes it unreachable.
type cuttable struct {
	shaping.Bucket // List, Delete, Watch: unused by the quotas
	inner          atomic.Pointer[shaping.Bucket]
	down           atomic.Bool
}

var errCut = errors.New("quota bucket cut by the test")

func (c *cuttable) get() (shaping.Bucket, error) {
	b := c.inner.Load()
	if b == nil || c.down.Load() {
		return nil, errCut
	}
	return *b, nil
}

func (c *cuttable) Create(ctx context.Context, k string, v []byte, ttl time.Duration) (uint64, error) {
	b, err := c.get()
	if err != nil {
		return 0, err
	}
	return b.Create(ctx, k, v, ttl)
}

func (c *cuttable) Swap(ctx context.Context, k string, v []byte, rev uint64, ttl time.Duration) (uint64, error) {
	b, err := c.get()
	if err != nil {
		return 0, err
	}
	return b.Swap(ctx, k, v, rev, ttl)
}

func (c *cuttable) Get(ctx context.Context, k string) ([]byte, uint64, error) {
	b, err := c.get()
	if err != nil {
		return nil, 0, err
	}
	return b.Get(ctx, k)
}

// A message counted on the local share while the quota state was
// unreachable is not given back to the fleet's count when its transaction
// ends without a 250 after NATS answers again (docs/quotas.md: a local
// share's message stays counted). Given back, it freed a message of a
// spent fleet quota.
func TestQuotaLocalCountIsNotGivenBackToTheFleet(t *testing.T) {
	limit, err := policy.ParseQuotaLimit("hourly=4")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	bucket := &cuttable{}
	rules := policy.NewQuotas().WithDefaults(&limit, nil)
	f := start(t, func(cfg *ingress.Config) {
		cfg.Quotas = &ingress.Quotas{
			Rules: func() *policy.Quotas { return rules },
			Rates: shaping.NewRates(bucket, shaping.RatesConfig{Now: clock, OpTimeout: time.Second}),
		}
	})
	b, err := f.q.QuotaBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bucket.inner.Store(&b)

	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	for i := range 4 { // the fleet's hourly=4, spent
		c.expect(250, "MAIL FROM:<a@quota.test>")
		c.expect(250, "RCPT TO:<r%d@dest.test>", i)
		if r := c.sendData("Subject: q\r\n\r\nbody\r\n"); r.Code != 250 {
			t.Fatalf("message %d: %v", i, r)
		}
	}
	c.expect(450, "MAIL FROM:<a@quota.test>")

	bucket.down.Store(true) // NATS unreachable: the local share (a quarter: 1) counts
	c.expect(250, "MAIL FROM:<a@quota.test>")
	bucket.down.Store(false) // NATS answers again, after the fallback's 5 s
	mu.Lock()
	now = now.Add(6 * time.Second)
	mu.Unlock()
	c.expect(250, "RSET") // ends the locally counted transaction without a 250

	if r := c.cmd("MAIL FROM:<a@quota.test>"); r.Code != 450 {
		t.Fatalf("MAIL after the local count was ended: %v, want 450 (the fleet's quota is still spent)", r)
	}
}
