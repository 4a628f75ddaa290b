package events

import (
	"strings"
	"testing"
)

// Whatever the type, action and destination, an event's subject is a
// valid NATS subject under Prefix with no wildcards and no empty token.
func FuzzSubject(f *testing.F) {
	for _, s := range []string{"example.net", "[192.0.2.1]", "[IPv6:2001:db8::1]", "a b.*.>", "", "..", "ex\x00ample.net", "xn--bcher-kva.example"} {
		f.Add("delivered", "queue.bounce", s)
	}
	f.Fuzz(func(t *testing.T, typ, action, dest string) {
		for _, ev := range []Event{{Type: Type(typ), Destination: dest}, {Type: Audit, Action: action}} {
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
	})
}
