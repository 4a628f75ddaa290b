package config

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEnvName(t *testing.T) {
	tests := map[string]string{
		"nats-url":   "MAILFWD_NATS_URL",
		"log-level":  "MAILFWD_LOG_LEVEL",
		"listen":     "MAILFWD_LISTEN",
		"dns-server": "MAILFWD_DNS_SERVER",
		"Mixed-Case": "MAILFWD_MIXED_CASE",
	}
	for in, want := range tests {
		if got := EnvName(in); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

// testFlags is a flag set with one flag of each kind used by the binaries.
type testFlags struct {
	fs      *flag.FlagSet
	natsURL string
	port    int
	tls     bool
	timeout time.Duration
	routes  StringList
}

func newTestFlags() *testFlags {
	f := &testFlags{fs: flag.NewFlagSet("test", flag.ContinueOnError)}
	f.fs.SetOutput(io.Discard)
	f.fs.StringVar(&f.natsURL, "nats-url", "nats://127.0.0.1:4222", "")
	f.fs.IntVar(&f.port, "smtp-port", 25, "")
	f.fs.BoolVar(&f.tls, "tls", false, "")
	f.fs.DurationVar(&f.timeout, "dns-timeout", 5*time.Second, "")
	f.fs.Var(&f.routes, "route", "")
	return f
}

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParsePrecedence(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		natsURL string
		port    int
		tls     bool
		timeout time.Duration
		routes  []string
	}{
		{
			name:    "defaults",
			natsURL: "nats://127.0.0.1:4222", port: 25, timeout: 5 * time.Second,
		},
		{
			name: "env beats default",
			env: map[string]string{
				"MAILFWD_NATS_URL":    "nats://env:4222",
				"MAILFWD_SMTP_PORT":   "2525",
				"MAILFWD_TLS":         "true",
				"MAILFWD_DNS_TIMEOUT": "750ms",
				"MAILFWD_ROUTE":       "a.example=smtp:[10.0.0.1], b.example=smtp:[10.0.0.2]",
			},
			natsURL: "nats://env:4222", port: 2525, tls: true, timeout: 750 * time.Millisecond,
			routes: []string{"a.example=smtp:[10.0.0.1]", "b.example=smtp:[10.0.0.2]"},
		},
		{
			name: "flag beats env",
			args: []string{"--nats-url", "nats://flag:4222", "-smtp-port=2600", "--tls=false", "--route", "c.example=smtp:[10.0.0.3]"},
			env: map[string]string{
				"MAILFWD_NATS_URL":  "nats://env:4222",
				"MAILFWD_SMTP_PORT": "2525",
				"MAILFWD_TLS":       "true",
				"MAILFWD_ROUTE":     "a.example=smtp:[10.0.0.1]",
			},
			natsURL: "nats://flag:4222", port: 2600, tls: false, timeout: 5 * time.Second,
			routes: []string{"c.example=smtp:[10.0.0.3]"},
		},
		{
			name:    "mix of flag, env and default",
			args:    []string{"--smtp-port", "26"},
			env:     map[string]string{"MAILFWD_NATS_URL": "nats://env:4222", "MAILFWD_SMTP_PORT": "2525"},
			natsURL: "nats://env:4222", port: 26, timeout: 5 * time.Second,
		},
		{
			name:    "empty env value is unset",
			env:     map[string]string{"MAILFWD_NATS_URL": "", "MAILFWD_SMTP_PORT": ""},
			natsURL: "nats://127.0.0.1:4222", port: 25, timeout: 5 * time.Second,
		},
		{
			name:    "other env variables are ignored",
			env:     map[string]string{"NATS_URL": "nats://other:4222", "MAILFWD_NATSURL": "nats://other:4222"},
			natsURL: "nats://127.0.0.1:4222", port: 25, timeout: 5 * time.Second,
		},
		{
			name:    "flag set to its default still beats env",
			args:    []string{"--smtp-port=25"},
			env:     map[string]string{"MAILFWD_SMTP_PORT": "2525"},
			natsURL: "nats://127.0.0.1:4222", port: 25, timeout: 5 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFlags()
			if err := Parse(f.fs, tt.args, envMap(tt.env)); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if f.natsURL != tt.natsURL {
				t.Errorf("nats-url = %q, want %q", f.natsURL, tt.natsURL)
			}
			if f.port != tt.port {
				t.Errorf("smtp-port = %d, want %d", f.port, tt.port)
			}
			if f.tls != tt.tls {
				t.Errorf("tls = %v, want %v", f.tls, tt.tls)
			}
			if f.timeout != tt.timeout {
				t.Errorf("dns-timeout = %v, want %v", f.timeout, tt.timeout)
			}
			if !reflect.DeepEqual([]string(f.routes), tt.routes) {
				t.Errorf("route = %q, want %q", f.routes, tt.routes)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // substrings of the error
	}{
		{"bad int in env", nil, map[string]string{"MAILFWD_SMTP_PORT": "twenty-five"},
			[]string{"MAILFWD_SMTP_PORT", "twenty-five"}},
		{"bad bool in env", nil, map[string]string{"MAILFWD_TLS": "maybe"},
			[]string{"MAILFWD_TLS", "maybe"}},
		{"bad duration in env", nil, map[string]string{"MAILFWD_DNS_TIMEOUT": "5"},
			[]string{"MAILFWD_DNS_TIMEOUT"}},
		{"two bad env values are both reported", nil,
			map[string]string{"MAILFWD_SMTP_PORT": "x", "MAILFWD_DNS_TIMEOUT": "y"},
			[]string{"MAILFWD_SMTP_PORT", "MAILFWD_DNS_TIMEOUT"}},
		{"unknown flag", []string{"--no-such-flag"}, nil, []string{"no-such-flag"}},
		{"bad flag value", []string{"--smtp-port", "x"}, nil, []string{"smtp-port"}},
		{"positional arguments", []string{"--tls", "extra", "args"}, nil, []string{"unexpected arguments", "extra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFlags()
			err := Parse(f.fs, tt.args, envMap(tt.env))
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseBadEnvIgnoredWhenFlagGiven(t *testing.T) {
	f := newTestFlags()
	err := Parse(f.fs, []string{"--smtp-port", "2525"}, envMap(map[string]string{"MAILFWD_SMTP_PORT": "bogus"}))
	if err != nil {
		t.Fatalf("Parse: %v (the env value is shadowed by the flag)", err)
	}
	if f.port != 2525 {
		t.Errorf("smtp-port = %d, want 2525", f.port)
	}
}

func TestStringList(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"none", nil, nil},
		{"single", []string{"--dns", "127.0.0.1:53"}, []string{"127.0.0.1:53"}},
		{"comma separated", []string{"--dns", "a,b,c"}, []string{"a", "b", "c"}},
		{"repeated", []string{"--dns", "a", "--dns", "b"}, []string{"a", "b"}},
		{"repeated and commas", []string{"--dns", "a,b", "--dns=c"}, []string{"a", "b", "c"}},
		{"space and empty items dropped", []string{"--dns", " a , ,b,", "--dns", ""}, []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l StringList
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.Var(&l, "dns", "")
			if err := Parse(fs, tt.args, envMap(nil)); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual([]string(l), tt.want) {
				t.Errorf("list = %q, want %q", l, tt.want)
			}
			if got, want := l.String(), strings.Join(tt.want, ","); got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}
		})
	}
}

func TestLogging(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; "" = success
		json    bool
		debug   bool // debug records are written
	}{
		{name: "defaults: text at info"},
		{name: "json", args: []string{"--log-format", "json"}, json: true},
		{name: "debug level from env", env: map[string]string{"MAILFWD_LOG_LEVEL": "debug"}, debug: true},
		{name: "upper-case level", args: []string{"--log-level", "DEBUG"}, debug: true},
		{name: "warn level", args: []string{"--log-level", "warn"}},
		{name: "bad level", args: []string{"--log-level", "verbose"}, wantErr: `--log-level "verbose"`},
		{name: "bad format", args: []string{"--log-format", "xml"}, wantErr: `--log-format "xml": want text or json`},
		{name: "bad format from env", env: map[string]string{"MAILFWD_LOG_FORMAT": "logfmt"}, wantErr: `--log-format "logfmt"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l Logging
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			l.Register(fs)
			if err := Parse(fs, tt.args, envMap(tt.env)); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var buf bytes.Buffer
			log, err := l.Logger(&buf)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Logger error = %v, want one containing %q", err, tt.wantErr)
				}
				if log != nil {
					t.Error("Logger returned a logger with the error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Logger: %v", err)
			}
			log.Debug("debug message")
			log.Error("error message", "key", "value")
			out := buf.String()
			if strings.Contains(out, "debug message") != tt.debug {
				t.Errorf("debug record written = %v, want %v; output:\n%s", !tt.debug, tt.debug, out)
			}
			if !strings.Contains(out, "error message") {
				t.Fatalf("error record missing; output:\n%s", out)
			}
			last := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
			var rec map[string]any
			isJSON := json.Unmarshal([]byte(last), &rec) == nil
			if isJSON != tt.json {
				t.Errorf("JSON output = %v, want %v; record %q", isJSON, tt.json, last)
			}
			if tt.json && (rec["msg"] != "error message" || rec["key"] != "value" || rec["level"] != "ERROR") {
				t.Errorf("JSON record = %v", rec)
			}
			if !tt.json && (!strings.Contains(last, "level=ERROR") || !strings.Contains(last, "key=value")) {
				t.Errorf("record = %q, want level=ERROR and key=value", last)
			}
		})
	}
}

// startHealth serves h on a fresh 127.0.0.1 port and returns its base URL.
func startHealth(t *testing.T, checks map[string]Check) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	h := NewHealth(ln.Addr().String(), checks)
	served := make(chan error, 1)
	go func() { served <- h.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v after Shutdown, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestHealth(t *testing.T) {
	ok := func(context.Context) error { return nil }
	down := func(context.Context) error { return errors.New("nats: no servers available") }
	hasDeadline := func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("check context has no deadline")
		}
		return nil
	}
	tests := []struct {
		name      string
		checks    map[string]Check
		status    int
		bodyParts []string
	}{
		{"no checks", nil, http.StatusOK, nil},
		{"all pass", map[string]Check{"nats": ok, "blob": ok}, http.StatusOK, []string{"nats: ok", "blob: ok"}},
		{"one fails", map[string]Check{"nats": down, "blob": ok}, http.StatusServiceUnavailable,
			[]string{"nats: nats: no servers available", "blob: ok"}},
		{"all fail", map[string]Check{"nats": down, "blob": down}, http.StatusServiceUnavailable,
			[]string{"nats: nats: no servers", "blob: nats: no servers"}},
		{"checks run with a deadline", map[string]Check{"deadline": hasDeadline}, http.StatusOK, []string{"deadline: ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := startHealth(t, tt.checks)

			code, body := get(t, base+"/healthz")
			if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
				t.Errorf("/healthz = %d %q, want 200 ok", code, body)
			}

			code, body = get(t, base+"/readyz")
			if code != tt.status {
				t.Errorf("/readyz status = %d, want %d; body:\n%s", code, tt.status, body)
			}
			for _, p := range tt.bodyParts {
				if !strings.Contains(body, p) {
					t.Errorf("/readyz body %q does not contain %q", body, p)
				}
			}

			code, _ = get(t, base+"/nope")
			if code != http.StatusNotFound {
				t.Errorf("/nope status = %d, want 404", code)
			}
		})
	}
}

func TestHealthReadinessFollowsChecks(t *testing.T) {
	ready := make(chan bool, 1)
	ready <- false
	check := func(context.Context) error {
		r := <-ready
		ready <- r
		if !r {
			return errors.New("starting")
		}
		return nil
	}
	base := startHealth(t, map[string]Check{"queue": check})
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "queue: starting") {
		t.Errorf("/readyz before ready = %d %q, want 503 with the reason", code, body)
	}
	<-ready
	ready <- true
	if code, body := get(t, base+"/readyz"); code != http.StatusOK || !strings.Contains(body, "queue: ok") {
		t.Errorf("/readyz after ready = %d %q, want 200", code, body)
	}
}

func TestHostname(t *testing.T) {
	if h := Hostname(); h == "" || strings.ContainsAny(h, " \t\r\n") {
		t.Errorf("Hostname() = %q", h)
	}
}
