// Package tests holds mailfwd's end-to-end suites: real embedded NATS
// JetStream, a real MinIO, a DNS server on loopback serving test zones, and
// SMTP servers on loopback as destinations.
package tests

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// binDir holds binaries built once for the process-level tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailfwd-tests-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBinary builds ./cmd/<name> once per test run.
var buildMu sync.Mutex

func buildBinary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	out := filepath.Join(binDir, name)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-o", out, "../cmd/"+name)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
	}
	return out
}

// zones used by the end-to-end tests. Destinations listen on 127.0.0.2-4 at
// one shared port; mx1.beta.test (127.0.0.9) has nothing listening, so beta
// mail must fall back to its second MX.
const zones = `
$ORIGIN alpha.test.
@     60 IN MX 10 mx.alpha.test.
mx    60 IN A 127.0.0.2
$ORIGIN beta.test.
@     60 IN MX 10 mx1.beta.test.
@     60 IN MX 20 mx2.beta.test.
mx1   60 IN A 127.0.0.9
mx2   60 IN A 127.0.0.3
$ORIGIN gamma.test.
@     60 IN A 127.0.0.4
$ORIGIN mcc238.gprs.
mms.mnc001 60 IN MX 5 mx.alpha.test.
$ORIGIN null.test.
@     60 IN MX 0 .
$ORIGIN 0.0.127.in-addr.arpa.
6     60 IN PTR our-mmsc.intra.example.com.
$ORIGIN intra.example.com.
our-mmsc 60 IN A 127.0.0.6
$ORIGIN dead.test.
@     60 IN MX 10 mx.dead.test.
mx    60 IN A 127.0.0.5
`

// syncBuffer collects log output for assertions. With limit set it keeps
// only the first limit bytes (a benchmark's start-up lines).
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limit > 0 && b.buf.Len()+len(p) > b.limit {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type envOptions struct {
	blob          string // "s3" (default) or "fs"
	maxSize       int64
	relayNetworks []string
	relayDomains  []string
	storeTimeout  time.Duration
	onRcpt        func(rcpt string, seen int) *smtp.SMTPError
	dataDelay     func() time.Duration // the destinations' DataDelay hook
	retryFirst    time.Duration
	inlineMax     int
	queueReturn   time.Duration
	warnAfter     time.Duration
	workerSetup   func(*daemon.Worker)
	// policy, when set, runs ingress and worker on a policy directory with
	// these files ({PORT} is replaced by the destinations' port).
	policy map[string]string
	// zones are added to the test zones; ingressSetup adjusts the ingress
	// before it starts.
	zones        string
	ingressSetup func(*daemon.Ingress)
}

type env struct {
	t         testing.TB
	nats      *testenv.NATS
	minio     *testenv.Minio
	dns       *testenv.DNSServer
	blobURL   string
	smtp      string // ingress address
	port      int    // destination port on 127.0.0.2-4
	sinks     map[string]*sink.Server
	policyDir string
	logs      *syncBuffer
	spans     *tracetest.InMemoryExporter
	cancel    context.CancelFunc
	done      chan error
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	e := &env{t: t, logs: &syncBuffer{}, spans: tracetest.NewInMemoryExporter(), done: make(chan error, 2)}
	e.nats = testenv.StartNATS(t)
	switch o.blob {
	case "fs":
		e.blobURL = "file://" + filepath.Join(t.TempDir(), "bodies")
	default:
		e.minio = testenv.StartMinio(t)
		e.blobURL = e.minio.URL("mailfwd-bodies")
	}
	e.dns = testenv.StartDNS(t, zones+o.zones)
	e.startSinks(o.onRcpt, o.dataDelay)

	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(e.spans))
	if _, bench := t.(*testing.B); bench {
		// A benchmark measures what the daemons cost as deployed: spans
		// batched to an exporter (one that drops them), info-level logs.
		// Kept in this process, every span and debug line would be heap
		// that each GC marks again, a cost that grows with b.N and that
		// no daemon pays.
		e.logs.limit = 1 << 20
		log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	}
	common := daemon.Common{NATSURL: e.nats.URL(), BlobStore: e.blobURL, Bootstrap: true, AckWait: 10 * time.Second, Replicas: 1}

	var in daemon.Ingress
	in.Register(flag.NewFlagSet("t", flag.ContinueOnError))
	in.Common = common
	in.Listen = "127.0.0.1:0"
	in.SMTP.Hostname = "mx.mailfwd.test"
	in.SMTP.MaxMessageBytes = 2_000_000
	if o.maxSize > 0 {
		in.SMTP.MaxMessageBytes = o.maxSize
	}
	in.SMTP.MaxRecipients = 20
	in.SMTP.InlineBodyMax = o.inlineMax
	in.SMTP.StoreTimeout = 3 * time.Second
	if o.storeTimeout > 0 {
		in.SMTP.StoreTimeout = o.storeTimeout
	}
	in.RelayNetworks = config.StringList{"127.0.0.1/32"}
	if o.relayNetworks != nil {
		in.RelayNetworks = o.relayNetworks
	}
	in.RelayDomains = o.relayDomains
	in.ShutdownTimeout = 5 * time.Second
	if o.policy != nil {
		e.policyDir = filepath.Join(t.TempDir(), "policy")
		if err := os.MkdirAll(e.policyDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range o.policy {
			e.writePolicy(k, v)
		}
		in.PolicyDir, in.PolicyInterval, in.RelayNetworks = e.policyDir, 200*time.Millisecond, nil
		in.DNSServer = e.dns.Addr
	}

	if o.ingressSetup != nil {
		o.ingressSetup(&in)
	}

	var wk daemon.Worker
	wk.Register(flag.NewFlagSet("t", flag.ContinueOnError))
	wk.Common = common
	wk.DNSServers = config.StringList{e.dns.Addr}
	wk.SMTPPort = uint(e.port)
	wk.Delivery.HeloName = "worker.mailfwd.test"
	wk.Delivery.ConnectTimeout = 2 * time.Second
	wk.Delivery.HostDownTTL = time.Second
	wk.Engine.RetryFirst = 300 * time.Millisecond
	wk.Engine.RetryMax = time.Second
	wk.Engine.DrainTimeout = 5 * time.Second
	if o.retryFirst > 0 {
		wk.Engine.RetryFirst, wk.Engine.RetryMax = o.retryFirst, o.retryFirst
	}
	if o.queueReturn > 0 {
		wk.Engine.QueueReturn = o.queueReturn
	}
	wk.Engine.WarnAfter = o.warnAfter
	if o.policy != nil {
		wk.PolicyDir, wk.PolicyInterval = e.policyDir, 200*time.Millisecond
	}
	if o.workerSetup != nil {
		o.workerSetup(&wk)
	}

	// Bootstrap once up front: ingress and worker bootstrapping at the same
	// instant makes the embedded nats-server race with itself under -race
	// (a stream update against a consumer create, inside the server).
	bctx, bcancel := context.WithTimeout(context.Background(), 30*time.Second)
	bq, err := queue.Connect(bctx, queue.Config{URL: common.NATSURL, AckWait: common.AckWait, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := bq.Bootstrap(bctx); err != nil {
		t.Fatal(err)
	}
	bq.Close()
	bcancel()

	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	ready := make(chan string, 1)
	go func() { e.done <- daemon.RunIngress(ctx, in, log, tp, func(a string) { ready <- a }) }()
	go func() { e.done <- daemon.RunWorker(ctx, wk, log, tp) }()
	select {
	case e.smtp = <-ready:
	case err := <-e.done:
		t.Fatalf("ingress or worker stopped at start: %v\n%s", err, e.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("ingress not listening after 60s\n%s", e.logs.String())
	}
	waitFor(t, "worker started", 60*time.Second, func() bool { return strings.Contains(e.logs.String(), "worker started") })
	t.Cleanup(func() {
		cancel()
		for range 2 {
			select {
			case err := <-e.done:
				if err != nil {
					t.Errorf("process returned error at shutdown: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("process did not stop within 30s")
			}
		}
		if t.Failed() {
			t.Logf("logs:\n%s", e.logs.String())
		}
	})
	return e
}

// writePolicy replaces one policy file atomically (as a ConfigMap update does).
func (e *env) writePolicy(key, text string) {
	e.t.Helper()
	text = strings.ReplaceAll(text, "{PORT}", strconv.Itoa(e.port))
	tmp := filepath.Join(e.policyDir, "."+key+".tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.policyDir, key)); err != nil {
		e.t.Fatal(err)
	}
}

// startSinks listens on 127.0.0.2, .3 and .4 at one shared port.
func (e *env) startSinks(onRcpt func(string, int) *smtp.SMTPError, dataDelay func() time.Duration) {
	e.t.Helper()
	for try := 0; try < 20; try++ {
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			e.t.Fatalf("listen: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{ln}
		ok := true
		for _, ip := range []string{"127.0.0.3", "127.0.0.4", "127.0.0.5"} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, l)
		}
		if !ok {
			for _, l := range lns {
				l.Close()
			}
			continue
		}
		e.port = port
		// 127.0.0.5 (mx.dead.test) accepts connections and never says a word:
		// a destination that times out.
		silent := lns[3]
		e.t.Cleanup(func() { silent.Close() })
		go func() {
			var held []net.Conn
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for {
				c, err := silent.Accept()
				if err != nil {
					return
				}
				held = append(held, c)
			}
		}()
		e.sinks = map[string]*sink.Server{}
		for i, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			s := sink.New(sink.Config{Hostname: "sink" + strconv.Itoa(i+2) + ".test", OnRcpt: onRcpt, DataDelay: dataDelay})
			e.sinks[ip] = s
			l := lns[i]
			go s.Serve(l)
			e.t.Cleanup(func() { s.Close() })
		}
		return
	}
	e.t.Fatal("could not find a port free on 127.0.0.2-4")
}

// sendResult is the outcome of one SMTP transaction.
type sendResult struct {
	QueueID   string
	RcptErrs  map[string]*smtp.SMTPError
	Err       error // MAIL/DATA-level error (an *smtp.SMTPError when the server replied)
	FinalCode int
}

// send submits one message from the given local address ("" = any).
func send(addr, localIP, from string, rcpts []string, body []byte, opts *smtp.MailOptions) sendResult {
	res := sendResult{RcptErrs: map[string]*smtp.SMTPError{}}
	d := net.Dialer{Timeout: 5 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		res.Err = err
		return res
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		res.Err = err
		return res
	}
	if err := c.Mail(from, opts); err != nil {
		res.Err = err
		return res
	}
	accepted := 0
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				res.RcptErrs[r] = se
				continue
			}
			res.Err = err
			return res
		}
		accepted++
	}
	if accepted == 0 {
		res.Err = errors.New("no recipient accepted")
		return res
	}
	w, err := c.Data()
	if err != nil {
		res.Err = err
		return res
	}
	if _, err := w.Write(body); err != nil {
		res.Err = err
		return res
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		res.Err = err
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			res.FinalCode = se.Code
		}
		return res
	}
	res.FinalCode = 250 // go-smtp returns an error for anything but 2xx
	if i := strings.LastIndex(resp.StatusText, " "); i >= 0 {
		res.QueueID = resp.StatusText[i+1:]
	}
	_ = c.Quit()
	return res
}

// waitFor polls cond until it is true or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// message builds a CRLF message with the given extra body.
func message(subject, msgid string, body string) []byte {
	return []byte("From: sender@origin.test\r\nTo: someone\r\nSubject: " + subject + "\r\nMessage-ID: <" + msgid + ">\r\n\r\n" + body)
}
