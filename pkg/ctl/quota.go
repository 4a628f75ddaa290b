package ctl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
)

func newQuotaCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quota",
		Short: "See and reset the ingress fleet's sender quotas (counts per sender domain and AUTH user)",
		Long: `The ingress counts every accepted message against the quota of its sender domain and
of its AUTH user (the policy's quota key, and the ingress's --sender-quota/--user-quota
defaults; docs/quotas.md) for the whole fleet, in the NATS bucket MAIL_QUOTAS. 'status'
shows each count there: what is used and left now of each limit, and when it is full
again; 'reset' clears one sender's count, so it may send its whole quota again.

  mailfwdctl quota status --policy-dir /etc/mailfwd/policy --sender-quota hourly=2000
  mailfwdctl quota status -o json
  mailfwdctl quota reset example.com
  mailfwdctl quota reset user:alice`,
	}
	cmd.AddCommand(newQuotaStatus(g), newQuotaReset(g))
	return cmd
}

// quotaPace is one limit of a count as it stands now.
type quotaPace struct {
	Limit    string     `json:"limit,omitempty"` // "10/s, burst 10", "5000/hour"; absent: not known here
	Used     *int       `json:"used,omitempty"`  // messages counted and not paid back yet
	Left     *int       `json:"left,omitempty"`  // messages it lets through now
	NextInMs int64      `json:"nextInMs,omitempty"`
	FullAt   *time.Time `json:"fullAt,omitempty"` // when the whole limit is available again; absent: now
}

// quotaItem is one sender's count in MAIL_QUOTAS.
type quotaItem struct {
	Name   string     `json:"name"`            // as quota reset takes it: example.com, user:alice
	Rule   string     `json:"rule,omitempty"`  // the rule it counts under: example.com, *, user:alice, user:*; absent: none now
	Limit  string     `json:"limit,omitempty"` // the rule's quota: rate=10/s,hourly=5000
	Rate   *quotaPace `json:"rate,omitempty"`
	Hourly *quotaPace `json:"hourly,omitempty"`
	FullAt *time.Time `json:"fullAt,omitempty"` // when every limit is full again; absent: now
}

// quotaState reads the bucket's values under rules (nil: the limits are
// not known here; only when each count is paid off is). odd are the keys
// no ingress makes (written by hand, or with a stolen credential).
func quotaState(kv map[string][]byte, rules *policy.Quotas, now time.Time) (items []quotaItem, odd []string) {
	out := make([]quotaItem, 0, len(kv))
	for k, v := range kv {
		name, ok := policy.QuotaKeyName(k)
		if !ok {
			odd = append(odd, k)
			continue
		}
		it := quotaItem{Name: name}
		// The value's paces are always two: the rate's and the hourly count's.
		paces := make([]shaping.Pace, 2)
		var lim *policy.QuotaLimit
		if r, ok := rules.RuleOf(k); ok {
			it.Rule, it.Limit, lim = r.Rule, r.Limit.String(), &r.Limit
			paces = r.Limit.Paces()
		}
		tats := shaping.ReadTATs(v, len(paces))
		for i, tat := range tats {
			var p *quotaPace
			switch {
			case lim != nil && paces[i].Rate > 0:
				st := paces[i].State(tat, now)
				p = &quotaPace{Limit: lim.Describe(i), Used: &st.Used, Left: &st.Left, NextInMs: st.NextIn.Milliseconds()}
				if i == 0 {
					p.Limit += ", burst " + strconv.Itoa(paces[i].Burst)
				}
			case lim == nil && tat.After(now):
				p = &quotaPace{}
			}
			if p == nil {
				continue
			}
			if tat.After(now) {
				t := tat.UTC().Truncate(time.Second)
				p.FullAt = &t
				if it.FullAt == nil || t.After(*it.FullAt) {
					it.FullAt = &t
				}
			}
			if i == 0 {
				it.Rate = p
			} else {
				it.Hourly = p
			}
		}
		out = append(out, it)
	}
	slices.SortFunc(out, func(a, b quotaItem) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(odd)
	return out, odd
}

func (g *globals) withQuotas(cmd *cobra.Command, fn func(ctx context.Context, q *queue.Queue, b shaping.Bucket) error) error {
	return g.withQueue(cmd, func(ctx context.Context, q *queue.Queue) error {
		b, err := q.QuotaBucket(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, q, b)
	})
}

// quotaDefaults parses the ingress's --sender-quota and --user-quota
// (nil: not given).
func quotaDefaults(sender, user string) (s, u *policy.QuotaLimit, err error) {
	def := func(flag, v string) (*policy.QuotaLimit, error) {
		if v == "" {
			return nil, nil
		}
		l, err := policy.ParseQuotaLimit(v)
		if err != nil {
			return nil, &ExitError{Code: ExitUsage, Err: fmt.Errorf("--%s %q: %w", flag, v, err)}
		}
		return &l, nil
	}
	if s, err = def("sender-quota", sender); err != nil {
		return nil, nil, err
	}
	u, err = def("user-quota", user)
	return s, u, err
}

// quotaPolicy reads the policy's quota key (the ConfigMap or --policy-dir).
func quotaPolicy(ctx context.Context, kf *kubeFlags) (*policy.Quotas, string, error) {
	st, err := kf.store()
	if err != nil {
		return nil, "", err
	}
	files, _, err := st.Load(ctx)
	if err != nil {
		return nil, "", err
	}
	p, err := policy.Parse(map[string][]byte{policy.KeyQuota: files[policy.KeyQuota]})
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", st.Where(), err)
	}
	return p.Quotas, st.Where(), nil
}

func newQuotaStatus(g *globals) *cobra.Command {
	out := printer{}
	var kf kubeFlags
	var senderQuota, userQuota string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each sender's count: used and left now per limit (rate, hourly), and when it is full again",
		Long: `Lists every count in MAIL_QUOTAS (a count expires once it is paid off). The limits come
from the policy's quota key (the ConfigMap, or --policy-dir) and the ingress's defaults,
which only its flags know: give the same --sender-quota and --user-quota (or env
MAILFWD_SENDER_QUOTA, MAILFWD_USER_QUOTA; chart: ingress.senderQuota, ingress.userQuota).
A count no rule makes now (the policy changed since) shows no rule and only when it is full
again; when the policy cannot be read, a warning says so and the flags' limits alone apply.`,
		Example: `  mailfwdctl quota status
  mailfwdctl quota status -n mail --sender-quota hourly=2000 --user-quota rate=2/s,hourly=500
  mailfwdctl quota status --policy-dir var/policy -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sender, user, err := quotaDefaults(senderQuota, userQuota)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			rules, where, err := quotaPolicy(ctx, &kf)
			cancel()
			switch {
			case err != nil:
				fmt.Fprintf(g.errOut, "warning: the policy cannot be read (%v); the limits shown are the flags' only\n", err)
				rules = policy.NewQuotas().WithDefaults(sender, user)
			default:
				rules = rules.WithDefaults(sender, user)
			}
			if rules.Empty() {
				fmt.Fprintf(g.errOut, "warning: no quota in %s and no --sender-quota/--user-quota given: the limits are not known here; showing when each count is full again only\n", cmp.Or(where, "the policy"))
			}
			return g.withQuotas(cmd, func(ctx context.Context, _ *queue.Queue, b shaping.Bucket) error {
				kv, err := b.List(ctx, "")
				if err != nil {
					return err
				}
				items, odd := quotaState(kv, rules, time.Now())
				if len(odd) > 0 {
					// Quoted: a key published on the raw subject may hold any byte.
					quoted := make([]string, len(odd))
					for i, k := range odd {
						quoted[i] = strconv.QuoteToASCII(k)
					}
					fmt.Fprintf(g.errOut, "warning: %d keys in %s are no sender's count (not made by an ingress): %s\n", len(odd), shaping.QuotaBucketName, strings.Join(quoted, " "))
				}
				return out.print(g.out, items, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAME\tRULE\tLIMIT\tRATE USED/LEFT\tHOURLY USED/LEFT\tNEXT IN\tFULL AGAIN")
					for _, it := range items {
						rule, limit, full := it.Rule, it.Limit, "now"
						if rule == "" {
							rule, limit = "-", "?"
						}
						if it.FullAt != nil {
							full = it.FullAt.Format(time.RFC3339)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.Name, rule, limit, it.Rate.usedLeft(), it.Hourly.usedLeft(), it.nextIn(), full)
					}
				})
			})
		},
	}
	kf.register(cmd.Flags())
	cmd.Flags().StringVar(&senderQuota, "sender-quota", os.Getenv("MAILFWD_SENDER_QUOTA"), "the ingress's --sender-quota (its \"*\" default), to know the limit of sender domains counted under it (env MAILFWD_SENDER_QUOTA)")
	cmd.Flags().StringVar(&userQuota, "user-quota", os.Getenv("MAILFWD_USER_QUOTA"), "the ingress's --user-quota (its \"user:*\" default) (env MAILFWD_USER_QUOTA)")
	out.register(cmd)
	return cmd
}

// usedLeft is a limit's table cell: "3/0", "-" without the limit.
func (p *quotaPace) usedLeft() string {
	if p == nil || p.Used == nil {
		return "-"
	}
	return strconv.Itoa(*p.Used) + "/" + strconv.Itoa(*p.Left)
}

// nextIn is how long until the next message fits: "0s" now, "?" when the
// limits are not known.
func (it quotaItem) nextIn() string {
	if it.Rule == "" {
		return "?"
	}
	var ms int64
	for _, p := range []*quotaPace{it.Rate, it.Hourly} {
		if p != nil {
			ms = max(ms, p.NextInMs)
		}
	}
	d := time.Duration(ms) * time.Millisecond
	if d >= time.Minute {
		d = d.Round(time.Second)
	}
	return d.String()
}

func newQuotaReset(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reset NAME",
		Short: "Clear one sender's count (a domain as status names it, or user:NAME): it may send its whole quota again",
		Long: `Removes the sender's count from MAIL_QUOTAS: every ingress starts a new one at its next
message, so the sender may send its whole quota again (e.g. after an incident, once the
cause is fixed). The quota itself stays: change the policy's quota key for that. NAME is
as 'quota status' shows it: the rule's domain (example.com also counts its subdomains),
a sender domain counted under "*", or user:NAME. The reset is an audit line and event.`,
		Example: `  mailfwdctl quota reset example.com
  mailfwdctl quota reset user:alice`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := policy.QuotaNameKey(args[0])
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
			name, _ := policy.QuotaKeyName(key)
			return g.withQuotas(cmd, func(ctx context.Context, q *queue.Queue, b shaping.Bucket) error {
				val, _, err := b.Get(ctx, key)
				had := err == nil
				if err != nil && !errors.Is(err, shaping.ErrNotFound) {
					return err
				}
				if had {
					if err := b.Delete(ctx, key, 0); err != nil {
						return err
					}
				}
				au := g.startAudit(ctx, q)
				defer au.close()
				if !had {
					au.action(actionOf(cmd), name, 0, "no count")
					fmt.Fprintf(g.out, "%s has no count (nothing to reset; see mailfwdctl quota status)\n", name)
					return nil
				}
				au.action(actionOf(cmd), name, 1, "count cleared; it was "+paidOff(val, time.Now()))
				fmt.Fprintf(g.out, "reset %s: its count is cleared; its next message starts a new one\n", name)
				return nil
			})
		},
	}
}

// paidOff says when a count's value would have been paid off: "full
// again at T", or "full" when it already was.
func paidOff(val []byte, now time.Time) string {
	var last time.Time
	for _, t := range shaping.ReadTATs(val, 2) {
		if t.After(last) {
			last = t
		}
	}
	if !last.After(now) {
		return "full"
	}
	return "full again at " + last.UTC().Truncate(time.Second).Format(time.RFC3339)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
