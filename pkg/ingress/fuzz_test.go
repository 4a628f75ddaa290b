package ingress_test

import (
	"bytes"
	"context"
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
	return t == "5.5.2 Error: bad syntax" || t == "5.5.2 Error: command not recognized" ||
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
		// Issue 19: recipients over the limit (452 4.5.3, not counted as
		// errors up to the overshoot limit), then DATA for the accepted ones.
		"EHLO c\nMAIL FROM:<a@b.test>\nRCPT TO:<1@dst.test>\nRCPT TO:<2@dst.test>\nRCPT TO:<3@dst.test>\nRCPT TO:<4@dst.test>\nRCPT TO:<5@dst.test>\nRCPT TO:<6@dst.test>\nRCPT TO:<7@dst.test>\nRCPT TO:<8@dst.test>\nDATA\nRSET",
		// Issue 19: AUTH inside a transaction.
		"EHLO c\nMAIL FROM:<a@b.test>\nAUTH PLAIN AGZvbwBiYXI=\nRCPT TO:<x@dst.test>",
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

// FuzzSessionPauses runs fuzzed dialogs in which the client may pause
// longer than the read timeout ("~" lines), in commands or inside DATA.
// A pause always ends the session with a 421 and a close, and what follows
// it is never read: the stream holds exactly the messages the client saw
// "queued as" for (issue 9 defect 1).
func FuzzSessionPauses(f *testing.F) {
	seeds := []string{
		"EHLO c\nMAIL FROM:<a@src.test>\nRCPT TO:<b@dst.test>\nDATA\nSubject: x\n~\nMAIL FROM:<e@src.test>\nRCPT TO:<v@dst.test>\nDATA\nsmuggled\n.\n",
		"EHLO c\nMAIL FROM:<a@src.test>\nRCPT TO:<b@dst.test>\nDATA\nSubject: x\n\nbody\n.\nMAIL FROM:<a@src.test>\n~\nRCPT TO:<b@dst.test>",
		"EHLO c\n~\nNOOP",
		"EHLO c\nMAIL FROM:<a@src.test>\nRCPT TO:<b@dst.test>\nDATA\nReceived: x\nReceived: y\nReceived: z\n\n.\nQUIT",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	fx := start(f, func(c *ingress.Config) {
		c.MaxSessions = 10000
		c.ReadTimeout = 400 * time.Millisecond
		c.MaxHops = 2
		c.Policy = &ingress.StaticRelay{Domains: []string{"dst.test"}}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		var lines []string
		pauses := 0
		for _, l := range bytes.Split(data, []byte("\n")) {
			if len(lines) == fuzzMaxLines {
				break
			}
			l = bytes.TrimSuffix(l, []byte("\r"))
			if len(l) > fuzzMaxLineLen {
				l = l[:fuzzMaxLineLen]
			}
			s := string(l)
			if len(s) >= 4 && strings.EqualFold(s[:4], "BDAT") {
				s = "NOOP"
			}
			if s == "~" {
				if pauses == 1 {
					continue
				}
				pauses++
			}
			lines = append(lines, s)
		}
		before := streamCount(t, fx)
		queued := uint64(0)
		c := dialRaw(t, fx.addr)
		defer c.conn.Close()
		if r := c.read(); r.Code != 220 {
			t.Fatalf("greeting %v", r)
		}
		inData, protoErrs := false, 0
		for _, line := range lines {
			if line == "~" {
				time.Sleep(700 * time.Millisecond)
				r, err := c.readReply()
				if err != nil || r.Code != 421 {
					t.Fatalf("after a pause (in DATA: %v): %v, %v; want 421", inData, r, err)
				}
				// What the client sends now must not be read as commands.
				_ = c.writeLine("MAIL FROM:<smuggler@src.test>")
				_ = c.writeLine("RCPT TO:<victim@dst.test>")
				_ = c.writeLine("DATA")
				_ = c.writeLine(".")
				_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				if extra, err := c.tp.ReadLine(); err == nil {
					t.Fatalf("server still talking after the 421: %q", extra)
				}
				break
			}
			if inData {
				if strings.HasPrefix(line, ".") && line != "." {
					line = "." + line
				}
				if err := c.writeLine(line); err != nil {
					break // the server hung up (a 421 the client had not read yet)
				}
				if line != "." {
					continue
				}
				inData = false
			} else if err := c.writeLine(line); err != nil {
				break // the server hung up (QUIT, too many errors)
			}
			r, err := c.readReply()
			if err != nil {
				break
			}
			if r.Code == 354 {
				inData = true
			}
			if r.Code == 250 && strings.Contains(r.Text(), "queued as") {
				queued++
			}
			if isProtocolError(r) {
				if protoErrs++; protoErrs > 3 {
					break // go-smtp says "Too many errors" and hangs up
				}
			}
			if r.Code == 221 || r.Code == 421 {
				break
			}
		}
		c.conn.Close()
		for i := 0; fx.srv.Sessions() != 0 && i < 200; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if got := streamCount(t, fx) - before; got != queued {
			t.Fatalf("stream grew by %d messages, the client saw %d queued", got, queued)
		}
	})
}

// streamCount is fixture.streamMsgs for use inside a fuzz target.
func streamCount(t *testing.T, fx *fixture) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := fx.js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.Msgs
}
