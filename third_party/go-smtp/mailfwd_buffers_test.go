package smtp_test

import (
	"bytes"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
)

// countConn counts the Read and Write calls that reach the connection
// (system calls, for a TCP conn).
type countConn struct {
	net.Conn
	reads, writes atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error)  { c.reads.Add(1); return c.Conn.Read(p) }
func (c *countConn) Write(p []byte) (int, error) { c.writes.Add(1); return c.Conn.Write(p) }

type countListener struct {
	net.Listener
	conns chan *countConn
}

func (l *countListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countConn{Conn: c}
	l.conns <- cc
	return cc, nil
}

// Patch 12: a 100 KiB body leaves the client in a few writes (32 KiB
// buffer, not textproto's 4 KiB) and enters the server in a few reads
// (16 KiB buffer), byte for byte.
func TestLargeBodyFewReadsAndWrites(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countListener{Listener: l, conns: make(chan *countConn, 1)}
	be := new(backend)
	s := smtp.NewServer(be)
	s.Domain = "localhost"
	s.AllowInsecureAuth = true
	go s.Serve(cl)
	defer s.Close()

	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := &countConn{Conn: raw}
	c := smtp.NewClient(client)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@src.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@dst.test", nil); err != nil {
		t.Fatal(err)
	}
	server := <-cl.conns
	line := strings.Repeat("0123456789", 7) + "....\r\n" // 76 bytes
	body := []byte(strings.Repeat(line, 100<<10/len(line)))
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	writes0, reads0 := client.writes.Load(), server.reads.Load()
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	writes, reads := client.writes.Load()-writes0, server.reads.Load()-reads0
	msgs := append(be.messages, be.anonmsgs...)
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, body) {
		t.Fatalf("the server got %d messages, or a different body", len(msgs))
	}
	// textproto's buffers: at least 25 of each for these 100 KiB.
	if writes > 8 {
		t.Errorf("the client wrote a %d-byte body in %d writes; want at most 8", len(body), writes)
	}
	if reads > 16 {
		t.Errorf("the server read a %d-byte body in %d reads; want at most 16", len(body), reads)
	}
	t.Logf("%d bytes: %d client writes, %d server reads", len(body), writes, reads)
}

// Patch 13: a multi-line reply (EHLO's) is one write, not one per line.
func TestMultilineReplyOneWrite(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countListener{Listener: l, conns: make(chan *countConn, 1)}
	s := smtp.NewServer(new(backend))
	s.Domain = "localhost"
	s.AllowInsecureAuth = true
	s.EnableSMTPUTF8 = true
	s.EnableBINARYMIME = true
	s.EnableDSN = true
	go s.Serve(cl)
	defer s.Close()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(raw)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil { // reads the greeting, sends EHLO
		t.Fatal(err)
	}
	server := <-cl.conns
	if err := c.Noop(); err != nil { // the EHLO reply is in; count one more single-line reply
		t.Fatal(err)
	}
	ok, _ := c.Extension("PIPELINING")
	if !ok {
		t.Fatal("EHLO reply without PIPELINING")
	}
	// Greeting (1) + EHLO reply + NOOP reply: with a write per line the EHLO
	// reply alone took 8 here.
	if w := server.writes.Load(); w > 3 {
		t.Errorf("the server made %d writes for greeting, EHLO and NOOP replies; want 3", w)
	}
}
