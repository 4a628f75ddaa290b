package ctl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/mxresolve"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/route"
)

type routeTarget struct {
	Address     string   `json:"address"`
	Domain      string   `json:"domain"`
	Via         string   `json:"via"`                   // "senderroutes", "mailertable" or "mx"
	Sender      string   `json:"sender"`                // the envelope sender it leaves with
	SenderSteps []string `json:"senderSteps,omitempty"` // genericstable, masquerade, SRS
	Rule        string   `json:"rule,omitempty"`        // mailertable key → entry
	MX          []mxHost `json:"mx,omitempty"`          // MX hosts in preference order
	Hops        []string `json:"hops,omitempty"`        // addresses the worker tries, in order
	Action      string   `json:"action"`                // deliver, bounce, defer
	Status      string   `json:"status,omitempty"`      // enhanced status for bounce/defer
	Reason      string   `json:"reason,omitempty"`      // why
}

type mxHost struct {
	Pref  uint16   `json:"pref"`
	Name  string   `json:"name"`
	Addrs []string `json:"addrs"`
}

type routeResult struct {
	Address   string        `json:"address"`
	Client    string        `json:"client"`
	Sender    string        `json:"sender"`
	Access    string        `json:"access"` // accept, reject, discard
	Reply     string        `json:"reply,omitempty"`
	Rule      string        `json:"rule"`
	Expansion []string      `json:"expansion,omitempty"`
	Targets   []routeTarget `json:"targets"`
}

func newRouteCmd(g *globals) *cobra.Command {
	var kf kubeFlags
	var out printer
	var client, clientHost, from, authUser string
	var dns []string
	var port uint16
	var routes []string
	cmd := &cobra.Command{
		Use:   "route ADDRESS…",
		Short: "Show what mailfwd would do with recipient addresses (sendmail -bt / -bv)",
		Long: `For each address: the access decision for the given client and sender, the alias /
virtusertable expansion, then for each resulting address the mailertable route or the MX
hosts in preference order with their addresses, and what a worker would do.`,
		Example: `  mailfwdctl route --policy-dir var/policy --client 198.51.100.7 --from a@mms.mnc003.mcc238.gprs +4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs
  mailfwdctl route -n mail --dns-server 10.96.0.10:53 postmaster@example.com`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ip, err := netip.ParseAddr(client)
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: fmt.Errorf("--client %q: %w", client, err)}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			st, err := kf.store()
			if err != nil {
				return err
			}
			files, _, err := st.Load(ctx)
			if err != nil {
				return err
			}
			if kf.dir != "" { // a pod's policy directory holds the Secret's keys too (srs, authinfo)
				if err := readSecretKeys(kf.dir, files); err != nil {
					return err
				}
			}
			pol, err := validate(files)
			if err != nil {
				return err
			}
			extra := route.NewTable()
			for _, r := range routes {
				k, v, ok := strings.Cut(r, "=")
				if !ok {
					return &ExitError{Code: ExitUsage, Err: fmt.Errorf("--route %q: want domain=destination", r)}
				}
				if err := extra.Add(k, v); err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
			}
			res, err := mxresolve.New(mxresolve.Config{Servers: dns, Timeout: 5 * time.Second})
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
			table := pol.Mailertable.Merge(extra)
			router := &route.Router{Table: table, Resolver: res, Port: port, BySender: pol.SenderRoute}
			var results []routeResult
			for _, a := range args {
				results = append(results, explain(ctx, pol, table, router, res, policy.Client{Addr: ip, Hostname: clientHost}, from, authUser, a))
			}
			return out.print(g.out, results, func(tw *tabwriter.Writer) {
				for _, r := range results {
					fmt.Fprintf(tw, "<%s>\n", r.Address)
					fmt.Fprintf(tw, "  access\t%s\t(client %s, sender <%s>: %s)\n", r.Access+replySuffix(r.Reply), r.Client, r.Sender, r.Rule)
					for _, x := range r.Expansion {
						fmt.Fprintf(tw, "  expand\t%s\n", x)
					}
					for _, t := range r.Targets {
						fmt.Fprintf(tw, "  -> <%s>\n", t.Address)
						for _, st := range t.SenderSteps {
							fmt.Fprintf(tw, "     sender\t%s\n", st)
						}
						if t.Rule != "" {
							fmt.Fprintf(tw, "     route\t%s\n", t.Rule)
						}
						for _, m := range t.MX {
							fmt.Fprintf(tw, "     mx\t%d %s %s\n", m.Pref, m.Name, strings.Join(m.Addrs, " "))
						}
						switch t.Action {
						case "deliver":
							fmt.Fprintf(tw, "     worker\tdeliver over SMTP to %s\n", strings.Join(t.Hops, ", then "))
						default:
							fmt.Fprintf(tw, "     worker\t%s %s: %s\n", t.Action, t.Status, t.Reason)
						}
					}
				}
			})
		},
	}
	kf.register(cmd.Flags())
	f := cmd.Flags()
	out.register(cmd)
	f.StringVar(&client, "client", "127.0.0.1", "client IP address the mail would come from")
	f.StringVar(&clientHost, "client-hostname", "", "the client's (verified) host name, for Connect: name rules")
	f.StringVar(&from, "from", "postmaster@"+config.MailDomain(), "envelope sender")
	f.StringVar(&authUser, "auth-user", "", "the SMTP AUTH user who submits the mail (senderroutes auth: entries)")
	f.StringSliceVar(&dns, "dns-server", nil, "DNS server host:port (default /etc/resolv.conf)")
	f.Uint16Var(&port, "smtp-port", 25, "destination port, as the workers' --smtp-port")
	f.StringArrayVar(&routes, "route", nil, "extra static routes, as the workers' --route")
	return cmd
}

func replySuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}

func explain(ctx context.Context, pol *policy.Policy, table *route.Table, router *route.Router, res *mxresolve.Resolver, c policy.Client, from, authUser, rcpt string) routeResult {
	r := routeResult{Address: rcpt, Client: c.Addr.String(), Sender: from, Access: "accept"}
	if c.Hostname != "" {
		r.Client += " (" + c.Hostname + ")"
	}
	v := pol.CheckRcpt(c, from, rcpt)
	r.Rule = v.Rule
	switch {
	case v.Reject != nil:
		r.Access, r.Reply = "reject", v.Reject.String()
		return r
	case v.Discard:
		r.Access = "discard"
		return r
	}
	x := pol.Expand(rcpt)
	r.Expansion = x.Steps
	if x.Reject != nil {
		r.Access, r.Reply = "reject", x.Reject.String()
		return r
	}
	for _, a := range x.Addrs {
		// The worker routes by the envelope sender as the ingress stored it
		// (rewritten), as Postfix's sender_dependent_relayhost_maps sees the
		// sender after canonical rewriting.
		sender, steps := pol.EnvelopeSender(from, policy.Forwarded(rcpt, a))
		t := explainTarget(ctx, table, router, res, route.Request{Sender: sender, AuthUser: authUser}, a)
		t.Sender, t.SenderSteps = sender, steps
		r.Targets = append(r.Targets, t)
	}
	return r
}

func explainTarget(ctx context.Context, table *route.Table, router *route.Router, res *mxresolve.Resolver, req route.Request, addr string) routeTarget {
	t := routeTarget{Address: addr, Via: "mx"}
	a, err := address.Parse(addr)
	if err != nil {
		t.Action, t.Status, t.Reason = "bounce", "5.1.3", err.Error()
		return t
	}
	t.Domain = a.ASCII
	req.Domain = a.ASCII
	hops, why, err := router.RouteFor(ctx, req)
	if key, e, ok := table.LookupKey(a.ASCII); strings.HasPrefix(why, policy.KeySenderRoutes) {
		t.Via, t.Rule = "senderroutes", why
	} else if ok {
		t.Via, t.Rule = "mailertable", key+" "+e.String()
	} else if !strings.HasPrefix(a.ASCII, "[") {
		if mxs, err := res.LookupMX(ctx, a.ASCII); err == nil {
			for _, m := range mxs {
				h := mxHost{Pref: m.Pref, Name: m.Name}
				for _, ad := range m.Addrs {
					h.Addrs = append(h.Addrs, ad.String())
				}
				t.MX = append(t.MX, h)
			}
		}
	}
	if err != nil {
		var re *route.Error
		t.Action, t.Status, t.Reason = "defer", "4.4.3", err.Error()
		if errors.As(err, &re) {
			t.Status, t.Reason = re.Enhanced, re.Error()
			if re.Permanent {
				t.Action = "bounce"
			}
		}
		return t
	}
	t.Action = "deliver"
	for _, h := range hops {
		t.Hops = append(t.Hops, fmt.Sprintf("%s [%s]", strings.Trim(h.Name, "[]"), h.Addr))
	}
	return t
}
