package control

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestServeAndGather: two pods answer one request; a broken responder
// shows up as an entry with an error, not as a crash or a lost pod.
func TestServeAndGather(t *testing.T) {
	n := testenv.StartNATS(t)
	nc := connect(t, n.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// No pod: "no responders" ends the wait at once with nothing.
	start := time.Now()
	got, err := Gather(ctx, nc, VersionSubject, 10*time.Second, 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("no pods: %v %v", got, err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("waited the whole window although nobody subscribes")
	}

	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	log := slog.New(slog.DiscardHandler)
	for _, c := range []string{"ingress", "worker"} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = Serve(sctx, Config{URL: n.URL(), Component: c, Logger: log}) }()
	}
	// A responder sending garbage, one sending too much.
	bad, _ := nc.Subscribe(Prefix+".>", func(m *nats.Msg) { _ = m.Respond([]byte("{not json")) })
	big, _ := nc.Subscribe(Prefix+".>", func(m *nats.Msg) { _ = m.Respond(make([]byte, maxReply+1)) })
	defer bad.Unsubscribe()
	defer big.Unsubscribe()

	var pods []Build
	for try := 0; try < 50; try++ {
		pods, err = Gather(ctx, nc, VersionSubject, 300*time.Millisecond, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pods) >= 4 {
			break
		}
	}
	comps := map[string]Build{}
	var errs []string
	for _, p := range pods {
		if p.Error != "" {
			errs = append(errs, p.Error)
			continue
		}
		comps[p.Component] = p
	}
	for _, c := range []string{"mailfwd-ingress", "mailfwd-worker"} {
		b, ok := comps[c]
		if !ok || b.Version == "" || b.GoVersion == "" || b.Started.IsZero() || b.Host == "" {
			t.Errorf("%s: %+v", c, b)
		}
	}
	if len(errs) != 2 || !strings.Contains(strings.Join(errs, ";"), "undecodable") || !strings.Contains(strings.Join(errs, ";"), "ignored") {
		t.Errorf("broken responders: %q", errs)
	}

	// An unknown command is answered with an error, by each pod.
	other, err := Gather(ctx, nc, Prefix+".frobnicate", 300*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	unknown := 0
	for _, b := range other {
		if strings.Contains(b.Error, "unknown control command") {
			unknown++
		}
	}
	if unknown != 2 {
		t.Errorf("unknown command: %+v", other)
	}
	// --max-replies: no more than asked for.
	if few, err := Gather(ctx, nc, VersionSubject, 300*time.Millisecond, 1); err != nil || len(few) != 1 {
		t.Errorf("max 1 reply: %d, %v", len(few), err)
	}
	stop()
	wg.Wait()
}

func TestLocalVersionFromLinker(t *testing.T) {
	old := Version
	defer func() { Version = old }()
	Version = "v9.9.9"
	if b := Local("x"); b.Version != "v9.9.9" || b.Component != "x" || b.Platform == "" {
		t.Errorf("%+v", b)
	}
	Version = ""
	if b := Local("x"); b.Version == "" {
		t.Errorf("no version without -ldflags: %+v", b)
	}
}
