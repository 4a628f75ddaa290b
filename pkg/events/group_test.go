package events_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/events"
)

// envelopeEvents is one change for n recipients of one envelope, then a
// different change for the first of them.
func envelopeEvents(n int, reply string) []events.Event {
	var evs []events.Event
	for i := range n {
		evs = append(evs, events.Event{Type: events.Delivered, QueueID: "q7", Sender: "app@src.test",
			Recipient: fmt.Sprintf("r%d@example.net", i), Destination: "example.net", DSN: "2.0.0", Reply: reply})
	}
	return append(evs, events.Event{Type: events.Bounced, QueueID: "q7", Sender: "app@src.test",
		Recipient: "r0@example.net", Destination: "example.net", DSN: "5.1.1"})
}

func rcpts(evs []events.Event) []string {
	return keyed(evs, func(e events.Event) string { return e.Recipient })
}

// The recipients of one envelope with the same change are one stream
// message (one store and one PubAck for the lot), and readers still get
// one event per recipient, in order, each with its own id.
func TestEmitAllStoresAnEnvelopesEventsTogether(t *testing.T) {
	for _, linger := range []time.Duration{0, 10 * time.Millisecond} {
		t.Run("linger="+linger.String(), func(t *testing.T) {
			r := start(t, events.PublisherConfig{Source: "test", Linger: linger})
			in := envelopeEvents(10, "250 ok")
			r.pub.EmitAll(in)
			r.flush(t)
			info, err := r.st.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != 2 {
				t.Fatalf("the stream holds %d messages for 10 delivered + 1 bounced of one envelope, want 2", info.State.Msgs)
			}
			got := r.stored(t, events.Filter{})
			if !slices.Equal(rcpts(got), rcpts(in)) {
				t.Fatalf("read %v, want %v", rcpts(got), rcpts(in))
			}
			seen := map[string]bool{}
			for _, ev := range got {
				if err := ev.Valid(); err != nil || seen[ev.ID] {
					t.Fatalf("event %+v: %v (or its id twice)", ev, err)
				}
				seen[ev.ID] = true
			}
			// Server-side filters still select them (the subject is the
			// envelope's), the sender filter here.
			if n := len(r.stored(t, events.Filter{QueueIDs: []string{"q7"}, Types: []events.Type{events.Delivered}, Senders: []string{"app@"}})); n != 10 {
				t.Fatalf("filter by qid, type and sender: %d events, want 10", n)
			}
			if r.pub.Dropped() != 0 {
				t.Fatalf("%d events dropped", r.pub.Dropped())
			}
		})
	}
}

// A group larger than one stream message may be is split, never dropped.
func TestEmitAllSplitsAtTheSizeLimit(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	in := envelopeEvents(40, strings.Repeat("x", 4000)) // ~4.3 KiB each: 40 > 60 KiB
	r.pub.EmitAll(in)
	r.flush(t)
	info, err := r.st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs < 4 || info.State.Msgs > 5 {
		t.Fatalf("40 events of ~4.3 KiB and one more: %d stream messages, want 3 of up to 60 KiB for the 40 (+1)", info.State.Msgs)
	}
	if got := r.stored(t, events.Filter{}); !slices.Equal(rcpts(got), rcpts(in)) || r.pub.Dropped() != 0 {
		t.Fatalf("read %d events (%d dropped), want the %d in order", len(got), r.pub.Dropped(), len(in))
	}
}

// The webhook posts each event of a stored group on its own, in order.
func TestWebhookPostsEachEventOfAGroup(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	rc := &receiver{secret: []byte("s3cret")}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	stop := runForwarder(t, r, srv.URL, rc.secret, events.Filter{})
	defer stop()
	in := envelopeEvents(5, "250 ok")
	r.pub.EmitAll(in)
	r.flush(t)
	waitFor(t, "6 events at the endpoint", func() bool { got, _, _ := rc.snapshot(); return len(got) >= len(in) })
	got, _, bad := rc.snapshot()
	if len(bad) > 0 {
		t.Fatalf("the receiver refused requests: %v", bad)
	}
	if !slices.Equal(rcpts(got), rcpts(in)) {
		t.Fatalf("endpoint got %v, want %v", rcpts(got), rcpts(in))
	}
}

func TestUnpack(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  bool
	}{
		{`{"schema":1}`, 1, false},
		{` [{"a":1},{"b":2}]`, 2, false},
		{`[]`, 0, false},
		{`[{"a":1},`, 0, true},
		{`not json`, 0, true},
		{``, 0, true},
	} {
		parts, err := events.Unpack([]byte(tc.in))
		if (err != nil) != tc.err || len(parts) != tc.want {
			t.Errorf("Unpack(%q) = %d parts, %v; want %d, error %v", tc.in, len(parts), err, tc.want, tc.err)
		}
		if events.Count([]byte(tc.in)) != tc.want {
			t.Errorf("Count(%q) = %d, want %d", tc.in, events.Count([]byte(tc.in)), tc.want)
		}
	}
}

// With Types set, only those types are published: the others cost nothing
// and are not counted as dropped.
func TestPublisherTypes(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test", Types: map[events.Type]bool{events.Bounced: true}})
	r.pub.EmitAll(envelopeEvents(3, "250 ok")) // 3 delivered, 1 bounced
	r.pub.Emit(events.Event{Type: events.Received, QueueID: "q8", Destination: "example.net"})
	r.flush(t)
	if got := r.stored(t, events.Filter{}); !slices.Equal(rcpts(got), []string{"bounced:r0@example.net"}) || r.pub.Dropped() != 0 {
		t.Fatalf("stored %v (dropped %d), want the bounced event only", rcpts(got), r.pub.Dropped())
	}
}

// A stream message whose array holds things that are not events ({} or
// null) yields no event for them: a reader does not post or print empties.
func TestReadersSkipArrayElementsThatAreNotEvents(t *testing.T) {
	r := start(t, events.PublisherConfig{Source: "test"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good := `{"schema":1,"id":"e1","type":"delivered","time":"2026-12-07T10:00:00Z","queue_id":"q9","recipient":"a@example.net","destination":"example.net"}`
	if _, err := r.rawJS(t).Publish(ctx, "mailfwd.events.delivered.q9.net.example", []byte(`[{},null,`+good+`,{"id":"x"}]`)); err != nil {
		t.Fatal(err)
	}
	if got := r.stored(t, events.Filter{}); len(got) != 1 || got[0].ID != "e1" {
		t.Fatalf("read %+v, want only the one event", got)
	}
}
