package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// quotaReply is what one SMTP transaction got: the code of the first
// refusal (at MAIL, RCPT or DATA) and its text, or 250 after DATA.
type quotaReply struct {
	code     int
	enhanced smtp.EnhancedCode
	msg      string
	at       string // MAIL, RCPT, DATA
}

type quotaClient struct {
	tls      *tls.Config // STARTTLS before AUTH
	user     string      // AUTH PLAIN as user (password pass)
	pass     string
	rsetOnly bool // MAIL FROM, then RSET: a transaction that never gets its 250
}

// sendQuota runs one transaction on a new session to addr.
func sendQuota(addr, from, to string, qc quotaClient) (quotaReply, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return quotaReply{}, err
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	c := smtp.NewClient(conn)
	if qc.tls != nil {
		if c, err = smtp.NewClientStartTLS(conn, qc.tls); err != nil {
			conn.Close()
			return quotaReply{}, err
		}
	} else if err := c.Hello("client.test"); err != nil {
		c.Close()
		return quotaReply{}, err
	}
	defer c.Close()
	if qc.user != "" {
		if err := c.Auth(sasl.NewPlainClient("", qc.user, qc.pass)); err != nil {
			return quotaReply{}, err
		}
	}
	refused := func(at string, err error) (quotaReply, error) {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return quotaReply{code: se.Code, enhanced: se.EnhancedCode, msg: se.Message, at: at}, nil
		}
		return quotaReply{}, err
	}
	if err := c.Mail(from, nil); err != nil {
		return refused("MAIL", err)
	}
	if qc.rsetOnly {
		if err := c.Reset(); err != nil {
			return quotaReply{}, err
		}
		return quotaReply{code: 250, at: "MAIL"}, c.Quit()
	}
	if err := c.Rcpt(to, nil); err != nil {
		return refused("RCPT", err)
	}
	w, err := c.Data()
	if err != nil {
		return refused("DATA", err)
	}
	if _, err := w.Write(message("quota", "<"+strconv.FormatInt(time.Now().UnixNano(), 36)+"@client.test>", "counted\r\n")); err != nil {
		return quotaReply{}, err
	}
	if err := w.Close(); err != nil {
		return refused("DATA", err)
	}
	_ = c.Quit()
	return quotaReply{code: 250, at: "DATA"}, nil
}

// ingressProc is an ingress process (cmd/ingress) of a test fleet.
type ingressProc struct {
	smtp, http string
	logs       *syncBuffer
}

var (
	smtpAddrRE = regexp.MustCompile(`msg="ingress listening".* smtp=(127\.0\.0\.1:\d+)`)
	httpAddrRE = regexp.MustCompile(`msg="health endpoints" addr=(127\.0\.0\.1:\d+)`)
)

// startIngressProc runs cmd/ingress on natsURL (bootstrapped by the test).
func startIngressProc(t *testing.T, natsURL, blobURL string, args ...string) *ingressProc {
	t.Helper()
	bin := buildBinary(t, "ingress")
	p := &ingressProc{logs: &syncBuffer{}}
	cmd := exec.Command(bin, append([]string{"--nats-url", natsURL, "--blob-store", blobURL, "--bootstrap=false",
		"--listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--hostname", "mx.mailfwd.test", "--shutdown-timeout", "2s"}, args...)...)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ingress %s:\n%s", p.smtp, p.logs.String())
		}
	})
	waitFor(t, "ingress listening", 60*time.Second, func() bool {
		s := p.logs.String()
		if m := smtpAddrRE.FindStringSubmatch(s); m != nil {
			p.smtp = m[1]
		}
		if m := httpAddrRE.FindStringSubmatch(s); m != nil {
			p.http = m[1]
		}
		return p.smtp != "" && p.http != ""
	})
	return p
}

// metric reads one series' value from the process's /metrics (0: absent).
func (p *ingressProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	return 0
}

// quotaFleetNATS starts a nats-server and bootstraps the queue.
func quotaFleetNATS(t *testing.T) *testenv.NATS {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), AckWait: 10 * time.Second, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func queuedMsgs(t *testing.T, url string) uint64 {
	t.Helper()
	return streamMsgs(t, jsClient(t, url))
}

// jsClient is a JetStream client of the server at url, closed with the test.
func jsClient(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestQuotaSharedByTwoIngressProcesses: two ingress processes on one NATS
// share the sender quota "sender.test hourly=10" of the policy's quota
// key: eight clients sending 30 messages from sender.test and a subdomain
// of it, half to each process, get at most the quota plus what its pace
// earns meanwhile; every other one is refused at MAIL FROM with a 450
// 4.7.1 that names the quota, logged and counted by each process; mail
// from another domain is not limited; every accepted message is queued.
func TestQuotaSharedByTwoIngressProcesses(t *testing.T) {
	n := quotaFleetNATS(t)
	dir := t.TempDir()
	for k, v := range map[string]string{
		"access": "Connect:127.0.0.1 RELAY\n",
		"quota":  "# fleet-wide\nsender.test   hourly=10   # and its subdomains, one count\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	blobURL := "file://" + filepath.Join(t.TempDir(), "bodies")
	procs := []*ingressProc{
		startIngressProc(t, n.URL(), blobURL, "--policy-dir", dir),
		startIngressProc(t, n.URL(), blobURL, "--policy-dir", dir),
	}
	const total, quota = 30, 10
	start := time.Now()
	var mu sync.Mutex
	var accepted, others int
	var refusals []quotaReply
	refusedBy := make([]int, len(procs))
	work := make(chan int, total)
	for i := range total {
		work <- i
	}
	close(work)
	var wg sync.WaitGroup
	var errs []error
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				from := "app@sender.test"
				if i%3 == 0 {
					from = "app@mail.sender.test"
				}
				r, err := sendQuota(procs[i%2].smtp, from, fmt.Sprintf("r%d@dest.test", i), quotaClient{})
				mu.Lock()
				switch {
				case err != nil:
					errs = append(errs, err)
				case r.code == 250:
					accepted++
				default:
					refusals = append(refusals, r)
					refusedBy[i%2]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for range 3 {
		if r, err := sendQuota(procs[0].smtp, "x@other.test", "o@dest.test", quotaClient{}); err != nil || r.code != 250 {
			t.Fatalf("a sender without a quota: %+v %v", r, err)
		}
		others++
	}
	if len(errs) > 0 {
		t.Fatalf("sessions failed: %v", errs)
	}
	// GCRA: the whole hourly count at once, then one message each 6 minutes.
	bound := quota + int(math.Ceil(elapsed.Hours()*quota))
	t.Logf("accepted %d of %d in %v (bound %d); refused per process %v", accepted, total, elapsed.Round(time.Millisecond), bound, refusedBy)
	if accepted > bound {
		t.Errorf("the fleet accepted %d messages from sender.test, above its quota %d (+ what the pace earned: %d)", accepted, quota, bound)
	}
	if accepted < quota {
		t.Errorf("the fleet accepted %d messages, less than the quota %d", accepted, quota)
	}
	for _, r := range refusals {
		if r.at != "MAIL" || r.code != 450 || r.enhanced != (smtp.EnhancedCode{4, 7, 1}) || !strings.Contains(r.msg, "quota sender.test exceeded (10/hour)") {
			t.Errorf("refusal: %+v, want 450 4.7.1 at MAIL FROM naming the quota sender.test", r)
		}
	}
	var metricSum float64
	for i, p := range procs {
		if refusedBy[i] == 0 {
			t.Errorf("process %d refused nothing: the quota was not shared", i)
		}
		if got := strings.Count(p.logs.String(), "MAIL refused: Sender quota exceeded"); got != refusedBy[i] {
			t.Errorf("process %d logged %d quota refusals, refused %d", i, got, refusedBy[i])
		}
		metricSum += p.metric(t, `mailfwd_ingress_quota_refused_total{quota="sender.test"}`)
		if a, b := p.metric(t, `mailfwd_ingress_limit_refusals_total{limit="quota"}`), float64(refusedBy[i]); a != b {
			t.Errorf("process %d: limit_refusals{limit=quota} %v, want %v", i, a, b)
		}
	}
	if int(metricSum) != len(refusals) {
		t.Errorf("mailfwd_ingress_quota_refused_total{quota=sender.test} sums to %v, want %d", metricSum, len(refusals))
	}
	if got := queuedMsgs(t, n.URL()); got != uint64(accepted+others) {
		t.Errorf("stream MAIL holds %d messages, %d were accepted", got, accepted+others)
	}
}

// TestQuotaPerAuthUser: a quota for an SMTP AUTH user, added to the running
// ingress by a policy reload: transactions that end without their 250
// (RSET) give their count back; the third message of "user:app1 hourly=2"
// gets 450 4.7.1 naming the user's quota; another sender without a quota
// is not limited; a bad quota file is refused and the quota in force stays.
func TestQuotaPerAuthUser(t *testing.T) {
	e := newSubmissionEnv(t, false, 0)
	tc := &tls.Config{ServerName: "mx.mailfwd.test", RootCAs: e.ca.Pool()}
	auth := quotaClient{tls: tc, user: subUser, pass: subPass}
	loaded := func() int { return strings.Count(e.logs.String(), `msg="policy loaded" component=ingress`) }
	before := loaded()
	e.writePolicy("quota", "user:app1   hourly=2\n")
	waitFor(t, "quota policy loaded", 30*time.Second, func() bool { return loaded() > before })

	for range 3 {
		aborted := auth
		aborted.rsetOnly = true
		if r, err := sendQuota(e.listen["submission"], "me@app.test", "", aborted); err != nil || r.code != 250 {
			t.Fatalf("MAIL then RSET: %+v %v", r, err)
		}
	}
	for i := range 2 {
		if r, err := sendQuota(e.listen["submission"], "me@app.test", "x@alpha.test", auth); err != nil || r.code != 250 {
			t.Fatalf("message %d of the quota (after three aborted transactions): %+v %v", i+1, r, err)
		}
	}
	r, err := sendQuota(e.listen["submission"], "me@app.test", "x@alpha.test", auth)
	if err != nil {
		t.Fatal(err)
	}
	if r.at != "MAIL" || r.code != 450 || r.enhanced != (smtp.EnhancedCode{4, 7, 1}) || !strings.Contains(r.msg, "User quota app1 exceeded (2/hour)") {
		t.Fatalf("third message: %+v, want 450 4.7.1 naming the user quota", r)
	}
	if !strings.Contains(e.logs.String(), "MAIL refused: User quota exceeded") {
		t.Error("no log line for the refusal")
	}
	// Port 25 without AUTH: no user, no quota.
	if r, err := sendQuota(e.smtp, "other@ops.test", "x@alpha.test", quotaClient{}); err != nil || r.code == 450 {
		t.Fatalf("a client without AUTH was held to the user's quota: %+v %v", r, err)
	}
	// A bad quota file is refused with its line; the quota in force stays.
	e.writePolicy("quota", "user:app1 hourly=2\nuser:app2 hourly=lots\n")
	waitFor(t, "bad quota refused", 30*time.Second, func() bool {
		return strings.Contains(e.logs.String(), "quota:2: user:app2: hourly")
	})
	if r, _ := sendQuota(e.listen["submission"], "me@app.test", "x@alpha.test", auth); r.code != 450 {
		t.Fatalf("after a refused update: %+v, want the quota in force", r)
	}
}

// TestQuotaPolicyCheck: mailfwdctl policy check names the bad quota lines
// with their numbers, and passes a good file.
func TestQuotaPolicyCheck(t *testing.T) {
	dir := t.TempDir()
	check := func(text string) (string, error) {
		if err := os.WriteFile(filepath.Join(dir, "quota"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		root := ctl.NewRoot(&out, &out)
		root.SetArgs([]string{"policy", "check", filepath.Join(dir, "quota")})
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	out, err := check("example.com rate=10/s,hourly=5000\nuser:alice rate=2/s,hourly=500\n* hourly=1000\n")
	if err != nil || !strings.Contains(out, "valid: quota (3 entries)") {
		t.Fatalf("good quota file: %v\n%s", err, out)
	}
	out, err = check("example.com rate=10/s\n# ok\nexample.org hourly=5000 daily=9\nuser:bad/name hourly=1\n")
	if err == nil {
		t.Fatalf("bad quota file passed:\n%s", out)
	}
	for _, want := range []string{`quota:3: example.org: unknown quota "daily"`, "quota:4: bad user"} {
		if !strings.Contains(out+err.Error(), want) {
			t.Errorf("policy check does not say %q:\n%s%v", want, out, err)
		}
	}
}

// TestQuotaNATSDownFallsBackToLocalShare: with the quota state unreachable
// the ingress keeps a quarter of each quota locally ("--sender-quota
// hourly=8": 2 messages), never no limit, logs it and counts it.
func TestQuotaNATSDownFallsBackToLocalShare(t *testing.T) {
	n := quotaFleetNATS(t)
	p := startIngressProc(t, n.URL(), "file://"+filepath.Join(t.TempDir(), "bodies"), "--sender-quota", "hourly=8")
	if r, err := sendQuota(p.smtp, "a@app.test", "x@dest.test", quotaClient{}); err != nil || r.code != 250 {
		t.Fatalf("with NATS up: %+v %v", r, err)
	}
	n.Stop()
	mails := 0
	var refusal quotaReply
	for range 10 {
		r, err := sendQuota(p.smtp, "a@down.test", "", quotaClient{rsetOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if r.code != 250 {
			refusal = r
			break
		}
		mails++
	}
	if mails != 8/4 {
		t.Errorf("%d transactions started with the quota state unreachable, want the local share %d", mails, 8/4)
	}
	if refusal.code != 450 || !strings.Contains(refusal.msg, "Sender quota down.test exceeded (8/hour)") {
		t.Errorf("refusal on the local share: %+v", refusal)
	}
	if !strings.Contains(p.logs.String(), "fleet rate state unreachable; each limit falls back to a local share") {
		t.Error("no log line for the fallback")
	}
	if v := p.metric(t, "mailfwd_ingress_quota_local_fallbacks_total"); v < 1 {
		t.Errorf("mailfwd_ingress_quota_local_fallbacks_total %v", v)
	}
}

// BenchmarkQuotaCost: the cost of a fleet-wide sender quota at the ingress.
// One in-process ingress on an embedded nats-server (no worker: the mail
// stays queued), 10 client sessions sending 1 KiB messages from one sender
// domain, with no quota and with a --sender-quota that never binds (each
// MAIL FROM takes one GCRA step in MAIL_QUOTAS: a CAS, after a Get when
// another session moved it). Reports accepted/s and CPU per message (the
// ingress and nats-server, one process).
func BenchmarkQuotaCost(b *testing.B) {
	for _, mode := range []struct{ name, quota string }{{"quota=off", ""}, {"quota=on", "rate=100000/s,hourly=10000000"}} {
		b.Run(mode.name, func(b *testing.B) {
			n := testenv.StartNATS(b)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), AckWait: 10 * time.Second, Replicas: 1})
			if err != nil {
				b.Fatal(err)
			}
			if err := q.Bootstrap(ctx); err != nil {
				b.Fatal(err)
			}
			q.Close()
			cancel()
			var in daemon.Ingress
			in.Register(flag.NewFlagSet("b", flag.ContinueOnError))
			in.Common = daemon.Common{NATSURL: n.URL(), BlobStore: "file://" + filepath.Join(b.TempDir(), "bodies"), AckWait: 10 * time.Second, Replicas: 1}
			in.Listen, in.SMTP.Hostname, in.RelayNetworks, in.HTTPAddr = "127.0.0.1:0", "mx.mailfwd.test", config.StringList{"127.0.0.1"}, ""
			in.SenderQuota = mode.quota
			rctx, rcancel := context.WithCancel(context.Background())
			ready, done := make(chan string, 1), make(chan error, 1)
			logs := &syncBuffer{}
			go func() {
				done <- daemon.RunIngress(rctx, in, slog.New(slog.NewTextHandler(logs, nil)), noop.NewTracerProvider(), func(a string) { ready <- a })
			}()
			b.Cleanup(func() { rcancel(); <-done })
			var addr string
			select {
			case addr = <-ready:
			case err := <-done:
				b.Fatalf("ingress: %v\n%s", err, logs.String())
			}
			body := string(message("bench", "bench@origin.test", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15)))
			var next, failed atomic.Int64
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			var wg sync.WaitGroup
			for range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(addr)
					if err != nil {
						failed.Add(1)
						return
					}
					defer c.Close()
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						if err := c.SendMail("app@sender.test", []string{fmt.Sprintf("r%d@alpha.test", i)}, strings.NewReader(body)); err != nil {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			total, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d sends failed\n%s", failed.Load(), logs.String())
			}
			b.ReportMetric(float64(b.N)/total.Seconds(), "accepted/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
		})
	}
}

// An ingress that starts before its quota bucket exists (a NATS from an
// older bootstrap, the bootstrap job not run yet) keeps the local share
// until the bucket appears, then counts in the fleet's bucket without a
// restart. Before, it stayed on the local share until restarted.
func TestQuotaBucketMadeAfterTheIngressStarted(t *testing.T) {
	n := quotaFleetNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js := jsClient(t, n.URL())
	if err := js.DeleteKeyValue(ctx, shaping.QuotaBucketName); err != nil {
		t.Fatal(err)
	}
	p := startIngressProc(t, n.URL(), "file://"+filepath.Join(t.TempDir(), "bodies"), "--sender-quota", "hourly=1000")
	if !strings.Contains(p.logs.String(), "sender quota state unavailable") {
		t.Fatalf("no warning that the quota bucket is missing:\n%s", p.logs.String())
	}
	if r, err := sendQuota(p.smtp, "a@early.test", "", quotaClient{rsetOnly: true}); err != nil || r.code != 250 {
		t.Fatalf("before the bucket: %+v %v", r, err)
	}

	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), AckWait: 10 * time.Second, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, shaping.QuotaBucketName)
	if err != nil {
		t.Fatal(err)
	}
	// The ingress tries the bucket again after its retry interval and the
	// local share's degraded period (seconds): mail counts in it then.
	waitFor(t, "a count in the fleet's bucket", time.Minute, func() bool {
		r, err := sendQuota(p.smtp, "a@late.test", "x@dest.test", quotaClient{})
		if err != nil || r.code != 250 {
			t.Fatalf("after the bucket: %+v %v", r, err)
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			return false
		}
		for k := range keys.Keys() {
			if strings.Contains(k, "late") {
				return true
			}
		}
		time.Sleep(500 * time.Millisecond)
		return false
	})
}
