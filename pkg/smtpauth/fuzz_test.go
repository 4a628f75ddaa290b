package smtpauth

import (
	"strings"
	"testing"
)

func FuzzParseUserLine(f *testing.F) {
	f.Add("app1 $2b$10$abcdefghijklmnopqrstuuK1uWJ1FQ2gWTVZuXY6s8Dl0H1qLqJHm example.com,a@b.example")
	f.Add("app1 $argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5 .x.example <> *")
	f.Add("bob hunter2 example.com")
	f.Fuzz(func(t *testing.T, line string) {
		u, err := ParseUserLine(line)
		if err != nil {
			return
		}
		if u.Name == "" || len(u.Senders) == 0 || (u.Hash.Algorithm != Bcrypt && u.Hash.Algorithm != Argon2id) {
			t.Fatalf("accepted %q as %+v", line, u)
		}
		// The canonical line parses to the same user.
		again, err := ParseUserLine(u.Line())
		if err != nil || again.Line() != u.Line() {
			t.Fatalf("canonical line %q: %v", u.Line(), err)
		}
		if strings.ContainsAny(u.Line(), "\n\r") {
			t.Fatal("line break in canonical line")
		}
		u.MaySend("x@example.com")
		u.MaySend("")
	})
}
