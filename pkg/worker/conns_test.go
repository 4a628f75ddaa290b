package worker

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// throttleCount records the shaper's throttles by destination.
type throttleCount struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *throttleCount) Throttled(dest, limit string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[dest+" "+limit]++
}
func (c *throttleCount) Suspended(map[string]float64) {}
func (c *throttleCount) Leases(int)                   {}
func (c *throttleCount) LocalFallback()               {}

func (c *throttleCount) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// A recipient domain limited in new connections whose next hop is limited
// too: each connection opened spends one of the domain's steps, however
// often the hop's pace made the dial wait. The domain's pace is 1/h with a
// burst of 10, so its value in the fleet state counts the steps taken for
// the whole test (nothing is paid back in the test's seconds). Another
// worker takes the hop's step before each dial, so the hop refuses.
// (Before, every refused retry took the domain's step again: a domain
// whose hop was the binding limit got fewer connections than its pace.)
func TestShapedDialTakesDomainStepPerConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, q := bootstrapped(t, ctx)
	b, err := q.ShapingBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rules := shaping.NewRules()
	if err := rules.Add("dest.test", "new-conns=1/h,conn-burst=10", 1); err != nil {
		t.Fatal(err)
	}
	if err := rules.Add("[127.0.0.1]", "new-conns=2/s", 2); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	tc := &throttleCount{n: map[string]int{}}
	sh := shaping.New(b, shaping.Config{Owner: "w1", Metrics: tc})
	other := shaping.New(b, shaping.Config{Owner: "w2"})
	rulesOf := func() *shaping.Rules { return rules }
	dial := ShapedDial(func() *shaping.Shaper { return sh }, rulesOf, nil)
	otherDial := ShapedDial(func() *shaping.Shaper { return other }, rulesOf, nil)
	const conns = 4
	opened := 0
	for range conns {
		// Another worker's connection to the hop, for no limited domain.
		c, err := otherDial(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		c, err = dial(withDialDest(ctx, "dest.test", nil), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		opened++
	}
	if tc.get("[127.0.0.1] new-connections") == 0 {
		t.Fatal("the hop's pace never made a dial wait: the scenario did not hold")
	}
	val, _, err := b.Get(ctx, "c.d.dest.test")
	if err != nil {
		t.Fatal(err)
	}
	tat := shaping.ReadTATs(val, 1)[0]
	used := shaping.Pace{Rate: 1.0 / 3600, Burst: 10}.State(tat, time.Now()).Used
	if used != opened {
		t.Fatalf("the domain's pace counts %d new connections, %d were opened (hop throttled %d times)",
			used, opened, tc.get("[127.0.0.1] new-connections"))
	}
}
