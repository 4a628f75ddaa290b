package tests

import (
	"bytes"
	"context"
	"encoding/json"
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
// own event types only; the commented-out reader user, once enabled as the
// comment says, follows the stream and nothing else.
func TestEventsQuickstartGrants(t *testing.T) {
	conf := quickstartAuthConf(t)
	line := "#> { user: mailfwd-events, password: $MAILFWD_EVENTS_PASSWORD, permissions: $EVENTS_READER }"
	if !strings.Contains(conf, line) || !strings.Contains(conf, "#> EVENTS_READER: {") {
		t.Fatalf("auth.conf has no commented-out reader role and user %q", line)
	}
	t.Setenv("MAILFWD_EVENTS_PASSWORD", eventsPassword)
	// Enabled as its comment says: the "#> " prefixes removed.
	url, slog := startQuickstartNATSWith(t, strings.ReplaceAll(conf, "#> ", ""))
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
