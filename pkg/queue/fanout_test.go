package queue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// fanFixture is a stream with no fan-out running: the test decides which
// connection (direct or through a cutting proxy) fans accept records out.
type fanFixture struct {
	nats *testenv.NATS
	in   *queue.Queue // the ingress side: Enqueue only, no consumer
	js   jetstream.JetStream
}

// ackWait is short so that a record whose fan-out was cut comes back soon.
const fanAckWait = 2 * time.Second

// oneReadyEach fails the test unless the stream holds exactly one ready
// envelope for each of domains and nothing else.
func (f *fanFixture) oneReadyEach(t *testing.T, domains ...string) {
	t.Helper()
	got := f.subjects(t, ">")
	for _, d := range domains {
		if got[queue.ReadySubject(d)] != 1 {
			t.Errorf("%s: %d ready envelopes; want exactly 1 (stream: %v)", d, got[queue.ReadySubject(d)], got)
		}
	}
	if len(got) != len(domains) {
		t.Errorf("stream: %v; want the %d ready envelopes only", got, len(domains))
	}
}

func setupFan(t *testing.T) *fanFixture {
	t.Helper()
	ctx := ctxT(t)
	in, n := queue.BootstrapTest(t, ctx, queue.Config{ClientName: t.Name() + "-ingress", AckWait: fanAckWait, PublishWait: 5 * time.Second})
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &fanFixture{nats: n, in: in, js: js}
}

// subjects counts the stream's messages per subject under filter.
func (f *fanFixture) subjects(t *testing.T, filter string) map[string]uint64 {
	t.Helper()
	st, err := f.js.Stream(ctxT(t), "MAIL")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctxT(t), jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects
}

// worker connects a queue (through addr if set) that fans records out.
func (f *fanFixture) worker(t *testing.T, url string) (*queue.Queue, *queue.Consumer) {
	t.Helper()
	ctx := ctxT(t)
	q := connectChecked(t, ctx, queue.Config{URL: url, ClientName: t.Name() + "-worker", AckWait: fanAckWait,
		PublishWait: 3 * time.Second, Propagator: propagation.TraceContext{}})
	c, err := q.Consumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return q, c
}

// settled waits (at most 30 s) until the accepts consumer has nothing
// pending, unacked or waiting for redelivery.
func (f *fanFixture) settled(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := f.js.Consumer(ctx, "MAIL", "accepts")
		if err != nil {
			t.Fatalf("accepts consumer: %v", err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatalf("accepts consumer not settled: %v", err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 && len(f.subjects(t, queue.AcceptPrefix+".>")) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *fanFixture) refs(t *testing.T, qid string) ([]byte, error) {
	t.Helper()
	kv, err := f.js.KeyValue(ctxT(t), "MAIL_REFS")
	if err != nil {
		t.Fatal(err)
	}
	ent, err := kv.Get(ctxT(t), qid)
	if err != nil {
		return nil, err
	}
	return ent.Value(), nil
}

// A message with three recipient domains is one write on the accept path,
// as a single-domain message is: one accept record in the stream, nothing
// in the refs bucket, until a worker's fan-out makes the three envelopes
// ready (and the refs entry) and removes the record.
func TestMultiDomainAcceptIsOneWrite(t *testing.T) {
	f := setupFan(t)
	ctx := ctxT(t)
	qid := envelope.NewQueueID()
	if err := f.in.Enqueue(ctx, newEnvelopes(qid, "a.test", "b.test", "c.test")); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if got := f.subjects(t, ">"); len(got) != 1 || got[queue.AcceptSubject(qid)] != 1 {
		t.Fatalf("stream after the accept: %v; want one accept record", got)
	}
	if _, err := f.refs(t, qid); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("refs entry at accept time: %v; want none (the fan-out writes it)", err)
	}
	_, _ = f.worker(t, f.nats.URL())
	f.settled(t)
	f.oneReadyEach(t, "a.test", "b.test", "c.test")
	if _, err := f.refs(t, qid); err != nil {
		t.Errorf("refs entry after the fan-out: %v", err)
	}
}

// The ingress's connection breaks in the middle of the accept record: the
// message is then queued whole (the record sent again after the reconnect,
// deduplicated) or not at all, never a part of it.
func TestEnqueueIsAllOrNothingWhenTheConnectionBreaksMidRecord(t *testing.T) {
	f := setupFan(t)
	ctx := ctxT(t)
	px := startCutProxyAt(t, f.nats.URL()[len("nats://"):], []byte("HPUB "+queue.AcceptPrefix+"."), 1, 60)
	q := px.ingress(t, ctx)
	_, _ = f.worker(t, f.nats.URL())
	qid := envelope.NewQueueID()
	px.armed.Store(true)
	err := q.Enqueue(ctx, newEnvelopes(qid, "a.test", "b.test", "c.test"))
	if px.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d connections; want 1", px.cuts.Load())
	}
	f.settled(t)
	ready := f.subjects(t, queue.ReadyPrefix+".>")
	var stored uint64
	for _, n := range ready {
		stored += n
	}
	switch {
	case err == nil && stored == 3 && len(ready) == 3:
		t.Logf("queued whole after the reconnect")
	case err != nil && stored == 0:
		t.Logf("refused whole: %v", err)
	default:
		t.Fatalf("enqueue returned %v with ready envelopes %v; want all three (one per domain) or none", err, ready)
	}
}

// The worker's connection breaks after the fan-out published the first
// envelope of a record and before the second: the record comes back, and
// the second fan-out completes it with exactly one envelope per domain
// (the first one's copy is dropped by its message id).
func TestFanOutCutBetweenEnvelopesQueuesEachDomainOnce(t *testing.T) {
	f := setupFan(t)
	ctx := ctxT(t)
	px := startCutProxy(t, f.nats.URL()[len("nats://"):])
	px.armed.Store(true)
	_, _ = f.worker(t, "nats://"+px.addr)
	qid := envelope.NewQueueID()
	if err := f.in.Enqueue(ctx, newEnvelopes(qid, "a.test", "b.test", "c.test")); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	f.settled(t)
	if px.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d connections; want 1", px.cuts.Load())
	}
	f.oneReadyEach(t, "a.test", "b.test", "c.test")
}

// The fan-out's ack is lost (the connection breaks just before it), and
// the message is delivered to every domain before the record comes back.
// The redelivered record must neither queue the domains again nor bring
// the deleted refs entry back — even with JetStream's dedupe window too
// short to catch the copies.
func TestFanOutOfACompletedMessageRepublishesNothing(t *testing.T) {
	f := setupFan(t)
	ctx := ctxT(t)
	editMailStream(t, ctx, f.js, func(c *jetstream.StreamConfig) { c.Duplicates = 500 * time.Millisecond })
	px := startCutProxyAt(t, f.nats.URL()[len("nats://"):], []byte("PUB $JS.ACK.MAIL.accepts."), 1, 0)
	px.armed.Store(true)
	_, _ = f.worker(t, "nats://"+px.addr)
	qid := envelope.NewQueueID()
	envs := newEnvelopes(qid, "a.test", "b.test", "c.test")
	if err := f.in.Enqueue(ctx, envs); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	// Deliver every domain as a worker would (release, then ack) while the
	// record waits for its redelivery.
	deadline := time.Now().Add(20 * time.Second)
	for px.cuts.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if px.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d connections; want 1 (before the fan-out's ack)", px.cuts.Load())
	}
	wq, cons := f.worker(t, f.nats.URL())
	var jobs []*queue.Job
	for len(jobs) < 3 && time.Now().Before(deadline) {
		if err := cons.Fetch(3-len(jobs), time.Second, func(j *queue.Job) { jobs = append(jobs, j) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(jobs) != 3 {
		t.Fatalf("fetched %d of 3 envelopes", len(jobs))
	}
	lasts := 0
	for _, j := range jobs {
		last, err := wq.ReleaseBody(ctx, j.Env)
		if err != nil {
			t.Fatalf("release %s: %v", j.Env.Domain, err)
		}
		if last {
			lasts++
		}
		if err := j.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if lasts != 1 {
		t.Fatalf("%d releases reported last; want 1", lasts)
	}
	f.settled(t)
	// The acks of the three jobs are not confirmed: let them land.
	var got map[string]uint64
	for range 100 {
		if got = f.subjects(t, ">"); len(got) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(got) != 0 {
		t.Errorf("stream after the redelivered record: %v; want nothing (every domain was delivered)", got)
	}
	if v, err := f.refs(t, qid); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("refs entry after the redelivered record: %q, %v; want none", v, err)
	}
	c, err := f.js.Consumer(ctx, "MAIL", "accepts")
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer < 2 {
		t.Errorf("accepts consumer delivered the record %d times; want it redelivered after the lost ack", info.Delivered.Consumer)
	}
}

// A record that Enqueue cannot have written (published by anyone with
// rights on the subject) is dropped whole: an envelope of another message
// in it, or a domain twice, queues nothing.
func TestFanOutDropsARecordWithForeignEnvelopes(t *testing.T) {
	f := setupFan(t)
	ctx := ctxT(t)
	_, _ = f.worker(t, f.nats.URL())
	for name, envs := range map[string][]*envelope.Envelope{
		"foreign qid":  append(newEnvelopes("qa", "a.test"), newEnvelopes("qb", "b.test")...),
		"domain twice": append(newEnvelopes("qc", "a.test"), newEnvelopes("qc", "a.test")...),
	} {
		var raws []string
		for _, e := range envs {
			b, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			raws = append(raws, string(b))
		}
		data := `{"qid":"` + envs[0].QueueID + `","envelopes":[` + strings.Join(raws, ",") + `]}`
		if _, err := f.js.Publish(ctx, queue.AcceptSubject(envs[0].QueueID), []byte(data)); err != nil {
			t.Fatalf("%s: publish: %v", name, err)
		}
		f.settled(t)
		if got := f.subjects(t, queue.ReadyPrefix+".>"); len(got) != 0 {
			t.Errorf("%s: ready envelopes %v; want none", name, got)
		}
	}
}
