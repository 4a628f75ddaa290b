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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"
	"sigs.k8s.io/yaml"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// The quickstart's NATS users (deploy/quickstart/nats.yaml, auth.conf).
const (
	ingressUser = "mailfwd-ingress"
	workerUser  = "mailfwd-worker"
	ctlUser     = "mailfwdctl"
)

var quickstartPasswords = map[string]string{
	"MAILFWD_INGRESS_PASSWORD": "pw-ingress-test",
	"MAILFWD_WORKER_PASSWORD":  "pw-worker-test",
	"MAILFWD_CTL_PASSWORD":     "pw-ctl-test",
	"MAILFWD_EVENTS_PASSWORD":  eventsPassword,
}

func password(user string) string {
	switch user {
	case ingressUser:
		return quickstartPasswords["MAILFWD_INGRESS_PASSWORD"]
	case workerUser:
		return quickstartPasswords["MAILFWD_WORKER_PASSWORD"]
	case eventsUser:
		return quickstartPasswords["MAILFWD_EVENTS_PASSWORD"]
	}
	return quickstartPasswords["MAILFWD_CTL_PASSWORD"]
}

// quickstartAuthConf is auth.conf of the quickstart's nats-config ConfigMap,
// byte for byte.
func quickstartAuthConf(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile("../deploy/quickstart/nats.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(raw, []byte("\n---")) {
		var cm struct {
			Kind     string
			Metadata struct{ Name string }
			Data     map[string]string
		}
		if err := yaml.Unmarshal(doc, &cm); err != nil {
			t.Fatalf("deploy/quickstart/nats.yaml: %v", err)
		}
		if cm.Kind == "ConfigMap" && cm.Metadata.Name == "nats-config" {
			if !strings.Contains(cm.Data["nats.conf"], "include ./auth.conf") {
				t.Fatal("the quickstart's nats.conf does not include auth.conf")
			}
			if cm.Data["auth.conf"] == "" {
				t.Fatal("the quickstart's nats-config has no auth.conf")
			}
			return cm.Data["auth.conf"]
		}
	}
	t.Fatal("no ConfigMap nats-config in deploy/quickstart/nats.yaml")
	return ""
}

// startQuickstartNATS runs a JetStream nats-server on loopback with the
// quickstart's auth.conf included unchanged, its passwords from the
// environment as in the StatefulSet.
func startQuickstartNATS(t testing.TB) (string, *serverLog) {
	t.Helper()
	return startQuickstartNATSWith(t, quickstartAuthConf(t))
}

// startQuickstartNATSWith is startQuickstartNATS with auth.conf given.
func startQuickstartNATSWith(t testing.TB, authConf string) (string, *serverLog) {
	t.Helper()
	for k, v := range quickstartPasswords {
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(authConf), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePortForAuth(t)
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\njetstream { store_dir: %q }\ninclude ./auth.conf\n", port, filepath.Join(dir, "js"))
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("the quickstart's auth.conf does not load: %v", err)
	}
	opts.NoSigs = true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	sl := &serverLog{}
	s.SetLogger(sl, false, false)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return "nats://127.0.0.1:" + strconv.Itoa(port), sl
}

// serverLog records the server's errors: permission violations are logged
// there whether or not the client notices.
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) add(format string, v ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
	l.mu.Unlock()
}
func (l *serverLog) Noticef(string, ...any)    {}
func (l *serverLog) Warnf(f string, v ...any)  { l.add(f, v...) }
func (l *serverLog) Fatalf(f string, v ...any) { l.add(f, v...) }
func (l *serverLog) Errorf(f string, v ...any) { l.add(f, v...) }
func (l *serverLog) Debugf(string, ...any)     {}
func (l *serverLog) Tracef(string, ...any)     {}

// violations are the logged permission violations of one user since mark.
func (l *serverLog) violations(user string, mark int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines[min(mark, len(l.lines)):] {
		if strings.Contains(s, "Violation") && strings.Contains(s, "user:"+user+`"`) {
			out = append(out, s)
		}
	}
	return out
}

func (l *serverLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

func freePortForAuth(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// errCollector gathers a connection's asynchronous errors (permission violations).
type errCollector struct {
	mu   sync.Mutex
	errs []error
}

func (c *errCollector) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	c.mu.Lock()
	c.errs = append(c.errs, err)
	c.mu.Unlock()
}

func (c *errCollector) has(sub string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.errs {
		if strings.Contains(strings.ToLower(e.Error()), "permissions violation") && strings.Contains(e.Error(), sub) {
			return true
		}
	}
	return false
}

// connectAs connects as one of the quickstart's users the way mailfwd does
// (its own inbox prefix), collecting asynchronous errors.
func connectAs(t testing.TB, url, user string) (*nats.Conn, jetstream.JetStream, *errCollector) {
	t.Helper()
	ec := &errCollector{}
	nc, err := nats.Connect(url, nats.UserInfo(user, password(user)), nats.CustomInboxPrefix(queue.InboxPrefix(user)), nats.ErrorHandler(ec.handler))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, ec
}

func runCtl(t testing.TB, url string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := ctl.NewRoot(&out, &errOut)
	root.SetArgs(append([]string{"--nats-url", url, "--nats-user", ctlUser, "--nats-password", password(ctlUser), "--timeout", "20s"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

func streamMsgs(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestNATSQuickstartAuth runs a nats-server with the quickstart's users and
// permissions: nobody gets in without a password, the ingress and workers can
// do their jobs and nothing more, and the whole pipeline (accept, defer,
// deliver, hold and release with mailfwdctl) works with the three users.
func TestNATSQuickstartAuth(t *testing.T) {
	url, slog := startQuickstartNATS(t)
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 2*time.Second)
	}

	t.Run("anonymous and wrong passwords are refused", func(t *testing.T) {
		for _, o := range []nats.Option{nil, nats.UserInfo(ingressUser, "wrong"), nats.UserInfo("nobody", "x")} {
			opts := []nats.Option{nats.MaxReconnects(0)}
			if o != nil {
				opts = append(opts, o)
			}
			nc, err := nats.Connect(url, opts...)
			if err == nil {
				nc.Close()
				t.Fatal("connected without valid credentials")
			}
			if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Fatalf("want an authorization error, got %v", err)
			}
		}
		// mailfwdctl without credentials fails with a clear error.
		var out, errOut bytes.Buffer
		root := ctl.NewRoot(&out, &errOut)
		root.SetArgs([]string{"--nats-url", url, "--timeout", "5s", "queue", "stats"})
		if err := root.ExecuteContext(context.Background()); err == nil {
			t.Fatalf("mailfwdctl queue stats without credentials succeeded: %s", out.String())
		}
	})

	if out, err := runCtl(t, url, "bootstrap"); err != nil {
		t.Fatalf("mailfwdctl bootstrap as %s: %v\n%s", ctlUser, err, out)
	}
	_, adminJS, _ := connectAs(t, url, ctlUser)
	// One message in the stream that nobody may take away.
	{
		ctx, cancel := short()
		if _, err := adminJS.Publish(ctx, "mail.held.victim_test.Q1", []byte("{}")); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	before := streamMsgs(t, adminJS)

	t.Run("ingress may only queue", func(t *testing.T) {
		nc, js, ec := connectAs(t, url, ingressUser)
		ctx, cancel := short()
		defer cancel()
		if _, err := js.Publish(ctx, "mail.deferred.victim_test.Q2", []byte("{}")); err == nil {
			t.Error("ingress published to mail.deferred")
		}
		ctx2, cancel2 := short()
		defer cancel2()
		if _, err := js.Publish(ctx2, "mail.held.victim_test.Q3", []byte("{}")); err == nil {
			t.Error("ingress published to mail.held")
		}
		st, err := js.Stream(context.Background(), "MAIL")
		if err != nil {
			t.Fatalf("ingress cannot see stream info: %v", err)
		}
		ctx3, cancel3 := short()
		defer cancel3()
		if err := st.Purge(ctx3); err == nil {
			t.Error("ingress purged the stream")
		}
		ctx4, cancel4 := short()
		defer cancel4()
		if err := js.DeleteStream(ctx4, "MAIL"); err == nil {
			t.Error("ingress deleted the stream")
		}
		ctx5, cancel5 := short()
		defer cancel5()
		if c, err := js.Consumer(ctx5, "MAIL", "workers"); err == nil {
			if _, err := c.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
				t.Error("ingress fetched queued mail")
			}
		}
		// Reading other users' replies (fetched mail, API answers), or mail subjects directly.
		for _, subj := range []string{"_INBOX.>", queue.InboxPrefix(workerUser) + ".>", "mail.>", "$JS.ACK.>"} {
			if _, err := nc.SubscribeSync(subj); err != nil {
				t.Fatal(err)
			}
		}
		_ = nc.Flush()
		waitFor(t, "permission violations", 5*time.Second, func() bool {
			return ec.has("_INBOX.>") && ec.has(queue.InboxPrefix(workerUser)) && ec.has("mail.>") && ec.has("$JS.ACK.>")
		})
		if !ec.has("mail.deferred") || !ec.has("PURGE") {
			t.Errorf("expected permission violations for mail.deferred and the purge, got %v", ec.errs)
		}
		// The server's log shows them too (what the pipeline check below relies on).
		if v := slog.violations(ingressUser, 0); len(v) < 4 {
			t.Errorf("server logged %d violations for %s: %q", len(v), ingressUser, v)
		}
	})

	t.Run("workers cannot purge or delete", func(t *testing.T) {
		nc, js, ec := connectAs(t, url, workerUser)
		st, err := js.Stream(context.Background(), "MAIL")
		if err != nil {
			t.Fatalf("worker cannot see stream info: %v", err)
		}
		ctx, cancel := short()
		defer cancel()
		if err := st.Purge(ctx); err == nil {
			t.Error("worker purged the stream")
		}
		ctx2, cancel2 := short()
		defer cancel2()
		if err := js.DeleteConsumer(ctx2, "MAIL", "workers"); err == nil {
			t.Error("worker deleted the consumer")
		}
		if _, err := nc.SubscribeSync("_INBOX.>"); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		waitFor(t, "permission violation", 5*time.Second, func() bool { return ec.has("_INBOX.>") })
	})
	t.Run("workers write only the shaping keys they use", func(t *testing.T) {
		_, js, _ := connectAs(t, url, workerUser)
		ctx, cancel := short()
		defer cancel()
		kv, err := js.KeyValue(ctx, shaping.BucketName)
		if err != nil {
			t.Fatalf("worker cannot open the shaping bucket: %v", err)
		}
		if _, err := kv.Create(ctx, "l.d.dest.test.0", []byte("w"), jetstream.KeyTTL(6*time.Second)); err != nil {
			t.Errorf("worker cannot take a slot lease: %v", err)
		}
		if _, err := kv.Get(ctx, "l.d.dest.test.0"); err != nil {
			t.Errorf("worker cannot read a slot lease: %v", err)
		}
		if _, err := kv.Create(ctx, "c.d.dest.test", []byte("1"), jetstream.KeyTTL(6*time.Second)); err != nil {
			t.Errorf("worker cannot step a new-connection pace: %v", err)
		}
		ctx2, cancel2 := short()
		defer cancel2()
		if _, err := kv.Put(ctx2, "x.anything", []byte("w")); err == nil {
			t.Error("worker wrote a shaping key outside l.*, r.*, c.*, s.*")
		}
	})
	if got := streamMsgs(t, adminJS); got != before {
		t.Fatalf("stream MAIL has %d messages after the attacks, had %d", got, before)
	}

	t.Run("the ingress writes only the sender quota keys", func(t *testing.T) {
		_, js, _ := connectAs(t, url, ingressUser)
		ctx, cancel := short()
		defer cancel()
		kv, err := js.KeyValue(ctx, shaping.QuotaBucketName)
		if err != nil {
			t.Fatalf("ingress cannot open the quota bucket: %v", err)
		}
		if _, err := kv.Create(ctx, "d.sender.test", []byte("1"), jetstream.KeyTTL(6*time.Second)); err != nil {
			t.Errorf("ingress cannot count a sender domain: %v", err)
		}
		if _, err := kv.Get(ctx, "d.sender.test"); err != nil {
			t.Errorf("ingress cannot read a sender's count: %v", err)
		}
		ctx2, cancel2 := short()
		defer cancel2()
		if _, err := kv.Put(ctx2, "x.anything", []byte("w")); err == nil {
			t.Error("ingress wrote a quota key outside d.*, u.*")
		}
		ctx3, cancel3 := short()
		defer cancel3()
		if sk, err := js.KeyValue(ctx3, shaping.BucketName); err == nil {
			if _, err := sk.Put(ctx3, "s.d.victim.test", []byte("x")); err == nil {
				t.Error("ingress wrote the shaping state")
			}
		}
	})

	t.Run("control requests", func(t *testing.T) {
		for _, user := range []string{ingressUser, workerUser} {
			nc, _, _ := connectAs(t, url, user)
			sub, err := nc.Subscribe("mailfwd.control.ping", func(m *nats.Msg) { _ = m.Respond([]byte("pong " + user)) })
			if err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			ctlNC, _, _ := connectAs(t, url, ctlUser)
			resp, err := ctlNC.Request("mailfwd.control.ping", nil, 2*time.Second)
			if err != nil || string(resp.Data) != "pong "+user {
				t.Fatalf("control request answered by %s: %v %v", user, resp, err)
			}
			_ = sub.Unsubscribe()
		}
	})

	t.Run("pipeline with the three users", func(t *testing.T) {
		mark := slog.mark()
		testPipelineWithUsers(t, url)
		for _, u := range []string{ingressUser, workerUser, ctlUser} {
			if v := slog.violations(u, mark); len(v) > 0 {
				t.Errorf("the pipeline hit permission violations as %s:\n%s", u, strings.Join(v, "\n"))
			}
		}
	})
}

func testPipelineWithUsers(t *testing.T, url string) {
	e := &env{t: t, logs: &syncBuffer{}, done: make(chan error, 2)}
	e.dns = testenv.StartDNS(t, zones)
	// The first attempt for defer@gamma.test gets a 451: the worker defers it.
	e.startSinks(func(rcpt string, seen int) *smtp.SMTPError {
		if strings.HasPrefix(rcpt, "defer@") && seen == 1 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}, nil)
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tp := noop.NewTracerProvider()
	blobURL := "file://" + filepath.Join(t.TempDir(), "bodies")
	common := func(user string) daemon.Common {
		return daemon.Common{NATSURL: url, NATSUser: user, NATSPassword: config.Secret(password(user)),
			BlobStore: blobURL, Bootstrap: false, AckWait: 10 * time.Second, Replicas: 1}
	}
	var in daemon.Ingress
	in.Register(flag.NewFlagSet("t", flag.ContinueOnError))
	in.Common = common(ingressUser)
	in.Listen = "127.0.0.1:0"
	in.SMTP.Hostname = "mx.mailfwd.test"
	in.RelayNetworks = config.StringList{"127.0.0.1/32"}
	in.ShutdownTimeout = 5 * time.Second
	in.SenderQuota = "rate=100/s,hourly=10000" // counted in MAIL_QUOTAS through the ingress user's grants
	var wk daemon.Worker
	wk.Register(flag.NewFlagSet("t", flag.ContinueOnError))
	wk.Common = common(workerUser)
	wk.DNSServers = config.StringList{e.dns.Addr}
	wk.SMTPPort = uint(e.port)
	wk.Delivery.HeloName = "worker.mailfwd.test"
	wk.Delivery.ConnectTimeout = 2 * time.Second
	wk.Engine.RetryFirst = 300 * time.Millisecond
	wk.Engine.RetryMax = time.Second
	wk.Engine.DrainTimeout = 5 * time.Second

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	go func() { e.done <- daemon.RunIngress(ctx, in, log, tp, func(a string) { ready <- a }) }()
	go func() { e.done <- daemon.RunWorker(ctx, wk, log, tp) }()
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
	select {
	case e.smtp = <-ready:
	case err := <-e.done:
		t.Fatalf("ingress or worker stopped at start: %v\n%s", err, e.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("ingress not listening after 60s\n%s", e.logs.String())
	}
	waitFor(t, "worker started", 60*time.Second, func() bool { return strings.Contains(e.logs.String(), "worker started") })

	// Two domains (shared body refs in KV), one recipient deferred once.
	body := message("auth", "<auth-1@client.test>", "hello through the least-privilege users\r\n")
	r := send(e.smtp, "", "a@client.test", []string{"x@alpha.test", "defer@gamma.test"}, body, nil)
	if r.Err != nil || r.FinalCode != 250 {
		t.Fatalf("send: %+v", r)
	}
	if l := e.logs.String(); strings.Contains(l, "rate state unreachable") || strings.Contains(l, "quota state unavailable") {
		t.Errorf("the ingress user could not count the sender quota in MAIL_QUOTAS:\n%s", l)
	}
	sinkAlpha, sinkGamma := e.sinks["127.0.0.2"], e.sinks["127.0.0.4"]
	waitFor(t, "both recipients delivered", 60*time.Second, func() bool {
		return sinkAlpha.RecipientsDelivered()["x@alpha.test"] == 1 && sinkGamma.RecipientsDelivered()["defer@gamma.test"] == 1
	})
	for _, m := range append(sinkAlpha.Messages(), sinkGamma.Messages()...) {
		if !bytes.HasSuffix(m.Data, body) {
			t.Fatalf("delivered message does not end with the body sent:\n%s", m.Data)
		}
	}

	// Operators hold and release a domain with mailfwdctl (the admin user);
	// workers follow the hold through their watch of MAIL_HOLDS.
	if out, err := runCtl(t, url, "queue", "hold", "--domain", "alpha.test"); err != nil {
		t.Fatalf("queue hold: %v\n%s", err, out)
	}
	waitFor(t, "worker sees the hold", 30*time.Second, func() bool { return strings.Contains(e.logs.String(), "domains on hold") })
	r = send(e.smtp, "", "a@client.test", []string{"held@alpha.test"}, message("held", "<auth-2@client.test>", "held\r\n"), nil)
	if r.Err != nil || r.FinalCode != 250 {
		t.Fatalf("send: %+v", r)
	}
	waitFor(t, "the message is held", 30*time.Second, func() bool {
		out, err := runCtl(t, url, "queue", "list")
		return err == nil && strings.Contains(out, r.QueueID) && strings.Contains(strings.ToLower(out), "held")
	})
	if n := sinkAlpha.RecipientsDelivered()["held@alpha.test"]; n != 0 {
		t.Fatalf("held mail delivered %d times", n)
	}
	if out, err := runCtl(t, url, "queue", "release", "--domain", "alpha.test"); err != nil {
		t.Fatalf("queue release: %v\n%s", err, out)
	}
	waitFor(t, "released mail delivered", 60*time.Second, func() bool {
		return sinkAlpha.RecipientsDelivered()["held@alpha.test"] == 1
	})
	// mailfwdctl version reaches both pods over the control subject: they
	// answer as their own users.
	out, err := runCtl(t, url, "version", "-o", "json", "--wait", "1s")
	if err != nil || !strings.Contains(out, `"mailfwd-ingress"`) || !strings.Contains(out, `"mailfwd-worker"`) {
		t.Fatalf("mailfwdctl version does not list both pods: %v\n%s", err, out)
	}
	// Ingress and worker may ask the workers which envelope forms they read
	// (queue.WatchEnvelopeReaders), so inline bodies go raw.
	waitFor(t, "ingress and worker see that every worker reads raw inline bodies", 30*time.Second, func() bool {
		return strings.Count(e.logs.String(), "inline bodies are written as raw bytes") >= 2
	})
	// The worker computes the fleet's queue metrics under its own grants
	// (the lease in MAIL_REFS, the stream's subject counts).
	waitFor(t, "the worker takes the queue-metrics lease", 30*time.Second, func() bool {
		return strings.Contains(e.logs.String(), `msg="queue metrics: lease changed" leader=true`)
	})
	if l := e.logs.String(); strings.Contains(l, `msg="queue metrics: stats"`) || strings.Contains(l, `msg="queue metrics: lease"`) {
		t.Fatalf("the queue metrics failed under the worker's grants:\n%s", l)
	}
	if strings.Contains(strings.ToLower(e.logs.String()), "permissions violation") {
		t.Fatalf("a daemon hit a permissions violation:\n%s", e.logs.String())
	}
}
