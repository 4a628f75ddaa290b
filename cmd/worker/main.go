// Command worker is mailfwd's delivery worker: it consumes queued envelopes,
// routes them by static route or MX, delivers over SMTP, and retries.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"go.opentelemetry.io/otel/trace"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
)

func main() {
	var o daemon.Worker
	os.Exit(daemon.Main("mailfwd-worker", os.Args[1:], os.Stderr,
		func(fs *flag.FlagSet) *config.Logging { o.Register(fs); return &o.Logging },
		func(ctx context.Context, log *slog.Logger, tp trace.TracerProvider) error {
			return daemon.RunWorker(ctx, o, log, tp)
		}))
}
