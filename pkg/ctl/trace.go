package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"text/tabwriter"
	"time"

	"github.com/rs/xid"
	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
)

// traceItem is one trace as printed.
type traceItem struct {
	smtptrace.Setting
	Remaining string `json:"remaining"`
}

func itemOfTrace(s smtptrace.Setting, now time.Time) traceItem {
	return traceItem{Setting: s, Remaining: s.Until.Sub(now).Round(time.Second).String()}
}

func newTraceCmd(g *globals) *cobra.Command {
	var s smtptrace.Setting
	var dur time.Duration
	var maxTraces int
	out := printer{}
	cmd := &cobra.Command{
		Use:   "trace (--client IP|CIDR | --destination HOST|.SUFFIX|IP) [--for 10m] [--with-bodies]",
		Short: "Log the SMTP dialog of matching sessions on every ingress and worker for a while (sendmail -X, targeted)",
		Long: `Start a live SMTP traffic trace. Every ingress (--client: sessions from that
client address or network) or worker (--destination: deliveries to that next-hop host,
any host under .suffix, or that address) writes the full dialog of matching sessions to
its log: both directions, time stamps, TLS state. The trace ends by itself after --for;
'mailfwdctl trace stop ID' ends it sooner. AUTH credentials are always redacted, message
bodies unless --with-bodies.

Each pod logs one record per dialog line ("smtp trace", from=client|server) between
"smtp trace: session start" and "smtp trace: session end", with trace=ID;
'mailfwdctl trace show ID' prints them from the logs as a transcript.
On the workers a trace also records:
  - deliveries over a connection that was already open (pooled) when the trace started,
    from their transaction on: "session start" with reused=true, then
    "smtp trace: reusing a pooled connection" transaction=N before every reuse;
  - connects that get no session: "smtp trace: connect failed" (refused, timed out,
    unreachable; peer= and err=), and "not connecting, the address failed a moment
    ago" when the worker skips an address that just failed;
  - why a connection was given up while being set up ("connection given up" status=…,
    e.g. a failed STARTTLS handshake).

  sendmail -X /tmp/x.log          mailfwdctl trace --client 10.1.2.3 --for 10m
                                  mailfwdctl trace --destination mx.example.com
                                  kubectl logs -l app.kubernetes.io/name=mailfwd --prefix | mailfwdctl trace show ID`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			now := time.Now().UTC()
			s.Created, s.Until = now, now.Add(dur)
			if s.ID == "" {
				s.ID = xid.New().String()
			}
			s.By = who()
			if err := s.Validate(); err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
			return g.withTraces(cmd, func(ctx context.Context, st *smtptrace.Store) error {
				err := st.Start(ctx, s, maxTraces)
				switch {
				case errors.Is(err, smtptrace.ErrExists), errors.Is(err, smtptrace.ErrTooMany):
					return &ExitError{Code: ExitRejected, Err: err}
				case err != nil:
					return err
				}
				return out.print(g.out, itemOfTrace(s, now), func(tw *tabwriter.Writer) {
					what := "client " + s.Client + " (ingress)"
					if s.Destination != "" {
						what = "destination " + s.Destination + " (workers)"
					}
					fmt.Fprintf(tw, "tracing %s until %s (%s), id %s", what, s.Until.Format(time.RFC3339), dur, s.ID)
					if s.WithBodies {
						fmt.Fprintf(tw, ", with message bodies")
					}
					if s.Destination != "" {
						fmt.Fprintf(tw, "\nrecorded: new and pooled connections, refused and failed connects")
					}
					fmt.Fprintf(tw, "\nread it: kubectl logs -l app.kubernetes.io/name=mailfwd --prefix --tail=-1 | mailfwdctl trace show %[1]s"+
						"\n     or: journalctl -u 'mailfwd-*' | mailfwdctl trace show %[1]s", s.ID)
					fmt.Fprintf(tw, "\nstop it with: mailfwdctl trace stop %s\n", s.ID)
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Client, "client", "", "trace ingress sessions from this client IP or CIDR (at most /8 wide)")
	f.StringVar(&s.Destination, "destination", "", "trace worker deliveries to this next-hop host name, any host under .suffix, or IP")
	f.Var(config.DurationValue(&dur, 10*time.Minute), "for", fmt.Sprintf("how long the trace runs (at most %s)", smtptrace.MaxDuration))
	f.BoolVar(&s.WithBodies, "with-bodies", false, "record message bodies too (they are redacted by default)")
	f.StringVar(&s.ID, "id", "", "name of the trace (default: generated)")
	f.IntVar(&maxTraces, "max-traces", smtptrace.DefaultLimits().MaxTraces, "refuse to start a trace when this many are running (the daemons honour --trace-max-traces)")
	f.StringVarP(&out.format, "output", "o", "table", "output format: table, json or yaml")
	cmd.AddCommand(newTraceList(g), newTraceStop(g), newTraceShow(g))
	return cmd
}

func newTraceList(g *globals) *cobra.Command {
	out := printer{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the running traces",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			return g.withTraces(cmd, func(ctx context.Context, st *smtptrace.Store) error {
				ss, err := st.List(ctx)
				if err != nil {
					return err
				}
				now := time.Now()
				items := []traceItem{}
				for _, s := range ss {
					items = append(items, itemOfTrace(s, now))
				}
				return out.print(g.out, items, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "ID\tMATCH\tBODIES\tUNTIL\tREMAINING\tBY")
					for _, it := range items {
						m := "client " + it.Client
						if it.Destination != "" {
							m = "destination " + it.Destination
						}
						fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\n", it.ID, m, it.WithBodies,
							it.Until.Format(time.RFC3339), it.Remaining, it.By)
					}
				})
			})
		},
	}
	cmd.Flags().StringVarP(&out.format, "output", "o", "table", "output format: table, json or yaml")
	return cmd
}

func newTraceStop(g *globals) *cobra.Command {
	var all bool
	out := printer{}
	cmd := &cobra.Command{
		Use:   "stop (ID… | --all)",
		Short: "End traces now",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			if all == (len(args) > 0) {
				return usageError("give trace ids or --all (see mailfwdctl trace list)")
			}
			return g.withTraces(cmd, func(ctx context.Context, st *smtptrace.Store) error {
				if all {
					ss, err := st.List(ctx)
					if err != nil {
						return err
					}
					for _, s := range ss {
						args = append(args, s.ID)
					}
				}
				type result struct {
					ID      string `json:"id"`
					Stopped bool   `json:"stopped"`
				}
				res := []result{}
				missing := 0
				for _, id := range args {
					ok, err := st.Stop(ctx, id)
					if err != nil {
						return err
					}
					if !ok {
						missing++
					}
					res = append(res, result{ID: id, Stopped: ok})
				}
				if err := out.print(g.out, res, func(tw *tabwriter.Writer) {
					for _, r := range res {
						if r.Stopped {
							fmt.Fprintf(tw, "stopped %s\n", r.ID)
						} else {
							fmt.Fprintf(tw, "%s: no such trace running\n", r.ID)
						}
					}
					if len(res) == 0 {
						fmt.Fprintln(tw, "no traces running")
					}
				}); err != nil {
					return err
				}
				if missing > 0 && !all {
					return &ExitError{Code: ExitNotFound, Err: fmt.Errorf("%d of %d traces were not running", missing, len(args))}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "stop every running trace")
	cmd.Flags().StringVarP(&out.format, "output", "o", "table", "output format: table, json or yaml")
	return cmd
}

func (g *globals) withTraces(cmd *cobra.Command, fn func(ctx context.Context, st *smtptrace.Store) error) error {
	return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
		b, err := q.TraceBucket(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, smtptrace.NewStore(b))
	})
}

// who names the operator in a trace setting.
func who() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}
