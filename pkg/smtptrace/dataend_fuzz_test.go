package smtptrace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// FuzzRecorderDataEndDifferential feeds arbitrary bytes after DATA/354,
// split in arbitrary places, to a recorder and to the server's own DATA
// reader (go-smtp's NewDataReader, what Session.Data reads): what one calls
// body the other must too. Where the server's body ends the recorder logs
// "." and takes the next line as a command; where the server reads on, the
// recorder counts body and never logs it in clear (issue 19 item 6).
func FuzzRecorderDataEndDifferential(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"), uint8(0), false)
	f.Add([]byte("Subject: pay\r\n\r\nhello\r\n.\nSALARY: 123456\r\n.\r\nNOOP\r\n"), uint8(3), false)
	f.Add([]byte(".\r\nNOOP\r\n"), uint8(1), true)
	f.Add([]byte("a\n.\r\nb\r\r\n.\r\nc\r\n.\r\nRSET\r\n"), uint8(2), false)
	f.Add([]byte("..\r\n.\r\r\n.x\r\n.\r"), uint8(5), true)
	f.Add([]byte("no end\r\n."), uint8(7), false)
	f.Fuzz(func(t *testing.T, body []byte, split uint8, withBodies bool) {
		// The server: how many raw bytes its reader takes, and whether it
		// saw the end marker.
		src := bytes.NewReader(body)
		br := bufio.NewReader(src)
		_, err := io.ReadAll(smtp.NewDataReader(br))
		ended := err == nil
		took := len(body) - src.Len() - br.Buffered()
		if !ended {
			took = len(body)
		}

		var out bytes.Buffer
		l := Limits{MaxLineBytes: 1 << 20, MaxLinesPerSession: 1 << 20, MaxBytesPerSecond: 1 << 40, MaxTraces: 1, MaxTracedSessions: 1}
		w := NewWatcher(nil, slog.New(slog.NewJSONHandler(&out, nil)), "fuzz", l)
		now := time.Now()
		s := Setting{ID: "f", Client: "127.0.0.1", Created: now, Until: now.Add(time.Hour), WithBodies: withBodies}
		w.publish(map[string]Setting{"f": s})
		w.sessions.Add(1)
		r := newRecorder(w, s, Ingress, "sess", "127.0.0.1:1", "", 0, false)
		r.feed(0, true, []byte("DATA\r\n"))
		r.feed(0, false, []byte("354 go ahead\r\n"))
		step := int(split%23) + 1
		for p := body; len(p) > 0; {
			k := min(step, len(p))
			r.feed(0, true, p[:k])
			p = p[k:]
		}
		if r.data == ended {
			t.Fatalf("server body ended %v after %d of %d bytes; recorder still in DATA: %v", ended, took, len(body), r.data)
		}
		if !withBodies {
			if ended && (r.redacted != int64(took-3) || r.bodyBytes != 0) {
				t.Fatalf("server body %d raw bytes, recorder redacted %d (+%d pending)", took-3, r.redacted, r.bodyBytes)
			}
			if !ended && r.bodyBytes != int64(len(body)) {
				t.Fatalf("server reads on after %d bytes, recorder counted %d as body", len(body), r.bodyBytes)
			}
		}

		// The records: body lines (with bodies), ".", then the next command.
		var dialog []string
		for _, rec := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(rec), &m); err != nil {
				t.Fatalf("record %q: %v", rec, err)
			}
			if m["msg"] == "smtp trace" && m["from"] == "client" {
				dialog = append(dialog, m["line"].(string))
			}
		}
		if len(dialog) == 0 || dialog[0] != "DATA" {
			t.Fatalf("dialog %q", dialog)
		}
		dialog = dialog[1:]
		if !ended {
			if !withBodies && len(dialog) != 0 {
				t.Fatalf("a body the server reads on is logged: %q", dialog)
			}
			return
		}
		bodyLines := bytes.Count(body[:took-3], []byte("\n"))
		if withBodies {
			if len(dialog) < bodyLines+1 || dialog[bodyLines] != "." {
				t.Fatalf("server body of %d lines; recorded %q", bodyLines, dialog)
			}
			dialog = dialog[bodyLines:]
		} else {
			n := 0
			if took > 3 {
				n = 1 // the summary
			}
			if len(dialog) < n+1 || dialog[n] != "." || n == 1 && !strings.HasPrefix(dialog[0], "[redacted: message body") {
				t.Fatalf("recorded %q for a body of %d bytes", dialog, took-3)
			}
			dialog = dialog[n:]
		}
		rest := body[took:]
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			next := strings.TrimSuffix(string(rest[:i]), "\r")
			// (The JSON log shows invalid UTF-8 as U+FFFD: compare valid text.)
			if verb, _, _ := cutSpace(next); upper(verb) != "AUTH" && utf8.ValidString(next) && (len(dialog) < 2 || dialog[1] != next) {
				t.Fatalf("after the body the server reads the command %q; recorded %q", next, dialog)
			}
		}
	})
}
