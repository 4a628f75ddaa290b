package ctl

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// FuzzTraceShow: whatever the logs hold, trace show neither panics nor
// passes a control character to the terminal, prints at most one line per
// input line, and reads back exactly the dialog line slog wrote.
func FuzzTraceShow(f *testing.F) {
	f.Add("220 mx.example.com ESMTP", []byte(`time=2026-01-01T00:00:00Z msg="smtp trace" trace=t line="a b"`+"\n"))
	f.Add("MAIL FROM:<a@b> \x1b[31m\x00\xff", []byte(`[pod/p/c] {"time":"x","msg":"smtp trace","trace":"t","line":"\u001b"}`))
	f.Add("x=\"y\\\" z", []byte("time=\"\\\nmsg=\"smtp trace\" a=\"\\x\"\n{\"smtp trace\n"))
	f.Fuzz(func(t *testing.T, line string, raw []byte) {
		var logs bytes.Buffer
		slog.New(slog.NewTextHandler(&logs, nil)).Info("smtp trace", "component", "worker", "trace", "t",
			"session", "s", "from", "server", "line", line)
		rec, ok := parseTraceRecord(logs.Bytes())
		if !ok || rec["line"] != line || rec["from"] != "server" || rec["trace"] != "t" {
			t.Fatalf("slog wrote %q, read back %q (ok %v)", logs.String(), rec["line"], ok)
		}

		in := append(logs.Bytes(), raw...)
		var out bytes.Buffer
		n, _, err := showTrace(bytes.NewReader(in), &out, "")
		if err != nil {
			t.Fatal(err)
		}
		if n < 1 || n > bytes.Count(in, []byte("\n"))+1 {
			t.Fatalf("%d records printed from %d lines", n, bytes.Count(in, []byte("\n"))+1)
		}
		for _, r := range strings.TrimSuffix(out.String(), "\n") {
			if r < 0x20 && r != '\n' || r == 0x7f {
				t.Fatalf("control character %q in the output %q", r, out.String())
			}
		}
	})
}
