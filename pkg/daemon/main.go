package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"go.opentelemetry.io/otel/trace"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Main is the shared body of the binaries' main functions: parse flags (with
// MAILFWD_* env fallback), set up logs and tracing, run, map the error to an
// exit code (0 ok, 1 runtime failure, 2 bad configuration).
func Main(name string, args []string, stderr io.Writer, register func(*flag.FlagSet) *config.Logging,
	run func(ctx context.Context, log *slog.Logger, tp trace.TracerProvider) error) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	logging := register(fs)
	fs.String(config.ConfigFlag, "", "configuration `FILE`: one name = value a line, the names those of these flags (listen = :25); defaults → file → MAILFWD_* environment → flags")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [--config FILE] [--flag value …]\nEvery flag can also be set as MAILFWD_<FLAG_NAME> in the environment, or as name = value in --config FILE.\n", name)
		config.PrintFlags(stderr, fs, helpGroups)
	}
	if err := config.Parse(fs, args, os.Getenv); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	log, err := logging.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	ctx, cancel := config.SignalContext()
	defer cancel()
	tp, shutdown, err := telemetry.Setup(ctx, name)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	defer shutdown(context.WithoutCancel(ctx))
	if err := run(ctx, log, tp); err != nil {
		log.Error(name+" failed", "err", err)
		var ce *ConfigError
		if errors.As(err, &ce) {
			return 2
		}
		return 1
	}
	return 0
}

// ConfigError is a configuration that fails validation (exit code 2).
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return "invalid configuration: " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }
