package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/bounce"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/dsn"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/maillog"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// filterFlags are sendmail's queue-run selectors, by name.
type filterFlags struct {
	states                                                                 []string
	domains, notDomains, rcpts, notRcpts, senders, notSenders, ids, notIDs []string
}

func (f *filterFlags) register(cmd *cobra.Command, states bool) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.domains, "domain", nil, "recipient domain, subdomains included (selected by subject; repeatable)")
	fl.StringSliceVar(&f.notDomains, "not-domain", nil, "exclude a recipient domain and its subdomains")
	fl.StringSliceVarP(&f.rcpts, "recipient", "R", nil, "substring of a recipient address (sendmail -qR)")
	fl.StringSliceVar(&f.notRcpts, "not-recipient", nil, "exclude messages with a recipient containing this (sendmail -q!R)")
	fl.StringSliceVarP(&f.senders, "sender", "S", nil, "substring of the sender (sendmail -qS)")
	fl.StringSliceVar(&f.notSenders, "not-sender", nil, "exclude senders containing this (sendmail -q!S)")
	fl.StringSliceVarP(&f.ids, "id", "I", nil, "substring of the queue id (sendmail -qI)")
	fl.StringSliceVar(&f.notIDs, "not-id", nil, "exclude queue ids containing this (sendmail -q!I)")
	if states {
		fl.StringSliceVar(&f.states, "state", nil, "ready, deferred, held or failed (default: all)")
	}
}

func (f *filterFlags) filter(defaultStates ...queue.State) (queue.Filter, error) {
	qf := queue.Filter{
		Domains: f.domains, NotDomains: f.notDomains, Recipients: f.rcpts, NotRecipients: f.notRcpts,
		Senders: f.senders, NotSenders: f.notSenders, IDs: f.ids, NotIDs: f.notIDs, States: defaultStates,
	}
	if len(f.states) > 0 {
		qf.States = nil
		for _, s := range f.states {
			qf.States = append(qf.States, queue.State(s))
		}
	}
	if err := qf.Validate(); err != nil {
		return qf, &ExitError{Code: ExitUsage, Err: err}
	}
	return qf, nil
}

func (f *filterFlags) any() bool {
	return len(f.domains)+len(f.notDomains)+len(f.rcpts)+len(f.notRcpts)+len(f.senders)+len(f.notSenders)+len(f.ids)+len(f.notIDs) > 0
}

// withQueue runs fn with a queue connection, under the command's timeout.
func (g *globals) withQueue(cmd *cobra.Command, fn func(ctx context.Context, q *queue.Queue) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
	defer cancel()
	q, err := g.connectQueue(ctx)
	if err != nil {
		return err
	}
	defer q.Close()
	return fn(ctx, q)
}

func (g *globals) connectQueue(ctx context.Context) (*queue.Queue, error) {
	q, err := queue.Connect(ctx, g.queueConfig())
	if err != nil {
		return nil, err
	}
	if err := q.Check(ctx); err != nil {
		q.Close()
		return nil, fmt.Errorf("%w (is NATS reachable at %s? set --nats-url)", err, queue.RedactURL(g.natsURL))
	}
	return q, nil
}

func newQueueCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Inspect and operate the mail queue (mailq, sendmail -q…)",
		Long: `Queue operations on JetStream, by sendmail's names:

  mailq                       mailfwdctl queue list
  mailq | wc -l               mailfwdctl queue stats
  sendmail -qR example.com    mailfwdctl queue flush --domain example.com     (or -R example.com: substring)
  sendmail -qS sender         mailfwdctl queue flush -S sender
  sendmail -qI qid            mailfwdctl queue flush -I qid
  sendmail -q!R seattle       mailfwdctl queue flush --not-recipient seattle
  mv mqueue omqueue           mailfwdctl queue hold --domain post.3.dk
  sendmail -oQ… -O Timeout.queuereturn=10d -qRpost.3.dk
                              mailfwdctl queue release --domain post.3.dk --extend 5d`,
	}
	cmd.AddCommand(newQueueList(g), newQueueStats(g), newQueueShow(g), newQueueFlush(g),
		newQueueHold(g), newQueueRelease(g), newQueueBounce(g), newQueuePurge(g), newQueueOrphans(g))
	return cmd
}

type listItem struct {
	QueueID     string    `json:"queue_id"`
	State       string    `json:"state"`
	Domain      string    `json:"domain"`
	Arrived     time.Time `json:"arrived"`
	Size        int64     `json:"size"`
	Sender      string    `json:"sender"`
	Recipients  []string  `json:"recipients"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Subject     string    `json:"subject"`
	Seq         uint64    `json:"seq"`
}

func itemOf(e queue.Entry) listItem {
	it := listItem{State: string(e.State), Domain: e.Domain(), Subject: e.Subject, Seq: e.Seq}
	if e.Env == nil {
		it.LastError = "undecodable envelope: " + e.Err.Error()
		return it
	}
	env := e.Env
	it.QueueID, it.Arrived, it.Size, it.Sender = env.QueueID, env.Arrived, env.Size, env.From
	it.Recipients, it.Attempts, it.LastError = env.Addrs(), env.Attempts, env.LastError
	if e.State == queue.StateDeferred {
		it.NextAttempt = env.NextAttempt
	}
	return it
}

func newQueueList(g *globals) *cobra.Command {
	var ff filterFlags
	var out printer
	var limit int
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls", "mailq"},
		Short:   "List queued messages (mailq)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := ff.filter()
			if err != nil {
				return err
			}
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				items := []listItem{}
				errStop := errors.New("limit")
				err := q.Scan(ctx, f, func(e queue.Entry) error {
					items = append(items, itemOf(e))
					if limit > 0 && len(items) >= limit {
						return errStop
					}
					return nil
				})
				if err != nil && !errors.Is(err, errStop) {
					return err
				}
				return out.print(g.out, items, func(tw *tabwriter.Writer) {
					if len(items) == 0 {
						fmt.Fprintln(tw, "Mail queue is empty")
						return
					}
					fmt.Fprintln(tw, "QUEUE-ID\tSTATE\tARRIVED\tSIZE\tATTEMPTS\tNEXT\tSENDER\tRECIPIENTS\tLAST-ERROR")
					for _, it := range items {
						next := "-"
						if !it.NextAttempt.IsZero() {
							next = time.Until(it.NextAttempt).Round(time.Second).String()
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t<%s>\t%s\t%s\n", it.QueueID, it.State,
							it.Arrived.Local().Format("Jan _2 15:04:05"), it.Size, it.Attempts, next, it.Sender,
							strings.Join(it.Recipients, ","), truncate(it.LastError, 60))
					}
					fmt.Fprintf(tw, "\nTotal: %d envelopes\n", len(items))
				})
			})
		},
	}
	ff.register(cmd, true)
	out.register(cmd)
	cmd.Flags().IntVar(&limit, "limit", 0, "stop after this many (0: all)")
	return cmd
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func newQueueStats(g *globals) *cobra.Command {
	var out printer
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Count queued messages by state and domain, with the oldest one's age since arrival (from subject counts, no scan)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				s, err := q.Stats(ctx)
				if err != nil {
					return err
				}
				return out.print(g.out, s, func(tw *tabwriter.Writer) {
					fmt.Fprintf(tw, "STATE\tCOUNT\tOLDEST\n")
					for _, st := range queue.AllStates {
						age := "-"
						if t, ok := s.Oldest[st]; ok && !t.IsZero() {
							age = maillog.Delay(time.Since(t))
						}
						fmt.Fprintf(tw, "%s\t%d\t%s\n", st, s.ByState[st], age)
					}
					fmt.Fprintf(tw, "total\t%d\t\n\n", s.Total)
					fmt.Fprintf(tw, "workers' consumer: %d waiting, %d being delivered\n\n", s.Pending, s.InFlight)
					fmt.Fprintf(tw, "DOMAIN\tREADY\tDEFERRED\tHELD\tFAILED\tTOTAL\n")
					for _, d := range s.ByDomain {
						fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", d.Domain, d.Counts[queue.StateReady], d.Counts[queue.StateDeferred], d.Counts[queue.StateHeld], d.Counts[queue.StateFailed], d.Total)
					}
					if len(s.Holds) > 0 {
						fmt.Fprintf(tw, "\nHELD DOMAIN\tSINCE\tREASON\n")
						for _, h := range s.Holds {
							fmt.Fprintf(tw, "%s\t%s\t%s\n", h.Domain, h.Since.Local().Format(time.RFC3339), h.Reason)
						}
					}
				})
			})
		},
	}
	out.register(cmd)
	return cmd
}

type showResult struct {
	QueueID   string       `json:"queue_id"`
	Envelopes []listDetail `json:"envelopes"`
	Headers   string       `json:"headers,omitempty"`
	BodyError string       `json:"body_error,omitempty"`
	// HeadersOmitted says why the headers are not shown (the body is in
	// the body store and no --blob-store was given).
	HeadersOmitted string `json:"headers_omitted,omitempty"`
}

type listDetail struct {
	listItem
	RecipientHistory []envelope.Recipient `json:"recipient_history"`
	ClientAddr       string               `json:"client_addr"`
	ClientHelo       string               `json:"client_helo"`
	MsgID            string               `json:"msgid"`
	ExpireAt         time.Time            `json:"expire_at,omitzero"`
	HeldAt           time.Time            `json:"held_at,omitzero"`
	FailedAt         time.Time            `json:"failed_at,omitzero"`
	Warned           bool                 `json:"warned"`
	inline           []byte
}

func newQueueShow(g *globals) *cobra.Command {
	var out printer
	var blobURL string
	cmd := &cobra.Command{
		Use:   "show QUEUE-ID",
		Short: "Show one message: envelope per domain, per-recipient history, body headers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			qid := args[0]
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				res := showResult{QueueID: qid, Envelopes: []listDetail{}}
				err := q.Scan(ctx, queue.Filter{IDs: []string{qid}}, func(e queue.Entry) error {
					if e.Env == nil || e.Env.QueueID != qid {
						return nil
					}
					res.Envelopes = append(res.Envelopes, listDetail{listItem: itemOf(e), RecipientHistory: e.Env.Recipients,
						ClientAddr: e.Env.ClientAddr, ClientHelo: e.Env.ClientHelo, MsgID: e.Env.MsgID,
						ExpireAt: e.Env.ExpireAt, HeldAt: e.Env.HeldAt, FailedAt: e.Env.FailedAt, Warned: e.Env.Warned, inline: e.Env.Body})
					for i, r := range e.Env.Recipients {
						res.Envelopes[len(res.Envelopes)-1].RecipientHistory[i].LastError = e.Env.RcptError(r)
					}
					return nil
				})
				if err != nil {
					return err
				}
				if len(res.Envelopes) == 0 {
					return &ExitError{Code: ExitNotFound, Err: fmt.Errorf("queue id %s is not in the queue (delivered, bounced or never accepted; grep the logs for %q)", qid, qid+":")}
				}
				if env0 := res.Envelopes[0]; env0.inline != nil {
					res.Headers = headerBlock(env0.inline)
				} else if blobURL != "" {
					store, err := blob.Open(ctx, blobURL)
					if err != nil {
						return &ExitError{Code: ExitUsage, Err: err}
					}
					if b, err := store.Get(ctx, res.Envelopes[0].QueueID); err != nil {
						res.BodyError = err.Error()
					} else {
						res.Headers = headerBlock(b)
					}
				} else {
					res.HeadersOmitted = "the body is in the body store; give --blob-store (env MAILFWD_BLOB_STORE) to show them"
				}
				return out.print(g.out, res, func(tw *tabwriter.Writer) {
					for _, d := range res.Envelopes {
						fmt.Fprintf(tw, "Queue ID:\t%s\nState:\t%s (%s)\nDomain:\t%s\nArrived:\t%s from %s [%s]\nSender:\t<%s>\nSize:\t%d\nMessage-ID:\t%s\nAttempts:\t%d\n",
							d.QueueID, d.State, d.Subject, d.Domain, d.Arrived.Local().Format(time.RFC1123Z), d.ClientHelo, d.ClientAddr, d.Sender, d.Size, d.MsgID, d.Attempts)
						if !d.NextAttempt.IsZero() {
							fmt.Fprintf(tw, "Next attempt:\t%s\n", d.NextAttempt.Local().Format(time.RFC1123Z))
						}
						if !d.ExpireAt.IsZero() {
							fmt.Fprintf(tw, "Expires:\t%s\n", d.ExpireAt.Local().Format(time.RFC1123Z))
						}
						if !d.HeldAt.IsZero() {
							fmt.Fprintf(tw, "Held since:\t%s\n", d.HeldAt.Local().Format(time.RFC1123Z))
						}
						if !d.FailedAt.IsZero() {
							fmt.Fprintf(tw, "Failed:\t%s: %s\n", d.FailedAt.Local().Format(time.RFC1123Z), d.LastError)
						}
						for _, r := range d.RecipientHistory {
							fmt.Fprintf(tw, "  to=<%s>\tattempts=%d\tlast: %s\n", r.Addr, r.Attempts, r.LastError)
						}
						fmt.Fprintln(tw)
					}
					if res.Headers != "" {
						fmt.Fprintf(tw, "Headers:\n%s", res.Headers)
					} else if res.BodyError != "" {
						fmt.Fprintf(tw, "Body: %s\n", res.BodyError)
					} else if res.HeadersOmitted != "" {
						fmt.Fprintf(tw, "Headers: not shown: %s\n", res.HeadersOmitted)
					}
				})
			})
		},
	}
	out.register(cmd)
	cmd.Flags().StringVar(&blobURL, "blob-store", os.Getenv("MAILFWD_BLOB_STORE"), "body store, to show the message headers (env MAILFWD_BLOB_STORE)")
	return cmd
}

func headerBlock(b []byte) string {
	s := string(b)
	if i := strings.Index(s, "\r\n\r\n"); i >= 0 {
		return s[:i+2]
	}
	if i := strings.Index(s, "\n\n"); i >= 0 {
		return s[:i+1]
	}
	return s
}

// opFlags are shared by the commands that change the queue.
type opFlags struct {
	dryRun bool
	yes    bool
}

func (o *opFlags) register(cmd *cobra.Command, confirm bool) {
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "show what would be changed, change nothing")
	if confirm {
		cmd.Flags().BoolVarP(&o.yes, "yes", "y", false, "do not ask for confirmation")
	}
}

// confirm asks on the terminal; without one, --yes is required.
func (g *globals) confirm(cmd *cobra.Command, o *opFlags, question string) error {
	if o.yes || o.dryRun {
		return nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); !ok || !term.IsTerminal(int(f.Fd())) {
		return usageError("refusing without --yes (no terminal to confirm on)")
	}
	fmt.Fprintf(g.errOut, "%s [y/N] ", question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return err
	}
	if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
		return &ExitError{Code: ExitFailure, Err: errors.New("aborted")}
	}
	return nil
}

// progress prints a line every 1000 items on stderr for long operations.
type progress struct {
	w    io.Writer
	verb string
	n    int
}

func (p *progress) tick() {
	p.n++
	if p.n%1000 == 0 {
		fmt.Fprintf(p.w, "%s %d…\n", p.verb, p.n)
	}
}

// collect scans first, so that operations act on a stable list.
func collect(ctx context.Context, q *queue.Queue, f queue.Filter) ([]queue.Entry, error) {
	var out []queue.Entry
	err := q.Scan(ctx, f, func(e queue.Entry) error { out = append(out, e); return nil })
	return out, err
}

func newQueueFlush(g *globals) *cobra.Command {
	var ff filterFlags
	var of opFlags
	cmd := &cobra.Command{
		Use:     "flush",
		Aliases: []string{"requeue"},
		Short:   "Make matching deferred messages due now (sendmail -qR/-qS/-qI, negatable)",
		Example: `  mailfwdctl queue flush --domain cwinters.com     # sendmail -qR cwinters.com
  mailfwdctl queue flush --not-recipient seattle  # sendmail -q!Rseattle
  mailfwdctl queue flush                          # sendmail -q: everything deferred`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := ff.filter(queue.StateDeferred)
			if err != nil {
				return err
			}
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				entries, err := collect(ctx, q, f)
				if err != nil {
					return err
				}
				p := progress{w: g.errOut, verb: "flushed"}
				changed := 0
				var au *audit
				if !of.dryRun {
					au = g.startAudit(ctx, q)
					defer au.close()
				}
				for _, e := range entries {
					if e.State != queue.StateDeferred {
						continue
					}
					if of.dryRun {
						fmt.Fprintf(g.out, "would flush %s to %s\n", e.Env.QueueID, e.Domain())
						continue
					}
					if err := q.MakeDue(ctx, e); err != nil {
						return fmt.Errorf("after %d of %d: %w", changed, len(entries), err)
					}
					changed++
					p.tick()
				}
				fmt.Fprintf(g.out, "matched %d deferred envelopes, made %d due now%s\n", len(entries), changed, dry(of.dryRun))
				if au != nil {
					au.action("queue.flush", filterString(f), changed, "")
				}
				return heldNote(ctx, g, q, f, len(entries))
			})
		},
	}
	ff.register(cmd, false)
	of.register(cmd, false)
	return cmd
}

// heldNote tells a flush that held mail matched too: flush leaves it where
// it is, a release moves it. With nothing deferred matched and some held,
// the flush did nothing the operator asked for: exit 1.
func heldNote(ctx context.Context, g *globals, q *queue.Queue, f queue.Filter, deferred int) error {
	f.States = []queue.State{queue.StateHeld}
	n, domains := 0, map[string]bool{}
	if err := q.Scan(ctx, f, func(e queue.Entry) error {
		n++
		domains[e.Domain()] = true
		return nil
	}); err != nil || n == 0 {
		return err
	}
	names := slices.Sorted(maps.Keys(domains))
	shown := names[:min(len(names), 5)]
	more := ""
	if len(names) > len(shown) {
		more = fmt.Sprintf(" and %d more domains", len(names)-len(shown))
	}
	how := "`mailfwdctl queue release --domain " + names[0] + "`"
	if len(names) > 1 {
		how += " (one per domain)"
	}
	fmt.Fprintf(g.out, "%d matching envelopes are held (%s%s): flush leaves held mail alone; release it with %s\n",
		n, strings.Join(shown, ", "), more, how)
	if deferred == 0 {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("nothing flushed: the matching mail is held")}
	}
	return nil
}

func dry(d bool) string {
	if d {
		return " (dry run)"
	}
	return ""
}

func newQueueHold(g *globals) *cobra.Command {
	var domain, reason string
	var of opFlags
	cmd := &cobra.Command{
		Use:   "hold --domain DOMAIN",
		Short: "Put a recipient domain on hold: its mail is moved aside, not attempted, and does not expire",
		Long: `Hold is the scalable form of moving /var/spool/mqueue aside when a destination is
down for days: mail for the domain (and its subdomains), queued now or arriving later,
waits on mail.held.<domain>.*, takes no worker capacity and does not expire.
Release it with "mailfwdctl queue release".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if domain == "" {
				return usageError("--domain is required")
			}
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				f := queue.Filter{Domains: []string{domain}, States: []queue.State{queue.StateDeferred}}
				entries, err := collect(ctx, q, f)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				if of.dryRun {
					fmt.Fprintf(g.out, "would hold %s and move %d deferred envelopes aside (dry run)\n", domain, len(entries))
					return nil
				}
				au := g.startAudit(ctx, q)
				defer au.close()
				h, err := q.SetHold(ctx, domain, reason)
				if err != nil {
					return err
				}
				p := progress{w: g.errOut, verb: "moved"}
				moved := 0
				for _, e := range entries {
					if e.Env == nil {
						continue
					}
					env := *e.Env
					if err := q.MoveToHeld(ctx, &env, "ctl"+fmt.Sprint(e.Seq)); err != nil {
						return fmt.Errorf("after %d: %w", moved, err)
					}
					if err := q.Remove(ctx, e); err != nil {
						return err
					}
					au.message(events.Held, e, "queue.hold", "domain "+h.Domain+" put on hold by "+au.actor, "", false)
					moved++
					p.tick()
				}
				fmt.Fprintf(g.out, "holding %s since %s: moved %d deferred envelopes aside; ready ones are moved as workers meet them\n",
					h.Domain, h.Since.Local().Format(time.RFC3339), moved)
				au.action("queue.hold", "domain="+h.Domain, moved, reason)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&domain, "domain", "", "recipient domain (and its subdomains)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown by queue stats")
	of.register(cmd, false)
	return cmd
}

func newQueueRelease(g *globals) *cobra.Command {
	var domain string
	var extend, queueReturn time.Duration
	var of opFlags
	cmd := &cobra.Command{
		Use:   "release --domain DOMAIN [--extend 5d]",
		Short: "Release a held domain: its mail is due now, its deadline moved by the time held (plus --extend)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if domain == "" {
				return usageError("--domain is required")
			}
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				f := queue.Filter{Domains: []string{domain}, States: []queue.State{queue.StateHeld}}
				if of.dryRun {
					entries, err := collect(ctx, q, f)
					if err != nil {
						return &ExitError{Code: ExitUsage, Err: err}
					}
					fmt.Fprintf(g.out, "would release %s: %d held envelopes due now, deadlines extended by their held time + %s (dry run)\n", domain, len(entries), extend)
					return nil
				}
				// The deadline is the workers' (their --queue-return), not a
				// guess of mailfwdctl's own.
				source := "mailfwdctl's --queue-return"
				if d, ok, err := q.WorkersQueueReturn(ctx); err != nil {
					fmt.Fprintf(g.errOut, "warning: %v; using --queue-return %s\n", err, queueReturn)
				} else if ok {
					if cmd.Flags().Changed("queue-return") && d != queueReturn {
						fmt.Fprintf(g.errOut, "note: the workers run with --queue-return %s; using that, not %s\n", d, queueReturn)
					}
					queueReturn, source = d, "the workers' --queue-return"
				} else {
					fmt.Fprintf(g.errOut, "warning: no worker has recorded its --queue-return; using %s\n", queueReturn)
				}
				au := g.startAudit(ctx, q)
				defer au.close()
				had, err := q.ClearHold(ctx, domain)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				now := time.Now().UTC()
				p := progress{w: g.errOut, verb: "released"}
				released := 0
				// Counted once each: an envelope a worker parked again in
				// the first pass is released again in the second.
				seen := map[string]bool{}
				// Two passes: workers may still park a message or two while they
				// learn that the hold is gone.
				for pass := 0; pass < 2; pass++ {
					if pass == 1 {
						time.Sleep(2 * time.Second)
					}
					entries, err := collect(ctx, q, f)
					if err != nil {
						return err
					}
					for _, e := range entries {
						if e.Env == nil {
							continue
						}
						env := *e.Env
						held := time.Duration(0)
						if !env.HeldAt.IsZero() {
							held = now.Sub(env.HeldAt)
						}
						env.ExpireAt = env.Deadline(queueReturn).Add(held + extend)
						env.HeldAt = time.Time{}
						env.NextAttempt = now
						if err := q.Requeue(ctx, e, &env); err != nil {
							return fmt.Errorf("after %d: %w", released, err)
						}
						if k := env.QueueID + " " + env.Domain; !seen[k] {
							seen[k] = true
							au.message(events.Released, queue.Entry{Env: &env}, "queue.release", "released by "+au.actor, "", false)
							released++
							p.tick()
						}
					}
				}
				state := "released"
				if !had {
					state = "was not on hold; released leftovers for"
				}
				fmt.Fprintf(g.out, "%s %s: %d envelopes due now (deadline: arrival + %s %s + held time + %s)\n",
					state, domain, released, source, queueReturn, extend)
				au.action("queue.release", "domain="+domain, released, fmt.Sprintf("extend=%s", extend))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&domain, "domain", "", "recipient domain (and its subdomains)")
	cmd.Flags().Var(config.DurationValue(&extend, 0), "extend", "extend the queue-return deadline further, e.g. 120h (sendmail -O Timeout.queuereturn)")
	cmd.Flags().Var(config.DurationValue(&queueReturn, 5*24*time.Hour), "queue-return", "fallback for the workers' --queue-return when no worker has recorded it")
	of.register(cmd, false)
	return cmd
}

func newQueueBounce(g *globals) *cobra.Command {
	var hostname, reason string
	cmd := g.removeCmd(&cobra.Command{
		Use:   "bounce",
		Short: "Return matching deferred or held messages to their senders now (DSN) and remove them",
	}, "body store (env MAILFWD_BLOB_STORE)", func(ctx context.Context, q *queue.Queue, store blob.Store, e queue.Entry) (string, error) {
		body := e.Env.Body
		if body == nil {
			if b, err := store.Get(ctx, e.Env.BodyKey); err == nil {
				body = b
			}
		}
		var rcpts []dsn.Recipient
		for _, r := range e.Env.Recipients {
			st := "5.0.0"
			if r.Status != "" {
				st = r.Status
			}
			rcpts = append(rcpts, dsn.Recipient{Final: r.Addr, Action: dsn.Failed, Status: st, Diagnostic: e.Env.RcptError(r), LastAttempt: time.Now()})
		}
		bs := bounce.Sender{Hostname: hostname, Bodies: store, Queue: q}
		qid, err := bs.Send(ctx, e.Env, body, rcpts, reason, time.Now())
		if errors.Is(err, bounce.ErrNotReturnable) {
			return "", nil
		}
		return qid, err
	})
	cmd.Flags().StringVar(&hostname, "hostname", config.Hostname(), "Reporting-MTA in the DSN")
	cmd.Flags().StringVar(&reason, "reason", "Message returned by the postmaster", "reason given to the sender")
	return cmd
}

func newQueuePurge(g *globals) *cobra.Command {
	return g.removeCmd(&cobra.Command{
		Use:   "purge",
		Short: "Delete matching deferred or held messages without notice",
	}, "body store, to delete the bodies too (env MAILFWD_BLOB_STORE)", nil)
}

// removeCmd finishes cmd (queue bounce, purge) as a command that removes
// the messages its filter flags match (at least one is required), with
// their bodies from the body store (--blob-store, described by blobUsage),
// after each (nil: nothing) has done what it must with each one.
func (g *globals) removeCmd(cmd *cobra.Command, blobUsage string, each func(context.Context, *queue.Queue, blob.Store, queue.Entry) (string, error)) *cobra.Command {
	var ff filterFlags
	var of opFlags
	var blobURL string
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if !ff.any() {
			return usageError("give at least one filter (--domain, -R, -S, -I, …)")
		}
		return g.removeMatching(cmd, &ff, &of, blobURL, cmd.Name(), each)
	}
	ff.register(cmd, true)
	of.register(cmd, true)
	cmd.Flags().StringVar(&blobURL, "blob-store", os.Getenv("MAILFWD_BLOB_STORE"), blobUsage)
	return cmd
}

// removeMatching runs bounce and purge: select deferred/held envelopes
// (ready ones are being delivered), confirm, act on each, remove it, and
// delete its body when it was the last envelope of its message.
func (g *globals) removeMatching(cmd *cobra.Command, ff *filterFlags, of *opFlags, blobURL, verb string,
	each func(context.Context, *queue.Queue, blob.Store, queue.Entry) (string, error)) error {
	f, err := ff.filter(queue.StateDeferred, queue.StateHeld, queue.StateFailed)
	if err != nil {
		return err
	}
	for _, s := range f.States {
		if s == queue.StateReady {
			return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s works on deferred and held mail; ready mail is being delivered (hold the domain first)", verb)}
		}
	}
	return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
		entries, err := collect(ctx, q, f)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			fmt.Fprintf(g.out, "matched 0 envelopes; nothing to %s\n", verb)
			return nil
		}
		if of.dryRun {
			for _, e := range entries {
				it := itemOf(e)
				fmt.Fprintf(g.out, "would %s %s (%s) to %s\n", verb, it.QueueID, it.State, strings.Join(it.Recipients, ","))
			}
			fmt.Fprintf(g.out, "matched %d envelopes (dry run)\n", len(entries))
			return nil
		}
		// The body store is needed only to read or delete a body kept there,
		// or to store a DSN (bounce); an inline body lives in the envelope.
		needStore := each != nil
		for _, e := range entries {
			needStore = needStore || (e.Env != nil && e.Env.BodyKey != "")
		}
		if needStore && blobURL == "" {
			return &ExitError{Code: ExitUsage, Err: fmt.Errorf("--blob-store is required to %s these %d envelopes (their bodies or the DSNs are kept there; env MAILFWD_BLOB_STORE)", verb, len(entries))}
		}
		if err := g.confirm(cmd, of, fmt.Sprintf("%s %d envelopes?", verb, len(entries))); err != nil {
			return err
		}
		var store blob.Store
		if needStore {
			if store, err = blob.Open(ctx, blobURL); err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
		}
		p := progress{w: g.errOut, verb: verb + "d"}
		done := 0
		au := g.startAudit(ctx, q)
		defer au.close()
		typ := events.OperatorPurged
		if verb == "bounce" {
			typ = events.OperatorBounced
		}
		for _, e := range entries {
			if e.Env == nil {
				if err := q.Remove(ctx, e); err != nil {
					return err
				}
				continue
			}
			var dsnQID string // the DSN a bounce sent
			if each != nil {
				if dsnQID, err = each(ctx, q, store, e); err != nil {
					return fmt.Errorf("after %d of %d: %w", done, len(entries), err)
				}
			}
			if err := q.Remove(ctx, e); err != nil {
				return fmt.Errorf("after %d of %d: %w", done, len(entries), err)
			}
			if last, err := q.ReleaseBody(ctx, e.Env); err == nil && last && e.Env.BodyKey != "" && store != nil {
				_ = store.Delete(ctx, e.Env.BodyKey)
			}
			au.final(typ, e, verb, dsnQID)
			done++
			p.tick()
		}
		fmt.Fprintf(g.out, "matched %d envelopes, %sd %d\n", len(entries), verb, done)
		au.action("queue."+verb, filterString(f), done, "")
		return nil
	})
}
