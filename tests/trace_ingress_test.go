package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
)

// Issue 13, ingress side: a running `mailfwdctl trace --client` makes the
// ingress log the dialog of matching sessions, including what follows
// STARTTLS (go-smtp patch 8 + smtptrace.Continue) and over implicit TLS,
// with AUTH credentials and the body redacted.
func TestIngressTraceInsideTLS(t *testing.T) {
	s := newSubmissionEnv(t, false, 5, func(in *daemon.Ingress) {
		// The daemons are not started yet: make the bucket and start the trace.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		q, err := queue.Connect(ctx, queue.Config{URL: in.NATSURL, AckWait: in.AckWait, Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if err := q.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
		b, err := q.TraceBucket(ctx)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		if err := smtptrace.NewStore(b).Start(ctx, smtptrace.Setting{ID: "lab", Client: "127.0.0.1", Created: now, Until: now.Add(10 * time.Minute)}, 16); err != nil {
			t.Fatal(err)
		}
	})
	auth := []string{"--auth", "PLAIN", "--auth-user", subUser, "--auth-password", subPass}
	// The watcher loads the setting in the background: the first sessions
	// may run before it is in force.
	waitFor(t, "a traced session", 30*time.Second, func() bool {
		s.swaks(t, "submission", append([]string{"--tls", "--from", "a@app.test", "--to", "u@alpha.test", "--header", "Subject: traced"}, auth...)...)
		return strings.Contains(s.logs.String(), `line="MAIL FROM:<a@app.test>`)
	})
	logs := s.logs.String()
	for _, want := range []string{
		`msg="smtp trace" component=ingress trace=lab`,
		`from=client line=STARTTLS`,
		`msg="smtp trace: TLS established"`,
		`from=client line="MAIL FROM:<a@app.test>`, // inside TLS
		`from=client line="AUTH PLAIN [redacted]"`,
		`from=server line="250 2.0.0 Ok: queued as `,
	} {
		if !strings.Contains(logs, want) {
			t.Fatalf("trace lacks %q:\n%s", want, traceLines(logs))
		}
	}
	if strings.Contains(logs, subPass) || strings.Contains(logs, "AGFwcDEA") {
		t.Fatalf("the trace shows the credentials:\n%s", traceLines(logs))
	}
	if strings.Contains(logs, `line="This is a test mailing"`) {
		t.Fatalf("the trace shows the body without --with-bodies:\n%s", traceLines(logs))
	}

	// Implicit TLS: the dialog is recorded from the greeting on.
	before := strings.Count(logs, `line="MAIL FROM:<alerts@ops.test>`)
	s.swaks(t, "smtps", append([]string{"--tlsc", "--from", "alerts@ops.test", "--to", "u@alpha.test"}, auth...)...)
	if strings.Count(s.logs.String(), `line="MAIL FROM:<alerts@ops.test>`) != before+1 {
		t.Fatalf("implicit-TLS session not traced:\n%s", traceLines(s.logs.String()))
	}
	if n := strings.Count(s.logs.String(), `msg="smtp trace: TLS established"`); n != 2 {
		t.Fatalf("%d TLS notes, want one per session:\n%s", n, traceLines(s.logs.String()))
	}
}

func traceLines(logs string) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "smtp trace") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
