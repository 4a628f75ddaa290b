package queue

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// earlierStream connects to a new NATS server that holds the (empty) stream
// of an earlier release: schedules on, so roll-ups on, and purge allowed.
func earlierStream(t *testing.T, ctx context.Context) (*Queue, jetstream.JetStream, jetstream.StreamConfig) {
	t.Helper()
	q, _ := ConnectTest(t, ctx, Config{})
	js, _ := jetstream.New(q.nc)
	oldCfg := q.Expected().Stream
	oldCfg.AllowMsgSchedules, oldCfg.DenyPurge = true, false
	if _, err := js.CreateStream(ctx, oldCfg); err != nil {
		t.Fatal(err)
	}
	return q, js, oldCfg
}

// A queue in the stream of an earlier release (schedules on, so roll-ups
// on and purge allowed) is moved by Migrate into a safe stream: every
// envelope, in every state, byte for byte; the scheduled one as a plain
// deferred envelope the deferrals consumer makes ready when due. A second
// run has nothing to do.
func TestMigrateMovesAnEarlierReleasesQueueIntoASafeStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, js, _ := earlierStream(t, ctx)
	env := func(qid, domain string) []byte {
		e := &envelope.Envelope{QueueID: qid, Domain: domain, BodyKey: "b-" + qid, Recipients: []envelope.Recipient{{Addr: "x@" + domain}}, Parts: 1,
			Arrived: time.Now().UTC(), NextAttempt: time.Now().Add(500 * time.Millisecond).UTC()}
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := map[string][]byte{
		ReadySubject("ready.test"):          env("Q1", "ready.test"),
		DeferredSubject("later.test", "Q2"): env("Q2", "later.test"),
		HeldSubject("held.test", "Q3"):      env("Q3", "held.test"),
		FailedSubject("failed.test", "Q4"):  env("Q4", "failed.test"),
		AcceptSubject("Q5"):                 []byte(`{"qid":"Q5","envelopes":[]}`),
	}
	for subj, data := range want {
		m := nats.NewMsg(subj)
		m.Data = data
		m.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		opts := []jetstream.PublishOpt{}
		if subj == DeferredSubject("later.test", "Q2") {
			opts = append(opts, jetstream.WithScheduleAt(time.Now().Add(time.Hour)), jetstream.WithScheduleTarget(ReadySubject("later.test")))
		}
		if _, err := js.PublishMsg(ctx, m, opts...); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Bootstrap(ctx); err == nil {
		t.Fatal("bootstrap accepted the earlier release's stream")
	}
	var log bytes.Buffer
	if err := q.Migrate(ctx, &log); err != nil {
		t.Fatalf("migrate: %v\n%s", err, log.String())
	}
	t.Log(log.String())
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatal(err)
	}
	if bad := checkStreamSafe(st.CachedInfo().Config); len(bad) > 0 {
		t.Fatalf("migrated stream is unsafe: %v", bad)
	}
	if _, err := js.Stream(ctx, "MAIL_MIGRATE"); err == nil {
		t.Error("the parking stream stayed")
	}
	got := map[string]*jetstream.RawStreamMsg{}
	for seq := uint64(1); ; {
		raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if err != nil {
			break
		}
		got[raw.Subject] = raw
		seq = raw.Sequence + 1
	}
	if len(got) != len(want) {
		t.Errorf("migrated stream has %d messages, want %d", len(got), len(want))
	}
	for subj, data := range want {
		raw := got[subj]
		switch {
		case raw == nil:
			t.Errorf("%s lost", subj)
		case !bytes.Equal(raw.Data, data):
			t.Errorf("%s changed: %q", subj, raw.Data)
		case raw.Header.Get("Nats-Schedule") != "" || raw.Header.Get("Traceparent") == "":
			t.Errorf("%s headers: %v", subj, raw.Header)
		}
	}
	// The deferred envelope comes back through the deferrals consumer.
	c, err := q.Consumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var domains []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && len(domains) < 2; {
		_ = c.Fetch(5, time.Second, func(j *Job) {
			if j.Env == nil {
				t.Errorf("%s: %v", j.Subject, j.DecodeErr)
				_ = j.Term("test")
				return
			}
			domains = append(domains, j.Env.Domain)
			_ = j.Ack(ctx)
		})
	}
	if len(domains) != 2 {
		t.Errorf("fetched %v; want ready.test and the deferred later.test", domains)
	}
	log.Reset()
	if err := q.Migrate(ctx, &log); err != nil || !bytes.Contains(log.Bytes(), []byte("needs no migration")) {
		t.Errorf("second migrate: %v\n%s", err, log.String())
	}
}

// A Migrate stopped after parking part of the old stream (a crash, a
// timeout) resumes after the last parked message when run again: every
// message ends in the new stream exactly once.
func TestMigrateResumesAfterAStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, js, oldCfg := earlierStream(t, ctx)
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		if _, err := js.Publish(ctx, ReadySubject(d), []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	// What a first run stopped after parking message 1 left: the old stream
	// fenced, the parking stream with that message.
	oldCfg.Subjects = []string{q.migrateFence()}
	if _, err := js.UpdateStream(ctx, oldCfg); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: q.migrateStream(), Subjects: []string{q.migratePrefix() + ".>"},
		Storage: jetstream.FileStorage, DenyPurge: true}); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(q.migratePrefix() + ".1")
	m.Data = []byte("a.test")
	m.Header.Set(hdrMigrateSubject, ReadySubject("a.test"))
	m.Header.Set(hdrMigrateSeq, "1")
	if _, err := js.PublishMsg(ctx, m, jetstream.WithMsgID("park.1")); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if err := q.Migrate(ctx, &log); err != nil {
		t.Fatalf("migrate: %v\n%s", err, log.String())
	}
	if !bytes.Contains(log.Bytes(), []byte("2 messages parked")) {
		t.Errorf("the resumed run did not start after the parked message:\n%s", log.String())
	}
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Errorf("new stream has %d messages, want 3 (each once)\n%s", info.State.Msgs, log.String())
		for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
			if raw, err := st.GetMsg(ctx, seq); err == nil {
				t.Logf("%d %s %s %v", seq, raw.Subject, raw.Data, raw.Header)
			}
		}
	}
}
