package ctl_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// tracedDeliveries runs a worker's delivery client under a trace of
// .dest.test, logging with h: a connect refused, then two messages over
// one (pooled) connection to a sink, the trace started between them.
func tracedDeliveries(t *testing.T, h func(io.Writer) slog.Handler) string {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx := context.Background()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL()})
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
	logs := &lockedBuf{}
	w := smtptrace.NewWatcher(b, slog.New(h(logs)), "worker", smtptrace.DefaultLimits())
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	t.Cleanup(func() { cancel(); <-done })

	srv := sink.New(sink.Config{Hostname: "sink.dest.test"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := closed.Addr().String()
	closed.Close()

	c, err := delivery.New(delivery.Config{HeloName: "worker.test", IdleTimeout: 10 * time.Minute,
		Trace: func() *smtptrace.Watcher { return w }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	deliver := func(hop delivery.Hop, from string) {
		dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
		defer dcancel()
		c.Deliver(dctx, []delivery.Hop{hop}, &delivery.Message{QueueID: "q", From: from,
			Recipients: []string{"u@dest.test"}, Body: []byte("Subject: s\r\n\r\nbody\r\n")})
	}
	mx := delivery.Hop{Name: "mx.dest.test", Addr: netip.MustParseAddrPort(ln.Addr().String())}
	deliver(mx, "first@src.test") // untraced: the trace starts after

	now := time.Now()
	if err := smtptrace.NewStore(b).Start(ctx, smtptrace.Setting{ID: "dt", Destination: ".dest.test", Created: now, Until: now.Add(time.Minute)}, 16); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(w.Settings()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the watcher does not see the trace")
		}
		time.Sleep(20 * time.Millisecond)
	}
	deliver(delivery.Hop{Name: "mx0.dest.test", Addr: netip.MustParseAddrPort(refusing)}, "a@src.test")
	deliver(mx, "pooled@src.test")
	_ = c.Close()
	// As kubectl logs --prefix prints it.
	var out strings.Builder
	for _, l := range strings.SplitAfter(logs.String(), "\n") {
		if l != "" {
			out.WriteString("[pod/mailfwd-worker-7d9/worker] " + l)
		}
	}
	return out.String() + "[pod/mailfwd-ingress-1/ingress] time=2026-01-01T00:00:00Z level=INFO msg=\"smtp trace\" trace=other line=X\n"
}

// lockedBuf is a log buffer the watcher may write from several goroutines.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTraceShowPrintsTheRecordsAsATranscript(t *testing.T) {
	for name, h := range map[string]func(io.Writer) slog.Handler{
		"text": func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
		"json": func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			logs := tracedDeliveries(t, h)
			var out, errOut bytes.Buffer
			if code := ctl.ExecuteIO(context.Background(), []string{"trace", "show", "dt"}, strings.NewReader(logs), &out, &errOut); code != 0 {
				t.Fatalf("trace show: exit %d: %s", code, errOut.String())
			}
			got := out.String()
			for _, want := range []string{
				"mailfwd-worker-7d9  -  CONNECT FAILED to mx0.dest.test 127.0.0.1:",
				"connection refused",
				"mailfwd-worker-7d9  #1  session start, delivery mx.dest.test 127.0.0.1:",
				"over a pooled connection (earlier transactions on it, not recorded: 1)",
				"#1  reusing the pooled connection: transaction 2",
				"#1  C: MAIL FROM:<pooled@src.test>",
				"#1  S: 250 ",
				"#1  session end: ",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("no %q in:\n%s", want, got)
				}
			}
			if strings.Contains(got, "first@src.test") || strings.Contains(got, "line=X") || strings.Contains(got, "  X\n") {
				t.Errorf("shows records of no trace dt:\n%s", got)
			}
			for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
				if f := strings.Fields(l); len(f) < 4 || len(f[0]) != len("15:04:05.000") {
					t.Errorf("line without time, source, session and text: %q", l)
				}
			}
		})
	}
}

func TestTraceShowBoundsAndEscapes(t *testing.T) {
	in := strings.Join([]string{
		// A peer's line with a terminal escape and a NUL, as slog quotes it.
		`time=2026-01-01T10:00:00.5Z level=INFO msg="smtp trace" component=worker trace=t session=s1 side=delivery from=server line="220 \x1b]0;owned\a hi\x00"`,
		`{"time":"2026-01-01T10:00:01Z","level":"INFO","msg":"smtp trace","component":"ingress","trace":"t","session":"s2","from":"client","line":"EHLO x\u001b[2J"}`,
		"time=2026-01-01T10:00:02Z msg=\"smtp trace\" trace=t session=s1 from=client line=" + strings.Repeat("A", 300<<10), // too long: skipped
		`time=2026-01-01T10:00:03Z msg="smtp trace" trace=t line="unterminated`,                                            // not a record
		`time=2026-01-01T10:00:04Z msg="smtp trace" component=worker trace=t session=s1 from=client line=QUIT`,
		`garbage {"not json`,
	}, "\n")
	var out, errOut bytes.Buffer
	if code := ctl.ExecuteIO(context.Background(), []string{"trace", "show", "t"}, strings.NewReader(in), &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	got := out.String()
	if strings.ContainsAny(got, "\x1b\x00\a") {
		t.Errorf("control characters reach the terminal: %q", got)
	}
	for _, want := range []string{`S: 220 \x1b]0;owned\a hi\x00`, `C: EHLO x\x1b[2J`, "10:00:04.000  worker  #1  C: QUIT"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n"); n != 3 {
		t.Errorf("%d lines, want 3:\n%s", n, got)
	}
	if !strings.Contains(errOut.String(), "1 input lines longer than") {
		t.Errorf("the skipped line is not reported: %q", errOut.String())
	}
	if code := ctl.ExecuteIO(context.Background(), []string{"trace", "show", "nosuch"}, strings.NewReader(in), &out, &errOut); code != ctl.ExitNotFound {
		t.Errorf("a trace with no records: exit %d, want %d", code, ctl.ExitNotFound)
	}
}
