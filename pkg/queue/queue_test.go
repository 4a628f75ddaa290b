package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

type fixture struct {
	nats *testenv.NATS
	q    *queue.Queue
	cons *queue.Consumer
	js   jetstream.JetStream // the test's own view of the stream
}

func setup(t testing.TB) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, n := queue.BootstrapTest(t, ctx, queue.Config{ClientName: t.Name(), PublishWait: 5 * time.Second, Propagator: propagation.TraceContext{}})
	cons, err := q.Consumer(ctx)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("test connection: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return &fixture{nats: n, q: q, cons: cons, js: js}
}

func (f *fixture) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s := mailStream(t, ctx, f.js)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.Msgs
}

// streamMsgsSettle polls the stream's message count (every 50 ms, at most
// for within) until it is want, and returns the last count seen.
func (f *fixture) streamMsgsSettle(t *testing.T, want uint64, within time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(within)
	n := f.streamMsgs(t)
	for n != want && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		n = f.streamMsgs(t)
	}
	return n
}

// streamEmpties fails the test unless the stream is empty within that
// long (acks and terms are not confirmed by the server); when says when.
func (f *fixture) streamEmpties(t *testing.T, within time.Duration, when string) {
	t.Helper()
	if n := f.streamMsgsSettle(t, 0, within); n != 0 {
		t.Errorf("%s the stream still holds %d messages, want 0", when, n)
	}
}

// releaseAllAtOnce releases the body of each of envs, all at once from as
// many goroutines, and returns how many releases reported the last one,
// with the errors.
func (f *fixture) releaseAllAtOnce(ctx context.Context, envs []*envelope.Envelope) (int, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		lasts int
		errs  []error
	)
	start := make(chan struct{})
	for _, e := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			last, err := f.q.ReleaseBody(ctx, e)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", e.Domain, err))
			} else if last {
				lasts++
			}
		}()
	}
	close(start)
	wg.Wait()
	return lasts, errors.Join(errs...)
}

// fannedOut waits (at most 10 s) until the accepts consumer has fanned
// every accept record out to the ready subjects: what a worker sees of a
// multi-domain message (its envelopes and refs entry) exists only then.
func (f *fixture) fannedOut(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := mailStream(t, ctx, f.js)
	for {
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(queue.AcceptPrefix+".>"))
		if err != nil {
			t.Fatalf("accept records not fanned out: %v", err)
		}
		if len(info.State.Subjects) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fetch collects up to n jobs, waiting at most wait.
func (f *fixture) fetch(t *testing.T, n int, wait time.Duration) []*queue.Job {
	t.Helper()
	var jobs []*queue.Job
	if err := f.cons.Fetch(n, wait, func(j *queue.Job) { jobs = append(jobs, j) }); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	return jobs
}

func newEnvelopes(qid string, domains ...string) []*envelope.Envelope {
	envs := make([]*envelope.Envelope, len(domains))
	for i, d := range domains {
		envs[i] = &envelope.Envelope{
			QueueID:    qid,
			From:       "sender@src.test",
			Domain:     d,
			Recipients: []envelope.Recipient{{Addr: "rcpt@" + d}},
			BodyKey:    qid,
			Size:       42,
			Parts:      len(domains),
			Arrived:    time.Now().UTC().Truncate(time.Second),
		}
	}
	return envs
}

// connectChecked connects a client made with cfg, checks the connection
// and closes the client with the test.
func connectChecked(t *testing.T, ctx context.Context, cfg queue.Config) *queue.Queue {
	t.Helper()
	q, err := queue.Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	if err := q.Check(ctx); err != nil {
		t.Fatal(err)
	}
	return q
}

// mailStream is the MAIL stream as js sees it now.
func mailStream(t *testing.T, ctx context.Context, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	return st
}

// editMailStream changes the MAIL stream's configuration with edit.
func editMailStream(t *testing.T, ctx context.Context, js jetstream.JetStream, edit func(*jetstream.StreamConfig)) {
	t.Helper()
	cfg := mailStream(t, ctx, js).CachedInfo().Config
	edit(&cfg)
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("edit stream: %v", err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnqueuePublishesOneMessagePerEnvelopeWithTraceContext(t *testing.T) {
	f := setup(t)
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("queue_test").Start(ctxT(t), "receive")
	defer span.End()

	qid := envelope.NewQueueID()
	envs := newEnvelopes(qid, "one.example.com", "two.test")
	if err := f.q.Enqueue(ctx, envs); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	f.fannedOut(t)
	if got := f.streamMsgs(t); got != 2 {
		t.Fatalf("stream has %d messages, want 2", got)
	}

	jobs := f.fetch(t, 2, 5*time.Second)
	if len(jobs) != 2 {
		t.Fatalf("fetched %d jobs, want 2", len(jobs))
	}
	wantSubj := map[string]string{
		"one.example.com": "mail.ready.com.example.one",
		"two.test":        "mail.ready.test.two",
	}
	for _, j := range jobs {
		if j.DecodeErr != nil {
			t.Fatalf("decode: %v", j.DecodeErr)
		}
		if j.Env.QueueID != qid || j.Env.Parts != 2 || j.Env.BodyKey != qid {
			t.Errorf("envelope = %+v", j.Env)
		}
		if want := wantSubj[j.Env.Domain]; j.Subject != want {
			t.Errorf("subject for %s = %q, want %q", j.Env.Domain, j.Subject, want)
		}
		if j.Env.Recipients[0].Addr != "rcpt@"+j.Env.Domain {
			t.Errorf("recipients = %+v", j.Env.Recipients)
		}
		if j.Delivered != 1 {
			t.Errorf("delivered = %d, want 1", j.Delivered)
		}
		if j.Header().Get("traceparent") == "" {
			t.Errorf("no traceparent header; headers = %v", j.Header())
		}
		sc := trace.SpanContextFromContext(j.Context(context.Background()))
		if !sc.IsValid() || sc.TraceID() != span.SpanContext().TraceID() || sc.SpanID() != span.SpanContext().SpanID() {
			t.Errorf("extracted span context %v, want trace %v span %v", sc, span.SpanContext().TraceID(), span.SpanContext().SpanID())
		}
		if !sc.IsRemote() {
			t.Errorf("extracted span context is not marked remote")
		}
		if err := j.Ack(ctx); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
	// Acks are not confirmed by the server: give them a moment to land.
	f.streamEmpties(t, 2500*time.Millisecond, "after acks")
}

func TestEnqueueIsDeduplicated(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test")
	if err := f.q.Enqueue(ctx, envs); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	f.fannedOut(t)
	if got := f.streamMsgs(t); got != 2 {
		t.Fatalf("stream has %d messages, want 2", got)
	}
	// A retried publish (e.g. after a lost PubAck) must not make copies.
	for i := range 2 {
		if err := f.q.Enqueue(ctx, envs); err != nil {
			t.Fatalf("re-enqueue %d: %v", i, err)
		}
	}
	f.fannedOut(t)
	if got := f.streamMsgs(t); got != 2 {
		t.Fatalf("after re-enqueue stream has %d messages, want 2", got)
	}
	// A different message is not a duplicate.
	if err := f.q.Enqueue(ctx, newEnvelopes(envelope.NewQueueID(), "a.test")); err != nil {
		t.Fatalf("enqueue other: %v", err)
	}
	if got := f.streamMsgs(t); got != 3 {
		t.Fatalf("after another message stream has %d messages, want 3", got)
	}
}

func TestDeferSchedulesAndReplaces(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	e := newEnvelopes(envelope.NewQueueID(), "later.test")[0]
	e.Attempts = 1
	at := time.Now().Add(time.Second)
	if err := f.q.Defer(ctx, e, at, "1"); err != nil {
		t.Fatalf("defer: %v", err)
	}
	if !e.NextAttempt.Equal(at) {
		t.Errorf("NextAttempt = %v, want %v", e.NextAttempt, at)
	}
	// A second Defer for the same envelope (the next attempt) replaces the
	// first schedule.
	e2 := *e
	e2.Attempts = 2
	e2.LastError = "451 4.0.0 second"
	if err := f.q.Defer(ctx, &e2, time.Now().Add(1500*time.Millisecond), "2"); err != nil {
		t.Fatalf("second defer: %v", err)
	}
	// Repeating the same Defer (a retried publish) is a no-op.
	if err := f.q.Defer(ctx, &e2, time.Now().Add(1500*time.Millisecond), "2"); err != nil {
		t.Fatalf("repeated defer: %v", err)
	}

	if jobs := f.fetch(t, 1, 300*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("deferred envelope fetchable immediately: %+v", jobs[0].Env)
	}

	var got []*queue.Job
	deadline := time.Now().Add(6 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) {
		got = append(got, f.fetch(t, 5, 500*time.Millisecond)...)
	}
	if len(got) == 0 {
		t.Fatal("deferred envelope never became ready")
	}
	// Give a wrongly kept first schedule time to fire too.
	stop := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(stop) {
		got = append(got, f.fetch(t, 5, 500*time.Millisecond)...)
	}
	if len(got) != 1 {
		for _, j := range got {
			t.Logf("got %s attempts=%d", j.Subject, j.Env.Attempts)
		}
		t.Fatalf("got %d copies of the deferred envelope, want 1", len(got))
	}
	j := got[0]
	if j.DecodeErr != nil {
		t.Fatalf("decode: %v", j.DecodeErr)
	}
	if j.Subject != "mail.ready.test.later" {
		t.Errorf("subject = %q", j.Subject)
	}
	if j.Env.Attempts != 2 || j.Env.LastError != "451 4.0.0 second" {
		t.Errorf("got the replaced schedule: attempts=%d last_error=%q", j.Env.Attempts, j.Env.LastError)
	}
	if j.Env.NextAttempt.IsZero() {
		t.Errorf("NextAttempt not carried in the envelope")
	}
	if err := j.Ack(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
	// Nothing of the schedule is left behind in the stream.
	f.streamEmpties(t, 5*time.Second, "after the deferred envelope was acked")
}

func TestReleaseBodyAndPartDone(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test", "c.test")
	if err := f.q.Enqueue(ctx, envs); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	f.fannedOut(t)
	for _, e := range envs {
		done, err := f.q.PartDone(ctx, e)
		if err != nil || done {
			t.Fatalf("PartDone(%s) before release = %v, %v; want false", e.Domain, done, err)
		}
	}
	for i, e := range envs {
		last, err := f.q.ReleaseBody(ctx, e)
		if err != nil {
			t.Fatalf("release %s: %v", e.Domain, err)
		}
		if want := i == len(envs)-1; last != want {
			t.Fatalf("release %s: last = %v, want %v", e.Domain, last, want)
		}
		for k, o := range envs {
			done, err := f.q.PartDone(ctx, o)
			if err != nil {
				t.Fatalf("PartDone(%s): %v", o.Domain, err)
			}
			if want := k <= i; done != want {
				t.Errorf("after releasing %d parts, PartDone(%s) = %v, want %v", i+1, o.Domain, done, want)
			}
		}
	}
	// A release repeated after the refs are gone (a redelivery) still says
	// "last" so the body is deleted, which is idempotent.
	if last, err := f.q.ReleaseBody(ctx, envs[0]); err != nil || !last {
		t.Errorf("repeated release = %v, %v; want true", last, err)
	}

	// Single-domain messages need no refs.
	single := newEnvelopes(envelope.NewQueueID(), "solo.test")[0]
	if last, err := f.q.ReleaseBody(ctx, single); err != nil || !last {
		t.Errorf("single-part release = %v, %v; want true", last, err)
	}
	if done, err := f.q.PartDone(ctx, single); err != nil || done {
		t.Errorf("single-part PartDone = %v, %v; want false", done, err)
	}
}

func TestReleaseBodyConcurrent(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	for round := range 5 {
		envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test", "c.test")
		if err := f.q.Enqueue(ctx, envs); err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		f.fannedOut(t)
		lasts, err := f.releaseAllAtOnce(ctx, envs)
		if err != nil {
			t.Fatalf("round %d: release errors: %v", round, err)
		}
		if lasts != 1 {
			t.Fatalf("round %d: %d releases reported last, want exactly 1", round, lasts)
		}
	}
}

func TestCheck(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	if err := f.q.Check(ctx); err != nil {
		t.Fatalf("check with NATS up: %v", err)
	}
	f.nats.Stop()
	var err error
	for range 100 {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		err = f.q.Check(cctx)
		cancel()
		if err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("check still passes with NATS stopped")
	}
	f.nats.Start()
	for range 100 {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		err = f.q.Check(cctx)
		cancel()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("check after NATS restart: %v", err)
	}
}

func TestFetchReportsUndecodablePayload(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	if _, err := f.js.Publish(ctx, "mail.ready.x.y", []byte("\x00not json{")); err != nil {
		t.Fatalf("publish garbage: %v", err)
	}
	// Valid JSON that is not a valid envelope is just as undeliverable.
	if _, err := f.js.Publish(ctx, "mail.ready.x.y", []byte(`{"qid":"abc"}`)); err != nil {
		t.Fatalf("publish invalid envelope: %v", err)
	}
	jobs := f.fetch(t, 2, 5*time.Second)
	if len(jobs) != 2 {
		t.Fatalf("fetched %d jobs, want 2", len(jobs))
	}
	for _, j := range jobs {
		if j.DecodeErr == nil || j.Env != nil {
			t.Errorf("job on %s: DecodeErr = %v, Env = %+v; want an error and no envelope", j.Subject, j.DecodeErr, j.Env)
		}
		if j.Subject != "mail.ready.x.y" {
			t.Errorf("subject = %q", j.Subject)
		}
		if err := j.Term("test: undecodable"); err != nil {
			t.Errorf("term: %v", err)
		}
	}
	f.streamEmpties(t, 2500*time.Millisecond, "after the terms")
}

// A NATS user who may publish to the queue (a stolen ingress password) and
// guesses a queue id (xids are time, host, process and a counter) publishes
// first under the message ids the real message's envelopes would carry. The
// real message must still be stored whole, not dropped as a duplicate
// while its client got a 250.
func TestGuessedQueueIDCannotPreemptAMessage(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	for _, doms := range [][]string{{"one.test"}, {"a.test", "b.test"}} {
		qid := envelope.NewQueueID()
		// Every id an earlier release used, and the accept record's.
		ids := []string{qid + ".accept"}
		for _, d := range doms {
			ids = append(ids, qid+"."+address.SubjectToken(d), qid+"."+address.SubjectToken(d)+".part")
		}
		for i, id := range ids {
			subj := queue.ReadySubject(doms[0])
			if i == 0 {
				subj = queue.AcceptSubject(qid)
			}
			if _, err := f.js.Publish(ctx, subj, []byte(`{"qid":"GARBAGE"}`), jetstream.WithMsgID(id)); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.q.Enqueue(ctx, newEnvelopes(qid, doms...)); err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		// Each domain gets its real envelope (multi-domain: after the fan-out).
		st := mailStream(t, ctx, f.js)
		for _, d := range doms {
			found := false
			for deadline := time.Now().Add(10 * time.Second); !found && time.Now().Before(deadline); {
				for seq := uint64(1); ; {
					raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(queue.ReadySubject(d)))
					if err != nil {
						break
					}
					found = found || bytes.Contains(raw.Data, []byte(`"qid":"`+qid+`"`))
					seq = raw.Sequence + 1
				}
				if !found {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if !found {
				t.Errorf("%d domains: no envelope of %s for %s: the real message was dropped as a duplicate of the guessed ids", len(doms), qid, d)
			}
		}
	}
}
