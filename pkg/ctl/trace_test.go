package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func traceCtl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := ctl.Execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestTraceCommands(t *testing.T) {
	n := testenv.StartNATS(t)
	nats := []string{"--nats-url", n.URL()}
	if code, _, e := traceCtl(t, append(nats, "bootstrap")...); code != 0 {
		t.Fatalf("bootstrap: %d %s", code, e)
	}
	// A daemon's watcher sees what the command stores.
	q, err := queue.Connect(context.Background(), queue.Config{URL: n.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	b, err := q.TraceBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w := smtptrace.NewWatcher(b, slog.New(slog.DiscardHandler), "ingress", smtptrace.DefaultLimits())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	code, out, e := traceCtl(t, append(nats, "trace", "--client", "10.1.2.3", "--for", "10m", "--id", "peer1", "-o", "json")...)
	if code != 0 {
		t.Fatalf("trace: exit %d: %s", code, e)
	}
	var started struct {
		smtptrace.Setting
		Remaining string `json:"remaining"`
	}
	if err := json.Unmarshal([]byte(out), &started); err != nil || started.ID != "peer1" || started.Client != "10.1.2.3" ||
		started.Until.Sub(started.Created) != 10*time.Minute {
		t.Fatalf("trace -o json: %q (%v)", out, err)
	}
	code, out, _ = traceCtl(t, append(nats, "trace", "--destination", "mx.example.com", "--with-bodies", "--id", "mx")...)
	if code != 0 || !strings.Contains(out, "tracing destination mx.example.com") || !strings.Contains(out, "with message bodies") ||
		!strings.Contains(out, "recorded: new and pooled connections, refused and failed connects") || !strings.Contains(out, "| mailfwdctl trace show mx") {
		t.Fatalf("trace --destination: %d %q", code, out)
	}
	if code, _, e := traceCtl(t, append(nats, "trace", "--destination", "mx.example.com", "--id", "mx")...); code != ctl.ExitRejected || !strings.Contains(e, "running") {
		t.Errorf("same id again: exit %d %q", code, e)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(w.Settings()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("watcher has %+v, want both traces", w.Settings())
		}
		time.Sleep(20 * time.Millisecond)
	}

	code, out, _ = traceCtl(t, append(nats, "trace", "list", "-o", "json")...)
	var list []smtptrace.Setting
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0].ID != "peer1" || !list[1].WithBodies {
		t.Fatalf("trace list -o json: %d %q", code, out)
	}
	code, out, _ = traceCtl(t, append(nats, "trace", "list")...)
	if code != 0 || !strings.Contains(out, "client 10.1.2.3") || !strings.Contains(out, "destination mx.example.com") {
		t.Errorf("trace list: %d %q", code, out)
	}

	if code, out, _ := traceCtl(t, append(nats, "trace", "stop", "peer1")...); code != 0 || !strings.Contains(out, "stopped peer1") {
		t.Errorf("trace stop: %d %q", code, out)
	}
	if code, _, _ := traceCtl(t, append(nats, "trace", "stop", "peer1")...); code != ctl.ExitNotFound {
		t.Errorf("stopping it again: exit %d, want %d", code, ctl.ExitNotFound)
	}
	code, out, _ = traceCtl(t, append(nats, "trace", "stop", "--all", "-o", "json")...)
	if code != 0 || !strings.Contains(out, `"id": "mx"`) {
		t.Errorf("trace stop --all: %d %q", code, out)
	}
	for len(w.Settings()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("watcher still has %+v after stop", w.Settings())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTraceUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"trace"}, // neither --client nor --destination
		{"trace", "--client", "10.0.0.0/4"},
		{"trace", "--client", "not-an-ip"},
		{"trace", "--client", "10.1.2.3", "--destination", "mx.example.com"},
		{"trace", "--client", "10.1.2.3", "--for", "48h"},
		{"trace", "--client", "10.1.2.3", "--for", "-1m"},
		{"trace", "--destination", "bad host!"},
		{"trace", "--destination", ".com"},
		{"trace", "--client", "10.1.2.3", "--id", "a b"},
		{"trace", "stop"},
		{"trace", "list", "-o", "xml"},
	} {
		// No NATS is needed to refuse these: --nats-url points nowhere.
		code, _, e := traceCtl(t, append([]string{"--nats-url", "nats://127.0.0.1:1", "--timeout", "2s"}, args...)...)
		if code != ctl.ExitUsage || e == "" {
			t.Errorf("%q: exit %d %q, want %d with a message", args, code, e, ctl.ExitUsage)
		}
	}
}
