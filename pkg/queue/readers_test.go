package queue

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailfwd/mailfwd/pkg/control"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// lastStored is the data of the last message on the ready subject of domain.
func lastStored(t *testing.T, q *Queue, domain string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, ReadySubject(domain))
	if err != nil {
		t.Fatal(err)
	}
	return m.Data
}

// fakeWorker answers version requests on the control subject as a worker
// of some release would.
func fakeWorker(t *testing.T, url string, b control.Build) func() {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(control.Prefix+".>", func(m *nats.Msg) {
		data, _ := json.Marshal(b)
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() { _ = sub.Unsubscribe(); nc.Close() }
}

// A worker of an earlier release drops an envelope it cannot decode, so
// inline bodies are written as base64 JSON (what every release reads) while
// one runs, or while no worker answers; raw once every worker reads raw.
func TestInlineFormatFollowsTheWorkers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, n := BootstrapTest(t, ctx, Config{ClientName: t.Name()})
	wctx, wcancel := context.WithCancel(context.Background()) // no deadline, as in the daemons
	defer wcancel()
	go q.WatchEnvelopeReaders(wctx, 100*time.Millisecond, nil)

	enqueue := func(qid string) []byte {
		t.Helper()
		e := testEnvelope(qid, "inline.test", "Subject: x\r\n\r\nbody\r\n")
		if err := q.Enqueue(ctx, []*envelope.Envelope{e}); err != nil {
			t.Fatal(err)
		}
		return lastStored(t, q, "inline.test")
	}
	// What a worker of an earlier release runs: plain JSON decoding.
	oldDecodes := func(data []byte) bool {
		var e envelope.Envelope
		return json.Unmarshal(data, &e) == nil && string(e.Body) == "Subject: x\r\n\r\nbody\r\n"
	}
	waitFor := func(what string, raw bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for q.RawInline() != raw {
			if time.Now().After(deadline) {
				t.Fatalf("%s: RawInline() still %v", what, !raw)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	if d := enqueue("cv0s6tbp0n8g00c2s6t1"); !oldDecodes(d) {
		t.Fatalf("no worker answering: stored %q, which an earlier release cannot decode", d)
	}

	stopOld := fakeWorker(t, n.URL(), control.Build{Component: "mailfwd-worker", Version: "v0.9.0", Host: "old-pod"})
	stopNew := fakeWorker(t, n.URL(), control.Local("mailfwd-worker"))
	time.Sleep(500 * time.Millisecond) // several probes with both answering
	if q.RawInline() {
		t.Fatal("raw inline bodies while a worker of an earlier release runs")
	}
	if d := enqueue("cv0s6tbp0n8g00c2s6t2"); !oldDecodes(d) {
		t.Fatalf("an earlier worker answering: stored %q, which it cannot decode", d)
	}

	stopOld() // the rolling upgrade is over
	waitFor("only new workers", true)
	d := enqueue("cv0s6tbp0n8g00c2s6t3")
	if oldDecodes(d) {
		t.Fatalf("every worker reads the raw form, yet %q was stored as JSON", d)
	}
	if e, err := envelope.Unmarshal(d); err != nil || string(e.Body) != "Subject: x\r\n\r\nbody\r\n" {
		t.Fatalf("raw form does not decode: %v", err)
	}

	stopRollback := fakeWorker(t, n.URL(), control.Build{Component: "mailfwd-worker", Version: "v0.9.0", Host: "rolled-back"})
	defer stopRollback()
	waitFor("a worker of an earlier release again", false)
	if d := enqueue("cv0s6tbp0n8g00c2s6t4"); !oldDecodes(d) {
		t.Fatalf("after a rollback: stored %q", d)
	}
	stopNew()
}

// The orphan sweeper sees the queue id of an envelope in the raw form (its
// JSON ends at the newline before the body).
func TestSweeperReadsRawFormEnvelopes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, _ := BootstrapTest(t, ctx, Config{ClientName: t.Name()})
	q.rawInline.Store(true)
	if err := q.Enqueue(ctx, []*envelope.Envelope{testEnvelope("cv0s6tbp0n8g00c2s6t9", "raw.test", "body\r\n")}); err != nil {
		t.Fatal(err)
	}
	if d := lastStored(t, q, "raw.test"); json.Valid(d) {
		t.Fatalf("stored %q as JSON; the test needs the raw form", d)
	}
	_, qids, err := q.liveReferences(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !qids["cv0s6tbp0n8g00c2s6t9"] {
		t.Fatalf("the sweeper does not see the raw-form envelope's queue id: %v", qids)
	}
}
