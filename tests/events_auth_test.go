package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

const eventsUser, eventsPassword = "mailfwd-events", "pw-events-test"

// The quickstart's event grants: the ingress and the workers publish their
// own event types only; the reader user follows the stream (events tail, a
// webhook's consumer) and nothing else: it cannot publish, purge or delete
// the stream, read mail, or take over the workers' audit-log consumer.
func TestEventsQuickstartGrants(t *testing.T) {
	conf := quickstartAuthConf(t)
	line := "{ user: mailfwd-events, password: $MAILFWD_EVENTS_PASSWORD, permissions: $EVENTS_READER }"
	if !slices.ContainsFunc(strings.Split(conf, "\n"), func(l string) bool { return strings.TrimSpace(l) == line }) {
		t.Fatalf("auth.conf has no reader user %q", line)
	}
	url, slog := startQuickstartNATSWith(t, conf)
	if out, err := runCtl(t, url, "bootstrap"); err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	pub := func(js jetstream.JetStream, subj string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ev := events.Event{Schema: events.Schema, ID: events.NewID(), Type: events.Type(strings.Split(subj, ".")[2]), Time: time.Now().UTC(), QueueID: "Q" + subj}
		b, _ := json.Marshal(ev)
		_, err := js.Publish(ctx, subj, b)
		return err
	}
	_, ingJS, _ := connectAs(t, url, ingressUser)
	_, wkJS, _ := connectAs(t, url, workerUser)
	for _, c := range []struct {
		who  string
		js   jetstream.JetStream
		subj string
		ok   bool
	}{
		{"ingress", ingJS, "mailfwd.events.received.test.dst", true},
		{"ingress", ingJS, "mailfwd.events.delivered.test.dst", false},
		{"ingress", ingJS, "mailfwd.events.audit.queue-purge", false},
		{"worker", wkJS, "mailfwd.events.delivered.test.dst", true},
		{"worker", wkJS, "mailfwd.events.deferred.test.dst", true},
		{"worker", wkJS, "mailfwd.events.received.test.dst", false},
		{"worker", wkJS, "mailfwd.events.operator_purged.test.dst", false},
	} {
		if err := pub(c.js, c.subj); (err == nil) != c.ok {
			t.Errorf("%s publishing %s: err %v, want allowed=%v", c.who, c.subj, err, c.ok)
		}
	}

	// The reader follows the stream with mailfwdctl.
	var out, errOut bytes.Buffer
	root := ctl.NewRoot(&out, &errOut)
	root.SetArgs([]string{"--nats-url", url, "--nats-user", eventsUser, "--nats-password", eventsPassword, "--timeout", "20s",
		"events", "tail", "--all", "--no-follow", "-o", "json"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("events tail as %s: %v\n%s%s", eventsUser, err, out.String(), errOut.String())
	}
	if n := strings.Count(out.String(), `"schema":1`); n != 3 {
		t.Fatalf("the reader saw %d events, want the 3 allowed ones:\n%s", n, out.String())
	}
	mark := slog.mark()
	ec := &errCollector{}
	nc, err := nats.Connect(url, nats.UserInfo(eventsUser, eventsPassword), nats.CustomInboxPrefix(queue.InboxPrefix(eventsUser)), nats.ErrorHandler(ec.handler))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// A webhook forwarder's durable consumer.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateConsumer(ctx, "EVENTS", (&events.Forwarder{URL: "http://127.0.0.1:1/"}).ConsumerConfig()); err != nil {
		t.Errorf("the reader cannot make a webhook consumer: %v", err)
	}
	if err := pub(js, "mailfwd.events.delivered.test.dst"); err == nil {
		t.Error("the reader published an event")
	}
	if err := pub(js, "mailfwd.events.audit.queue-purge"); err == nil {
		t.Error("the reader published an audit event")
	}
	// Neither purge nor delete the stream, nor remove, change or drain the
	// workers' audit-log consumer.
	st, err := js.Stream(short(t), "EVENTS")
	if err != nil {
		t.Fatalf("the reader cannot read the stream's info: %v", err)
	}
	if err := st.Purge(short(t)); err == nil {
		t.Error("the reader purged EVENTS")
	}
	if err := js.DeleteStream(short(t), "EVENTS"); err == nil {
		t.Error("the reader deleted EVENTS")
	}
	if err := js.DeleteConsumer(short(t), "EVENTS", events.AuditLogConsumer); err == nil {
		t.Error("the reader deleted the audit-log consumer")
	}
	bad := events.AuditLogConsumerConfig()
	bad.FilterSubjects = []string{"mailfwd.events.none.>"}
	if _, err := js.UpdateConsumer(short(t), "EVENTS", bad); err == nil {
		t.Error("the reader changed the audit-log consumer")
	}
	if c, err := js.Consumer(short(t), "EVENTS", events.AuditLogConsumer); err == nil {
		if _, err := c.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
			t.Error("the reader took an event from the audit-log consumer")
		}
	}
	// What the admin sees afterwards: the stream and the consumer as they were.
	_, adminJS, _ := connectAs(t, url, ctlUser)
	if info, err := adminJS.Stream(short(t), "EVENTS"); err != nil || info.CachedInfo().State.Msgs != 3 {
		t.Errorf("EVENTS after the reader's attempts: %v", err)
	}
	if c, err := adminJS.Consumer(short(t), "EVENTS", events.AuditLogConsumer); err != nil || !slices.Equal(c.CachedInfo().Config.FilterSubjects, events.AuditLogConsumerConfig().FilterSubjects) {
		t.Errorf("the audit-log consumer after the reader's attempts: %v", err)
	}
	if c, err := js.Consumer(ctx, "MAIL", "workers"); err == nil {
		if _, err := c.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
			t.Error("the reader fetched mail")
		}
	}
	if _, err := nc.SubscribeSync("mail.>"); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	waitFor(t, "the reader's subscribe violation", 5*time.Second, func() bool { return ec.has("mail.>") })
	if v := slog.violations(eventsUser, mark); len(v) == 0 {
		t.Error("the server logged no violation for the reader's forbidden actions")
	}
}

// short is a context for one request that the server may refuse by not
// answering (a denied JetStream API call times out).
func short(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}
