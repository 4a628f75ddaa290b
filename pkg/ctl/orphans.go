package ctl

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

func newQueueOrphans(g *globals) *cobra.Command {
	var out printer
	var of opFlags
	var blobURL string
	var minAge time.Duration
	var remove bool
	cmd := &cobra.Command{
		Use:   "orphans [--remove]",
		Short: "List (or remove) bodies and refs entries that no queued envelope refers to",
		Long: `Orphans are what an accept left behind when it failed without a clear answer
from NATS, or when a process died between its steps: a stored body, or the
refs entry of a multi-domain message, that no envelope in any state refers
to. Only entries older than --min-age count (an accept in progress is never
an orphan). The workers remove orphans on their own (--orphan-sweep-interval);
this shows what they will remove, or removes it now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if minAge < time.Minute {
				return usageError("--min-age must be at least 1m")
			}
			if blobURL == "" {
				return usageError("--blob-store is required (bodies are listed)")
			}
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				store, err := blob.Open(ctx, blobURL)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				orphans, err := q.Orphans(ctx, store, minAge)
				if err != nil {
					return err
				}
				if orphans == nil {
					orphans = []queue.Orphan{}
				}
				if !remove || of.dryRun {
					return out.print(g.out, orphans, func(tw *tabwriter.Writer) {
						fmt.Fprintln(tw, "KIND\tKEY\tSTORED\tAGE")
						for _, o := range orphans {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", o.Kind, o.Key, o.Since.Local().Format(time.RFC3339),
								time.Since(o.Since).Round(time.Second))
						}
						fmt.Fprintf(tw, "\nTotal: %d orphans older than %s\n", len(orphans), minAge)
					})
				}
				if len(orphans) == 0 {
					fmt.Fprintf(g.out, "no orphans older than %s\n", minAge)
					return nil
				}
				if err := g.confirm(cmd, &of, fmt.Sprintf("remove %d orphans?", len(orphans))); err != nil {
					return err
				}
				p := progress{w: g.errOut, verb: "removed"}
				for i, o := range orphans {
					if err := q.RemoveOrphan(ctx, store, o); err != nil {
						return fmt.Errorf("after %d of %d: %w", i, len(orphans), err)
					}
					p.tick()
				}
				fmt.Fprintf(g.out, "removed %d orphans older than %s\n", len(orphans), minAge)
				return nil
			})
		},
	}
	out.register(cmd)
	cmd.Flags().StringVar(&blobURL, "blob-store", os.Getenv("MAILFWD_BLOB_STORE"), "body store (env MAILFWD_BLOB_STORE)")
	cmd.Flags().Var(config.DurationValue(&minAge, time.Hour), "min-age", "only what is older than this (the workers' --orphan-min-age)")
	cmd.Flags().BoolVar(&remove, "remove", false, "remove them (asks, or --yes)")
	of.register(cmd, true)
	return cmd
}
