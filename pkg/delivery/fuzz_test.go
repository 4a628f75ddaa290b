package delivery_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/dsn"
)

// FuzzRemoteReplies feeds arbitrary bytes as a destination's replies.
// Deliver must return (never panic or hang) with one status per recipient,
// each carrying a valid RFC 3463 status of its reply class (a malformed
// one is clamped to X.0.0), a reply never longer than MaxReplyBytes.
func FuzzRemoteReplies(f *testing.F) {
	f.Add([]byte("220 mx ESMTP\r\n250 ok\r\n250 ok\r\n550 5.1234.1 bad\r\n"))
	f.Add([]byte("220 mx ESMTP\r\n250-mx\r\n250-" + strings.Repeat("x", 3000) + "\r\n250 SIZE 10\r\n"))
	f.Add([]byte("220 mx\r\n250 ok\r\n250 2.1.0 ok\r\n451 4.99999.1 later\r\n"))
	f.Add([]byte("220 mx\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n"))
	f.Add([]byte("220-" + strings.Repeat("continued\r\n220-", 2000) + "\r\n"))
	// Pipelined groups (MAIL, RCPT, DATA or BDAT LAST), fitting or not.
	f.Add([]byte("220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n"))
	f.Add([]byte("220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"))
	f.Add([]byte("220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 extra\r\n"))
	f.Add([]byte("220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n550 no\r\n354 go\r\n"))
	f.Fuzz(func(t *testing.T, replies []byte) {
		const maxReply = 4096
		c, err := delivery.New(delivery.Config{
			HeloName: "relay.test", ConnectTimeout: time.Second, CommandTimeout: 500 * time.Millisecond,
			DataTimeout: 500 * time.Millisecond, MaxReplyBytes: maxReply,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				client, server := net.Pipe()
				go func() {
					defer server.Close()
					server.SetDeadline(time.Now().Add(2 * time.Second))
					go io.Copy(io.Discard, server)
					server.Write(replies)
				}()
				return client, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out := c.Deliver(ctx, []delivery.Hop{{Name: "mx.fuzz.test", Addr: netipAddr}}, &delivery.Message{
			From: "a@example.com", Recipients: []string{"b@example.org"}, Body: []byte(testBody)})
		if len(out.Statuses) != 1 {
			t.Fatalf("%d statuses", len(out.Statuses))
		}
		st := out.Statuses[0]
		if !dsn.ValidStatus(st.Enhanced) {
			t.Errorf("status %q is not RFC 3463 (reply %d %q)", st.Enhanced, st.Code, st.Text)
		}
		if st.Code != 0 && st.Enhanced[0] != byte('0'+st.Code/100) {
			t.Errorf("status %q does not match reply code %d", st.Enhanced, st.Code)
		}
		if len(st.Text) > maxReply {
			t.Errorf("reply text of %d bytes, beyond MaxReplyBytes", len(st.Text))
		}
	})
}

var netipAddr = mustAddrPort("192.0.2.1:25")

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
