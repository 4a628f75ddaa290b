package smtptrace_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// logBuf is a log stream the tests read back: JSON records, one a line.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// records parses the stream.
func (l *logBuf) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// dialog returns the dialog lines as "client: …" / "server: …".
func (l *logBuf) dialog(t *testing.T) []string {
	var out []string
	for _, r := range l.records(t) {
		if r["msg"] == "smtp trace" {
			out = append(out, r["from"].(string)+": "+r["line"].(string))
		}
	}
	return out
}

// env is a bootstrapped embedded JetStream with the trace bucket.
type env struct {
	nats  *testenv.NATS
	q     *queue.Queue
	b     smtptrace.Bucket
	store *smtptrace.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx := context.Background()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: "smtptrace-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := q.TraceBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &env{nats: n, q: q, b: b, store: smtptrace.NewStore(b)}
}

// watcher starts a Watcher over the bucket, logging to the returned buffer.
func (e *env) watcher(t *testing.T, component string, l smtptrace.Limits) (*smtptrace.Watcher, *logBuf) {
	t.Helper()
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	lb := &logBuf{}
	w := smtptrace.NewWatcher(e.b, slog.New(slog.NewJSONHandler(lb, nil)), component, l)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, lb
}

func (e *env) start(t *testing.T, s smtptrace.Setting, d time.Duration) smtptrace.Setting {
	t.Helper()
	s.Created = time.Now().UTC()
	s.Until = s.Created.Add(d)
	if err := e.store.Start(context.Background(), s, 16); err != nil {
		t.Fatal(err)
	}
	return s
}

// eventually waits (bounded) for cond; the bound is a failure deadline,
// not a timing goal.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasTrace(w *smtptrace.Watcher, id string) bool {
	for _, s := range w.Settings() {
		if s.ID == id {
			return true
		}
	}
	return false
}

// pipeConn is a loopback TCP pair.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-ch
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// --- a go-smtp server that accepts AUTH PLAIN and LOGIN ---

type backend struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (b *backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{b: b}, nil }

type session struct{ b *backend }

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user == "alice" && pass == secretPass {
			return nil
		}
		return errors.New("bad credentials")
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, u, p string) error { return check(u, p) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(string, *smtp.MailOptions) error { return nil }
func (s *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	s.b.mu.Lock()
	s.b.bodies = append(s.b.bodies, b)
	s.b.mu.Unlock()
	return err
}
func (s *session) Reset()        {}
func (s *session) Logout() error { return nil }

// loginServer is the server side of AUTH LOGIN (not in go-sasl).
type loginServer struct {
	check func(u, p string) error
	step  int
	user  string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	l.step++
	switch l.step {
	case 1:
		if len(resp) > 0 { // initial response: the user name
			l.user = string(resp)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 2:
		l.user = string(resp)
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

const secretPass = "s3cr3t-Pa55w0rd"

// tracingListener wraps each accepted conn as the ingress will.
type tracingListener struct {
	net.Listener
	w *smtptrace.Watcher
}

func (l tracingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.w.Wrap(c, smtptrace.Ingress, c.RemoteAddr().String(), ""), nil
}

// startSMTP runs a go-smtp server on loopback whose conns go through w.
func startSMTP(t *testing.T, w *smtptrace.Watcher, withTLS bool) (string, *backend) {
	t.Helper()
	be := &backend{}
	srv := smtp.NewServer(be)
	srv.Domain = "mx.test"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	if withTLS {
		srv.TLSConfig = w.TLSConfig(testenv.TLSConfig(t))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(tracingListener{Listener: ln, w: w}) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), be
}
