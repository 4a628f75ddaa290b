package events

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// Whatever the type, action and destination, an event's subject is a
// valid NATS subject under Prefix with no wildcards and no empty token.
func FuzzSubject(f *testing.F) {
	for _, s := range []string{"example.net", "[192.0.2.1]", "[IPv6:2001:db8::1]", "a b.*.>", "", "..", "ex\x00ample.net", "xn--bcher-kva.example"} {
		f.Add("delivered", "queue.bounce", s, "dcb9gghksdudshfsg7r0")
	}
	f.Add("received", "", "com.com", "a.b")
	f.Fuzz(func(t *testing.T, typ, action, dest, qid string) {
		for _, ev := range []Event{{Type: Type(typ), Destination: dest, QueueID: qid}, {Type: Audit, Action: action}} {
			s := Subject(&ev)
			if !strings.HasPrefix(s, Prefix+".") {
				t.Fatalf("subject %q outside %s", s, Prefix)
			}
			for _, tok := range strings.Split(s, ".") {
				if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n*>\x00") {
					t.Fatalf("subject %q has a bad token %q (from type %q action %q destination %q)", s, tok, typ, action, dest)
				}
			}
		}
		// A reader's filter subjects never overlap (a consumer refuses
		// that), and they select the event's own subject.
		ev := Event{Type: Delivered, Destination: dest, QueueID: qid}
		for _, f := range []Filter{{Domains: []string{dest}}, {QueueIDs: []string{qid}}, {QueueIDs: []string{qid, "x"}, Domains: []string{dest, "net"}}} {
			subs := f.Subjects()
			if collide(subs) {
				t.Fatalf("filter %+v: subjects %q overlap", f, subs)
			}
			if !slices.ContainsFunc(subs, func(s string) bool { return subjectsCollide(s, Subject(&ev)) }) {
				t.Fatalf("filter %+v: subjects %q miss the event's %q", f, subs, Subject(&ev))
			}
		}
	})
}

// Whatever a stream message holds, Unpack returns valid JSON parts or an
// error, and a message EmitAll could write comes back as its events.
func FuzzUnpack(f *testing.F) {
	for _, s := range []string{`{"schema":1,"id":"a"}`, `[{"id":"a"},{"id":"b"}]`, `[`, `[1,2]`, ` `, `[{"id":"a"}]]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parts, err := Unpack(data)
		if err != nil {
			return
		}
		for _, p := range parts {
			if !json.Valid(p) {
				t.Fatalf("Unpack(%q): part %q is not JSON", data, p)
			}
		}
		if len(parts) > 1 {
			if again, err := Unpack(joinArray(toBytes(parts))); err != nil || len(again) != len(parts) {
				t.Fatalf("Unpack of its own join: %d parts, %v; want %d", len(again), err, len(parts))
			}
		}
	})
}

func toBytes(parts []json.RawMessage) [][]byte {
	out := make([][]byte, len(parts))
	for i, p := range parts {
		out[i] = p
	}
	return out
}
