package smtptrace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

const (
	fuzzSecretIR   = "AGFsaWNlAHMzY3IzdFBhNTV3MHJk" // AUTH PLAIN initial response
	fuzzSecretUser = "ZnV6enVzZXJuYW1l"             // AUTH LOGIN user name
	fuzzSecretPass = "ZnV6enBhc3N3b3JkMTIz"         // AUTH LOGIN password
	fuzzBody       = "FUZZ-BODY-MARKER"
)

// FuzzRedactor feeds arbitrary client and server bytes (split in arbitrary
// places) into a recorder, then an AUTH PLAIN, an AUTH LOGIN and a body,
// then more arbitrary bytes. Whatever came before, the credentials and the
// body (bodies off) must never be logged, and every record stays within
// the line and session bounds.
func FuzzRedactor(f *testing.F) {
	f.Add([]byte("EHLO x\r\n"), []byte("220 hi\r\n250 ok\r\n"), uint8(7), false)
	f.Add([]byte("DATA\r\nsome body\r\n"), []byte("354 go\r\n"), uint8(1), true)
	f.Add([]byte("BDAT 99999 LAST\r\n"), []byte("250 ok\r\n"), uint8(3), false)
	f.Add([]byte("AUTH LOGIN\r\n"), []byte("334 VXNlcm5hbWU6\r\n"), uint8(2), true)
	f.Add([]byte("STARTTLS\r\n"), []byte("220 go ahead\r\n"), uint8(5), false)
	f.Add([]byte(strings.Repeat("NOOP ", 100)+"\r\n"), []byte(strings.Repeat("250-", 60)+"\n"), uint8(0), true)
	f.Add([]byte("AUTH\r\n*\r\nDATA\r\n.\r\n"), []byte("535 no\r\n554 no\r\n"), uint8(13), false)
	f.Fuzz(func(t *testing.T, cli, srv []byte, split uint8, clientFirst bool) {
		for _, s := range []string{fuzzSecretIR, fuzzSecretUser, fuzzSecretPass, fuzzBody} {
			if bytes.Contains(cli, []byte(s)) || bytes.Contains(srv, []byte(s)) {
				t.Skip()
			}
		}
		// A partial line merges with what follows; the server would not read
		// it as AUTH either. End the prefixes at a line boundary.
		if len(cli) > 0 && cli[len(cli)-1] != '\n' {
			cli = append(cli, '\n')
		}
		if len(srv) > 0 && srv[len(srv)-1] != '\n' {
			srv = append(srv, '\n')
		}
		var out bytes.Buffer
		l := Limits{MaxLineBytes: 100, MaxLinesPerSession: 200, MaxBytesPerSecond: 1 << 30, MaxTraces: 4, MaxTracedSessions: 4}
		w := NewWatcher(nil, slog.New(slog.NewJSONHandler(&out, nil)), "fuzz", l)
		now := time.Now()
		s := Setting{ID: "f", Client: "127.0.0.1", Created: now, Until: now.Add(time.Hour)}
		w.publish(map[string]Setting{"f": s})
		w.sessions.Add(1)
		r := newRecorder(w, s, Ingress, "sess", "127.0.0.1:1", "", 0, false)
		step := int(split%17) + 1
		feed := func(read bool, p string) {
			for len(p) > 0 {
				k := min(step, len(p))
				r.feed(0, read, []byte(p[:k]))
				p = p[k:]
			}
		}
		client := func(p string) { feed(true, p) }
		server := func(p string) { feed(false, p) }
		if clientFirst {
			client(string(cli))
			server(string(srv))
		} else {
			server(string(srv))
			client(string(cli))
		}
		client("AUTH PLAIN " + fuzzSecretIR + "\r\n")
		server("235 2.7.0 ok\r\n")
		client("AUTH LOGIN\r\n")
		server("334 VXNlcm5hbWU6\r\n")
		client(fuzzSecretUser + "\r\n")
		server("334 UGFzc3dvcmQ6\r\n")
		client(fuzzSecretPass + "\r\n")
		server("235 2.7.0 ok\r\n")
		client("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
		server("250 ok\r\n250 ok\r\n354 go\r\n")
		client("Subject: x\r\n\r\n" + fuzzBody + "\r\n.\r\n")
		server("250 queued\r\n")
		client(string(cli))
		server(string(srv))
		r.close()

		text := out.String()
		for _, s := range []string{fuzzSecretIR, fuzzSecretUser, fuzzSecretPass, fuzzBody} {
			if strings.Contains(text, s) {
				t.Fatalf("%q logged:\n%s", s, text)
			}
		}
		sc := bufio.NewScanner(strings.NewReader(text))
		sc.Buffer(nil, 1<<20)
		dialog := 0
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("record %q: %v", sc.Text(), err)
			}
			if m["msg"] == "smtp trace" {
				dialog++
				if line := m["line"].(string); len(line) > l.MaxLineBytes+len(" …[cut: 100000000 more bytes]") {
					t.Fatalf("record of %d bytes", len(line))
				}
			}
		}
		if dialog > l.MaxLinesPerSession {
			t.Fatalf("%d dialog records, limit %d", dialog, l.MaxLinesPerSession)
		}
		if w.sessions.Load() != 0 {
			t.Fatalf("sessions %d after close", w.sessions.Load())
		}
	})
}
