// Package config holds what the mailfwd binaries share: flags that fall back
// to MAILFWD_* environment variables, logging setup, and the health server
// used by Kubernetes probes.
package config

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/mailfwd/mailfwd/pkg/maillog"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// EnvName is the environment variable for a flag: --nats-url → MAILFWD_NATS_URL.
func EnvName(flagName string) string {
	return "MAILFWD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args; flags not given on the command line take their value
// from the environment (defaults → env → flags).
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, err))
			}
		}
	})
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	return errors.Join(errs...)
}

// StringList is a repeatable, comma-separable flag.
type StringList []string

func (l *StringList) String() string { return strings.Join(*l, ",") }

// Set appends comma-separated values.
func (l *StringList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// Logging is the shared log flags.
type Logging struct {
	Format string
	Level  string
}

// Register adds --log-format and --log-level.
func (l *Logging) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn, error")
}

// Logger builds the process logger.
func (l *Logging) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", l.Level, err)
	}
	// Durations are logged as "<key>_seconds": <float>, in both formats.
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: maillog.Seconds}
	switch l.Format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", l.Format)
}

// Check is a readiness check.
type Check func(ctx context.Context) error

// Health serves /healthz (the process is up) and /readyz (every check passes).
type Health struct {
	srv *http.Server
	mux *http.ServeMux
}

// Handle adds an endpoint (e.g. /metrics).
func (h *Health) Handle(pattern string, handler http.Handler) { h.mux.Handle(pattern, handler) }

// NewHealth builds the health server; readiness runs checks with a short timeout.
func NewHealth(addr string, checks map[string]Check) *Health {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		status := http.StatusOK
		var b strings.Builder
		for name, c := range checks {
			if err := c(ctx); err != nil {
				status = http.StatusServiceUnavailable
				fmt.Fprintf(&b, "%s: %v\n", name, err)
			} else {
				fmt.Fprintf(&b, "%s: ok\n", name)
			}
		}
		w.WriteHeader(status)
		io.WriteString(w, b.String())
	})
	return &Health{mux: mux, srv: &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
}

// Serve listens until Shutdown.
func (h *Health) Serve(ln net.Listener) error {
	if err := h.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server.
func (h *Health) Shutdown(ctx context.Context) error { return h.srv.Shutdown(ctx) }

// Hostname is the default host name for greetings and Received: headers.
func Hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// MailDomain is a domain for default addresses (postmaster@…): the host name
// when it is fully qualified, else "localhost" (a dotless name is refused
// in envelope addresses).
func MailDomain() string {
	if h := Hostname(); strings.Contains(strings.Trim(h, "."), ".") {
		return strings.TrimSuffix(h, ".")
	}
	return "localhost"
}
