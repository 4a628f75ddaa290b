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
	for _, d := range []string{"nats", "bodies", "sink", "policy"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return err
		}
	}
	policyDir := filepath.Join(dir, "policy")
	if err := seedPolicy(policyDir, o); err != nil {
		return err
	}
	// Every accepted message is on disk before its 250: the embedded server
	// writes it to its store before the PubAck, and the ingress flushes that
	// filesystem (group-committed syncfs) before it answers
	// (--nats-store-dir, queue.Config.LocalStore).
	natsDir := filepath.Join(dir, "nats")
	ns, err := natsembed.Start(natsembed.Options{Port: o.natsPort, StoreDir: natsDir})
	if err != nil {
		return err
	}
	log.Info("embedded NATS: every accepted message is flushed to disk before its 250 (syncfs of the store, group commit)", "component", "dev", "store", natsDir)
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
		g.Go(func() error { return sk.Serve(ln) })
		g.Go(func() error { <-gctx.Done(); return sk.Close() })
	}
	blobURL := "file://" + filepath.Join(dir, "bodies")
	common := daemon.Common{NATSURL: natsURL, BlobStore: blobURL, Bootstrap: true, AckWait: 2 * time.Minute, Replicas: 1, Logging: o.logging,
		NATSStoreDir: natsDir}

	var in daemon.Ingress
	in.Register(flag.NewFlagSet("defaults", flag.ContinueOnError))
	common.Events = in.Common.Events // the event stream's defaults (on), as the daemons have them
	in.Common, in.Listen, in.PolicyDir = common, o.smtp, policyDir
	var wk daemon.Worker
	wk.Register(flag.NewFlagSet("defaults", flag.ContinueOnError))
	wk.Common = common
	wk.Routes = routes
	wk.PolicyDir = policyDir
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
  SMTP ingress   %s   (policy in %s: relays for 127.0.0.1)
  NATS           %s   (JetStream store in %s)
  bodies         %s
  sink           %s   (the mailertable routes every domain here; mailbox in %s)
Send a test message:
  go run ./cmd/ctl send --server 127.0.0.1:%d --from me@example.com --to you@example.net
then look in %s (and for "stat=Sent" in the log above).
Policy: go run ./cmd/ctl policy --policy-dir %s get   (changes apply within seconds)
Queue:  go run ./cmd/ctl queue list            Ctrl-C stops.

`, addr, policyDir, natsURL, filepath.Join(dir, "nats"), blobURL, o.sinkAddr, filepath.Join(dir, "sink"), p, filepath.Join(dir, "sink"), policyDir)
	case <-gctx.Done():
	}
	return g.Wait()
}

// seedPolicy writes a starting policy the first time: relay for local
// clients only, and every domain routed to the sink.
func seedPolicy(dir string, o options) error {
	seed := map[string]string{
		"access": "# sendmail access map: who may relay where (mailfwdctl policy --policy-dir " + dir + " edit access)\n" +
			"Connect:127.0.0.1\tRELAY\nConnect:localhost\tRELAY\n",
	}
	if !o.noSink {
		host, port, err := net.SplitHostPort(o.sinkAddr)
		if err != nil {
			return fmt.Errorf("--sink %q: %w", o.sinkAddr, err)
		}
		seed["mailertable"] = "# every domain goes to the dev sink\n.\tsmtp:[" + host + "]:" + port + "\n"
	}
	for k, v := range seed {
		path := filepath.Join(dir, k)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}
