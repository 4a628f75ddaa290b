package queue_test

import (
	"context"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/rs/xid"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

func scanIDs(t *testing.T, q *queue.Queue, f queue.Filter) []string {
	t.Helper()
	var ids []string
	if err := q.Scan(ctxT(t), f, func(e queue.Entry) error {
		ids = append(ids, string(e.State)+":"+e.Env.QueueID+"@"+e.Env.Domain)
		return nil
	}); err != nil {
		t.Fatalf("scan: %v", err)
	}
	sort.Strings(ids)
	return ids
}

// seed: q1 ready to a.test and sub.a.test; q2 deferred to a.test and b.test
// (sender x@s2.test); q3 deferred to c.test.
func seed(t *testing.T, f *fixture) {
	t.Helper()
	ctx := ctxT(t)
	if err := f.q.Enqueue(ctx, newEnvelopes("q1", "a.test", "sub.a.test")); err != nil {
		t.Fatal(err)
	}
	f.fannedOut(t)
	later := time.Now().Add(time.Hour)
	for i, e := range newEnvelopes("q2", "a.test", "b.test") {
		e.From = "x@s2.test"
		if err := f.q.Defer(ctx, e, later, "q2-"+string(rune('0'+i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range newEnvelopes("q3", "c.test") {
		if err := f.q.Defer(ctx, e, later, "q3"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScanFilters(t *testing.T) {
	f := setup(t)
	seed(t, f)
	for _, tc := range []struct {
		name   string
		filter queue.Filter
		want   []string
	}{
		{"all", queue.Filter{}, []string{"deferred:q2@a.test", "deferred:q2@b.test", "deferred:q3@c.test", "ready:q1@a.test", "ready:q1@sub.a.test"}},
		{"domain and subdomains", queue.Filter{Domains: []string{"a.test"}}, []string{"deferred:q2@a.test", "ready:q1@a.test", "ready:q1@sub.a.test"}},
		{"subdomain only", queue.Filter{Domains: []string{"sub.a.test"}}, []string{"ready:q1@sub.a.test"}},
		{"not domain", queue.Filter{NotDomains: []string{"a.test"}}, []string{"deferred:q2@b.test", "deferred:q3@c.test"}},
		{"state", queue.Filter{States: []queue.State{queue.StateDeferred}, Domains: []string{"A.TEST"}}, []string{"deferred:q2@a.test"}},
		{"sender substring (-qS)", queue.Filter{Senders: []string{"S2.test"}}, []string{"deferred:q2@a.test", "deferred:q2@b.test"}},
		{"not sender (-q!S)", queue.Filter{NotSenders: []string{"s2.test"}}, []string{"deferred:q3@c.test", "ready:q1@a.test", "ready:q1@sub.a.test"}},
		{"id (-qI)", queue.Filter{IDs: []string{"q3"}}, []string{"deferred:q3@c.test"}},
		{"recipient substring (-qR)", queue.Filter{Recipients: []string{"@b.te"}}, []string{"deferred:q2@b.test"}},
		{"not recipient (-q!R)", queue.Filter{NotRecipients: []string{"a.test"}}, []string{"deferred:q2@b.test", "deferred:q3@c.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := scanIDs(t, f.q, tc.filter)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
		})
	}
	if err := f.q.Scan(ctxT(t), queue.Filter{Domains: []string{"bad..domain"}}, func(queue.Entry) error { return nil }); err == nil {
		t.Fatal("bad domain in filter accepted")
	}
}

func TestStats(t *testing.T) {
	f := setup(t)
	seed(t, f)
	s, err := f.q.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Total != 5 || s.ByState[queue.StateReady] != 2 || s.ByState[queue.StateDeferred] != 3 || s.ByState[queue.StateHeld] != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if s.Pending != 2 {
		t.Errorf("consumer pending = %d, want 2 (deferred mail must not count as ready work)", s.Pending)
	}
	counts := map[string]int{}
	for _, dc := range s.ByDomain {
		counts[dc.Domain] = dc.Total
	}
	if counts["a.test"] != 2 || counts["sub.a.test"] != 1 || counts["b.test"] != 1 || counts["c.test"] != 1 {
		t.Fatalf("by domain = %v", counts)
	}
	if s.Oldest[queue.StateReady].IsZero() || s.Oldest[queue.StateDeferred].IsZero() {
		t.Fatalf("oldest not set: %v", s.Oldest)
	}
}

func TestMakeDueFlushesOnlyTheMatch(t *testing.T) {
	f := setup(t)
	seed(t, f)
	// Drain the ready ones first.
	for _, j := range f.fetch(t, 10, time.Second) {
		_ = j.Ack(ctxT(t))
	}
	n := 0
	err := f.q.Scan(ctxT(t), queue.Filter{States: []queue.State{queue.StateDeferred}, Domains: []string{"b.test"}}, func(e queue.Entry) error {
		n++
		return f.q.MakeDue(ctxT(t), e)
	})
	if err != nil || n != 1 {
		t.Fatalf("flush matched %d, err %v", n, err)
	}
	var got []*queue.Job
	deadline := time.Now().Add(10 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) {
		got = append(got, f.fetch(t, 10, time.Second)...)
	}
	if len(got) != 1 || got[0].Env.Domain != "b.test" || got[0].Env.QueueID != "q2" {
		t.Fatalf("after flush of b.test got %d jobs: %+v", len(got), got)
	}
	_ = got[0].Ack(ctxT(t))
	if more := f.fetch(t, 10, 1500*time.Millisecond); len(more) != 0 {
		t.Fatalf("flush released other mail too: %d jobs (%s)", len(more), more[0].Env.Domain)
	}
	if ids := scanIDs(t, f.q, queue.Filter{}); !slices.Equal(ids, []string{"deferred:q2@a.test", "deferred:q3@c.test"}) {
		t.Fatalf("left in the queue: %v", ids)
	}
}

func TestHoldMoveAndRequeue(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	if _, err := f.q.SetHold(ctx, "Held.Test", "operator down"); err != nil {
		t.Fatal(err)
	}
	holds, err := f.q.Holds(ctx)
	if err != nil || len(holds) != 1 || holds[0].Domain != "held.test" || holds[0].Reason != "operator down" {
		t.Fatalf("holds = %+v, %v", holds, err)
	}
	if !queue.IsHeld(map[string]queue.Hold{"x": holds[0]}, "mx.held.test") || queue.IsHeld(map[string]queue.Hold{"x": holds[0]}, "notheld.test") {
		t.Fatal("IsHeld does not cover exactly the domain and its subdomains")
	}

	// The watcher sees the current set, then changes.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	updates := make(chan map[string]queue.Hold, 10)
	go f.q.WatchHolds(wctx, func(m map[string]queue.Hold) { updates <- m })
	select {
	case m := <-updates:
		if len(m) != 1 {
			t.Fatalf("initial holds %v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no initial holds from the watcher")
	}

	env := newEnvelopes("q9", "held.test")[0]
	if err := f.q.MoveToHeld(ctx, env, "h1"); err != nil {
		t.Fatal(err)
	}
	var held []queue.Entry
	if err := f.q.Scan(ctx, queue.Filter{States: []queue.State{queue.StateHeld}}, func(e queue.Entry) error { held = append(held, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Env.HeldAt.IsZero() || held[0].Subject != "mail.held.test.held.q9" {
		t.Fatalf("held = %+v", held)
	}
	if jobs := f.fetch(t, 5, 500*time.Millisecond); len(jobs) != 0 {
		t.Fatal("held mail is visible to the workers")
	}
	if ok, err := f.q.ClearHold(ctx, "held.test"); !ok || err != nil {
		t.Fatalf("clear hold: %v %v", ok, err)
	}
	select {
	case m := <-updates:
		if len(m) != 0 {
			t.Fatalf("holds after release %v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watcher missed the release")
	}
	e2 := *held[0].Env
	e2.HeldAt = time.Time{}
	e2.ExpireAt = time.Now().Add(10 * 24 * time.Hour)
	if err := f.q.Requeue(ctx, held[0], &e2); err != nil {
		t.Fatal(err)
	}
	jobs := f.fetch(t, 5, 2*time.Second)
	if len(jobs) != 1 || jobs[0].Env.QueueID != "q9" || jobs[0].Env.ExpireAt.IsZero() {
		t.Fatalf("after requeue: %+v", jobs)
	}
	if ids := scanIDs(t, f.q, queue.Filter{States: []queue.State{queue.StateHeld}}); len(ids) != 0 {
		t.Fatalf("held copy left behind: %v", ids)
	}
}

func TestDeadline(t *testing.T) {
	arr := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := envelope.Envelope{Arrived: arr}
	if got := e.Deadline(5 * 24 * time.Hour); !got.Equal(arr.Add(5 * 24 * time.Hour)) {
		t.Fatalf("deadline %v", got)
	}
	e.ExpireAt = arr.Add(10 * 24 * time.Hour)
	if got := e.Deadline(5 * 24 * time.Hour); !got.Equal(e.ExpireAt) {
		t.Fatalf("extended deadline %v", got)
	}
}

// Issue 20 defect 1: OLDEST is the age since the envelope arrived, not since
// its stream copy was last rewritten (every deferral and hold rewrites it).
// A message that arrived three hours ago and was deferred several times
// after a newer one was deferred must still be the oldest deferred one, at
// its arrival time; once held, the oldest held one too.
func TestStatsOldestIsAgeFromArrival(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	later := time.Now().Add(time.Hour)
	arrived := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	young := newEnvelopes(envelope.NewQueueID(), "young.test")[0]
	if err := f.q.Defer(ctx, young, later, "y"); err != nil {
		t.Fatal(err)
	}
	old := newEnvelopes(xid.NewWithTime(arrived).String(), "old.test")[0]
	old.Arrived = arrived
	for i := range 3 { // deferred again and again: each copy is newer in the stream
		if err := f.q.Defer(ctx, old, later, "o"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := f.q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Oldest[queue.StateDeferred]; !got.Equal(arrived) {
		t.Errorf("oldest deferred = %v, want its arrival %v (not the time of its last deferral)", got, arrived)
	}
	if err := f.q.MoveToHeld(ctx, old, "h"); err != nil {
		t.Fatal(err)
	}
	if s, err = f.q.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.Oldest[queue.StateHeld]; !got.Equal(arrived) {
		t.Errorf("oldest held = %v, want its arrival %v (not the time of the hold)", got, arrived)
	}
	// Per destination, for the busiest ones (what the metrics export).
	if s, err = f.q.StatsTop(ctx, 2); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, dc := range s.ByDomain {
		if dc.Domain == "old.test" {
			found = true
			if got := dc.Oldest[queue.StateHeld]; !got.Equal(arrived) {
				t.Errorf("old.test oldest held = %v, want %v", got, arrived)
			}
		}
	}
	if !found {
		t.Errorf("old.test not among the destinations: %+v", s.ByDomain)
	}
}

// One holder at a time; a holder renews; another takes over once the lease
// ran out or was dropped.
func TestLease(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	if err := f.q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	take := func(holder string, ttl time.Duration) bool {
		t.Helper()
		ok, err := f.q.TryLease(ctx, "stats", holder, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !take("a", time.Hour) || !take("a", time.Hour) {
		t.Fatal("a could not take and renew a free lease")
	}
	if take("b", time.Hour) {
		t.Fatal("b took a lease a holds")
	}
	if !take("a", -time.Second) { // a renews it into the past: it has run out
		t.Fatal("a could not renew")
	}
	if !take("b", time.Hour) || take("a", time.Hour) {
		t.Fatal("b did not take over an expired lease, or a still has it")
	}
	if err := f.q.DropLease(ctx, "stats", "b"); err != nil {
		t.Fatal(err)
	}
	if !take("a", time.Hour) {
		t.Fatal("a could not take a dropped lease")
	}
}

// BenchmarkStatsTop is the cost of one computation of the fleet's queue
// metrics with 10,000 deferred envelopes over 100 destinations:
// go test -run '^$' -bench StatsTop ./pkg/queue
func BenchmarkStatsTop(b *testing.B) {
	f := setup(b)
	ctx := context.Background()
	later := time.Now().Add(time.Hour)
	for i := range 10000 {
		e := newEnvelopes(envelope.NewQueueID(), "d"+strconv.Itoa(i%100)+".test")[0]
		if err := f.q.Defer(ctx, e, later, "b"); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		s, err := f.q.StatsTop(ctx, 20)
		if err != nil || s.ByState[queue.StateDeferred] != 10000 {
			b.Fatalf("%v %v", err, s)
		}
	}
}
