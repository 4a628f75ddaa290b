package ctl

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/maillog"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

func newEventsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow the delivery event stream (docs/events.md), or forward it to a webhook",
	}
	cmd.AddCommand(newEventsTail(g), newEventsWebhook(g))
	return cmd
}

type eventFilterFlags struct {
	qids, senders, domains, outcomes []string
}

func (f *eventFilterFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVarP(&f.qids, "qid", "I", nil, "queue id (repeatable)")
	fl.StringSliceVarP(&f.senders, "sender", "S", nil, "envelope sender contains this (repeatable)")
	fl.StringSliceVarP(&f.domains, "domain", "R", nil, "recipient domain and its subdomains (repeatable)")
	fl.StringSliceVar(&f.outcomes, "outcome", nil, "event type: "+strings.Join(typeNames(), ", ")+" (repeatable)")
}

func typeNames() []string {
	var out []string
	for _, t := range events.Types {
		out = append(out, string(t))
	}
	return out
}

func (f *eventFilterFlags) filter() (events.Filter, error) {
	ef := events.Filter{QueueIDs: f.qids, Senders: f.senders, Domains: append([]string(nil), f.domains...)}
	for _, o := range f.outcomes {
		ef.Types = append(ef.Types, events.Type(strings.ToLower(o)))
	}
	if err := ef.Validate(); err != nil {
		return ef, &ExitError{Code: ExitUsage, Err: err}
	}
	return ef, nil
}

func newEventsTail(g *globals) *cobra.Command {
	var ff eventFilterFlags
	var since time.Duration
	var all, noFollow bool
	var out string
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print events as they happen (and, with --since or --all, those stored before)",
		Example: `  mailfwdctl events tail --domain example.com --outcome deferred,bounced
  mailfwdctl events tail --qid dcb9gghksdudshfsg7r0 --all --no-follow -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out != "table" && out != "json" {
				return &ExitError{Code: ExitUsage, Err: fmt.Errorf("-o %q: want table or json (one event per line)", out)}
			}
			f, err := ff.filter()
			if err != nil {
				return err
			}
			o := events.FollowOptions{All: all, Stop: noFollow}
			if since > 0 {
				o.Since = time.Now().Add(-since)
			}
			// Following has no overall deadline; --timeout bounds the connect.
			cctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			q, err := g.connectQueue(cctx)
			cancel()
			if err != nil {
				return err
			}
			defer q.Close()
			ctx := cmd.Context()
			if noFollow {
				var c context.CancelFunc
				ctx, c = context.WithTimeout(ctx, g.timeout)
				defer c()
			}
			st, err := q.EventStream(ctx)
			if err != nil {
				return err
			}
			if out == "table" {
				o.Ready = func() {
					fmt.Fprintf(g.out, "%-24s %-16s %-20s %-32s %-6s %s\n", "TIME", "TYPE", "QUEUE ID", "RECIPIENT", "DSN", "RELAY / REPLY")
				}
			}
			return events.Follow(ctx, st, f, o, func(s events.Stored) error {
				if out == "json" {
					_, err := fmt.Fprintf(g.out, "%s\n", s.Raw)
					return err
				}
				_, err := fmt.Fprintln(g.out, eventLine(&s.Event))
				return err
			})
		},
	}
	ff.register(cmd)
	cmd.Flags().DurationVar(&since, "since", 0, "start with the events of this long ago, e.g. 1h")
	cmd.Flags().BoolVar(&all, "all", false, "start with the oldest event the stream keeps")
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "stop after the events stored now, instead of waiting for new ones")
	cmd.Flags().StringVarP(&out, "output", "o", "table", "table or json (the event as stored, one a line)")
	return cmd
}

// eventLine is one event in the table form.
func eventLine(ev *events.Event) string {
	who := ev.Recipient
	if ev.Type == events.Audit {
		who = ev.Action + " by " + ev.Actor
	}
	tail := ev.Relay
	if ev.Reply != "" {
		tail = strings.TrimSpace(tail + " " + ev.Reply)
	}
	if ev.Type == events.Audit {
		tail = fmt.Sprintf("%s matched=%d %s", ev.Target, ev.Matched, ev.Detail)
	}
	return fmt.Sprintf("%-24s %-16s %-20s %-32s %-6s %s", ev.Time.Local().Format("2006-01-02T15:04:05.000"), ev.Type, ev.QueueID, who, ev.DSN, strings.TrimSpace(tail))
}

// audit records operator actions: one log line each on stderr, and an
// event on the stream; per-message events (released, operator_bounced,
// operator_purged) go with them.
type audit struct {
	pub   *events.Publisher
	actor string
	g     *globals
}

// startAudit connects an audit publisher on q's connection; the actor is
// the NATS user the server says this connection is.
func (g *globals) startAudit(ctx context.Context, q *queue.Queue) *audit {
	a := &audit{g: g, actor: q.Identity(ctx)}
	a.pub = events.NewPublisher(events.PublisherConfig{Source: "mailfwdctl"})
	if err := q.StartEvents(a.pub, 0); err != nil {
		fmt.Fprintf(g.errOut, "warning: events: %v\n", err)
		a.pub = nil
	}
	return a
}

// message emits a per-message event about e's recipients; with print,
// each is also a line on stderr under the message's queue id.
func (a *audit) message(t events.Type, e queue.Entry, action, reply, dsnQID string, print bool) {
	if e.Env == nil {
		return
	}
	now := time.Now().UTC()
	for _, r := range e.Env.Recipients {
		ev := events.Event{Type: t, Time: now, QueueID: e.Env.QueueID, MessageID: e.Env.MsgID, Sender: e.Env.From, Recipient: r.Addr,
			Destination: e.Env.Domain, Arrived: e.Env.Arrived, Size: e.Env.Size, Attempt: e.Env.Attempts, Actor: a.actor,
			Action: action, Reply: reply, DSNQueueID: dsnQID}
		if print {
			fmt.Fprintln(a.g.errOut, ev.Line())
		}
		a.pub.Emit(ev)
	}
}

// action logs and emits one operator action.
func (a *audit) action(action, target string, matched int, detail string) {
	ev := events.Event{Type: events.Audit, Time: time.Now().UTC(), Actor: a.actor, Action: action, Target: target, Matched: matched, Detail: detail}
	fmt.Fprintln(a.g.errOut, ev.Line())
	a.pub.Emit(ev)
}

// close waits briefly for the events to be stored.
func (a *audit) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.pub.Close(ctx)
	if n := a.pub.Dropped(); n > 0 {
		fmt.Fprintf(a.g.errOut, "warning: %d audit events could not be published to the event stream\n", n)
	}
}

func newEventsWebhook(g *globals) *cobra.Command {
	var ff eventFilterFlags
	var url, secretFile, name string
	var minBackoff, maxBackoff, reqTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "webhook --url URL",
		Short: "Post every event to an HTTP endpoint, signed, in order, retried until it answers 2xx",
		Long: `Runs until stopped. Each matching event is POSTed as its JSON to --url with the headers
X-Mailfwd-Event-Id, X-Mailfwd-Timestamp and, with a secret, X-Mailfwd-Signature:
"sha256=" + hex HMAC-SHA256(secret, timestamp + "." + body). Events go one at a time in
stream order from a durable consumer (--name); a failed post is retried with backoff and
nothing after it is sent meanwhile, so the endpoint sees each message's events in order and
misses none while it is down, as long as the stream keeps them (its retention). Run one
forwarder per --name; a second with the same name takes turns with the first.`,
		Example: `  MAILFWD_WEBHOOK_SECRET=s3cret mailfwdctl events webhook --url https://hooks.example.com/mail --outcome bounced,expired`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				return usageError("--url is required")
			}
			f, err := ff.filter()
			if err != nil {
				return err
			}
			secret := []byte(os.Getenv("MAILFWD_WEBHOOK_SECRET"))
			if secretFile != "" {
				if secret, err = os.ReadFile(secretFile); err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				secret = bytes.TrimSpace(secret)
			}
			cctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			q, err := g.connectQueue(cctx)
			if err != nil {
				cancel()
				return err
			}
			defer q.Close()
			st, err := q.EventStream(cctx)
			cancel()
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(g.errOut, &slog.HandlerOptions{ReplaceAttr: maillog.Seconds}))
			if len(secret) == 0 {
				log.Warn("no secret (MAILFWD_WEBHOOK_SECRET or --secret-file): requests are not signed")
			}
			fw := &events.Forwarder{URL: url, Secret: secret, Durable: name, Filter: f, MinBackoff: minBackoff, MaxBackoff: maxBackoff,
				Client: &http.Client{Timeout: reqTimeout}, Logger: log}
			return fw.Run(cmd.Context(), st)
		},
	}
	ff.register(cmd)
	cmd.Flags().StringVar(&url, "url", "", "endpoint to POST each event to")
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "file holding the HMAC secret (default: env MAILFWD_WEBHOOK_SECRET)")
	cmd.Flags().StringVar(&name, "name", "webhook", "durable consumer name: where this endpoint's forwarding resumes")
	cmd.Flags().DurationVar(&minBackoff, "min-backoff", time.Second, "first retry delay after a failed post")
	cmd.Flags().DurationVar(&maxBackoff, "max-backoff", 5*time.Minute, "longest retry delay")
	cmd.Flags().DurationVar(&reqTimeout, "request-timeout", 10*time.Second, "limit of one POST")
	return cmd
}

// final is the last line of a message removed by an operator, under its
// own queue id (sendmail's and Postfix's "removed"), and its event.
func (a *audit) final(t events.Type, e queue.Entry, verb, dsnQID string) {
	stat := "Purged by operator " + a.actor
	if t == events.OperatorBounced {
		stat = "Bounced by operator " + a.actor + " (returned to the sender)"
	}
	a.message(t, e, "queue."+verb, stat, dsnQID, true)
}

// filterString says what a queue filter selected, for the audit line.
func filterString(f queue.Filter) string {
	var parts []string
	add := func(k string, v []string) {
		if len(v) > 0 {
			parts = append(parts, k+"="+strings.Join(v, ","))
		}
	}
	add("domain", f.Domains)
	add("not-domain", f.NotDomains)
	add("recipient", f.Recipients)
	add("not-recipient", f.NotRecipients)
	add("sender", f.Senders)
	add("not-sender", f.NotSenders)
	add("qid", f.IDs)
	add("not-qid", f.NotIDs)
	var st []string
	for _, s := range f.States {
		st = append(st, string(s))
	}
	add("state", st)
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, " ")
}
