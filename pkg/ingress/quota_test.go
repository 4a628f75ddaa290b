package ingress_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// cuttable is the quota bucket (set once the fixture's NATS runs) with a
// switch that makes it unreachable.
type cuttable struct {
	shaping.Bucket // List, Delete, Watch: unused by the quotas
	inner          atomic.Pointer[shaping.Bucket]
	down           atomic.Bool
	// beforeWrite, when set, is called before each write (Create, Swap)
	// is passed on; writes counts the writes passed on, by key.
	beforeWrite atomic.Pointer[func(key string)]
	mu          sync.Mutex
	writes      map[string]int
}

func (c *cuttable) write(key string) {
	if h := c.beforeWrite.Load(); h != nil {
		(*h)(key)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writes == nil {
		c.writes = map[string]int{}
	}
	c.writes[key]++
}

func (c *cuttable) writesTo(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes[key]
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
	c.write(k)
	return b.Create(ctx, k, v, ttl)
}

func (c *cuttable) Swap(ctx context.Context, k string, v []byte, rev uint64, ttl time.Duration) (uint64, error) {
	b, err := c.get()
	if err != nil {
		return 0, err
	}
	c.write(k)
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
		c.expect(250, "RCPT TO:<r%d@local.test>", i)
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

// quotaFixture is an ingress whose sender quotas are counted in the real
// MAIL_QUOTAS bucket of its nats-server, through c (counts writes, hooks).
func quotaFixture(t *testing.T, senderQuota string, mutate func(*ingress.Config)) (*fixture, *cuttable) {
	t.Helper()
	limit, err := policy.ParseQuotaLimit(senderQuota)
	if err != nil {
		t.Fatal(err)
	}
	bucket := &cuttable{}
	rules := policy.NewQuotas().WithDefaults(&limit, nil)
	f := start(t, func(cfg *ingress.Config) {
		cfg.Quotas = &ingress.Quotas{
			Rules: func() *policy.Quotas { return rules },
			Rates: shaping.NewRates(bucket, shaping.RatesConfig{}),
		}
		if mutate != nil {
			mutate(cfg)
		}
	})
	b, err := f.q.QuotaBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bucket.inner.Store(&b)
	return f, bucket
}

// kvWrites is the last sequence of the MAIL_QUOTAS bucket's stream: every
// write to any key of it (a take, a give-back) is one message.
func kvWrites(t *testing.T, f *fixture) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, "KV_"+shaping.QuotaBucketName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// Security review, defect 1: a client looping MAIL FROM / RSET (with or
// without a recipient, with the same sender or a new one each time) made
// every loop a take and a give-back in MAIL_QUOTAS, for as long as it
// liked: its command rate became KV write load for the whole fleet. Now a
// session may abandon --max-abandoned-transactions transactions before
// DATA; the next MAIL FROM is 421 4.7.0 naming the limit and the session
// ends. And an abandoned transaction's count waits on the session for the
// next MAIL FROM of the same sender instead of going back at once, so
// MAIL/RSET with one sender costs one take and one give-back per session.
func TestQuotaAbandonedTransactionsAreBounded(t *testing.T) {
	limit := ingress.DefaultMaxAbandonedTransactions
	for _, tc := range []struct {
		name      string
		newSender bool // a sender domain of its own each time (its own count: nothing to reuse)
		rcpt      bool // a recipient before the RSET
		maxWrites uint64
	}{
		{name: "MAIL-RSET", maxWrites: 2},
		{name: "MAIL-RCPT-RSET", rcpt: true, maxWrites: 2},
		{name: "new-sender-each-time", newSender: true, rcpt: true, maxWrites: 2 * uint64(limit)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := telemetry.NewMetrics()
			f, _ := quotaFixture(t, "hourly=100000", func(cfg *ingress.Config) { cfg.Metrics = m })
			before := kvWrites(t, f)
			c := dial(t, f.addr)
			c.expect(250, "EHLO client.test")
			var last reply
			n := 0
			for ; n < 10*limit; n++ {
				from := "x@loop.test"
				if tc.newSender {
					from = fmt.Sprintf("x@d%d.loop.test", n)
				}
				if last = c.cmd("MAIL FROM:<%s>", from); last.Code != 250 {
					break
				}
				if tc.rcpt {
					c.expect(250, "RCPT TO:<r@dest.test>")
				}
				c.expect(250, "RSET")
			}
			if last.Code != 421 || n != limit {
				t.Errorf("after %d abandoned transactions MAIL got %v, want 421 after %d", n, last, limit)
			} else {
				if txt := last.Text(); !strings.HasPrefix(txt, "4.7.0 ") || !strings.Contains(txt, "abandoned transactions") || !strings.Contains(txt, strconv.Itoa(limit)) {
					t.Errorf("421 text %q does not name the limit (%d abandoned transactions)", txt, limit)
				}
				c.expectClosed()
			}
			// The session's end gives back the count it held: wait until
			// every take in the bucket has its give-back, then count.
			var got uint64
			waitFor(t, func() bool { got = kvWrites(t, f) - before; return got > 0 && got%2 == 0 })
			t.Logf("%d abandoned transactions, then 421: %d MAIL_QUOTAS writes", n, got)
			if got > tc.maxWrites {
				t.Errorf("%d abandoned transactions cost %d MAIL_QUOTAS writes, want at most %d", n, got, tc.maxWrites)
			}
			if got := metric(t, m, `mailfwd_ingress_limit_refusals_total{limit="abandoned_transactions"}`); got != 1 {
				t.Errorf("limit refusals abandoned_transactions = %v, want 1", got)
			}
		})
	}
}

// A client that sends many messages in one session (RSET between them, as
// some do) abandons nothing: 50 messages, each one take, none refused.
func TestQuotaManyMessagesPerSessionUnaffected(t *testing.T) {
	m := telemetry.NewMetrics()
	f, _ := quotaFixture(t, "hourly=100000", func(cfg *ingress.Config) { cfg.Metrics = m })
	before := kvWrites(t, f)
	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	const messages = 50
	for i := range messages {
		c.expect(250, "RSET")
		c.expect(250, "MAIL FROM:<app@many.test>")
		c.expect(250, "RCPT TO:<r%d@dest.test>", i)
		if r := c.sendData("Subject: many\r\n\r\nbody\r\n"); r.Code != 250 {
			t.Fatalf("message %d: %v", i, r)
		}
	}
	c.expect(250, "NOOP")
	c.expect(221, "QUIT")
	if got := kvWrites(t, f) - before; got != messages {
		t.Errorf("%d messages cost %d MAIL_QUOTAS writes, want %d (one take each, nothing given back)", messages, got, messages)
	}
	if got := metric(t, m, `mailfwd_ingress_limit_refusals_total{limit="abandoned_transactions"}`); got != 0 {
		t.Errorf("limit refusals abandoned_transactions = %v, want 0", got)
	}
}

// Security review, defect 2: MAIL FROM takes its quotas one after the
// other (the AUTH user's, then the sender domain's) and recorded the charge
// on the session only once all were taken. A session forced to end in
// between (here: a panic in the second take, which go-smtp answers with
// 421 and a logout) gave nothing back: the user's count leaked. Now each
// count is on the session as soon as it is taken.
func TestQuotaForcedLogoutMidTakeGivesBack(t *testing.T) {
	userLimit, err := policy.ParseQuotaLimit("hourly=2")
	if err != nil {
		t.Fatal(err)
	}
	senderLimit, err := policy.ParseQuotaLimit("hourly=1000")
	if err != nil {
		t.Fatal(err)
	}
	bucket := &cuttable{}
	rules := policy.NewQuotas().WithDefaults(&senderLimit, &userLimit)
	f := startAuth(t, true, 5, func(cfg *ingress.Config) {
		cfg.Quotas = &ingress.Quotas{
			Rules: func() *policy.Quotas { return rules },
			Rates: shaping.NewRates(bucket, shaping.RatesConfig{}),
		}
	})
	b, err := f.q.QuotaBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bucket.inner.Store(&b)
	const userKey, domainKey = "u.app1", "d.app.test"
	hook := func(key string) {
		if key == domainKey {
			panic("forced end of the session between two quota takes")
		}
	}
	bucket.beforeWrite.Store(&hook)

	c := f.authTLS(t)
	c.expect(235, "%s", plainAuth("app1", goodPass))
	if r := c.cmd("MAIL FROM:<a@app.test>"); r.Code != 421 {
		t.Fatalf("MAIL with the second take failing: %v, want 421", r)
	}
	c.expectClosed()
	if bucket.writesTo(userKey) == 0 || bucket.writesTo(domainKey) != 0 {
		t.Fatalf("writes: user %d, domain %d; want the user's take, not the domain's", bucket.writesTo(userKey), bucket.writesTo(domainKey))
	}
	waitFor(t, func() bool { return bucket.writesTo(userKey) == 2 }) // the take, and its give-back
	bucket.beforeWrite.Store(nil)

	// The user's whole quota (hourly=2) is there for the next session.
	c = f.authTLS(t)
	c.expect(235, "%s", plainAuth("app1", goodPass))
	for i := range 2 {
		c.expect(250, "MAIL FROM:<a@app.test>")
		c.expect(250, "RCPT TO:<r%d@local.test>", i)
		if r := c.sendData("Subject: q\r\n\r\nbody\r\n"); r.Code != 250 {
			t.Fatalf("message %d: %v", i, r)
		}
	}
	if r := c.cmd("MAIL FROM:<a@app.test>"); r.Code != 450 {
		t.Fatalf("third MAIL: %v, want 450 (user quota hourly=2)", r)
	}
}

// Security review, defect 2 (the process's end): Shutdown at its deadline
// closes the sessions still open and returned at once, while a closed
// session could still be inside its quota take, its give-back still to
// come; the daemon then closed NATS and exited, and the count stayed
// taken. Now Shutdown waits (a few seconds at most) for the closed
// sessions to have ended, their counts given back.
func TestQuotaForcedShutdownGivesBackBeforeReturning(t *testing.T) {
	f, bucket := quotaFixture(t, "hourly=10", nil)
	const key = "d.shut.test"
	entered, release := make(chan struct{}), make(chan struct{})
	var first sync.Once
	hook := func(k string) {
		if k != key {
			return
		}
		first.Do(func() { // the take: held until the session is closed
			close(entered)
			<-release
		})
	}
	bucket.beforeWrite.Store(&hook)
	waiting := make(chan struct{})
	ingress.SetClosedWaitHook(func() { close(waiting) })
	t.Cleanup(func() { ingress.SetClosedWaitHook(nil) })

	c := dial(t, f.addr)
	c.expect(250, "EHLO client.test")
	if err := c.writeLine("MAIL FROM:<a@shut.test>"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("MAIL FROM never reached its quota take")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the drain deadline has passed: open sessions are closed
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(ctx) }()
	c.expectClosed()
	// Release the take once Shutdown waits for the closed session, or
	// has returned without waiting (the defect).
	select {
	case <-waiting:
	case err := <-done:
		close(release)
		t.Fatalf("Shutdown returned (%v) while a closed session was still inside its quota take", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if w := bucket.writesTo(key); w != 2 {
		t.Fatalf("when Shutdown returned, %s had %d writes; want 2 (the take and its give-back)", key, w)
	}
}
