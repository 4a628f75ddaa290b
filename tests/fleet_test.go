package tests

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// countingMX is a destination that records what a fleet of workers does to
// it: sessions open at once, transactions in DATA at once, and the time of
// each accepted message.
type countingMX struct {
	*sink.Server
	addr   string
	inData atomic.Int32
	peak   atomic.Int32
	hold   atomic.Pointer[chan struct{}] // while set, DATA waits for it to close

	mu      sync.Mutex
	accepts []time.Time // when each connection was accepted
}

// acceptTimes records each connection's accept time for countingMX.
type acceptTimes struct {
	net.Listener
	mx *countingMX
}

func (l acceptTimes) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mx.mu.Lock()
		l.mx.accepts = append(l.mx.accepts, time.Now())
		l.mx.mu.Unlock()
	}
	return c, err
}

func startCountingMX(t testing.TB, dataDelay time.Duration, onRcpt ...func(string, int) *smtp.SMTPError) *countingMX {
	mx := &countingMX{}
	var rcpt func(string, int) *smtp.SMTPError
	if len(onRcpt) > 0 {
		rcpt = onRcpt[0]
	}
	mx.Server = sink.New(sink.Config{Hostname: "mx.dest.test", OnRcpt: rcpt, DataDelay: func() time.Duration {
		n := mx.inData.Add(1)
		for p := mx.peak.Load(); n > p && !mx.peak.CompareAndSwap(p, n); p = mx.peak.Load() {
		}
		if h := mx.hold.Load(); h != nil {
			<-*h
		}
		time.Sleep(dataDelay)
		mx.inData.Add(-1)
		return 0
	}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mx.Serve(acceptTimes{Listener: ln, mx: mx}); err != nil {
			t.Errorf("counting MX: %v", err)
		}
	}()
	t.Cleanup(func() { mx.Close(); <-done })
	mx.addr = ln.Addr().String()
	return mx
}

// busiest is the most messages accepted within any one second.
func (mx *countingMX) busiest() int {
	var at []time.Time
	for _, m := range mx.Messages() {
		at = append(at, m.At)
	}
	return busiestSecond(at)
}

// busiestConns is the most connections accepted within any one second.
func (mx *countingMX) busiestConns() int {
	mx.mu.Lock()
	defer mx.mu.Unlock()
	return busiestSecond(slices.Clone(mx.accepts))
}

// busiestSecond is the most of at within any one second.
func busiestSecond(at []time.Time) int {
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	best := 0
	for i := range at {
		j := i
		for j < len(at) && at[j].Sub(at[i]) < time.Second {
			j++
		}
		best = max(best, j-i)
	}
	return best
}

// fleet is one nats-server, one ingress and worker processes.
type fleet struct {
	t       testing.TB
	nats    *testenv.NATS
	blobURL string
	smtp    string
	bin     string
	mx      *countingMX
	mu      sync.Mutex
	logs    []*syncBuffer
}

func startFleet(t testing.TB, mx *countingMX) *fleet {
	f := &fleet{t: t, bin: buildBinary(t, "worker"), nats: testenv.StartNATS(t), mx: mx,
		blobURL: "file://" + filepath.Join(t.TempDir(), "bodies")}
	bctx, bcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer bcancel()
	bq, err := queue.Connect(bctx, queue.Config{URL: f.nats.URL(), AckWait: 5 * time.Second, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := bq.Bootstrap(bctx); err != nil {
		t.Fatal(err)
	}
	bq.Close()
	var in daemon.Ingress
	in.Register(flag.NewFlagSet("t", flag.ContinueOnError))
	in.Common = daemon.Common{NATSURL: f.nats.URL(), BlobStore: f.blobURL, AckWait: 5 * time.Second, Replicas: 1}
	in.Listen, in.SMTP.Hostname, in.RelayNetworks = "127.0.0.1:0", "mx.mailfwd.test", config.StringList{"127.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	logs := &syncBuffer{}
	go func() {
		done <- daemon.RunIngress(ctx, in, slog.New(slog.NewTextHandler(logs, nil)), noop.NewTracerProvider(), func(a string) { ready <- a })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case f.smtp = <-ready:
	case err := <-done:
		t.Fatalf("ingress: %v\n%s", err, logs.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			f.mu.Lock()
			defer f.mu.Unlock()
			for i, l := range f.logs {
				t.Logf("worker %d:\n%s", i, l.String())
			}
		}
	})
	return f
}

// worker starts a worker process delivering everything to the MX.
func (f *fleet) worker(args ...string) *exec.Cmd {
	f.t.Helper()
	out := &syncBuffer{}
	f.mu.Lock()
	name := "worker-" + strconv.Itoa(len(f.logs))
	f.logs = append(f.logs, out)
	f.mu.Unlock()
	cmd := exec.Command(f.bin, append([]string{
		"--nats-url", f.nats.URL(), "--blob-store", f.blobURL, "--ack-wait", "5s", "--http-addr", "",
		"--route", ".=smtp:[" + strings.Replace(f.mx.addr, ":", "]:", 1), "--helo-name", name + ".test",
		"--retry-first", "1s", "--retry-max", "2s", "--busy-delay", "500ms", "--log-level", "debug"}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		f.t.Fatalf("start worker: %v", err)
	}
	f.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(f.t, name+" started", 60*time.Second, func() bool { return strings.Contains(out.String(), "worker started") })
	return cmd
}

// sendN submits n messages to dest.test over one SMTP session.
func (f *fleet) sendN(tag string, n int) {
	f.t.Helper()
	for i := range n {
		r := tag + strconv.Itoa(i) + "@dest.test"
		if res := send(f.smtp, "", "s@origin.test", []string{r}, message(tag, r, "x\r\n"), nil); res.FinalCode != 250 {
			f.t.Fatalf("send %s: %d %v", r, res.FinalCode, res.Err)
		}
	}
}

// TestFleetConcurrency: three worker processes, each with the same
// --domain-limit concurrency=2: the MX never sees more than two sessions
// or two transactions at once, and all mail is delivered. (Before the
// limits were fleet-wide it saw six.)
func TestFleetConcurrency(t *testing.T) {
	mx := startCountingMX(t, 300*time.Millisecond)
	f := startFleet(t, mx)
	for range 3 {
		f.worker("--domain-limit", "dest.test:concurrency=2,msgs-per-conn=10")
	}
	const n = 30
	f.sendN("c", n)
	waitFor(t, "all mail delivered", 120*time.Second, func() bool { return len(mx.RecipientsDelivered()) >= n })
	if p := mx.peak.Load(); p > 2 {
		t.Errorf("the MX had %d transactions at once, want at most 2 (fleet concurrency=2)", p)
	}
	if p := mx.PeakConnections(); p > 2 {
		t.Errorf("the MX had %d sessions at once, want at most 2 (fleet concurrency=2)", p)
	}
	if p := mx.peak.Load(); p < 2 {
		t.Errorf("at most %d transaction at once: the fleet did not use its 2 slots", p)
	}
}

// TestFleetRate: three worker processes with rate=4/s: the busiest second
// at the MX holds at most the rate plus its burst (1).
func TestFleetRate(t *testing.T) {
	mx := startCountingMX(t, 0)
	f := startFleet(t, mx)
	for range 3 {
		f.worker("--domain-limit", "dest.test:rate=4/s")
	}
	const n = 24
	f.sendN("r", n)
	waitFor(t, "all mail delivered", 120*time.Second, func() bool { return len(mx.RecipientsDelivered()) >= n })
	if b := mx.busiest(); b > 4+1 {
		t.Errorf("%d messages in the busiest second, want at most 5 (fleet rate 4/s, burst 1)", b)
	}
}

// TestFleetNewConnections: three worker processes with new-conns=2/s (and
// one message per connection, so that every delivery needs a new one):
// the busiest second at the MX holds at most the pace plus its burst (1)
// new connections, and all mail is delivered. (Before, the limit was
// refused; without the fleet's pace each worker dialled at will.)
// The same limit on the next hop (the MX's address) in the shaping key.
func TestFleetNewConnections(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shaping"), []byte("[127.0.0.1]  new-conns=2/s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"domain", []string{"--domain-limit", "dest.test:new-conns=2/s,msgs-per-conn=1"}},
		{"next-hop", []string{"--policy-dir", dir, "--max-msgs-per-conn", "1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mx := startCountingMX(t, 0)
			f := startFleet(t, mx)
			for range 3 {
				f.worker(tc.args...)
			}
			const n = 16
			f.sendN("nc", n)
			waitFor(t, "all mail delivered", 120*time.Second, func() bool { return len(mx.RecipientsDelivered()) >= n })
			if b := mx.busiestConns(); b > 2+1 {
				t.Errorf("%d new connections in the busiest second, want at most 3 (fleet new-conns 2/s, burst 1)", b)
			}
			if c := mx.Connections(); c < n {
				t.Errorf("%d connections for %d messages with msgs-per-conn=1: the scenario did not hold", c, n)
			}
		})
	}
}

// TestFleetConnsPerHost: --max-conns-per-host=2 bounds one worker
// process's sessions to a next hop, so three processes open up to six;
// the shaping key's "[*] concurrency=2" bounds them for the fleet: the MX
// never sees more than two sessions or transactions at once.
func TestFleetConnsPerHost(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shaping"), []byte("[*]  concurrency=2   # every next hop, fleet-wide\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		args      []string
		fleetWide bool
	}{
		{"flag per process", []string{"--max-conns-per-host", "2"}, false},
		{"[*] fleet-wide", []string{"--max-conns-per-host", "2", "--policy-dir", dir}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mx := startCountingMX(t, 300*time.Millisecond)
			f := startFleet(t, mx)
			for range 3 {
				f.worker(tc.args...)
			}
			const n = 30
			f.sendN("h", n)
			waitFor(t, "all mail delivered", 120*time.Second, func() bool { return len(mx.RecipientsDelivered()) >= n })
			p := max(int(mx.peak.Load()), mx.PeakConnections())
			switch {
			case tc.fleetWide && p > 2:
				t.Errorf("the MX had %d sessions at once, want at most 2 ([*] concurrency=2)", p)
			case !tc.fleetWide && p > 3*2:
				t.Errorf("the MX had %d sessions at once, more than 3 workers × --max-conns-per-host 2", p)
			case !tc.fleetWide && p <= 2:
				t.Logf("the MX had only %d sessions at once with three workers (the flag is per process)", p)
			}
		})
	}
}

// TestFleetKilledWorkerGivesSlotsBack: a worker killed while it holds both
// slots of a destination gives them back by expiry: the workers started
// after it deliver the rest of the mail.
func TestFleetKilledWorkerGivesSlotsBack(t *testing.T) {
	mx := startCountingMX(t, 0)
	hold := make(chan struct{})
	mx.hold.Store(&hold)
	f := startFleet(t, mx)
	limit := []string{"--domain-limit", "dest.test:concurrency=2"}
	a := f.worker(limit...)
	f.sendN("held", 2)
	waitFor(t, "worker A holds both slots in DATA", 60*time.Second, func() bool { return mx.inData.Load() == 2 })
	if err := a.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	mx.hold.Store(nil)
	close(hold)
	f.worker(limit...)
	f.worker(limit...)
	f.worker(limit...)
	f.sendN("after", 6)
	waitFor(t, "mail after the kill delivered", 90*time.Second, func() bool {
		got := mx.RecipientsDelivered()
		for i := range 6 {
			if got["after"+strconv.Itoa(i)+"@dest.test"] == 0 {
				return false
			}
		}
		return true
	})
	if p := mx.peak.Load(); p > 2 {
		t.Errorf("the MX had %d transactions at once, want at most 2", p)
	}
}

// ctlRun runs mailfwdctl against the fleet's NATS.
func (f *fleet) ctlRun(args ...string) (string, error) {
	var out, errOut bytes.Buffer
	root := ctl.NewRoot(&out, &errOut)
	root.SetArgs(append([]string{"--nats-url", f.nats.URL(), "--timeout", "20s"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

// TestFleetReplyRuleSuspends: a reply matching a reply rule of the shaping
// key suspends the destination for the whole fleet: mail for it is not
// attempted by any of the three workers (it waits in the queue), mailfwdctl
// shaping status shows the suspension and why, and shaping resume lifts it.
func TestFleetReplyRuleSuspends(t *testing.T) {
	var busy atomic.Bool
	busy.Store(true)
	var tried atomic.Int32
	mx := startCountingMX(t, 0, func(rcpt string, _ int) *smtp.SMTPError {
		tried.Add(1)
		if busy.Load() {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Unusual traffic, try again later"}
		}
		return nil
	})
	f := startFleet(t, mx)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shaping"), []byte("# provider throttling\nreply: ^421 4\\.7\\.0 .*try again later   suspend=10m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.worker("--policy-dir", dir)
	}
	f.sendN("first", 1)
	waitFor(t, "the suspension", 60*time.Second, func() bool {
		out, err := f.ctlRun("shaping", "status", "-o", "json")
		return err == nil && strings.Contains(out, `"destination": "dest.test"`) && strings.Contains(out, "try again later")
	})
	// Every worker has the suspension (the fleet state reaches them by a
	// watch; mail a worker takes before its watch brings the suspension is
	// tried once, and its reply suspends nothing new).
	waitFor(t, "every worker seeing the suspension", 60*time.Second, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, l := range f.logs {
			if !strings.Contains(l.String(), "destination suspension seen") {
				return false
			}
		}
		return true
	})
	before := tried.Load()
	f.sendN("later", 5)
	handedBack := func() int {
		n := 0
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, l := range f.logs {
			n += strings.Count(l.String(), "destination dest.test suspended: 421 4.7.0")
		}
		return n
	}
	// Set aside: none left in the workers' consumer (a log line may count
	// the first message's retry too).
	waitFor(t, "the later mail set aside by the suspension", 60*time.Second, func() bool {
		return (handedBack() >= 5 && f.consumerLag() == 0) || tried.Load() > before
	})
	if got := tried.Load(); got > before {
		t.Fatalf("the MX was tried %d more times during the suspension", got-before)
	}
	// The MX recovers, then the operator resumes (the other way round, the
	// first message's retry could meet the 421 again and suspend anew).
	busy.Store(false)
	if out, err := f.ctlRun("shaping", "resume", "dest.test"); err != nil || !strings.Contains(out, "resumed dest.test") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	if out, err := f.ctlRun("queue", "flush", "--domain", "dest.test"); err != nil {
		t.Fatalf("flush: %v\n%s", err, out)
	}
	waitFor(t, "all mail delivered after the resume", 90*time.Second, func() bool { return len(mx.RecipientsDelivered()) >= 6 })
}

// consumerLag is what KEDA's nats-jetstream scaler scales the workers on:
// the "workers" consumer's NumPending + NumAckPending (its getMaxMsgLag).
func (f *fleet) consumerLag() int {
	p, a := f.consumerState()
	return p + a
}

// consumerState is the "workers" consumer's NumPending and NumAckPending.
func (f *fleet) consumerState() (pending, ackPending int) {
	f.t.Helper()
	nc, err := nats.Connect(f.nats.URL())
	if err != nil {
		f.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, "MAIL", "workers")
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return int(info.NumPending), info.NumAckPending
}

// TestFleetThrottledMailIsNotLag: mail that shaping holds back waits where
// KEDA's lag does not see it, so a burst to one throttled destination does
// not scale the workers out for nothing. A burst to a destination
// suspended by a reply rule leaves no lag at all (it waits deferred until
// the suspension ends); a burst to a rate-limited one leaves at most what
// the workers could start soon, never more than their concurrency (below
// the chart's lagThreshold of 200 a pod, so the lag it leaves never asks
// for more pods than run). (Before, a rate-limited lane took mail up to
// twice the concurrency between two refusals: 128 a pod.)
func TestFleetThrottledMailIsNotLag(t *testing.T) {
	const burst, concurrency = 150, 16
	t.Run("suspended", func(t *testing.T) {
		var tried atomic.Int32
		mx := startCountingMX(t, 0, func(string, int) *smtp.SMTPError {
			tried.Add(1)
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Unusual traffic, try again later"}
		})
		f := startFleet(t, mx)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "shaping"), []byte("reply: ^421 4\\.7\\.0 .*try again later   suspend=10m\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			f.worker("--policy-dir", dir, "--concurrency", strconv.Itoa(concurrency))
		}
		f.sendN("first", 1)
		waitFor(t, "the suspension", 60*time.Second, func() bool {
			out, err := f.ctlRun("shaping", "status", "-o", "json")
			return err == nil && strings.Contains(out, "try again later")
		})
		before := tried.Load()
		f.sendN("burst", burst)
		waitFor(t, "no lag left while the burst waits for the suspension's end", 60*time.Second, func() bool { return f.consumerLag() == 0 })
		if got := tried.Load(); got > before {
			t.Errorf("the MX was tried %d more times during the suspension", got-before)
		}
	})
	t.Run("rate-limited", func(t *testing.T) {
		mx := startCountingMX(t, 0)
		f := startFleet(t, mx)
		f.worker("--domain-limit", "dest.test:rate=2/s", "--concurrency", strconv.Itoa(concurrency), "--busy-delay", "5m")
		f.sendN("burst", burst)
		waitFor(t, "the burst fetched", 60*time.Second, func() bool { p, _ := f.consumerState(); return p == 0 })
		peak := 0
		for range 60 { // three seconds of looks: a pod's lag between two refusals, with mail coming back
			peak = max(peak, f.consumerLag())
			time.Sleep(50 * time.Millisecond)
		}
		if peak > concurrency {
			t.Errorf("the rate-limited burst left a lag of up to %d in one worker, want at most its concurrency %d", peak, concurrency)
		}
		if n := len(mx.Messages()); n >= burst/2 {
			t.Errorf("%d of %d delivered at 2/s: the scenario did not hold", n, burst)
		}
	})
}
