// Package config holds what the mailfwd binaries share: flags that fall back
// to MAILFWD_* environment variables, logging setup, and the health server
// used by Kubernetes probes.
package config

import (
	"bufio"
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
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3"
)

// EnvName is the environment variable for a flag: --nats-url → MAILFWD_NATS_URL.
func EnvName(flagName string) string {
	return "MAILFWD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ConfigFlag is the flag that names a configuration file (Parse reads it
// when the FlagSet defines it).
const ConfigFlag = "config"

// Parse parses args in the order STYLE.md gives: defaults → the file named
// by --config (when fs defines it; flag names as keys, see ParseFile) →
// MAILFWD_* environment → command-line flags. The file is read with
// github.com/peterbourgon/ff/v3; an unknown key or a bad value fails with
// its file name and line.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	fromFile := map[string]bool{}
	var opts []ff.Option
	if fs.Lookup(ConfigFlag) != nil {
		// MAILFWD_CONFIG names the file unless --config does.
		if v := getenv(EnvName(ConfigFlag)); v != "" {
			if err := fs.Set(ConfigFlag, v); err != nil {
				return err
			}
		}
		opts = append(opts, ff.WithConfigFileFlag(ConfigFlag), ff.WithConfigFileParser(func(r io.Reader, set func(name, value string) error) error {
			err := ParseFile(r, func(name, value string) error {
				if f := fs.Lookup(name); f != nil {
					if visited(fs, name) && !fromFile[name] {
						return nil // given on the command line, which wins
					}
					if getenv(EnvName(name)) != "" {
						return nil // the environment wins; skipped here so a list is replaced, not appended to
					}
					fromFile[name] = true
				}
				return set(name, value)
			})
			if err != nil {
				return fmt.Errorf("--%s %s: %w", ConfigFlag, fs.Lookup(ConfigFlag).Value, err)
			}
			return nil
		}))
	}
	if err := ff.Parse(fs, args, opts...); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return flag.ErrHelp
		}
		return errors.New(strings.TrimPrefix(err.Error(), "error parsing commandline arguments: "))
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if visited(fs, f.Name) && !fromFile[f.Name] {
			return // given on the command line
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

func visited(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// maxConfigFile bounds a configuration file.
const maxConfigFile = 1 << 20

// ParseFile reads a configuration file: one `name = value` a line, the
// names being the flags' (without the dashes); blank lines and lines
// starting with # are skipped; a value may be quoted ("…" with Go escapes).
// A repeatable flag may be given on several lines. Errors carry the line.
func ParseFile(r io.Reader, set func(name, value string) error) error {
	sc := bufio.NewScanner(io.LimitReader(r, maxConfigFile+1))
	sc.Buffer(make([]byte, 0, 4096), maxConfigFile+1)
	read := 0
	for n := 1; sc.Scan(); n++ {
		read += len(sc.Bytes()) + 1
		if read > maxConfigFile+1 {
			return fmt.Errorf("line %d: the file is larger than %d bytes", n, maxConfigFile)
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("line %d: want name = value, got %q", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		k = strings.TrimLeft(k, "-")
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			uq, err := strconv.Unquote(v)
			if err != nil {
				return fmt.Errorf("line %d: %s: bad quoted value: %w", n, k, err)
			}
			v = uq
		}
		if err := set(k, v); err != nil {
			msg := strings.Replace(err.Error(), "config file flag", "unknown setting", 1)
			msg = strings.Replace(msg, "not defined in flag set", "(not a flag of this program; see --help)", 1)
			return fmt.Errorf("line %d: %s", n, msg)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the configuration: %w", err)
	}
	return nil
}

// StringList is a repeatable, comma-separable flag.
type StringList []string

func (l *StringList) String() string { return strings.Join(*l, ",") }

// Type names the value in --help ("list": comma-separated, repeatable).
func (l *StringList) Type() string { return "list" }

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

// MailDomain is a domain for default addresses (postmaster@…): the host's
// fully qualified name (FQDN), else "localhost" (a dotless name is refused
// in envelope addresses).
func MailDomain() string {
	if f := FQDN(); f != "" {
		return f
	}
	return "localhost"
}

// FQDN is the host's fully qualified name as `hostname -f` finds it: the
// host name when it has a dot, else the first dotted name the hosts file
// gives the host name's line (Debian's "127.0.1.1 host.example.com host"),
// else the canonical name DNS gives it (asked with a short timeout). ""
// when none is found.
func FQDN() string {
	hosts, _ := os.ReadFile("/etc/hosts")
	return fqdnFrom(Hostname(), hosts, func(ctx context.Context, h string) (string, error) {
		return net.DefaultResolver.LookupCNAME(ctx, h)
	})
}

// maxHostsFile bounds what fqdnFrom reads of a hosts file.
const maxHostsFile = 1 << 20

func fqdnFrom(host string, hostsFile []byte, cname func(context.Context, string) (string, error)) string {
	qualified := func(n string) bool {
		n = strings.TrimSuffix(n, ".")
		return strings.Contains(n, ".") && !strings.HasPrefix(n, ".") && n != "localhost.localdomain" && !strings.HasPrefix(n, "localhost.")
	}
	host = strings.TrimSuffix(host, ".")
	if host == "" || host == "localhost" {
		return ""
	}
	if qualified(host) {
		return host
	}
	if len(hostsFile) > maxHostsFile {
		hostsFile = hostsFile[:maxHostsFile]
	}
	for _, line := range strings.Split(string(hostsFile), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 2 || !slices.ContainsFunc(f[1:], func(n string) bool { return strings.EqualFold(n, host) }) {
			continue
		}
		for _, n := range f[1:] {
			if qualified(n) && strings.HasPrefix(strings.ToLower(n), strings.ToLower(host)+".") {
				return strings.TrimSuffix(n, ".")
			}
		}
	}
	if cname == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := cname(ctx, host); err == nil && qualified(c) {
		return strings.TrimSuffix(c, ".")
	}
	return ""
}

// KubernetesHere reports whether a Kubernetes client could find a cluster
// the way kubectl does: an explicit kubeconfig, $KUBECONFIG, ~/.kube/config,
// or the in-cluster service environment. It reads nothing else, so a tool
// can say "no cluster here" plainly before client-go's own error
// (KUBERNETES_MASTER…) would.
func KubernetesHere(explicitKubeconfig string, getenv func(string) string) bool {
	if explicitKubeconfig != "" || getenv("KUBERNETES_SERVICE_HOST") != "" {
		return true
	}
	if kc := getenv("KUBECONFIG"); kc != "" {
		for _, p := range strings.Split(kc, string(os.PathListSeparator)) {
			if _, err := os.Stat(p); p != "" && err == nil {
				return true
			}
		}
		return false
	}
	home := getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	_, err := os.Stat(home + "/.kube/config")
	return home != "" && err == nil
}

// SignalContext is cancelled on the first SIGINT/SIGTERM; a second one exits
// the process at once.
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "second signal: exiting now")
		os.Exit(130)
	}()
	return ctx, cancel
}
