package shaping_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func bucket(t *testing.T) (*testenv.NATS, shaping.Bucket) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := testenv.StartNATS(t)
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := q.ShapingBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n, b
}

var dest = shaping.Dest{Key: "d.dest.test", Name: "dest.test", Limit: shaping.Limit{Concurrency: 2}}

// Two shapers (two workers) share two slots; the slots of one that stops
// refreshing (a killed pod) come back by expiry, those released at once.
func TestSlotsAreSharedAndExpire(t *testing.T) {
	_, b := bucket(t)
	ctx := context.Background()
	a := shaping.New(b, shaping.Config{Owner: "a", LeaseTTL: 2 * time.Second})
	c := shaping.New(b, shaping.Config{Owner: "c", LeaseTTL: 2 * time.Second})
	l1, den := a.Acquire(ctx, []shaping.Dest{dest})
	if den != nil {
		t.Fatalf("first slot: %+v", den)
	}
	l2, den := c.Acquire(ctx, []shaping.Dest{dest})
	if den != nil {
		t.Fatalf("second slot: %+v", den)
	}
	if _, den := c.Acquire(ctx, []shaping.Dest{dest}); den == nil || den.Reason != "concurrency" {
		t.Fatalf("a third slot of two was granted: %+v", den)
	}
	l2.Release()
	if _, den := c.Acquire(ctx, []shaping.Dest{dest}); den != nil {
		t.Fatalf("a released slot did not come back: %+v", den)
	}
	// a "dies": l1 is neither refreshed nor released; it expires.
	_ = l1
	deadline := time.Now().Add(30 * time.Second)
	for {
		if l, den := c.Acquire(ctx, []shaping.Dest{dest}); den == nil {
			l.Release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dead holder's slot never expired")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A refreshed slot outlives its TTL.
func TestRefreshKeepsSlots(t *testing.T) {
	_, b := bucket(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := shaping.New(b, shaping.Config{Owner: "a", LeaseTTL: 2 * time.Second})
	go a.Run(ctx)
	one := shaping.Dest{Key: "d.one.test", Name: "one.test", Limit: shaping.Limit{Concurrency: 1}}
	l, den := a.Acquire(ctx, []shaping.Dest{one})
	if den != nil {
		t.Fatal(den)
	}
	defer l.Release()
	c := shaping.New(b, shaping.Config{Owner: "c"})
	end := time.Now().Add(5 * time.Second) // over two TTLs
	for time.Now().Before(end) {
		if l, den := c.Acquire(ctx, []shaping.Dest{one}); den == nil {
			l.Release()
			t.Fatal("a refreshed slot was taken by another worker")
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// GCRA over the bucket: at 1/s with no burst, two shapers together get
// one message, then are told to wait (at most the interval).
func TestRateIsShared(t *testing.T) {
	_, b := bucket(t)
	ctx := context.Background()
	r := shaping.Dest{Key: "d.rate.test", Name: "rate.test", Limit: shaping.Limit{Rate: 1}}
	a := shaping.New(b, shaping.Config{Owner: "a"})
	c := shaping.New(b, shaping.Config{Owner: "c"})
	if _, den := a.Acquire(ctx, []shaping.Dest{r}); den != nil {
		t.Fatal(den)
	}
	den := func() *shaping.Denied { _, d := c.Acquire(ctx, []shaping.Dest{r}); return d }()
	if den == nil || den.Reason != "rate" || den.After <= 0 || den.After > time.Second {
		t.Fatalf("second message at 1/s: %+v", den)
	}
}

// With NATS gone the shaper falls back to a local share: a quarter of the
// concurrency (at least one), never unlimited.
func TestUnreachableFallsBackToLocalShare(t *testing.T) {
	n, b := bucket(t)
	n.Stop()
	ctx := context.Background()
	s := shaping.New(b, shaping.Config{Owner: "a", OpTimeout: 500 * time.Millisecond})
	eight := shaping.Dest{Key: "d.eight.test", Name: "eight.test", Limit: shaping.Limit{Concurrency: 8}}
	granted := 0
	for range 10 {
		if _, den := s.Acquire(ctx, []shaping.Dest{eight}); den == nil {
			granted++
		}
	}
	if granted != 8/shaping.LocalShareDivisor {
		t.Fatalf("%d slots granted without the fleet state, want the local share %d", granted, 8/shaping.LocalShareDivisor)
	}
}

// New connections: Acquire only looks at the pace (admitting many
// deliveries does not spend it; they may reuse connections), TakeConn
// spends it, shared by the fleet: at 1/s, one shaper's connection makes
// the other's wait, and its admission too.
func TestNewConnsAreShared(t *testing.T) {
	_, b := bucket(t)
	ctx := context.Background()
	d := shaping.Dest{Key: "d.conns.test", Name: "conns.test", Limit: shaping.Limit{NewConns: 1}}
	a := shaping.New(b, shaping.Config{Owner: "a"})
	c := shaping.New(b, shaping.Config{Owner: "c"})
	for range 3 {
		l, den := a.Acquire(ctx, []shaping.Dest{d})
		if den != nil {
			t.Fatalf("admission spent the connection pace: %+v", den)
		}
		l.Release()
	}
	if rest, wait, err := a.TakeConn(ctx, []shaping.Dest{d}); err != nil || rest != nil || wait != 0 {
		t.Fatalf("first connection: rest %v, wait %v, %v", rest, wait, err)
	}
	rest, wait, err := c.TakeConn(ctx, []shaping.Dest{d})
	if err != nil || len(rest) != 1 || wait <= 0 || wait > time.Second {
		t.Fatalf("second connection at 1/s from another shaper: rest %v, wait %v, %v", rest, wait, err)
	}
	if _, den := c.Acquire(ctx, []shaping.Dest{d}); den == nil || den.Reason != "new-connections" {
		t.Fatalf("admission while no connection is due: %+v", den)
	}
}

// clock is a settable time for the paces.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// A domain and its next hop both limited in new connections (1/s each),
// on the fleet state: when the hop's step is refused after the domain's
// was taken (another worker took the hop's after this one last saw it),
// TakeConn returns the hop alone as still to take, and asking again for it
// leaves the domain's pace at one connection spent: the domain's next is
// due one interval after the first, not two.
func TestTakeConnAsksAgainOnlyForTheRest(t *testing.T) {
	_, b := bucket(t)
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	dom := shaping.Dest{Key: "d.dom.test", Name: "dom.test", Limit: shaping.Limit{NewConns: 1}}
	hop := shaping.Dest{Key: "h.hop.test", Name: "[hop.test]", Limit: shaping.Limit{NewConns: 1}}
	a := shaping.New(b, shaping.Config{Owner: "a", Now: clk.Now})
	c := shaping.New(b, shaping.Config{Owner: "c", Now: clk.Now})
	if rest, _, _ := a.TakeConn(ctx, []shaping.Dest{hop}); rest != nil {
		t.Fatal("the hop's first connection was refused")
	}
	clk.add(time.Second) // a's view: the hop is due again
	if rest, _, _ := c.TakeConn(ctx, []shaping.Dest{hop}); rest != nil {
		t.Fatal("the other worker's connection to the hop was refused")
	}
	rest, wait, err := a.TakeConn(ctx, []shaping.Dest{dom, hop})
	if err != nil || len(rest) != 1 || rest[0] != hop || wait <= 0 || wait > time.Second {
		t.Fatalf("domain taken, hop refused: rest %v, wait %v, %v", rest, wait, err)
	}
	clk.add(wait)
	if rest, wait, err := a.TakeConn(ctx, rest); err != nil || rest != nil {
		t.Fatalf("the hop after its wait: rest %v, wait %v, %v", rest, wait, err)
	}
	clk.add(time.Second - wait)
	if rest, wait, err := c.TakeConn(ctx, []shaping.Dest{dom}); err != nil || rest != nil {
		t.Fatalf("the domain's next connection one interval after its first: rest %v, wait %v, %v", rest, wait, err)
	}
}

// The same on the local share (NATS down): while the hop is not due,
// TakeConn takes nothing (it looks at every pace first) and returns both;
// the domain's step is still there after.
func TestTakeConnLocalShareTakesNoneWhileOneIsNotDue(t *testing.T) {
	n, b := bucket(t)
	n.Stop()
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	// At 4/s the local share is 1/s.
	dom := shaping.Dest{Key: "d.dom.test", Name: "dom.test", Limit: shaping.Limit{NewConns: shaping.LocalShareDivisor}}
	hop := shaping.Dest{Key: "h.hop.test", Name: "[hop.test]", Limit: shaping.Limit{NewConns: shaping.LocalShareDivisor}}
	a := shaping.New(b, shaping.Config{Owner: "a", Now: clk.Now, OpTimeout: 500 * time.Millisecond})
	if rest, _, _ := a.TakeConn(ctx, []shaping.Dest{hop}); rest != nil {
		t.Fatal("the hop's first connection on the local share was refused")
	}
	rest, wait, err := a.TakeConn(ctx, []shaping.Dest{dom, hop})
	if err != nil || len(rest) != 2 || wait <= 0 || wait > time.Second {
		t.Fatalf("while the hop is not due: rest %v, wait %v, %v", rest, wait, err)
	}
	clk.add(wait)
	if rest, wait, err := a.TakeConn(ctx, rest); err != nil || rest != nil {
		t.Fatalf("both after the wait: rest %v, wait %v, %v", rest, wait, err)
	}
	if rest, _, _ := a.TakeConn(ctx, []shaping.Dest{dom}); rest == nil {
		t.Fatal("the domain's local pace gave two connections at once at 1/s")
	}
}
