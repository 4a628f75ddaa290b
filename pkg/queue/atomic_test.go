package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// refsKeys lists the keys of the body-refs bucket.
func (f *fixture) refsKeys(t *testing.T) []string {
	t.Helper()
	kv, err := f.js.KeyValue(ctxT(t), "MAIL_REFS")
	if err != nil {
		t.Fatalf("refs bucket: %v", err)
	}
	keys, err := kv.Keys(ctxT(t))
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("refs keys: %v", err)
	}
	return keys
}

// bigRecipients makes an envelope whose encoding is about n bytes.
func bigRecipients(e *envelope.Envelope, n int) {
	for i := 0; len(e.Recipients)*40 < n; i++ {
		e.Recipients = append(e.Recipients, envelope.Recipient{Addr: fmt.Sprintf("recipient-%08d@%s", i, e.Domain)})
	}
}

// The second envelope of a message is refused by the stream itself (its
// max message size): the accept fails, and nothing of the message stays in
// the queue — no first envelope that a retry (new queue id) would deliver a
// second time, no refs entry.
func TestEnqueueIsAllOrNothingWhenTheStreamRefusesAnEnvelope(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	editMailStream(t, ctx, f.js, func(c *jetstream.StreamConfig) { c.MaxMsgSize = 4096 })
	envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test", "c.test")
	bigRecipients(envs[1], 8000)
	if err := f.q.Enqueue(ctx, envs); err == nil {
		t.Fatal("enqueue of an envelope larger than the stream's max message size succeeded")
	}
	f.nothingOfTheMessageStayed(t)
}

// nothingOfTheMessageStayed fails the test if any envelope or refs entry of
// a failed accept is in the queue.
func (f *fixture) nothingOfTheMessageStayed(t *testing.T) {
	t.Helper()
	if n := f.streamMsgs(t); n != 0 {
		t.Fatalf("%d envelopes of the failed message stayed in the stream; want none", n)
	}
	if keys := f.refsKeys(t); len(keys) != 0 {
		t.Fatalf("refs of the failed message stayed: %v", keys)
	}
}

// The same when the client refuses it (larger than the server's
// max_payload): nothing is published.
func TestEnqueueIsAllOrNothingOverMaxPayload(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test")
	bigRecipients(envs[1], 2<<20)
	if err := f.q.Enqueue(ctx, envs); err == nil {
		t.Fatal("enqueue of an envelope over max_payload succeeded")
	}
	f.nothingOfTheMessageStayed(t)
}

// Atomic batches and deferrals live on the same stream, which refuses
// schedules, roll-ups and purges (no publish right removes or multiplies
// mail): a message enqueued as a batch is consumed, deferred, and comes back.
func TestBatchAndDeferralsCoexist(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	st := mailStream(t, ctx, f.js)
	if c := st.CachedInfo().Config; !c.AllowAtomicPublish || c.AllowMsgSchedules || c.AllowRollup || !c.DenyPurge || c.AllowMsgTTL {
		t.Fatalf("stream: allow_atomic %v, allow_msg_schedules %v, allow_rollup %v, deny_purge %v, allow_msg_ttl %v; want true, false, false, true, false",
			c.AllowAtomicPublish, c.AllowMsgSchedules, c.AllowRollup, c.DenyPurge, c.AllowMsgTTL)
	}
	envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test")
	if err := f.q.Enqueue(ctx, envs); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	jobs := f.fetch(t, 2, 5*time.Second)
	if len(jobs) != 2 {
		t.Fatalf("fetched %d of 2 envelopes", len(jobs))
	}
	j := jobs[0]
	if err := f.q.Defer(ctx, j.Env, time.Now().Add(time.Second), j.Key()); err != nil {
		t.Fatalf("defer: %v", err)
	}
	for _, j := range jobs {
		_ = j.Ack(ctx)
	}
	again := f.fetch(t, 1, 10*time.Second)
	if len(again) != 1 || again[0].Env.Domain != j.Env.Domain {
		t.Fatalf("deferred envelope did not come back: %d jobs", len(again))
	}
	_ = again[0].Ack(ctx)
}

// 100 recipient domains of one message finish at once: every release
// succeeds (no give-up under contention, each of which would redeliver a
// whole domain), and exactly one — the last — is told to delete the body.
func TestReleaseBody100DomainsConcurrently(t *testing.T) {
	f := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	doms := make([]string, 100)
	for i := range doms {
		doms[i] = fmt.Sprintf("d%03d.test", i)
	}
	envs := newEnvelopes(envelope.NewQueueID(), doms...)
	if err := f.q.Enqueue(ctx, envs); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	f.fannedOut(t)
	lasts, err := f.releaseAllAtOnce(ctx, envs)
	if err != nil {
		t.Fatalf("release errors: %v", err)
	}
	if lasts == 0 {
		t.Fatal("no release reported last: the body would never be deleted")
	}
	if lasts > 1 {
		t.Fatalf("%d releases reported last, want exactly 1", lasts)
	}
	for _, e := range envs {
		done, err := f.q.PartDone(ctx, e)
		if err != nil || !done {
			t.Fatalf("%s: part done %v, %v after its release", e.Domain, done, err)
		}
	}
	if keys := f.refsKeys(t); len(keys) != 0 {
		t.Fatalf("refs left after every part was released: %v", keys)
	}
}

// A stream whose limits would make JetStream drop queued mail on its own is
// refused with an error that names the limit, instead of being used.
func TestBootstrapRefusesLimitsThatDiscardMail(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*jetstream.StreamConfig)
		want string
	}{
		{"max age", func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour }, "max_age"},
		{"max msgs, discard old", func(c *jetstream.StreamConfig) { c.MaxMsgs = 1000 }, "max_msgs"},
		{"max bytes, discard old", func(c *jetstream.StreamConfig) { c.MaxBytes = 1 << 20 }, "max_bytes"},
		{"max msgs per subject", func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 10 }, "max_msgs_per_subject"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t)
			ctx := ctxT(t)
			editMailStream(t, ctx, f.js, tc.edit)
			err := f.q.Bootstrap(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("bootstrap over a stream with %s: %v; want an error naming %s", tc.name, err, tc.want)
			}
		})
	}
}

// The dedupe window outlasts the ack wait: a publish retried after a
// redelivery (one ack wait later) is still recognised as a duplicate.
func TestBootstrapDedupeWindowOutlastsAckWait(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	q, err := queue.Connect(ctx, queue.Config{URL: f.nats.URL(), AckWait: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	st := mailStream(t, ctx, f.js)
	if d := st.CachedInfo().Config.Duplicates; d <= 10*time.Minute {
		t.Fatalf("dedupe window %s with an ack wait of 10m; want longer", d)
	}
}

// A failed accept removes the body it stored: nothing refers to it, and the
// client sends the message again under a new queue id.
func TestFailedAcceptRemovesItsBody(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	store, err := blob.NewFS(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	f.q.DeleteBodiesOfFailedAccepts(store)
	ok := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test")
	bad := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test")
	bigRecipients(bad[1], 2<<20)
	for _, envs := range [][]*envelope.Envelope{ok, bad} {
		if err := store.Put(ctx, envs[0].BodyKey, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.q.Enqueue(ctx, ok); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if err := f.q.Enqueue(ctx, bad); err == nil {
		t.Fatal("enqueue over max_payload succeeded")
	}
	if _, err := store.Get(ctx, bad[0].BodyKey); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("body of the failed accept: %v; want it removed", err)
	}
	if _, err := store.Get(ctx, ok[0].BodyKey); err != nil {
		t.Fatalf("body of the queued message: %v", err)
	}
	// The good message's accept record is fanned out by the fixture's
	// consumer in the background: one record, then its two envelopes.
	if n := f.streamMsgsSettle(t, 2, 10*time.Second); n != 2 {
		t.Fatalf("%d envelopes in the stream; want the 2 of the good message", n)
	}
}
