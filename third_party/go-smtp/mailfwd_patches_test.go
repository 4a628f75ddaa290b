package smtp_test

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Tests for the replies mailfwd patches (see PATCHES.md): RFC 5321 §4.2
// and RFC 3463 codes where upstream v0.25.1 hard-codes others.

func TestPatchedReplies(t *testing.T) {
	cases := []struct {
		name  string
		lines []string // commands; the reply to the last one is checked
		want  string
	}{
		{"MAIL before EHLO", []string{"MAIL FROM:<a@b.test>"}, "503 5.5.1 "},
		{"RCPT before MAIL", []string{"EHLO c", "RCPT TO:<a@b.test>"}, "503 5.5.1 "},
		{"DATA before RCPT", []string{"EHLO c", "MAIL FROM:<a@b.test>", "DATA"}, "503 5.5.1 "},
		{"BDAT before RCPT", []string{"EHLO c", "BDAT 0 LAST"}, "503 5.5.1 "},
		{"AUTH before EHLO", []string{"AUTH PLAIN"}, "503 5.5.1 "},
		{"unknown command", []string{"EHLO c", "XYZZY"}, "500 5.5.2 "},
		{"short command", []string{"EHLO c", "AB"}, "500 5.5.2 "},
		{"MAIL ok", []string{"EHLO c", "MAIL FROM:<a@b.test>"}, "250 2.1.0 Ok"},
		{"RCPT ok", []string{"EHLO c", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>"}, "250 2.1.5 Ok"},
		{"HELO names the server first", []string{"HELO client.test"}, "250 localhost Hello client.test"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, s, c, scanner := testServerGreeted(t)
			defer s.Close()
			defer c.Close()
			var got string
			for _, l := range tc.lines {
				io.WriteString(c, l+"\r\n")
				for scanner.Scan() {
					got = scanner.Text()
					if len(got) < 4 || got[3] != '-' {
						break
					}
				}
			}
			if len(got) < len(tc.want) || got[:len(tc.want)] != tc.want {
				t.Fatalf("reply %q, want prefix %q", got, tc.want)
			}
		})
	}
}

func TestQuotedLocalPartVerbatim(t *testing.T) {
	be, s, c, scanner := testServerAuthenticated(t)
	defer s.Close()
	defer c.Close()
	for _, l := range []string{`MAIL FROM:<"a b"@src.test>`, `RCPT TO:<"x.\"y"@dst.test>`, `RCPT TO:<"a..b"@dst.test>`, "DATA"} {
		io.WriteString(c, l+"\r\n")
		scanner.Scan()
	}
	io.WriteString(c, "Subject: x\r\n\r\nbody\r\n.\r\n")
	scanner.Scan()
	if len(be.messages) != 1 {
		t.Fatalf("messages = %d (last reply %q)", len(be.messages), scanner.Text())
	}
	m := be.messages[0]
	if m.From != `"a b"@src.test` {
		t.Errorf("From = %q", m.From)
	}
	if len(m.To) != 2 || m.To[0] != `"x.\"y"@dst.test` || m.To[1] != `"a..b"@dst.test` {
		t.Errorf("To = %q", m.To)
	}
}

func TestMaxErrors(t *testing.T) {
	var mu sync.Mutex
	var codes []int
	spent := 0
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.MaxErrors = 3
		s.OnReply = func(code int) { mu.Lock(); codes = append(codes, code); mu.Unlock() }
		s.OnErrorBudgetSpent = func() { mu.Lock(); spent++; mu.Unlock() }
	})
	defer s.Close()
	defer c.Close()
	var got []string
	for _, l := range []string{"EHLO c", "RCPT TO:<a@b.test>", "DATA", "NOOP", "MAIL FROM:<a@b.test> FOO=BAR", "NOOP"} {
		io.WriteString(c, l+"\r\n")
		for scanner.Scan() {
			got = append(got, scanner.Text())
			if t := scanner.Text(); len(t) < 4 || t[3] != '-' {
				break
			}
		}
	}
	// EHLO (multi-line), 503, 503, 250 NOOP, 500 (third error), 421, then closed.
	last := got[len(got)-1]
	if last != "421 4.7.0 localhost Error: too many errors" {
		t.Fatalf("replies %q: want the third error followed by 421 4.7.0", got)
	}
	if scanner.Scan() {
		t.Fatalf("connection still open: %q", scanner.Text())
	}
	// The hooks saw every reply (the greeting too) and the spent budget once.
	mu.Lock()
	defer mu.Unlock()
	if want := []int{220, 250, 503, 503, 250, 500, 421}; fmt.Sprint(codes) != fmt.Sprint(want) || spent != 1 {
		t.Fatalf("OnReply saw %v, OnErrorBudgetSpent %d times; want %v and 1", codes, spent, want)
	}
}

// Patch 16: recipients over MaxRecipients are 452 4.5.3 without counting
// as errors until MaxRecipientOvershoot of them in a transaction; a new
// transaction starts the count again.
func TestMaxRecipientOvershoot(t *testing.T) {
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.MaxErrors, s.MaxRecipients, s.MaxRecipientOvershoot = 2, 1, 2
	})
	defer s.Close()
	defer c.Close()
	var got []string
	send := func(lines ...string) {
		for _, l := range lines {
			io.WriteString(c, l+"\r\n")
			for scanner.Scan() {
				got = append(got, scanner.Text())
				if t := scanner.Text(); len(t) < 4 || t[3] != '-' {
					break
				}
			}
		}
	}
	send("EHLO c", "MAIL FROM:<a@b.test>", "RCPT TO:<r1@b.test>", "RCPT TO:<r2@b.test>", "RCPT TO:<r3@b.test>", "RSET",
		"MAIL FROM:<a@b.test>", "RCPT TO:<r1@b.test>", "RCPT TO:<r2@b.test>", "RCPT TO:<r3@b.test>", "RCPT TO:<r4@b.test>")
	if n := strings.Count(strings.Join(got, "\n"), "452 4.5.3 "); n != 5 {
		t.Fatalf("replies %q: want five 452 4.5.3", got)
	}
	if last := got[len(got)-1]; last != "452 4.5.3 Maximum limit of 1 recipients reached" {
		t.Fatalf("replies %q: the session ended before the overshoot limit", got)
	}
	send("RCPT TO:<r5@b.test>") // the second counted error
	scanner.Scan()
	if last := scanner.Text(); last != "421 4.7.0 localhost Error: too many errors" {
		t.Fatalf("replies %q: want 421 after the overshoot limit and two errors", got)
	}
}

// Patch 17: DATA lines are bounded by MaxDataLineLength, commands by
// MaxLineLength.
func TestMaxDataLineLength(t *testing.T) {
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) { s.MaxLineLength, s.MaxDataLineLength = 100, 1000 })
	defer s.Close()
	defer c.Close()
	io.WriteString(c, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n")
	for scanner.Scan() && !strings.HasPrefix(scanner.Text(), "354 ") {
	}
	io.WriteString(c, strings.Repeat("x", 900)+"\r\n.\r\n")
	if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Fatalf("a 900-byte DATA line under a 1000 limit: %q", scanner.Text())
	}
	io.WriteString(c, "NOOP "+strings.Repeat("y", 200)+"\r\n")
	if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "500 ") {
		t.Fatalf("a 205-byte command under a 100 limit: %q", scanner.Text())
	}
}

// A connection that ends inside a BDAT LAST chunk is no complete message.
func TestBDATTruncatedChunk(t *testing.T) {
	be, s, c, scanner := testServerAuthenticated(t)
	defer s.Close()
	for _, l := range []string{"MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>"} {
		io.WriteString(c, l+"\r\n")
		scanner.Scan()
	}
	io.WriteString(c, "BDAT 1000 LAST\r\nSubject: x\r\n\r\nshort")
	c.(interface{ CloseWrite() error }).CloseWrite()
	for scanner.Scan() {
	}
	c.Close()
	s.Close()
	if len(be.messages) != 0 {
		t.Fatalf("a truncated chunk was taken as a message: %+v", be.messages[0])
	}
}

// recordingConn keeps what is written to and read from it (patch 8's test).
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recordingConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

func (r *recordingConn) NetConn() net.Conn { return r.Conn }

func (r *recordingConn) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

// Patch 8: Server.WrapTLSConn wraps the conn after STARTTLS, and the
// session still counts as TLS through the wrapper (no STARTTLS offered
// again, AUTH offered as over TLS).
func TestWrapTLSConn(t *testing.T) {
	keypair := selfSigned(t)
	var (
		mu      sync.Mutex
		wrapped *recordingConn
		under   net.Conn
	)
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.AllowInsecureAuth = false
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{keypair}}
		s.WrapTLSConn = func(tc *tls.Conn, u net.Conn) net.Conn {
			mu.Lock()
			defer mu.Unlock()
			wrapped, under = &recordingConn{Conn: tc}, u
			return wrapped
		}
	})
	defer s.Close()
	defer c.Close()
	io.WriteString(c, "STARTTLS\r\n")
	if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "220 ") {
		t.Fatalf("STARTTLS reply %q", scanner.Text())
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tc, "EHLO client.test\r\n")
	sc := bufio.NewScanner(tc)
	var caps []string
	for sc.Scan() {
		caps = append(caps, sc.Text())
		if l := sc.Text(); len(l) < 4 || l[3] != '-' {
			break
		}
	}
	mu.Lock()
	w, u := wrapped, under
	mu.Unlock()
	if w == nil {
		t.Fatal("WrapTLSConn was not called after STARTTLS")
	}
	if u == nil {
		t.Fatal("WrapTLSConn got no underlying conn")
	}
	if got := w.String(); !strings.Contains(got, "EHLO client.test") {
		t.Fatalf("the wrapper did not see the decrypted dialog: %q", got)
	}
	all := strings.Join(caps, "\n")
	if strings.Contains(all, "STARTTLS") || !strings.Contains(all, "AUTH PLAIN") {
		t.Fatalf("through the wrapper the session must count as TLS (AUTH offered, no STARTTLS):\n%s", all)
	}
}

// Patch 18: Server.OnStartTLS sees each STARTTLS handshake's result.
func TestOnStartTLS(t *testing.T) {
	keypair := selfSigned(t)
	results := make(chan error, 2)
	for _, good := range []bool{true, false} {
		_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
			s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{keypair}}
			s.OnStartTLS = func(err error) { results <- err }
		})
		io.WriteString(c, "STARTTLS\r\n")
		if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "220 ") {
			t.Fatalf("STARTTLS reply %q", scanner.Text())
		}
		if good {
			if err := tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake(); err != nil {
				t.Fatal(err)
			}
		} else {
			io.WriteString(c, "this is no TLS record\r\n")
		}
		select {
		case err := <-results:
			if (err == nil) != good {
				t.Errorf("handshake good=%v: OnStartTLS(%v)", good, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("handshake good=%v: OnStartTLS not called", good)
		}
		c.Close()
		s.Close()
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Patch 14: DataEnd, fed the raw stream in any pieces, ends the body where
// the server's reader (NewDataReader) does; a "." line ended by a bare LF
// is body for both.
func TestDataEndAgreesWithDataReader(t *testing.T) {
	for _, in := range []string{
		".\r\nNOOP\r\n",
		"a\r\n.\r\nQUIT\r\n",
		"a\r\n.\nSALARY: 1\r\n.\r\nQUIT\r\n",
		"a\n.\r\nb\r\n.\r\n",
		"..\r\n.\r\r\n.\r\n",
		"a\r\r\n.\r\nb\r\n.\r\n",
		"no end\r\n.",
		"",
	} {
		br := bufio.NewReader(strings.NewReader(in))
		body, err := io.ReadAll(smtp.NewDataReader(br))
		wantEnd := err == nil
		want := len(in) - br.Buffered()
		if !wantEnd {
			want = len(in)
		}
		for step := 1; step <= len(in)+1; step++ {
			var d smtp.DataEnd
			got, ended := 0, false
			for p := []byte(in); len(p) > 0 && !ended; {
				k := step
				if k > len(p) {
					k = len(p)
				}
				var n int
				n, ended = d.Scan(p[:k])
				got += n
				if !ended && n != k {
					t.Fatalf("%q step %d: took %d of %d bytes without the end", in, step, n, k)
				}
				p = p[n:]
			}
			if got != want || ended != wantEnd {
				t.Errorf("%q step %d: DataEnd took %d (end %v), the reader %d (end %v, body %q)", in, step, got, ended, want, wantEnd, body)
			}
		}
	}
}

// Patch 20: SendQuit reads the 221 and leaves the connection open, so the
// caller sees the server's close; Quit still closes.
func TestSendQuitLeavesConnectionOpen(t *testing.T) {
	for _, quit := range []string{"SendQuit", "Quit"} {
		t.Run(quit, func(t *testing.T) {
			cliConn, srvConn := net.Pipe()
			defer srvConn.Close()
			go func() {
				r := bufio.NewReader(srvConn)
				io.WriteString(srvConn, "220 mx.test ESMTP\r\n")
				r.ReadString('\n') // EHLO
				io.WriteString(srvConn, "250 mx.test\r\n")
				r.ReadString('\n') // QUIT
				io.WriteString(srvConn, "221 2.0.0 Bye\r\n")
				// The server closes only after the client's next read
				// (on a closed pipe, Read fails with io.ErrClosedPipe).
				srvConn.Write([]byte("x"))
				srvConn.Close()
			}()
			c := smtp.NewClient(cliConn)
			c.CommandTimeout = 10 * time.Second
			if err := c.Hello("client.test"); err != nil {
				t.Fatal(err)
			}
			var err error
			if quit == "SendQuit" {
				err = c.SendQuit()
			} else {
				err = c.Quit()
			}
			if err != nil {
				t.Fatalf("%s: %v", quit, err)
			}
			buf := make([]byte, 1)
			n, err := cliConn.Read(buf)
			if quit == "SendQuit" && (n != 1 || err != nil) {
				t.Fatalf("after SendQuit the connection must be open to the server's close: %d, %v", n, err)
			}
			if quit == "Quit" && err != io.ErrClosedPipe {
				t.Fatalf("after Quit the connection must be closed: %d, %v", n, err)
			}
		})
	}
}

// Patch 22: Server.Close (Conn.Close reads the connection under the lock)
// while a STARTTLS handshake has just finished and the connection is being
// replaced by its TLS layer: the replacement is made under the same lock.
// The hook holds the connection's goroutine back a little so that Close
// comes first; the scenario runs 5 times.
func TestCloseDuringStartTLSIsNotARace(t *testing.T) {
	keypair := selfSigned(t)
	for i := 0; i < 5; i++ {
		closeDuringStartTLS(t, keypair)
	}
}

func closeDuringStartTLS(t *testing.T, keypair tls.Certificate) {
	handshaken := make(chan struct{})
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{keypair}}
		s.OnStartTLS = func(error) {
			close(handshaken)
			time.Sleep(20 * time.Millisecond) // Close reads the connection first
		}
	})
	defer c.Close()
	io.WriteString(c, "STARTTLS\r\n")
	if !scanner.Scan() || !strings.HasPrefix(scanner.Text(), "220 ") {
		t.Fatalf("STARTTLS reply %q", scanner.Text())
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handshaken:
	case <-time.After(10 * time.Second):
		t.Fatal("OnStartTLS not called")
	}
	s.Close() // while the connection's goroutine swaps in the TLS layer
	// The session ends: the client reads the close, not a hang.
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(tc); err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "closed") && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("after Close: %v", err)
	}
}
