package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

func newShapingCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shaping",
		Short: "See and steer the fleet-wide destination limits (slots in use, rate, suspensions)",
		Long: `The workers keep each destination's limits (the policy's shaping key and their
--domain-limit flags) for the whole fleet in the NATS bucket MAIL_SHAPING. 'status'
shows what the fleet holds now; 'resume' lifts a suspension a reply rule set.

  mailfwdctl shaping status
  mailfwdctl shaping resume example.com
  mailfwdctl shaping resume '[relay.provider.example]'`,
	}
	cmd.AddCommand(newShapingStatus(g), newShapingResume(g))
	return cmd
}

// shapingItem is one destination's fleet state.
type shapingItem struct {
	Destination    string     `json:"destination"`
	SlotsInUse     int        `json:"slotsInUse"`
	RateNextFreeMs int64      `json:"rateNextFreeMs,omitempty"` // the next message may start in this long (GCRA)
	ConnNextFreeMs int64      `json:"connNextFreeMs,omitempty"` // the next new connection may open in this long (new-conns GCRA)
	SuspendedUntil *time.Time `json:"suspendedUntil,omitempty"`
	Why            string     `json:"why,omitempty"`
	By             string     `json:"by,omitempty"`
}

// shapingState groups the bucket's keys by destination.
func shapingState(kv map[string][]byte, now time.Time) []shapingItem {
	byDest := map[string]*shapingItem{}
	get := func(key string) *shapingItem {
		it := byDest[key]
		if it == nil {
			it = &shapingItem{Destination: shaping.DestName(key)}
			byDest[key] = it
		}
		return it
	}
	for k, v := range kv {
		kind, rest, _ := strings.Cut(k, ".")
		switch kind {
		case "l": // l.<dest>.<slot>
			if i := strings.LastIndexByte(rest, '.'); i > 0 {
				get(rest[:i]).SlotsInUse++
			}
		case "r": // r.<dest>: the message pace's theoretical arrival time
			get(rest).RateNextFreeMs = nextFreeMs(v, now)
		case "c": // c.<dest>: the new-connection pace's
			get(rest).ConnNextFreeMs = nextFreeMs(v, now)
		case "s":
			var sp shaping.Suspension
			if json.Unmarshal(v, &sp) == nil && now.Before(sp.Until) {
				it := get(rest)
				u := sp.Until
				it.SuspendedUntil, it.Why, it.By = &u, sp.Why, sp.By
			}
		}
	}
	out := make([]shapingItem, 0, len(byDest))
	for _, it := range byDest {
		out = append(out, *it)
	}
	slices.SortFunc(out, func(a, b shapingItem) int { return strings.Compare(a.Destination, b.Destination) })
	return out
}

// nextFreeMs is how long from now until a GCRA value's debt is paid off
// (0: none, or unreadable).
func nextFreeMs(v []byte, now time.Time) int64 {
	if tat := shaping.ReadTATs(v, 1)[0]; tat.After(now) {
		return tat.Sub(now).Milliseconds()
	}
	return 0
}

func (g *globals) withShaping(cmd *cobra.Command, fn func(ctx context.Context, b shaping.Bucket) error) error {
	return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
		b, err := q.ShapingBucket(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, b)
	})
}

func newShapingStatus(g *globals) *cobra.Command {
	out := printer{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each limited destination's slots in use, rate state and suspension (and why)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withShaping(cmd, func(ctx context.Context, b shaping.Bucket) error {
				kv, err := b.List(ctx, "")
				if err != nil {
					return err
				}
				items := shapingState(kv, time.Now())
				return out.print(g.out, items, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "DESTINATION\tSLOTS IN USE\tRATE NEXT FREE\tNEW CONN NEXT FREE\tSUSPENDED UNTIL\tWHY")
					ms := func(n int64) string {
						if n <= 0 {
							return "-"
						}
						return (time.Duration(n) * time.Millisecond).String()
					}
					for _, it := range items {
						until := "-"
						if it.SuspendedUntil != nil {
							until = it.SuspendedUntil.UTC().Format(time.RFC3339) + " (by " + it.By + ")"
						}
						fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", it.Destination, it.SlotsInUse, ms(it.RateNextFreeMs), ms(it.ConnNextFreeMs), until, it.Why)
					}
				})
			})
		},
	}
	out.register(cmd)
	return cmd
}

func newShapingResume(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume DESTINATION",
		Short: "Lift a destination's suspension (example.com, or [relay.example.net] for a next hop)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := shaping.DestKey(args[0])
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
			return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
				b, err := q.ShapingBucket(ctx)
				if err != nil {
					return err
				}
				had, err := shaping.Resume(ctx, b, key)
				if err != nil {
					return err
				}
				au := g.startAudit(ctx, q)
				defer au.close()
				au.action(actionOf(cmd), shaping.DestName(key), boolInt(had), "")
				if !had {
					fmt.Fprintf(g.out, "%s was not suspended\n", shaping.DestName(key))
					return nil
				}
				fmt.Fprintf(g.out, "resumed %s (by %s); its waiting mail comes due when the suspension would have ended, or now with: mailfwdctl queue flush --domain %s\n", shaping.DestName(key), who(), shaping.DestName(key))
				return nil
			})
		},
	}
}
