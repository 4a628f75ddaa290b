package daemon

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/mailfwd/mailfwd/pkg/config"
)

func runIngressMain(t *testing.T, args ...string) (int, Ingress, string) {
	t.Helper()
	var o Ingress
	var stderr bytes.Buffer
	code := Main("mailfwd-ingress", args, &stderr,
		func(fs *flag.FlagSet) *config.Logging { o.Register(fs); return &o.Logging },
		func(context.Context, *slog.Logger, trace.TracerProvider) error { return nil })
	return code, o, stderr.String()
}

// A daemon reads one config file (--config, the flags' names as keys),
// refuses an unknown key with its line, and groups --help by what the flags
// configure with "--" names (issue 21: flags and env only; one flat list).
func TestDaemonConfigFileAndHelp(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "ingress.conf")
	if err := os.WriteFile(conf, []byte("# one machine\nlisten = 127.0.0.1:2600\nhostname = mail.example.test\nrelay-networks = 10.0.0.0/8\nread-timeout = 1d\nmax-abandoned-transactions = 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILFWD_LISTEN", "")
	code, o, stderr := runIngressMain(t, "--config", conf, "--banner", "hi")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if o.SMTP.MaxAbandonedTransactions != 7 {
		t.Errorf("from --config: max-abandoned-transactions %d, want 7", o.SMTP.MaxAbandonedTransactions)
	}
	if o.Listen != "127.0.0.1:2600" || o.SMTP.Hostname != "mail.example.test" || o.SMTP.ReadTimeout != 24*time.Hour || o.SMTP.Banner != "hi" {
		t.Errorf("from --config: listen %q hostname %q read-timeout %v banner %q", o.Listen, o.SMTP.Hostname, o.SMTP.ReadTimeout, o.SMTP.Banner)
	}

	if err := os.WriteFile(conf, []byte("listen = :2600\n\nmax-sesions = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runIngressMain(t, "--config", conf)
	if code != 2 || !strings.Contains(stderr, conf+": line 3:") || !strings.Contains(stderr, "max-sesions") {
		t.Errorf("unknown key: exit %d, stderr %q; want 2 naming line 3", code, stderr)
	}

	code, _, help := runIngressMain(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, want := range []string{"--config FILE", "Queue (NATS JetStream):", "SMTP listeners (ingress):", "  --listen string", "  --read-timeout duration"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q:\n%s", want, help)
		}
	}
	if m := regexp.MustCompile(`(?m)^\s+-[a-z]`).FindString(help); m != "" {
		t.Errorf("--help shows a single-dash flag %q", m)
	}
}

// The one-machine example configurations in deploy/systemd parse with the
// daemons' own flags: no key the daemon does not know.
func TestSystemdExampleConfigs(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		register   func(*flag.FlagSet) *config.Logging
	}{
		{"mailfwd-ingress", "ingress.conf", func(fs *flag.FlagSet) *config.Logging { var o Ingress; o.Register(fs); return &o.Logging }},
		{"mailfwd-worker", "worker.conf", func(fs *flag.FlagSet) *config.Logging { var o Worker; o.Register(fs); return &o.Logging }},
	} {
		var stderr bytes.Buffer
		ran := false
		code := Main(tc.name, []string{"--config", filepath.Join("..", "..", "deploy", "systemd", tc.file)}, &stderr, tc.register,
			func(context.Context, *slog.Logger, trace.TracerProvider) error { ran = true; return nil })
		if code != 0 || !ran {
			t.Errorf("%s --config deploy/systemd/%s: exit %d: %s", tc.name, tc.file, code, stderr.String())
		}
	}
}

// The user docs state the defaults the daemons have, and read as docs, not
// status notes (issue 21: docs/kubernetes.md said the policy is polled every
// 10 s; smarthost.md and trace.md opened with "Status: wired").
func TestDocsMatchDefaults(t *testing.T) {
	var o Ingress
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.Register(fs)
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`polls the directory every (\d+) ?s`).FindSubmatch(b)
	if m == nil || string(m[1])+"s" != fs.Lookup("policy-interval").DefValue {
		t.Errorf("docs/kubernetes.md: policy poll interval %q, the daemons' --policy-interval default is %s", m, fs.Lookup("policy-interval").DefValue)
	}
	docs, _ := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	for _, d := range docs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		if loc := regexp.MustCompile(`(?mi)^>?\s*\**status:|as first drafted`).Find(b); loc != nil {
			t.Errorf("%s reads as a status note: %q", d, loc)
		}
	}
}
