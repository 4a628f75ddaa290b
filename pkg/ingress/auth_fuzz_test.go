package ingress_test

import (
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"time"
)

// FuzzAuthSession feeds arbitrary lines to an implicit-TLS session that
// offers AUTH (SASL exchanges included: a 334 makes the next line a SASL
// response). The server must never panic, must answer every line, and must
// end the session after a 421.
func FuzzAuthSession(f *testing.F) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, s := range []string{
		"EHLO c\n" + plainAuth("app1", goodPass) + "\nMAIL FROM:<a@app.test>\nRCPT TO:<u@x.test>\nDATA",
		"EHLO c\nAUTH LOGIN\n" + b64("app1") + "\n" + b64("wrong") + "\nAUTH LOGIN " + b64("app1") + "\n" + b64(goodPass),
		"EHLO c\nAUTH PLAIN\n" + b64("\x00app1\x00x") + "\nAUTH PLAIN\n*\nAUTH LOGIN\n*",
		"EHLO c\nAUTH PLAIN !!!\nAUTH CRAM-MD5\nAUTH\nAUTH PLAIN =\nAUTH LOGIN =\n=",
		"EHLO c\n" + plainAuth("app1", goodPass) + "\n" + plainAuth("app1", goodPass) + "\nMAIL FROM:<>\nMAIL FROM:<x@other.test>",
		"EHLO c\nAUTH PLAIN " + b64("other\x00app1\x00"+goodPass) + "\nAUTH LOGIN " + b64(strings.Repeat("u", 2000)),
		"MAIL FROM:<a@app.test>\nAUTH PLAIN\nEHLO c\nSTARTTLS\nRSET\nAUTH LOGIN",
		// Issue 19: AUTH inside a transaction (503 5.5.1), then after RSET.
		"EHLO c\nMAIL FROM:<ceo@bank.example>\n" + plainAuth("app1", goodPass) + "\nRSET\n" + plainAuth("app1", goodPass) + "\nMAIL FROM:<ceo@bank.example>",
	} {
		f.Add([]byte(s))
	}
	fx := startAuth(f, true, 1<<30)
	f.Fuzz(func(t *testing.T, data []byte) {
		var lines []string
		for _, l := range strings.Split(string(data), "\n") {
			if len(lines) == fuzzMaxLines {
				break
			}
			l = strings.TrimSuffix(l, "\r")
			if len(l) > fuzzMaxLineLen {
				l = l[:fuzzMaxLineLen]
			}
			if len(l) >= 4 && strings.EqualFold(l[:4], "BDAT") {
				l = "NOOP" // raw chunk bytes would follow, not a reply per line
			}
			lines = append(lines, l)
		}
		c := dialTLS(t, fx, fx.tlsAddr)
		defer c.conn.Close()
		protoErrs := 0
		for _, line := range lines {
			if err := c.writeLine(line); err != nil {
				t.Fatalf("write %q: %v", line, err)
			}
			r, err := c.readReply()
			if err != nil {
				t.Fatalf("no well-formed reply to %q: %v", line, err)
			}
			if r.Code == 421 && strings.Contains(r.Text(), "Internal server error") {
				t.Fatalf("server panicked on %q: %v (log: %s)", line, r, fx.panics.get())
			}
			if r.Code == 354 {
				if _, err := io.WriteString(c.conn, ".\r\n"); err != nil {
					t.Fatalf("end data: %v", err)
				}
				if r, err = c.readReply(); err != nil {
					t.Fatalf("end of DATA: %v", err)
				}
			}
			if isProtocolError(r) {
				if protoErrs++; protoErrs > 3 {
					return // go-smtp's own syntax-error limit: one more reply, then it hangs up
				}
			}
			if r.Code == 221 || r.Code == 421 {
				c.expectClosed()
				return
			}
		}
		if p := fx.panics.get(); p != "" {
			t.Fatalf("server logged a panic: %s", p)
		}
		_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
		c.cmd("QUIT")
	})
}
