// Command profiled runs the mailfwd ingress or worker exactly as
// cmd/ingress and cmd/worker do, with a CPU profile written on shutdown
// (SIGTERM). The benchmark uses it to find where the time goes:
//
//	profiled ingress --cpuprofile ingress.pprof [ingress flags]
//	profiled worker  --cpuprofile worker.pprof  [worker flags]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"

	"go.opentelemetry.io/otel/trace"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "ingress" && os.Args[1] != "worker") {
		fmt.Fprintln(os.Stderr, "usage: profiled ingress|worker --cpuprofile FILE [flags]")
		os.Exit(2)
	}
	role, args := os.Args[1], os.Args[2:]
	var profile string
	withProfile := func(fs *flag.FlagSet) {
		fs.StringVar(&profile, "cpuprofile", "", "write a CPU profile here (stopped on SIGTERM)")
	}
	profiled := func(run func() error) error {
		if profile == "" {
			return run()
		}
		f, err := os.Create(profile)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
		return run()
	}
	switch role {
	case "ingress":
		var o daemon.Ingress
		os.Exit(daemon.Main("mailfwd-ingress", args, os.Stderr,
			func(fs *flag.FlagSet) *config.Logging { o.Register(fs); withProfile(fs); return &o.Logging },
			func(ctx context.Context, log *slog.Logger, tp trace.TracerProvider) error {
				return profiled(func() error { return daemon.RunIngress(ctx, o, log, tp, nil) })
			}))
	default:
		var o daemon.Worker
		os.Exit(daemon.Main("mailfwd-worker", args, os.Stderr,
			func(fs *flag.FlagSet) *config.Logging { o.Register(fs); withProfile(fs); return &o.Logging },
			func(ctx context.Context, log *slog.Logger, tp trace.TracerProvider) error {
				return profiled(func() error { return daemon.RunWorker(ctx, o, log, tp) })
			}))
	}
}
