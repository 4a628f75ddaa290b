package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/blob"
)

// Hostile and slow clients against the whole pipeline (issue 9): the real
// ingress and worker, JetStream, MinIO and loopback destinations.

// published is how many envelopes were ever published to the MAIL stream.
func (e *env) published() uint64 {
	e.t.Helper()
	nc, err := nats.Connect(e.nats.URL())
	if err != nil {
		e.t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "MAIL")
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// bodies lists the keys in the body store.
func (e *env) bodies() []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := blob.Open(ctx, e.blobURL)
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []string
	if err := store.List(ctx, func(k string, _ time.Time) error { keys = append(keys, k); return nil }); err != nil {
		e.t.Fatal(err)
	}
	return keys
}

type rawSMTP struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Reader
}

func dialSMTP(t *testing.T, addr string) *rawSMTP {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawSMTP{t: t, conn: c, tp: textproto.NewReader(bufio.NewReader(c))}
	r.expect(220, "")
	return r
}

// expect sends line (unless empty) and reads one reply with the given code.
func (r *rawSMTP) expect(code int, line string) string {
	r.t.Helper()
	if line != "" {
		r.write(line + "\r\n")
	}
	_ = r.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, msg, err := r.tp.ReadResponse(code)
	if err != nil {
		r.t.Fatalf("%q: got %d %q, %v; want %d", line, got, msg, err, code)
	}
	return msg
}

func (r *rawSMTP) write(s string) {
	r.t.Helper()
	_ = r.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(r.conn, s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// A client cut off in the middle of a large body (streamed to MinIO by
// then) leaves no body in the store and publishes no envelope.
func TestHostileClientCutOffInDataLeavesNothing(t *testing.T) {
	e := newEnv(t, envOptions{maxSize: 30_000_000})
	before := e.published()
	c := dialSMTP(t, e.smtp)
	c.expect(250, "EHLO client.test")
	c.expect(250, "MAIL FROM:<sender@origin.test>")
	c.expect(250, "RCPT TO:<cut@alpha.test>")
	c.expect(354, "DATA")
	line := strings.Repeat("x", 998) + "\r\n"
	for range 12 << 10 { // 12 MB: more than two S3 parts
		c.write(line)
	}
	c.conn.Close()
	// The ingress aborts the upload when the read fails; give it the time
	// to notice, then look.
	waitFor(t, "the ingress to log the lost input", 30*time.Second, func() bool {
		return strings.Contains(e.logs.String(), "lost input channel during DATA")
	})
	if k := e.bodies(); len(k) != 0 {
		t.Errorf("bodies left in the store: %v", k)
	}
	if n := e.published() - before; n != 0 {
		t.Errorf("%d envelopes published for a message cut off in DATA", n)
	}
}

// A body larger than the read buffer and several S3 parts is streamed
// through and delivered byte-exact, with one Received: header added.
func TestHostileClientStreamedBodyDeliveredExact(t *testing.T) {
	e := newEnv(t, envOptions{maxSize: 30_000_000})
	var b bytes.Buffer
	b.WriteString("From: sender@origin.test\r\nSubject: big\r\nMessage-ID: <big@origin.test>\r\n\r\n")
	for i := 0; b.Len() < 11_000_000; i++ {
		fmt.Fprintf(&b, "%09d .a line that differs from every other line in this message\r\n", i)
	}
	res := send(e.smtp, "", "sender@origin.test", []string{"big@alpha.test"}, b.Bytes(), nil)
	if res.Err != nil || res.FinalCode != 250 {
		t.Fatalf("send: %v (%d)", res.Err, res.FinalCode)
	}
	dest := e.sinks["127.0.0.2"]
	waitFor(t, "delivery", 60*time.Second, func() bool { return dest.Count() >= 1 })
	got := dest.Messages()[0].Data
	i := bytes.Index(got, []byte("\r\nFrom: sender@origin.test\r\n"))
	if !bytes.HasPrefix(got, []byte("Received: from client.test")) || i < 0 {
		t.Fatalf("delivered message does not start with our Received: header and the message")
	}
	if !bytes.Equal(got[i+2:], b.Bytes()) {
		t.Errorf("delivered body differs from the one sent (%d vs %d bytes)", len(got)-i-2, b.Len())
	}
	if n := bytes.Count(got[:i+2], []byte("Received: ")); n != 1 {
		t.Errorf("%d Received: headers added, want 1", n)
	}
}

// A message that has been through too many hops is refused while it
// streams; one at the limit is delivered.
func TestHostileClientHopLimit(t *testing.T) {
	e := newEnv(t, envOptions{})
	hops := func(n int) string {
		var s strings.Builder
		for i := range n {
			fmt.Fprintf(&s, "Received: from relay%d.loop.test (relay%d.loop.test [127.0.0.1])\r\n\tby mx.loop.test; Tue, 1 Dec 2026 10:00:%02d +0000\r\n", i, i, i%60)
		}
		return s.String()
	}
	res := send(e.smtp, "", "sender@origin.test", []string{"loop@alpha.test"}, []byte(hops(26)+"Subject: loop\r\n\r\nround and round\r\n"), nil)
	if res.FinalCode != 554 || !strings.Contains(fmt.Sprint(res.Err), "Too many hops") {
		t.Fatalf("26 hops: %d %v, want 554 5.4.6 Too many hops", res.FinalCode, res.Err)
	}
	res = send(e.smtp, "", "sender@origin.test", []string{"ok@alpha.test"}, []byte(hops(25)+"Subject: far\r\n\r\nbut not too far\r\n"), nil)
	if res.Err != nil || res.FinalCode != 250 {
		t.Fatalf("25 hops: %d %v, want 250", res.FinalCode, res.Err)
	}
	dest := e.sinks["127.0.0.2"]
	waitFor(t, "delivery", 30*time.Second, func() bool { return dest.Count() >= 1 })
	if n := bytes.Count(dest.Messages()[0].Data, []byte("\nReceived: ")) + 1; n != 26 {
		t.Errorf("delivered message has %d Received: headers, want 26 (25 + ours)", n)
	}
	if got := dest.Count(); got != 1 {
		t.Errorf("destination got %d messages", got)
	}
}

// Envelope addresses pass through verbatim, quoted local parts included
// (go-smtp unquoted them), from the client to the destination.
func TestHostileClientQuotedLocalPartsVerbatim(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs"})
	rcpts := []string{`"x y"@alpha.test`, `"a.b"@alpha.test`}
	res := send(e.smtp, "", `"odd sender"@origin.test`, rcpts, message("quoted", "q@origin.test", "x\r\n"), nil)
	if res.Err != nil || res.FinalCode != 250 {
		t.Fatalf("send: %v (%d) %v", res.Err, res.FinalCode, res.RcptErrs)
	}
	dest := e.sinks["127.0.0.2"]
	waitFor(t, "delivery", 30*time.Second, func() bool { return dest.Count() >= 1 })
	m := dest.Messages()[0]
	if m.From != `"odd sender"@origin.test` || strings.Join(m.Recipients, " ") != strings.Join(rcpts, " ") {
		t.Errorf("destination got MAIL FROM %q, RCPT TO %q; want %q, %q", m.From, m.Recipients, `"odd sender"@origin.test`, rcpts)
	}
}
