package delivery_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/testenv"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// After an SMTP-level failure the session is still usable, and a
// connection that is not kept ends with QUIT, as Postfix's does: a 5xx to
// MAIL FROM, a 4xx to RCPT TO for every recipient, a 5xx at the end of
// DATA, and a TLS policy that refuses the hop after EHLO (TLS required,
// STARTTLS not offered). Each in the three ways a transaction goes
// (pipelined with BDAT, pipelined with DATA, one command per round trip),
// with the connection retired after the transaction (one message per
// connection) and pooled then closed with the client. (Before, the TLS
// refusal, and a connection whose RSET or EHLO after a refused
// transaction failed, were closed without QUIT.)
func TestSMTPErrorEndsWithQuit(t *testing.T) {
	cases := []struct {
		name    string
		be      func() *fakeBackend
		encrypt bool
	}{
		{name: "5xx MAIL FROM", be: func() *fakeBackend {
			return &fakeBackend{mail: func(string, *smtp.MailOptions) error {
				return errSMTP(550, smtp.EnhancedCode{5, 7, 1}, "sender refused")
			}}
		}},
		{name: "4xx RCPT TO all", be: func() *fakeBackend {
			return &fakeBackend{rcpt: func(*smtp.Conn, string) error {
				return errSMTP(450, smtp.EnhancedCode{4, 2, 0}, "mailbox busy")
			}}
		}},
		{name: "5xx end of DATA", be: func() *fakeBackend {
			return &fakeBackend{data: func([]byte) error {
				return errSMTP(554, smtp.EnhancedCode{5, 6, 0}, "content refused")
			}}
		}},
		{name: "TLS required not offered", be: func() *fakeBackend { return &fakeBackend{} }, encrypt: true},
	}
	modes := []struct {
		name string
		mod  func(*delivery.Config)
	}{
		{"bdat", func(*delivery.Config) {}},
		{"pipelined", func(cfg *delivery.Config) { cfg.NoChunking = true }},
		{"unpipelined", func(cfg *delivery.Config) { cfg.NoPipelining = true }},
	}
	for _, tc := range cases {
		for _, mode := range modes {
			for _, perConn := range []int{1, 0} {
				name := tc.name + "/" + mode.name + "/pooled"
				if perConn == 1 {
					name = tc.name + "/" + mode.name + "/retired"
				}
				t.Run(name, func(t *testing.T) {
					o := &observed{}
					addr := startObserved(t, tc.be(), o, nil)
					pol := tlsPolicy(t, map[string]string{"example.org": "encrypt"}, nil)
					c := newClient(t, func(cfg *delivery.Config) {
						mode.mod(cfg)
						if tc.encrypt {
							cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
						}
					})
					hop := hopFor(t, "mx.example.org", addr)
					hop.Policy = tlspolicy.Hop{Domain: "example.org"}
					m := msg(testBody, "r1@example.org", "r2@example.org")
					m.MaxMsgsPerConn = perConn
					out := c.Deliver(testCtx(t), []delivery.Hop{hop}, m)
					if out.Statuses[0].Delivered() {
						t.Fatalf("delivered despite the refusal: %+v", out.Statuses[0])
					}
					if perConn == 0 {
						c.Close() // a pooled connection is retired now
					}
					// A QUIT is answered before Deliver (retired) or Close
					// (pooled) returns: the server has read it by now.
					if o.readWith("QUIT\r\n") == "" {
						t.Fatalf("the connection was closed without QUIT after %q", out.Statuses[0].Text)
					}
				})
			}
		}
	}
}

// rawServer greets, answers EHLO with ehlo and every other command line
// with reply (nothing when it returns "", as a hung server does; it closes
// after a 221 to QUIT), and sends lines every line read per connection
// once the client closed it.
func rawServer(t *testing.T, ehlo string, reply func(line string) string) (addr string, lines chan []string) {
	t.Helper()
	lines = make(chan []string, 4)
	addr = serveLoopback(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		io.WriteString(c, "220 mx.test ESMTP\r\n")
		var got []string
		defer func() { lines <- got }()
		br := bufio.NewReader(c)
		for len(got) < 1000 {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimRight(l, "\r\n")
			got = append(got, l)
			verb := strings.ToUpper(strings.Fields(l + " x")[0])
			if verb == "EHLO" {
				io.WriteString(c, ehlo)
				continue
			}
			if r := reply(l); r != "" {
				io.WriteString(c, r+"\r\n")
				if verb == "QUIT" && strings.HasPrefix(r, "221") {
					return // closes after its 221, as servers do
				}
			}
		}
	})
	return addr, lines
}

const plainEHLO = "250-mx.test\r\n250 8BITMIME\r\n"

// A server that stops answering (RCPT TO times out) leaves a connection
// that is not usable: it is closed at once, with no QUIT (which would
// only wait for a reply that does not come).
func TestTimeoutClosesWithoutQuit(t *testing.T) {
	addr, lines := rawServer(t, plainEHLO, func(l string) string {
		switch {
		case strings.HasPrefix(l, "MAIL"):
			return "250 2.1.0 Ok"
		case strings.HasPrefix(l, "RCPT"):
			return "" // hung
		}
		return "250 2.0.0 Ok"
	})
	c := newClient(t, func(cfg *delivery.Config) { cfg.CommandTimeout = 300 * time.Millisecond })
	m := msg(testBody, "r@example.org")
	m.MaxMsgsPerConn = 1
	out := c.Deliver(testCtx(t), []delivery.Hop{hopFor(t, "mx.example.org", addr)}, m)
	if out.Statuses[0].Delivered() || out.Statuses[0].Permanent() {
		t.Fatalf("status %+v, want deferred", out.Statuses[0])
	}
	got := <-lines
	for _, l := range got {
		if l == "QUIT" {
			t.Fatalf("QUIT sent on a connection that timed out: %q", got)
		}
	}
	if len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "RCPT") {
		t.Fatalf("the dialog did not end at the unanswered RCPT: %q", got)
	}
}

// A server that refuses the hop (MAIL FROM 550; EHLO 550; TLS required
// but STARTTLS not offered) and then never answers QUIT holds the delivery
// at most the command timeout (bounded by the quit's): Deliver returns,
// and the QUIT was sent.
func TestHungQuitAfterRefusalIsBounded(t *testing.T) {
	for _, tc := range []struct {
		name, ehlo, mail string
		encrypt          bool
	}{
		{name: "MAIL FROM 550", ehlo: plainEHLO, mail: "550 5.7.1 sender refused"},
		{name: "EHLO 550", ehlo: "550 5.7.1 go away\r\n"},
		{name: "TLS not offered", ehlo: plainEHLO, encrypt: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, lines := rawServer(t, tc.ehlo, func(l string) string {
				switch {
				case strings.HasPrefix(l, "MAIL"):
					return tc.mail
				case l == "QUIT":
					return "" // hung
				}
				return "250 2.0.0 Ok"
			})
			pol := tlsPolicy(t, map[string]string{"example.org": "encrypt"}, nil)
			c := newClient(t, func(cfg *delivery.Config) {
				cfg.CommandTimeout = 300 * time.Millisecond
				if tc.encrypt {
					cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
				}
			})
			hop := hopFor(t, "mx.example.org", addr)
			hop.Policy = tlspolicy.Hop{Domain: "example.org"}
			m := msg(testBody, "r@example.org")
			m.MaxMsgsPerConn = 1
			done := make(chan *delivery.Outcome, 1)
			go func() { done <- c.Deliver(testCtx(t), []delivery.Hop{hop}, m) }()
			select {
			case out := <-done:
				if out.Statuses[0].Delivered() {
					t.Fatalf("status %+v, want the refusal", out.Statuses[0])
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Deliver hangs on a server that does not answer QUIT")
			}
			got := <-lines
			if len(got) == 0 || got[len(got)-1] != "QUIT" {
				t.Fatalf("dialog %q, want it to end with the unanswered QUIT", got)
			}
		})
	}
}

// A refusal the connection setup meets ends the session with QUIT too: a
// refused EHLO (and HELO after a 502 to EHLO), STARTTLS answered 454 while
// the policy requires TLS, and a RSET refused after every recipient was
// (the session is not reused, but it still answers).
func TestRefusedSetupAndResetEndWithQuit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ehlo    string
		reply   func(string) string
		encrypt bool
		want    string // enhanced status of the recipient
	}{
		{
			name: "STARTTLS 454 under encrypt", encrypt: true, want: "4.7.5",
			ehlo: "250-mx.test\r\n250 STARTTLS\r\n",
			reply: func(l string) string {
				return map[bool]string{true: "454 4.7.0 TLS not available", false: "221 2.0.0 Bye"}[l == "STARTTLS"]
			},
		},
		{
			name: "EHLO refused", want: "5.7.1",
			ehlo:  "550 5.7.1 go away\r\n",
			reply: func(string) string { return "221 2.0.0 Bye" },
		},
		{
			name: "EHLO and HELO refused", want: "5.7.1",
			ehlo: "502 5.5.1 no EHLO\r\n",
			reply: func(l string) string {
				if strings.HasPrefix(l, "HELO") {
					return "550 5.7.1 go away"
				}
				return "221 2.0.0 Bye"
			},
		},
		{
			name: "RSET refused", want: "4.2.0",
			ehlo: plainEHLO,
			reply: func(l string) string {
				switch {
				case strings.HasPrefix(l, "MAIL"):
					return "250 2.1.0 Ok"
				case strings.HasPrefix(l, "RCPT"):
					return "450 4.2.0 mailbox busy"
				case l == "RSET":
					return "502 5.5.1 no"
				}
				return "221 2.0.0 Bye"
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, lines := rawServer(t, tc.ehlo, tc.reply)
			pol := tlsPolicy(t, map[string]string{"example.org": "encrypt"}, nil)
			c := newClient(t, func(cfg *delivery.Config) {
				if tc.encrypt {
					cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
				}
			})
			hop := hopFor(t, "mx.example.org", addr)
			hop.Policy = tlspolicy.Hop{Domain: "example.org"}
			out := c.Deliver(testCtx(t), []delivery.Hop{hop}, msg(testBody, "r@example.org"))
			if st := out.Statuses[0]; st.Delivered() || st.Enhanced != tc.want {
				t.Fatalf("status %+v, want %s", st, tc.want)
			}
			c.Close()
			got := <-lines
			if len(got) == 0 || got[len(got)-1] != "QUIT" {
				t.Fatalf("dialog %q, want it to end with QUIT", got)
			}
		})
	}
}

// A relay that refuses the credentials (535) after STARTTLS: the session
// inside TLS ends with QUIT.
func TestRefusedAuthEndsWithQuit(t *testing.T) {
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "relay.test")
	o := &observed{} // inside TLS after STARTTLS
	addr := startObserved(t, &relayServer{user: "u", pass: "right", requireAuth: true}, o, func(srv *smtp.Server) {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	pol := tlsPolicy(t, map[string]string{"[relay.test]:2525": "secure"}, map[string]string{"[relay.test]:2525": "u:wrong"})
	c := newClient(t, func(cfg *delivery.Config) {
		cfg.TLSPolicy = func() *tlspolicy.Policy { return pol }
		cfg.TLSBuilder = &tlspolicy.Builder{Roots: ca.Pool()}
	})
	out := c.Deliver(testCtx(t), []delivery.Hop{relayHop(t, "relay.test", addr, 2525)}, msg(testBody, "x@example.net"))
	if st := out.Statuses[0]; st.Delivered() || st.Enhanced != "4.7.8" {
		t.Fatalf("status %+v, want deferred 4.7.8", st)
	}
	if o.readWith("AUTH") == "" {
		t.Fatal("no AUTH inside TLS: the scenario did not hold")
	}
	if o.readWith("QUIT\r\n") == "" {
		t.Fatal("the session was closed without QUIT after the refused AUTH")
	}
}
