//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/bench/rig"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// sendTwo sends one message with two recipients over a fresh session and
// returns the queue id of the 250.
func sendTwo(addr, id string, rcpts []string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 15*time.Second
	if err := c.Hello("client.chaos.test"); err != nil {
		return "", err
	}
	if err := c.Mail("sender@client.chaos.test", nil); err != nil {
		return "", err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "From: <sender@client.chaos.test>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n\r\nchaos\r\n", id, id)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, c.Quit()
}

// streamMsgs is what the MAIL stream holds, by subject prefix.
func streamMsgs(t *testing.T, url string) map[string]uint64 {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("nats: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	out := map[string]uint64{}
	for _, p := range []string{"mail.ready", "mail.deferred", "mail.held", "mail.failed"} {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(p+".>"))
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		for _, n := range info.State.Subjects {
			out[p] += n
		}
	}
	return out
}

// TestPoisonDestination: the destination answers one recipient of every
// transaction with a malformed enhanced status (550 5.1234.1) and accepts
// the other. Every message must end with its good recipient delivered
// exactly once and one DSN for the bad one; the queue must end empty (no
// redelivery storm, nothing parked in a failed state).
func TestPoisonDestination(t *testing.T) {
	snk := sink.New(sink.Config{Hostname: "poison.chaos.test", OnRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if strings.HasPrefix(rcpt, "bad") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1234, 1}, Message: "malformed status"}
		}
		return nil
	}})
	destAddr := snk.Start(t, "127.0.0.1:0")
	m := startStack(t, "file", nil, 2, destAddr)
	n := envN("CHAOS_POISON_N", 200)
	var accepted atomic.Int64
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				id := fmt.Sprintf("poison-%d@chaos.test", i)
				if _, err := sendTwo(m.SMTPAddr, id, []string{fmt.Sprintf("good%d@dest.chaos.test", i), fmt.Sprintf("bad%d@dest.chaos.test", i)}); err != nil {
					t.Errorf("message %d not accepted: %v", i, err)
					continue
				}
				accepted.Add(1)
			}
		}()
	}
	wg.Wait()
	dsns := func() int {
		c := 0
		for _, msg := range snk.Messages() {
			if msg.From == "" {
				c++
			}
		}
		return c
	}
	start := time.Now()
	deadline := start.Add(3 * time.Minute)
	for time.Now().Before(deadline) && dsns() < int(accepted.Load()) {
		time.Sleep(200 * time.Millisecond)
	}
	left := streamMsgs(t, m.NATS.URL())
	for time.Now().Before(deadline) && left["mail.ready"]+left["mail.deferred"]+left["mail.failed"] != 0 {
		time.Sleep(200 * time.Millisecond)
		left = streamMsgs(t, m.NATS.URL())
	}
	got := snk.RecipientsDelivered()
	dups, missing := 0, 0
	for i := 1; i <= n; i++ {
		switch c := got[fmt.Sprintf("good%d@dest.chaos.test", i)]; {
		case c == 0:
			missing++
		case c > 1:
			dups += c - 1
		}
	}
	line := fmt.Sprintf("%-28s accepted (250) %d, good recipients delivered %d (duplicates %d, missing %d), DSNs %d, queue at the end %v; settled in %v",
		"poison destination 5.1234.1", accepted.Load(), n-missing, dups, missing, dsns(), left, time.Since(start).Round(10*time.Millisecond))
	t.Log(line)
	appendSummary(line)
	if missing > 0 || dups > 0 {
		t.Errorf("good recipients: %d missing, %d duplicate deliveries (a redelivery after a 250)", missing, dups)
	}
	if d := dsns(); d != int(accepted.Load()) {
		t.Errorf("%d DSNs for %d messages with one malformed-status recipient each, want one each", d, accepted.Load())
	}
	if left["mail.ready"]+left["mail.deferred"]+left["mail.failed"] != 0 {
		t.Errorf("the queue still holds %v after every message was settled", left)
	}
}

// hostileMX answers EHLO with continuation lines that never end while
// hostile is set, and forwards connections to a sink otherwise.
type hostileMX struct {
	addr    string
	hostile atomic.Bool
	sink    *sink.Server
	feed    chan net.Conn
	stop    chan struct{}
	floods  atomic.Int64
	flooded atomic.Int64 // bytes written by the floods
}

func startHostileMX(t *testing.T) *hostileMX {
	t.Helper()
	h := &hostileMX{sink: sink.New(sink.Config{Hostname: "dest.chaos.test"}), feed: make(chan net.Conn), stop: make(chan struct{})}
	h.hostile.Store(true)
	addr := testenv.ServeTCP(t, func(c net.Conn) {
		if !h.hostile.Load() {
			select {
			case h.feed <- c:
			case <-h.stop:
				c.Close()
			}
			return
		}
		defer c.Close()
		h.floods.Add(1)
		c.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(c, "220 hostile.chaos.test ESMTP\r\n")
		var b [512]byte
		if _, err := c.Read(b[:]); err != nil {
			return
		}
		line := "250-" + strings.Repeat("x", 990) + "\r\n"
		for {
			n, err := io.WriteString(c, line)
			h.flooded.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	h.addr = addr.String()
	go func() { _ = h.sink.Serve(&chanListener{addr: addr, ch: h.feed, done: h.stop}) }()
	t.Cleanup(func() {
		close(h.stop)
		h.sink.Close()
	})
	return h
}

// TestHostileMX: the destination floods every EHLO reply with endless
// continuation lines. The workers must stay up with bounded memory (each
// reply is cut at --max-reply-bytes, the connection dropped, the mail
// deferred), and deliver everything once the destination behaves.
func TestHostileMX(t *testing.T) {
	h := startHostileMX(t)
	m := startStack(t, "file", nil, 2, h.addr)
	l := newLedger()
	n := envN("CHAOS_HOSTILE_N", 300)
	<-runLoad(loadOn(m, "hostile", n), l)
	// Let the floods run for a while: every attempt meets one.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && h.floods.Load() < int64(4*n/10); {
		time.Sleep(100 * time.Millisecond)
	}
	var peak int64
	for _, w := range m.Workers {
		if !w.Running() {
			t.Errorf("%s died under the hostile MX", w.Name)
		}
		peak = max(peak, rig.PeakRSS(w.Pid())<<10)
	}
	floods, flooded := h.floods.Load(), h.flooded.Load()
	if h.sink.Count() != 0 {
		t.Errorf("%d messages delivered through a hostile MX", h.sink.Count())
	}
	h.hostile.Store(false)
	recovered := time.Now()
	drained := drain(t, l, &dest{Sink: h.sink}, recovered, 3*time.Minute)
	a := l.Account(h.sink)
	line := fmt.Sprintf("%-28s %s; %d flooded EHLO replies (%d MB sent by the MX), worker peak RSS %d MB; all delivered %v after recovery",
		"hostile MX (endless 250-)", a, floods, flooded>>20, peak>>20, drained.Round(10*time.Millisecond))
	t.Log(line)
	appendSummary(line)
	if a.Lost > 0 {
		t.Errorf("%d accepted messages never reached the destination, e.g. %v", a.Lost, a.LostIDs)
	}
	if peak > 256<<20 {
		t.Errorf("worker peak RSS %d MB under the hostile MX; replies are not bounded", peak>>20)
	}
}
