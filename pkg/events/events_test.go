package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

type rig struct {
	n   *testenv.NATS
	q   *queue.Queue
	pub *events.Publisher
	st  jetstream.Stream
}

func start(t testing.TB, cfg events.PublisherConfig) *rig {
	t.Helper()
	r := &rig{n: testenv.StartNATS(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	r.q, err = queue.Connect(ctx, queue.Config{URL: r.n.URL(), ClientName: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.q.Close)
	if err := r.q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	r.pub = events.NewPublisher(cfg)
	if err := r.q.StartEvents(r.pub, cfg.MaxPending); err != nil {
		t.Fatal(err)
	}
	if r.st, err = r.q.EventStream(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) flush(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r.pub.Close(ctx)
}

func (r *rig) stored(t *testing.T, f events.Filter) []events.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []events.Event
	if err := events.Follow(ctx, r.st, f, events.FollowOptions{All: true, Stop: true}, func(s events.Stored) error {
		out = append(out, s.Event)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func sample() []events.Event {
	return []events.Event{
		{Type: events.Received, QueueID: "q1", Sender: "app@src.test", Recipient: "a@example.net", Destination: "example.net"},
		{Type: events.Deferred, QueueID: "q1", Sender: "app@src.test", Recipient: "a@example.net", Destination: "example.net", DSN: "4.4.1", Reply: "451 try later", Attempt: 1},
		{Type: events.Received, QueueID: "q2", Sender: "other@src.test", Recipient: "b@mx.sub.example.net", Destination: "mx.sub.example.net"},
		{Type: events.Delivered, QueueID: "q2", Sender: "other@src.test", Recipient: "b@mx.sub.example.net", Destination: "mx.sub.example.net", DSN: "2.0.0", TLS: "TLSv1.3"},
		{Type: events.Received, QueueID: "q3", Sender: "app@src.test", Recipient: "c@example.org", Destination: "example.org"},
		{Type: events.Delivered, QueueID: "q1", Sender: "app@src.test", Recipient: "a@example.net", Destination: "example.net", DSN: "2.0.0", Attempt: 2},
		{Type: events.Audit, Action: "queue.flush", Actor: "ops", Target: "domain=example.net", Matched: 1},
	}
}

func ids(evs []events.Event) []string {
	return keyed(evs, func(e events.Event) string { return e.QueueID })
}

// keyed is "type:key(e)" for each event.
func keyed(evs []events.Event, key func(events.Event) string) []string {
	var out []string
	for _, e := range evs {
		out = append(out, string(e.Type)+":"+key(e))
	}
	return out
}

// rawJS is a JetStream client of the rig's server of its own, for
// publishing what a Publisher would not.
func (r *rig) rawJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(r.n.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestPublishAndFilter(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	for _, ev := range sample() {
		r.pub.Emit(ev)
	}
	r.flush(t)

	all := r.stored(t, events.Filter{})
	if len(all) != len(sample()) {
		t.Fatalf("stored %v, want %d events", ids(all), len(sample()))
	}
	for _, ev := range all {
		if err := ev.Valid(); err != nil || ev.Schema != events.Schema || ev.Source == "" {
			t.Fatalf("event %+v: %v", ev, err)
		}
	}
	for _, tc := range []struct {
		name string
		f    events.Filter
		want []string
	}{
		{"domain and subdomains", events.Filter{Domains: []string{"Example.NET"}},
			[]string{"received:q1", "deferred:q1", "received:q2", "delivered:q2", "delivered:q1"}},
		{"outcome", events.Filter{Types: []events.Type{events.Delivered}}, []string{"delivered:q2", "delivered:q1"}},
		{"qid", events.Filter{QueueIDs: []string{"q1"}}, []string{"received:q1", "deferred:q1", "delivered:q1"}},
		{"sender", events.Filter{Senders: []string{"OTHER@"}}, []string{"received:q2", "delivered:q2"}},
		{"audit", events.Filter{Types: []events.Type{events.Audit}}, []string{"audit:"}},
		{"domain and outcome", events.Filter{Domains: []string{"example.org"}, Types: []events.Type{events.Received, events.Delivered}}, []string{"received:q3"}},
	} {
		f := tc.f
		if err := f.Validate(); err != nil {
			t.Fatal(err)
		}
		if got := ids(r.stored(t, f)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	bad := events.Filter{Types: []events.Type{"sent"}}
	if bad.Validate() == nil {
		t.Error("an unknown event type was accepted")
	}
}

// Events emitted while NATS is down are kept and published once it is back:
// Emit never waits for the server.
func TestEventsSurviveAnOutage(t *testing.T) {
	for _, linger := range []time.Duration{0, 5 * time.Millisecond} {
		t.Run("linger="+linger.String(), func(t *testing.T) { eventsSurviveAnOutage(t, linger) })
	}
}

func eventsSurviveAnOutage(t *testing.T, linger time.Duration) {
	r := start(t, events.PublisherConfig{Source: "test", RetryBuffer: 100, Linger: linger})
	r.n.Stop()
	for i := range 20 {
		r.pub.Emit(events.Event{Type: events.Received, QueueID: fmt.Sprintf("q%02d", i), Destination: "example.net"})
	}
	r.n.Start()
	r.flush(t)
	if d := r.pub.Dropped(); d != 0 {
		t.Fatalf("%d events dropped", d)
	}
	got := r.stored(t, events.Filter{})
	seen := map[string]bool{}
	for _, ev := range got {
		seen[ev.QueueID] = true
	}
	if len(seen) != 20 || len(got) != 20 {
		t.Fatalf("after the outage the stream holds %d events (%d distinct), want 20: %v", len(got), len(seen), ids(got))
	}
}

// When the stream stays unavailable and the retry buffer is full, events
// are dropped and counted; Emit still returns.
func TestEventsDroppedBeyondTheBuffer(t *testing.T) {
	for _, linger := range []time.Duration{0, 5 * time.Millisecond} {
		t.Run("linger="+linger.String(), func(t *testing.T) { eventsDroppedBeyondTheBuffer(t, linger) })
	}
}

func eventsDroppedBeyondTheBuffer(t *testing.T, linger time.Duration) {
	var dropped int
	var mu sync.Mutex
	r := start(t, events.PublisherConfig{Source: "test", RetryBuffer: 4, Linger: linger, Dropped: func() { mu.Lock(); dropped++; mu.Unlock() }})
	r.n.Stop()
	for i := range 50 {
		r.pub.Emit(events.Event{Type: events.Received, QueueID: fmt.Sprintf("q%02d", i), Destination: "example.net"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.pub.Close(ctx) // gives up at ctx's end: the rest is dropped too
	mu.Lock()
	defer mu.Unlock()
	if got := r.pub.Dropped(); got != 50 || dropped != 50 {
		t.Fatalf("dropped %d (callback %d), want all 50 (the server never came back)", got, dropped)
	}
}

// receiver is a webhook endpoint on loopback that checks signatures,
// answers 503 while failing() says so, and records what it accepted.
type receiver struct {
	secret  []byte
	mu      sync.Mutex
	got     []events.Event
	refused int
	failing func(n int) bool // n: requests so far
	reqs    int
	bad     []string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.reqs++
	if err := events.Verify(rc.secret, r.Header.Get(events.SignatureHeader), r.Header.Get(events.TimestampHeader), body, time.Now(), time.Minute); err != nil {
		rc.bad = append(rc.bad, err.Error())
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if rc.failing != nil && rc.failing(rc.reqs) {
		rc.refused++
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var ev events.Event
	if err := json.Unmarshal(body, &ev); err != nil || r.Header.Get(events.EventIDHeader) != ev.ID {
		rc.bad = append(rc.bad, fmt.Sprintf("body %q: %v", body, err))
	}
	rc.got = append(rc.got, ev)
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) snapshot() ([]events.Event, int, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]events.Event(nil), rc.got...), rc.refused, append([]string(nil), rc.bad...)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runForwarder(t *testing.T, r *rig, url string, secret []byte, f events.Filter) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fw := &events.Forwarder{URL: url, Secret: secret, Filter: f, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	// Create the durable consumer before events are published (it starts
	// with new events).
	if _, err := r.st.CreateOrUpdateConsumer(ctx, fw.ConsumerConfig()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.Run(ctx, r.st) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("forwarder: %v", err)
		}
	}
}

func TestWebhookSignedInOrder(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	rc := &receiver{secret: []byte("s3cret")}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	stop := runForwarder(t, r, srv.URL, rc.secret, events.Filter{Domains: []string{"example.net"}})
	defer stop()
	for _, ev := range sample() {
		r.pub.Emit(ev)
	}
	r.flush(t)
	want := []string{"received:q1", "deferred:q1", "received:q2", "delivered:q2", "delivered:q1"}
	waitFor(t, "5 events at the endpoint", func() bool { got, _, _ := rc.snapshot(); return len(got) >= len(want) })
	got, _, bad := rc.snapshot()
	if len(bad) > 0 {
		t.Fatalf("the receiver refused requests: %v", bad)
	}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("endpoint got %v, want %v in this order", ids(got), want)
	}
}

// The endpoint fails for a while, and the forwarder is restarted meanwhile:
// no event is lost and the order holds.
func TestWebhookEndpointDownForAWhile(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	var mu sync.Mutex
	down := true
	rc := &receiver{secret: []byte("k"), failing: func(int) bool { mu.Lock(); defer mu.Unlock(); return down }}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	stop := runForwarder(t, r, srv.URL, rc.secret, events.Filter{})
	for _, ev := range sample() {
		r.pub.Emit(ev)
	}
	r.flush(t)
	waitFor(t, "the first event to be refused 3 times", func() bool { _, n, _ := rc.snapshot(); return n >= 3 })
	stop() // the forwarder goes away while the endpoint is down
	if got, _, _ := rc.snapshot(); len(got) != 0 {
		t.Fatalf("a down endpoint accepted %v", ids(got))
	}
	stop = runForwarder(t, r, srv.URL, rc.secret, events.Filter{})
	defer stop()
	waitFor(t, "more refusals by the restarted forwarder", func() bool { _, n, _ := rc.snapshot(); return n >= 6 })
	mu.Lock()
	down = false
	mu.Unlock()
	waitFor(t, "every event", func() bool { got, _, _ := rc.snapshot(); return len(got) >= len(sample()) })
	got, refused, bad := rc.snapshot()
	if len(bad) > 0 {
		t.Fatalf("bad requests: %v", bad)
	}
	if !slices.Equal(ids(got), ids(sample())) {
		t.Fatalf("after %d refusals the endpoint got %v, want %v", refused, ids(got), ids(sample()))
	}
}

func TestVerifyRejectsTampering(t *testing.T) {
	now := time.Now()
	body := []byte(`{"schema":1}`)
	sig := events.Sign([]byte("k"), now.Unix(), body)
	ts := fmt.Sprint(now.Unix())
	if err := events.Verify([]byte("k"), sig, ts, body, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"body":   events.Verify([]byte("k"), sig, ts, []byte(`{"schema":2}`), now, time.Minute),
		"secret": events.Verify([]byte("x"), sig, ts, body, now, time.Minute),
		"old":    events.Verify([]byte("k"), sig, ts, body, now.Add(time.Hour), time.Minute),
	} {
		if err == nil {
			t.Errorf("a tampered %s verified", name)
		}
	}
}

// An event too big for the stream is dropped at once (counted), not
// retried for ever; the next one goes through.
func TestOversizedEventDropped(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	r.pub.Emit(events.Event{Type: events.Audit, Action: "queue.purge", Target: strings.Repeat("qid=x ", 20000)})
	r.pub.Emit(events.Event{Type: events.Audit, Action: "queue.purge", Target: "qid=y"})
	r.flush(t)
	got := r.stored(t, events.Filter{})
	if r.pub.Dropped() != 1 || len(got) != 1 || got[0].Target != "qid=y" {
		t.Fatalf("dropped %d, stored %+v; want the big one dropped and the small one stored", r.pub.Dropped(), got)
	}
}

// Lingering publishes gathered events together, in the order they were
// emitted (across several batches), and Close publishes what is gathered.
func TestLingerKeepsOrder(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test", Linger: time.Hour, MaxBatch: 64})
	const n = 150 // two full batches and a gathered rest that only Close sends
	for i := range n {
		r.pub.Emit(events.Event{Type: events.Delivered, QueueID: fmt.Sprintf("q%03d", i), Destination: "example.net"})
	}
	r.flush(t)
	got := r.stored(t, events.Filter{})
	if len(got) != n {
		t.Fatalf("stored %d events, want %d", len(got), n)
	}
	for i, ev := range got {
		if want := fmt.Sprintf("q%03d", i); ev.QueueID != want {
			t.Fatalf("event %d is %s, want %s: order not kept", i, ev.QueueID, want)
		}
	}
}

// A gathered event is published after Linger without anything else
// happening.
func TestLingerPublishesAfterTheDelay(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test", Linger: 20 * time.Millisecond})
	r.pub.Emit(events.Event{Type: events.Delivered, QueueID: "q1", Destination: "example.net"})
	waitFor(t, "the lingering event stored", func() bool {
		info, err := r.st.Info(context.Background())
		return err == nil && info.State.Msgs == 1
	})
}

// --qid reads one message's events without the server handing over the
// rest of the stream: the consumer it makes has only those pending. Events
// in the older subject form (no queue id) are still found by domain.
func TestQueueIDFilterIsServerSide(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	for i := range 300 {
		r.pub.Emit(events.Event{Type: events.Delivered, QueueID: fmt.Sprintf("other%03d", i), Destination: "example.net"})
	}
	r.pub.Emit(events.Event{Type: events.Received, QueueID: "dcb9gghksdudshfsg7r0", Destination: "example.net"})
	r.pub.Emit(events.Event{Type: events.Delivered, QueueID: "dcb9gghksdudshfsg7r0", Destination: "example.net"})
	r.flush(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old := events.Event{Schema: 1, ID: events.NewID(), Type: events.Bounced, Time: time.Now().UTC(), QueueID: "oldform", Destination: "example.net"}
	data, _ := json.Marshal(old)
	if _, err := r.rawJS(t).Publish(ctx, "mailfwd.events.bounced.net.example", data); err != nil {
		t.Fatal(err)
	}

	f := events.Filter{QueueIDs: []string{"dcb9gghksdudshfsg7r0"}}
	c, err := r.st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: f.Subjects()})
	if err != nil {
		t.Fatal(err)
	}
	if n := c.CachedInfo().NumPending; n != 2 {
		t.Errorf("the --qid consumer has %d events pending, want the message's 2", n)
	}
	if got := ids(r.stored(t, f)); !slices.Equal(got, []string{"received:dcb9gghksdudshfsg7r0", "delivered:dcb9gghksdudshfsg7r0"}) {
		t.Errorf("--qid read %v", got)
	}
	f = events.Filter{Domains: []string{"example.net"}, Types: []events.Type{events.Bounced}}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := ids(r.stored(t, f)); !slices.Equal(got, []string{"bounced:oldform"}) {
		t.Errorf("an event in the older subject form read by domain: %v", got)
	}
}

// stallJS is a JetStream whose publishes hang until released: NATS stalled.
type stallJS struct {
	release chan struct{}
	mu      sync.Mutex
	got     []string
}

func (s *stallJS) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	<-s.release
	s.mu.Lock()
	s.got = append(s.got, m.Subject)
	s.mu.Unlock()
	return nil, nil
}

func (s *stallJS) PublishAsyncComplete() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// While lingering, Emit only gathers: a publish that hangs (NATS stalled)
// holds up the linger loop, never the caller, even past full batches; the
// events then go out in order.
func TestLingerNeverBlocksEmit(t *testing.T) {
	js := &stallJS{release: make(chan struct{})}
	p := events.NewPublisher(events.PublisherConfig{Source: "test", Linger: time.Millisecond, MaxBatch: 8, RetryBuffer: 1000})
	p.Start(js)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			p.Emit(events.Event{Type: events.Delivered, QueueID: fmt.Sprintf("q%03d", i), Destination: "example.net"})
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a hang detector, not a speed goal
		t.Fatal("Emit blocked while the publishes hung")
	}
	close(js.release)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.Close(ctx)
	js.mu.Lock()
	defer js.mu.Unlock()
	if len(js.got) != 200 || p.Dropped() != 0 {
		t.Fatalf("published %d, dropped %d; want all 200", len(js.got), p.Dropped())
	}
	for i, s := range js.got {
		if want := fmt.Sprintf("mailfwd.events.delivered.q%03d.net.example", i); s != want {
			t.Fatalf("publish %d is %s, want %s: order not kept", i, s, want)
		}
	}
}

// failJS is a JetStream that takes no more events: each publish waits its
// stall time and fails, and no PubAck ever comes.
type failJS struct {
	mu       sync.Mutex
	attempts []time.Time
}

func (f *failJS) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	f.mu.Lock()
	f.attempts = append(f.attempts, time.Now()) // when the attempt starts
	f.mu.Unlock()
	time.Sleep(5 * time.Millisecond)
	return nil, jetstream.ErrTooManyStalledMsgs
}

func (f *failJS) PublishAsyncComplete() <-chan struct{} { return make(chan struct{}) }

// Close gives up when its context ends, even with thousands of events
// still gathered (each publish stalling): it stops publishing then, and
// every event it could not publish is counted as dropped.
func TestCloseEndsWithItsContextWhileNATSStalls(t *testing.T) {
	js := &failJS{}
	p := events.NewPublisher(events.PublisherConfig{Source: "test", Linger: time.Hour, MaxBatch: 100000, RetryBuffer: 100000})
	p.Start(js)
	const n = 2000
	for i := range n {
		p.Emit(events.Event{Type: events.Delivered, QueueID: fmt.Sprintf("q%05d", i), Destination: "example.net"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	p.Close(ctx)
	deadline, _ := ctx.Deadline()
	js.mu.Lock()
	late := 0
	for _, at := range js.attempts {
		if at.After(deadline) {
			late++
		}
	}
	attempts := len(js.attempts)
	js.mu.Unlock()
	// The flush and the retry loop may each start one publish between
	// their last look at the context and its end; not more.
	if late > 2 {
		t.Fatalf("%d of %d publishes were tried after Close's context ended", late, attempts)
	}
	if p.Dropped() != n {
		t.Fatalf("dropped %d, want all %d counted", p.Dropped(), n)
	}
}
