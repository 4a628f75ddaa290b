package events

import (
	"slices"
	"testing"
)

func TestSubjectsCollide(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.*", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.b", "a.b.c", false},
		{"a.>", "a", false},
		{"m.e.t.com.com.>", "m.e.t.*.com.com", true},
		{"m.e.t.net.example.>", "m.e.t.*.net.example", false},
		{"m.e.t.q1.>", "m.e.t.q2.>", false},
	} {
		if got := subjectsCollide(c.a, c.b); got != c.want || subjectsCollide(c.b, c.a) != c.want {
			t.Errorf("subjectsCollide(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// The queue id is a token of the subject, and a --qid filter names it: the
// server selects one message's events.
func TestQueueIDInSubject(t *testing.T) {
	ev := Event{Type: Delivered, QueueID: "dcb9gghksdudshfsg7r0", Destination: "Mail.Example.NET"}
	if got, want := Subject(&ev), "mailfwd.events.delivered.dcb9gghksdudshfsg7r0.net.example.mail"; got != want {
		t.Fatalf("subject %q, want %q", got, want)
	}
	f := Filter{QueueIDs: []string{"dcb9gghksdudshfsg7r0"}, Types: []Type{Delivered, Bounced}}
	want := []string{"mailfwd.events.bounced.dcb9gghksdudshfsg7r0.>", "mailfwd.events.delivered.dcb9gghksdudshfsg7r0.>"}
	if got := f.Subjects(); !slices.Equal(got, want) {
		t.Fatalf("subjects %q, want %q", got, want)
	}
	// By domain: the new form and the older one without a queue id.
	f = Filter{Domains: []string{"example.net"}, Types: []Type{Delivered}}
	want = []string{"mailfwd.events.delivered.*.net.example", "mailfwd.events.delivered.*.net.example.>",
		"mailfwd.events.delivered.net.example", "mailfwd.events.delivered.net.example.>"}
	if got := f.Subjects(); !slices.Equal(got, want) {
		t.Fatalf("subjects %q, want %q", got, want)
	}
	// Forms that could overlap widen to the type.
	f = Filter{Domains: []string{"com.com"}, Types: []Type{Delivered}}
	if got := f.Subjects(); !slices.Equal(got, []string{"mailfwd.events.delivered.>"}) {
		t.Fatalf("subjects %q, want the type's", got)
	}
}
