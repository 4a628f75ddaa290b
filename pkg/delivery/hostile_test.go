package delivery_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
)

// startHostile serves a hostile MX: it greets (endlessly when atGreeting),
// and answers EHLO with continuation lines that never end. It counts the
// bytes it managed to write per connection.
func startHostile(t *testing.T, atGreeting bool) (addr string, written *atomic.Int64, closed chan struct{}) {
	t.Helper()
	written = new(atomic.Int64)
	closed = make(chan struct{}, 16)
	addr = serveLoopback(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(40 * time.Second))
		line := "-" + strings.Repeat("x", 990) + "\r\n"
		flood := func(code string) {
			for {
				n, err := io.WriteString(c, code+line)
				written.Add(int64(n))
				if err != nil {
					closed <- struct{}{}
					return
				}
			}
		}
		if atGreeting {
			flood("220")
			return
		}
		io.WriteString(c, "220 hostile.test ESMTP\r\n")
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return
		}
		flood("250")
	})
	return addr, written, closed
}

// An MX that answers with endless continuation lines costs at most
// MaxReplyBytes per reply: the reply is cut, the connection dropped, and the
// recipient deferred (a temporary failure), long before the command timeout.
func TestEndlessReplyIsBounded(t *testing.T) {
	for _, atGreeting := range []bool{true, false} {
		name := map[bool]string{true: "greeting", false: "EHLO reply"}[atGreeting]
		t.Run(name, func(t *testing.T) {
			addr, _, closed := startHostile(t, atGreeting)
			c := newClient(t, func(cfg *delivery.Config) {
				cfg.CommandTimeout = 30 * time.Second
				cfg.MaxReplyBytes = 64 << 10
			})
			ctx := testCtx(t)
			out := c.Deliver(ctx, []delivery.Hop{hopFor(t, "mx.hostile.test", addr)}, msg(testBody, "u@hostile.test"))
			st := out.Statuses[0]
			if st.Delivered() || st.Permanent() || !strings.Contains(st.Text, "exceeded 65536 bytes") {
				t.Fatalf("status = %v, want a temporary failure naming the reply limit", st)
			}
			if !strings.Contains(st.Text, "mx.hostile.test") {
				t.Errorf("status %q does not name the host", st.Text)
			}
			select {
			case <-closed:
			case <-ctx.Done():
				t.Fatal("the hostile connection was not dropped")
			}
		})
	}
}
