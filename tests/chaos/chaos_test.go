//go:build chaos

package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/bench/rig"
)

func envN(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// runLoad starts ld in the background; the returned channel closes when done.
func runLoad(ld *load, l *ledger) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ld.Run(context.Background(), l)
	}()
	return done
}

// waitAccepted waits until the ledger has at least n accepted messages.
func waitAccepted(t *testing.T, l *ledger, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for l.Accepted() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages accepted after %v", l.Accepted(), n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loadOn is the chaos tests' usual load on m's ingress: n messages of 1 KiB
// over 10 sessions, within 3 minutes.
func loadOn(m *rig.Mailfwd, name string, n int) *load {
	return &load{name: name, n: n, sessions: 10, size: 1024, addr: func() string { return m.SMTPAddr }, deadline: 3 * time.Minute}
}

// faultUnderLoad runs loadOn(m, name, n) into l and, once a third of it is
// accepted, fault, which returns when the system has recovered; then it
// waits for the load to end and for d to get every accepted message, and
// returns the time that took from the recovery.
func faultUnderLoad(t *testing.T, l *ledger, d *dest, m *rig.Mailfwd, name string, n int, fault func() time.Time) time.Duration {
	t.Helper()
	done := runLoad(loadOn(m, name, n), l)
	waitAccepted(t, l, n/3, time.Minute)
	recovered := fault()
	<-done
	return drain(t, l, d, recovered, 2*time.Minute)
}

// killAndRestart kills a process (SIGKILL), starts it again after pause,
// and returns the time it was started.
func killAndRestart(t *testing.T, kill, restart func() error, pause time.Duration) time.Time {
	t.Helper()
	if err := kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(pause)
	if err := restart(); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// TestWorkersSIGKILLed kills worker processes with SIGKILL every 1.5 s
// during a 10k-message run (CHAOS_N) and restarts them.
func TestWorkersSIGKILLed(t *testing.T) {
	n := envN("CHAOS_N", 10000)
	d := startDest(t)
	m := startStack(t, "file", nil, 2, d.Addr)
	l := newLedger()
	ld := loadOn(m, "wkill", n)
	ld.sessions, ld.deadline = 20, 5*time.Minute
	done := runLoad(ld, l)
	kills, after := 0, 0
	recovered := time.Now()
	tick := time.NewTicker(1500 * time.Millisecond)
	defer tick.Stop()
	// Kill while the load runs and twice more during delivery afterwards.
	for stop := time.Now().Add(4 * time.Minute); time.Now().Before(stop) && after < 2; {
		<-tick.C
		select {
		case <-done:
			if l.Missing(d.Sink) == 0 {
				after = 2
				continue
			}
			after++
		default:
		}
		w := m.Workers[kills%len(m.Workers)]
		if err := w.Kill(); err != nil {
			t.Fatal(err)
		}
		kills++
		time.Sleep(200 * time.Millisecond)
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		recovered = time.Now()
	}
	<-done
	drained := drain(t, l, d, recovered, 3*time.Minute)
	t.Logf("%d SIGKILLs", kills)
	report(t, fmt.Sprintf("workers SIGKILLed x%d", kills), l, d, drained)
	if l.Accepted() != n {
		t.Errorf("only %d of %d messages accepted (the ingress was never down)", l.Accepted(), n)
	}
}

// stalledClient opens a session, starts DATA and sends half a message, then
// waits; finish sends the rest and the final dot and returns the reply line.
type stalledClient struct {
	conn net.Conn
	r    *bufio.Reader
	id   string
}

func startStalled(t *testing.T, addr, id string) *stalledClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	s := &stalledClient{conn: conn, r: bufio.NewReader(conn), id: id}
	expect := func(code string) {
		t.Helper()
		for {
			line, err := s.r.ReadString('\n')
			if err != nil {
				t.Fatalf("stalled client %s: %v", id, err)
			}
			if !strings.HasPrefix(line, code) {
				t.Fatalf("stalled client %s: want %s, got %q", id, code, line)
			}
			if len(line) < 4 || line[3] != '-' {
				return
			}
		}
	}
	expect("220")
	for _, step := range []struct{ cmd, code string }{
		{"EHLO stalled.chaos.test", "250"},
		{"MAIL FROM:<sender@client.chaos.test>", "250"},
		{"RCPT TO:<stalled@dest.chaos.test>", "250"},
		{"DATA", "354"},
	} {
		fmt.Fprintf(conn, "%s\r\n", step.cmd)
		expect(step.code)
	}
	fmt.Fprintf(conn, "Subject: %s\r\nMessage-ID: <%s>\r\n\r\nfirst half of the body\r\n", id, id)
	return s
}

func (s *stalledClient) finish() string {
	fmt.Fprintf(s.conn, "second half\r\n.\r\n")
	line, err := s.r.ReadString('\n')
	s.conn.Close()
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(line)
}

// TestIngressKilledMidDATA kills the ingress with SIGKILL while clients are
// in the middle of DATA and others are sending; no client may hold a 250 for
// a message that is not stored, and every 250 must be delivered.
func TestIngressKilledMidDATA(t *testing.T) {
	d := startDest(t)
	m := startStack(t, "file", nil, 1, d.Addr)
	l := newLedger()
	var replies []string
	drained := faultUnderLoad(t, l, d, m, "ikill", envN("CHAOS_INGRESS_N", 3000), func() time.Time {
		var stalled []*stalledClient
		for i := range 5 {
			stalled = append(stalled, startStalled(t, m.SMTPAddr, fmt.Sprintf("stalled-%d@chaos.test", i)))
		}
		if err := m.Ingress.Kill(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		replies = make([]string, len(stalled))
		for i, s := range stalled {
			wg.Add(1)
			go func() { defer wg.Done(); replies[i] = s.finish() }()
		}
		wg.Wait()
		for i, r := range replies {
			if strings.HasPrefix(r, "250") {
				t.Errorf("stalled client %d got %q from a killed ingress", i, r)
			}
		}
		time.Sleep(time.Second)
		if err := m.Ingress.Start(); err != nil {
			t.Fatal(err)
		}
		if err := rig.WaitTCP(m.SMTPAddr, time.Minute, true); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	})
	for _, msg := range d.Sink.Messages() {
		if strings.HasPrefix(messageID(msg.Data), "stalled-") {
			t.Errorf("a message cut off mid-DATA was delivered: %s", messageID(msg.Data))
		}
	}
	t.Logf("stalled clients' replies after the kill: %q", replies)
	report(t, "ingress SIGKILLed mid-DATA", l, d, drained)
}

// TestNATSRestarted kills nats-server (SIGKILL) during the run and starts it
// again 2 s later on the same store; the ingress answers 4xx meanwhile.
func TestNATSRestarted(t *testing.T) {
	d := startDest(t)
	m := startStack(t, "file", nil, 2, d.Addr)
	l := newLedger()
	drained := faultUnderLoad(t, l, d, m, "nats", envN("CHAOS_NATS_N", 3000), func() time.Time {
		return killAndRestart(t, m.NATS.Kill, m.NATS.Restart, 2*time.Second)
	})
	report(t, "nats-server SIGKILL+restart", l, d, drained)
}

// TestMinioRestarted stops MinIO (SIGKILL) for 3 s during the run.
func TestMinioRestarted(t *testing.T) {
	if tools.Minio == "" {
		t.Fatal("no MinIO binary (make tools, or MAILFWD_MINIO_BIN)")
	}
	minio, err := rig.StartMinio(tools.Minio, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = minio.Kill() })
	d := startDest(t)
	m := startStack(t, "s3", minio, 2, d.Addr)
	l := newLedger()
	drained := faultUnderLoad(t, l, d, m, "minio", envN("CHAOS_MINIO_N", 2000), func() time.Time {
		return killAndRestart(t, minio.Kill, minio.Restart, 3*time.Second)
	})
	report(t, "MinIO SIGKILL+restart", l, d, drained)
}

// TestDestinationOutage: the destination refuses connections, then accepts
// and never answers (timeouts), then recovers. Drain time is measured from
// the recovery.
func TestDestinationOutage(t *testing.T) {
	d := startDest(t)
	m := startStack(t, "file", nil, 2, d.Addr)
	l := newLedger()
	n := envN("CHAOS_DEST_N", 2000)
	d.Set("refuse")
	<-runLoad(loadOn(m, "dest", n), l)
	time.Sleep(3 * time.Second)
	delivered := d.Sink.Count()
	d.Set("hang")
	time.Sleep(8 * time.Second)
	d.Set("up")
	recovered := time.Now()
	drained := drain(t, l, d, recovered, 3*time.Minute)
	t.Logf("delivered during the outage: %d", delivered)
	if delivered != 0 {
		t.Errorf("%d messages reached a destination that refused every connection", delivered)
	}
	report(t, "destination refuse→hang→up", l, d, drained)
}
