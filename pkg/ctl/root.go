// Package ctl implements mailfwdctl, the operator's command line: kubectl's
// conventions (-o, --dry-run, --yes), sendmail's vocabulary.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// Exit codes scripts can trust.
const (
	ExitOK       = 0
	ExitFailure  = 1 // the operation failed
	ExitUsage    = 2 // bad flags or arguments
	ExitRejected = 3 // the server refused (send: a recipient or the message was rejected)
	ExitNotFound = 4 // the thing asked for does not exist (queue show of an unknown id)
	// ExitInvalid = 5 (policy.go): a policy that does not validate
)

// ExitError carries an exit code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// usageError is a usage error (exit 2) saying msg.
func usageError(msg string) error { return &ExitError{Code: ExitUsage, Err: errors.New(msg)} }

type globals struct {
	natsURL      string
	natsCreds    string
	natsUser     string
	natsStoreDir string
	natsPassword config.Secret
	timeout      time.Duration
	// natsConfigured: a NATS URL was given (flag or env), so commands that
	// do not need NATS (policy writes) publish their audit events there.
	natsConfigured bool
	out            io.Writer
	errOut         io.Writer
}

// NewRoot builds the mailfwdctl command tree.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	g := &globals{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:           "mailfwdctl",
		Short:         "Operate mailfwd: the queue (mailq, sendmail -q…), test messages, bootstrap",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		g.natsConfigured = cmd.Flags().Changed("nats-url") || os.Getenv("MAILFWD_NATS_URL") != ""
	}
	root.SetOut(out)
	root.SetErr(errOut)
	pf := root.PersistentFlags()
	pf.StringVar(&g.natsURL, "nats-url", envOr("MAILFWD_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL (env MAILFWD_NATS_URL)")
	pf.StringVar(&g.natsCreds, "nats-creds", os.Getenv("MAILFWD_NATS_CREDS"), "NATS credentials file (env MAILFWD_NATS_CREDS)")
	pf.StringVar(&g.natsUser, "nats-user", os.Getenv("MAILFWD_NATS_USER"), "NATS user (env MAILFWD_NATS_USER); the quickstart's admin user is mailfwdctl")
	g.natsPassword = config.Secret(os.Getenv("MAILFWD_NATS_PASSWORD"))
	pf.Var(&g.natsPassword, "nats-password", "NATS password of --nats-user (env MAILFWD_NATS_PASSWORD, preferred: flags show in ps)")
	pf.StringVar(&g.natsStoreDir, "nats-store-dir", os.Getenv("MAILFWD_NATS_STORE_DIR"), "single node: the local nats-server's store_dir; queue operations that move mail flush it to disk before they remove the old copy (env MAILFWD_NATS_STORE_DIR; what the daemons' --nats-store-dir is)")
	pf.Var(config.DurationValue(&g.timeout, 30*time.Second), "timeout", "overall timeout of the command")
	root.AddCommand(newBootstrap(g), newSend(g), newQueueCmd(g), newPolicyCmd(g), newRouteCmd(g))
	root.AddCommand(newVersionCmd(g), newDoctorCmd(g), newUsersCmd(g), newDKIMCmd(g), newSRSCmd(g))
	root.AddCommand(newTraceCmd(g), newEventsCmd(g))
	root.AddCommand(newShapingCmd(g))
	root.AddCommand(newQuotaCmd(g))
	strictGroups(root)
	return root
}

// strictGroups makes every command that only groups others (queue, policy…)
// refuse an unknown subcommand with cobra's "Did you mean this?" and exit 2,
// as the root does; alone, it shows its help. Cobra's default for a group
// below the root prints help and succeeds, so `queue lst` looked fine.
func strictGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	if !c.HasSubCommands() || c.Runnable() || !c.HasParent() {
		return
	}
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = 2 // cobra's default, set only on the root's path
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
		}
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s\n\nRun '%s --help' for usage", msg, cmd.CommandPath())}
	}
	c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
}

// queueConfig is the connection every subcommand uses.
func (g *globals) queueConfig() queue.Config {
	return queue.Config{URL: g.natsURL, CredsFile: g.natsCreds, User: g.natsUser, Password: g.natsPassword.Reveal(), ClientName: "mailfwdctl",
		LocalStore: g.natsStoreDir}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func newBootstrap(g *globals) *cobra.Command {
	var blobURL string
	var ackWait time.Duration
	var replicas int
	var eventsMaxAge time.Duration
	var eventsMaxBytes int64
	var migrate bool
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Create or update the JetStream stream, consumer and KV bucket, and the body store bucket (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			qc := g.queueConfig()
			qc.AckWait, qc.Replicas = ackWait, replicas
			qc.EventsMaxAge, qc.EventsMaxBytes = eventsMaxAge, eventsMaxBytes
			q, err := queue.Connect(ctx, qc)
			if err != nil {
				return err
			}
			defer q.Close()
			boot := q.Bootstrap
			if migrate {
				boot = func(ctx context.Context) error { return q.Migrate(ctx, g.out) }
			}
			if err := boot(ctx); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "queue: stream, consumer and bucket ready on %s\n", queue.RedactURL(g.natsURL))
			fmt.Fprintf(g.out, "events: stream %s ready (kept %s, at most %d bytes)\n", events.DefaultStream, eventsMaxAge, eventsMaxBytes)
			if blobURL != "" {
				s, err := blob.Open(ctx, blobURL)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				if err := blob.Bootstrap(ctx, s); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "body store: ready\n")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&blobURL, "blob-store", os.Getenv("MAILFWD_BLOB_STORE"), "body store URL to bootstrap too (env MAILFWD_BLOB_STORE)")
	cmd.Flags().Var(config.DurationValue(&ackWait, 2*time.Minute), "ack-wait", "ack wait of the workers' consumer")
	cmd.Flags().IntVar(&replicas, "replicas", 1, "JetStream replicas")
	cmd.Flags().DurationVar(&eventsMaxAge, "events-max-age", queue.DefaultEventsMaxAge, "retention of the EVENTS stream by age (docs/events.md)")
	cmd.Flags().Int64Var(&eventsMaxBytes, "events-max-bytes", queue.DefaultEventsMaxBytes, "retention of the EVENTS stream by size; the oldest events go first")
	cmd.Flags().BoolVar(&migrate, "migrate", false, "move the queue out of a stream that lets publishers remove or multiply mail "+
		"(made by an earlier release: schedules on) into a new one; resumable (docs/nats-security.md)")
	return cmd
}

// Execute runs mailfwdctl and returns the process exit code.
func Execute(ctx context.Context, args []string, out, errOut io.Writer) int {
	return ExecuteIO(ctx, args, nil, out, errOut)
}

// ExecuteIO is Execute with standard input (nil: os.Stdin), for tests of
// commands that read it (users add --password-stdin).
func ExecuteIO(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) int {
	root := NewRoot(out, errOut)
	if in != nil {
		root.SetIn(in)
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(errOut, "mailfwdctl: %v\n", err)
	if ee, ok := err.(*ExitError); ok {
		return ee.Code
	}
	if isUsage(err) {
		return ExitUsage
	}
	return ExitFailure
}
