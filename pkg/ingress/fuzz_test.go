package ingress_test

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ingress"
)

const (
	fuzzMaxLines   = 32
	fuzzMaxLineLen = 512
)

// isProtocolError reports the replies go-smtp counts towards its limit of
// protocol errors per connection (after the 4th it sends one more reply,
// "Too many errors", and hangs up).
func isProtocolError(r reply) bool {
	if len(r.Lines) != 1 || (r.Code != 500 && r.Code != 501) {
		return false
	}
	t := r.Lines[0]
	return t == "5.5.2 Error: bad syntax" || t == "5.5.2 Bad command" ||
		(strings.HasPrefix(t, "5.5.2 Syntax errors, ") && strings.HasSuffix(t, " command unrecognized"))
}

// FuzzSession feeds arbitrary command lines to a live session. The server
// must never panic and must answer every line with a well-formed reply.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"EHLO client.test\nMAIL FROM:<a@src.test>\nRCPT TO:<b@dst.test>\nDATA\nQUIT",
		"HELO x\nMAIL FROM:<>\nRCPT TO:<postmaster@dst.test>\nDATA\nRSET\nNOOP",
		"EHLO c\nMAIL FROM:<a@b.test> SIZE=999999999999\nMAIL FROM:<a@b.test> BODY=8BITMIME SMTPUTF8\nRCPT TO:<ü@ü.test>\nDATA",
		"MAIL FROM:<a@b.test>\nRCPT TO:<x@y.test>\nDATA\nEHLO\nHELO",
		"EHLO c\nRCPT TO:<x@y.test>\nDATA\nVRFY root\nEXPN all\nHELP\nTURN",
		"EHLO c\nSTARTTLS\nAUTH PLAIN AGZvbwBiYXI=\nAUTH\nBDAT 10 LAST\nMAIL FROM:<\"a@b>",
		"\n\n\n\n\n\n",
		"xyz\nab\nabcde\nEHLO\x00\xff\nMAIL FROM:<a@[1.2.3.4]>\nRCPT TO:<a@[IPv6:::1]> NOTIFY=NEVER",
		"EHLO c\nMAIL FROM:<a@b.test>\nRCPT TO:<a..b@c.test>\nRCPT TO:<a@c>\nRCPT TO:<@x,@y:a@b.test>\nDATA\nQUIT",
		"EHLO c\r\nMAIL FROM:<a@b.test> RET=FULL ENVID=x\r\nRCPT TO:<c@d.test> ORCPT=rfc822;c@d.test\r\nQUIT\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}

	fx := start(f, func(c *ingress.Config) {
		c.MaxSessions = 10000
		c.MaxRecipients = 5
		c.Policy = &ingress.StaticRelay{Domains: []string{"dst.test", "xn--tda.test"}}
	})

	f.Fuzz(func(t *testing.T, data []byte) {
		var lines []string
		for _, l := range bytes.Split(data, []byte("\n")) {
			if len(lines) == fuzzMaxLines {
				break
			}
			l = bytes.TrimSuffix(l, []byte("\r"))
			if len(l) > fuzzMaxLineLen {
				l = l[:fuzzMaxLineLen]
			}
			s := string(l)
			// BDAT is followed by raw chunk bytes, not a reply per line;
			// a fuzzed size would just make the server wait for them.
			if len(s) >= 4 && strings.EqualFold(s[:4], "BDAT") {
				s = "NOOP"
			}
			lines = append(lines, s)
		}

		c := dialRaw(t, fx.addr)
		defer c.conn.Close()
		if r := c.read(); r.Code != 220 {
			t.Fatalf("greeting %v", r)
		}
		check := func(line string, r reply, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("no well-formed reply to %q: %v", line, err)
			}
			if r.Code == 421 && strings.Contains(r.Text(), "Internal server error") {
				t.Fatalf("server panicked on %q: %v (log: %s)", line, r, fx.panics.get())
			}
		}
		protoErrs := 0
		for _, line := range lines {
			if err := c.writeLine(line); err != nil {
				t.Fatalf("write %q: %v", line, err)
			}
			r, err := c.readReply()
			check(line, r, err)
			if r.Code == 354 {
				// DATA was accepted: end an empty message at once.
				if _, err := io.WriteString(c.conn, ".\r\n"); err != nil {
					t.Fatalf("end data: %v", err)
				}
				r, err = c.readReply()
				check(".", r, err)
				if r.Code != 250 && r.Code/100 != 4 && r.Code/100 != 5 {
					t.Fatalf("end of DATA answered %v", r)
				}
			}
			if isProtocolError(r) {
				protoErrs++
				if protoErrs > 3 {
					r, err = c.readReply()
					check(line, r, err)
					if !strings.Contains(r.Text(), "Too many errors") {
						t.Fatalf("after %d protocol errors: %v", protoErrs, r)
					}
					return
				}
			}
			if r.Code == 221 || r.Code == 421 {
				return // server hangs up
			}
		}
		if p := fx.panics.get(); p != "" {
			t.Fatalf("server logged a panic: %s", p)
		}
		_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
		c.cmd("QUIT")
	})
}
