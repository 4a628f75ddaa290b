package smtp_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// mailfwd patch 15: MailPipelined and MailBdat against this package's
// server, and against a peer whose replies do not fit the group.

// pipelineServer serves be on loopback and returns a greeted client.
func pipelineServer(t *testing.T, be smtp.Backend) *smtp.Client {
	t.Helper()
	s := smtp.NewServer(be)
	s.Domain = "pipe.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	c, err := smtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMailPipelinedAndBdat(t *testing.T) {
	be := &backend{}
	c := pipelineServer(t, be)
	r, w, err := c.MailPipelined("a@src.test", nil, []string{"x@dst.test", "y@dst.test"})
	if err != nil || w == nil || r.Mail != nil || len(r.Rcpt) != 2 || r.Rcpt[0] != nil || r.Rcpt[1] != nil || r.Read != 4 {
		t.Fatalf("MailPipelined: %+v, %v, %v", r, w, err)
	}
	io.WriteString(w, "Subject: one\r\n\r\n.dot\r\n")
	if _, err := w.CloseWithResponse(); err != nil {
		t.Fatal(err)
	}
	bw, err := c.MailBdat("b@src.test", nil, []string{"z@dst.test"})
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("0123456789abcde\r\n", 10000) // 170000 bytes: three chunks
	io.WriteString(bw, big)
	r, err = bw.Close()
	if err != nil || r.Data != nil || r.Read != 2+3 {
		t.Fatalf("MailBdat: %+v, %v", r, err)
	}
	if len(be.anonmsgs) != 2 || string(be.anonmsgs[0].Data) != "Subject: one\r\n\r\n.dot\r\n" ||
		string(be.anonmsgs[1].Data) != big || strings.Join(be.anonmsgs[1].To, ",") != "z@dst.test" {
		t.Fatalf("server got %d messages", len(be.anonmsgs))
	}
	if err := c.Noop(); err != nil {
		t.Errorf("connection not in sync after the groups: %v", err)
	}
}

// A peer that sends one reply too many: the group's error wraps
// ErrPipelineReply.
func TestMailPipelinedExtraReply(t *testing.T) {
	srv, cl := net.Pipe()
	defer srv.Close()
	go func() {
		br := bufio.NewReader(srv)
		io.WriteString(srv, "220 peer\r\n")
		br.ReadString('\n')
		io.WriteString(srv, "250-peer\r\n250 PIPELINING\r\n")
		for i := 0; i < 3; i++ { // MAIL, RCPT, DATA
			br.ReadString('\n')
		}
		io.WriteString(srv, "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n")
		io.Copy(io.Discard, br)
	}()
	c := smtp.NewClient(cl)
	defer c.Close()
	r, w, err := c.MailPipelined("a@src.test", nil, []string{"x@dst.test"})
	if !errors.Is(err, smtp.ErrPipelineReply) || w != nil {
		t.Fatalf("got %+v, %v, %v; want ErrPipelineReply", r, w, err)
	}
}
