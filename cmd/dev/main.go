// Command dev runs a complete mailfwd on one machine with no external
// services, for `make run`: an embedded NATS JetStream server (on disk), a
// local-directory body store, an ingress, a worker, and an SMTP sink that
// stands in for the internet (every domain is routed to it unless --route
// or --dns-server say otherwise).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/natsembed"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

type options struct {
	dir      string
	natsPort int
	smtp     string
	sinkAddr string
	noSink   bool
	routes   config.StringList
	logging  config.Logging
}

func main() {
	var o options
	os.Exit(daemon.Main("mailfwd-dev", os.Args[1:], os.Stderr,
		func(fs *flag.FlagSet) *config.Logging {
			fs.StringVar(&o.dir, "dir", "var", "state directory: NATS store, bodies, sink mailbox")
			fs.IntVar(&o.natsPort, "nats-port", 4222, "embedded NATS port on 127.0.0.1")
			fs.StringVar(&o.smtp, "listen", "127.0.0.1:2525", "ingress SMTP address")
			fs.StringVar(&o.sinkAddr, "sink", "127.0.0.1:2526", "SMTP sink address (stands in for every destination)")
			fs.BoolVar(&o.noSink, "no-sink", false, "do not start the sink nor route everything to it (use --route / MX)")
			fs.Var(&o.routes, "route", "extra static routes, as the worker's --route")
			o.logging.Register(fs)
			return &o.logging
		},
		func(ctx context.Context, log *slog.Logger, tp trace.TracerProvider) error {
			return run(ctx, o, log, tp)
		}))
}

func run(ctx context.Context, o options, log *slog.Logger, tp trace.TracerProvider) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	for _, d := range []string{"nats", "bodies", "sink"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return err
		}
	}
	ns, err := natsembed.Start(natsembed.Options{Port: o.natsPort, StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		return err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	natsURL := ns.ClientURL()

	g, gctx := errgroup.WithContext(ctx)
	routes := o.routes
	if !o.noSink {
		sk := sink.New(sink.Config{Hostname: "sink.localhost", Dir: filepath.Join(dir, "sink"), Logger: log.With("component", "sink")})
		ln, err := net.Listen("tcp", o.sinkAddr)
		if err != nil {
			return fmt.Errorf("sink listen %s: %w", o.sinkAddr, err)
		}
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		routes = append(routes, ".=smtp:["+host+"]:"+port)
		g.Go(func() error { return sk.Serve(ln) })
		g.Go(func() error { <-gctx.Done(); return sk.Close() })
	}
	blobURL := "file://" + filepath.Join(dir, "bodies")
	common := daemon.Common{NATSURL: natsURL, BlobStore: blobURL, Bootstrap: true, AckWait: 2 * time.Minute, Replicas: 1, Logging: o.logging}

	var in daemon.Ingress
	in.Register(flag.NewFlagSet("defaults", flag.ContinueOnError))
	in.Common, in.Listen = common, o.smtp
	var wk daemon.Worker
	wk.Register(flag.NewFlagSet("defaults", flag.ContinueOnError))
	wk.Common = common
	wk.Routes = routes
	wk.Engine.RetryFirst = 30 * time.Second // dev: retry soon

	ready := make(chan string, 1)
	g.Go(func() error { return daemon.RunIngress(gctx, in, log, tp, func(a string) { ready <- a }) })
	g.Go(func() error { return daemon.RunWorker(gctx, wk, log, tp) })
	select {
	case addr := <-ready:
		_, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		fmt.Fprintf(os.Stderr, `
mailfwd dev is running
  SMTP ingress   %s   (relays for 127.0.0.0/8)
  NATS           %s   (JetStream store in %s)
  bodies         %s
  sink           %s   (every domain is routed here; mailbox in %s)
Send a test message:
  go run ./cmd/ctl send --server 127.0.0.1:%d --from me@example.com --to you@example.net
then look in %s (and for "stat=Sent" in the log above). Ctrl-C stops.

`, addr, natsURL, filepath.Join(dir, "nats"), blobURL, o.sinkAddr, filepath.Join(dir, "sink"), p, filepath.Join(dir, "sink"))
	case <-gctx.Done():
	}
	return g.Wait()
}
