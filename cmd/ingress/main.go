// Command ingress is mailfwd's SMTP ingress: it accepts mail, stores the
// body, queues one envelope per recipient domain, and answers 250 only when
// both are durable.
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
	var o daemon.Ingress
	os.Exit(daemon.Main("mailfwd-ingress", os.Args[1:], os.Stderr,
		func(fs *flag.FlagSet) *config.Logging { o.Register(fs); return &o.Logging },
		func(ctx context.Context, log *slog.Logger, tp trace.TracerProvider) error {
			return daemon.RunIngress(ctx, o, log, tp, nil)
		}))
}
