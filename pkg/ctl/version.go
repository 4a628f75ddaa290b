package ctl

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/control"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

type versionReport struct {
	Client   control.Build   `json:"client"`
	Pods     []control.Build `json:"pods"`
	NATS     *natsServer     `json:"nats,omitempty"`
	Stream   *streamSummary  `json:"stream,omitempty"`
	Consumer *consumerSum    `json:"consumer,omitempty"`
	Errors   []string        `json:"errors,omitempty"`
}

type natsServer struct {
	URL       string `json:"url"`
	Version   string `json:"version"`
	Name      string `json:"name"`
	ID        string `json:"id"`
	Cluster   string `json:"cluster,omitempty"`
	JetStream bool   `json:"jetstream"`
	// API level of the JetStream API the server speaks.
	APILevel int `json:"api_level,omitempty"`
}

type streamSummary struct {
	Name              string        `json:"name"`
	Subjects          []string      `json:"subjects"`
	Retention         string        `json:"retention"`
	Storage           string        `json:"storage"`
	Replicas          int           `json:"replicas"`
	Duplicates        time.Duration `json:"duplicate_window"`
	AllowMsgSchedules bool          `json:"allow_msg_schedules"`
	AllowDirect       bool          `json:"allow_direct"`
	Messages          uint64        `json:"messages"`
	Bytes             uint64        `json:"bytes"`
	Leader            string        `json:"leader,omitempty"`
	Created           time.Time     `json:"created"`
}

type consumerSum struct {
	Name          string        `json:"name"`
	FilterSubject string        `json:"filter_subject"`
	AckPolicy     string        `json:"ack_policy"`
	AckWait       time.Duration `json:"ack_wait"`
	MaxDeliver    int           `json:"max_deliver"`
	MaxAckPending int           `json:"max_ack_pending"`
	Pending       uint64        `json:"pending"`
	AckPending    int           `json:"ack_pending"`
}

// dialNATS opens a plain NATS connection for the control subject, failing
// fast (no retry) so a wrong URL is an error now, not a hang.
func (g *globals) dialNATS(name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.Timeout(5 * time.Second)}
	auth, err := g.queueConfig().AuthOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	nc, err := nats.Connect(g.natsURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("NATS %s: %w (set --nats-url, --nats-creds)", redactNATSURL(g.natsURL), err)
	}
	return nc, nil
}

// redactNATSURL hides passwords in a comma-separated list of NATS URLs.
func redactNATSURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			parts[i] = u.Redacted()
		} else {
			parts[i] = "(unparsable URL)"
		}
	}
	return strings.Join(parts, ",")
}

func newVersionCmd(g *globals) *cobra.Command {
	var out printer
	var wait time.Duration
	var clientOnly bool
	var maxReplies int
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Versions of mailfwdctl, of every running ingress and worker, of the NATS server; the stream and consumer (sendmail -d0 -bt)",
		Long: `Asks every ingress and worker pod over NATS (a request on mailfwd.control.version;
each pod answers, replies are gathered for --wait), then shows the NATS server's version
and the JetStream stream and consumer as they are configured now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxReplies < 1 || wait <= 0 {
				return usageError("--max-replies must be at least 1 and --wait positive")
			}
			rep := versionReport{Client: control.Local("mailfwdctl"), Pods: []control.Build{}}
			var failed error
			if !clientOnly {
				ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
				defer cancel()
				failed = g.serverVersions(ctx, wait, maxReplies, &rep)
			}
			if err := out.print(g.out, rep, func(tw *tabwriter.Writer) { printVersion(tw, rep) }); err != nil {
				return err
			}
			return failed
		},
	}
	out.register(cmd)
	cmd.Flags().Var(config.DurationValue(&wait, time.Second), "wait", "how long to gather the pods' replies")
	cmd.Flags().BoolVar(&clientOnly, "client", false, "only mailfwdctl's own version (no NATS)")
	cmd.Flags().IntVar(&maxReplies, "max-replies", control.DefaultMaxReplies, "pods' replies kept at most")
	return cmd
}

func (g *globals) serverVersions(ctx context.Context, wait time.Duration, maxReplies int, rep *versionReport) error {
	nc, err := g.dialNATS("mailfwdctl version")
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return err
	}
	defer nc.Close()
	rep.NATS = &natsServer{URL: nc.ConnectedUrlRedacted(), Version: nc.ConnectedServerVersion(), Name: nc.ConnectedServerName(),
		ID: nc.ConnectedServerId(), Cluster: nc.ConnectedClusterName()}
	pods, err := control.Gather(ctx, nc, control.VersionSubject, wait, maxReplies)
	if err != nil {
		rep.Errors = append(rep.Errors, "pods: "+err.Error())
	}
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Component != pods[j].Component {
			return pods[i].Component < pods[j].Component
		}
		return pods[i].Host < pods[j].Host
	})
	rep.Pods = pods
	qc := g.queueConfig()
	qc.ClientName = "mailfwdctl version"
	q, err := queue.Connect(ctx, qc)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return nil
	}
	defer q.Close()
	l, _, err := q.Verify(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return nil
	}
	rep.NATS.JetStream = l.Account != nil
	if l.Account != nil {
		rep.NATS.APILevel = l.Account.API.Level
	}
	if s := l.Stream; s != nil {
		rep.Stream = &streamSummary{Name: s.Config.Name, Subjects: s.Config.Subjects, Retention: s.Config.Retention.String(), Storage: s.Config.Storage.String(),
			Replicas: s.Config.Replicas, Duplicates: s.Config.Duplicates, AllowMsgSchedules: s.Config.AllowMsgSchedules, AllowDirect: s.Config.AllowDirect,
			Messages: s.State.Msgs, Bytes: s.State.Bytes, Created: s.Created}
		if s.Cluster != nil {
			rep.Stream.Leader = s.Cluster.Leader
		}
	} else {
		rep.Errors = append(rep.Errors, "the mail stream does not exist (run mailfwdctl bootstrap)")
	}
	if c := l.Consumer; c != nil {
		rep.Consumer = &consumerSum{Name: c.Name, FilterSubject: c.Config.FilterSubject, AckPolicy: c.Config.AckPolicy.String(), AckWait: c.Config.AckWait,
			MaxDeliver: c.Config.MaxDeliver, MaxAckPending: c.Config.MaxAckPending, Pending: c.NumPending, AckPending: c.NumAckPending}
	}
	return nil
}

func printVersion(tw *tabwriter.Writer, r versionReport) {
	fmt.Fprintln(tw, "COMPONENT\tHOST\tVERSION\tREVISION\tGO\tSTARTED")
	row := func(b control.Build) {
		started := "-"
		if !b.Started.IsZero() {
			started = b.Started.Local().Format(time.RFC3339)
		}
		rev := b.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if b.Modified {
			rev += "+dirty"
		}
		if b.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\terror: %s\t\t\t\n", b.Component, b.Host, b.Error)
			return
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.Component, b.Host, b.Version, orDash(rev), b.GoVersion, started)
	}
	row(r.Client)
	for _, p := range r.Pods {
		row(p)
	}
	if r.NATS != nil {
		fmt.Fprintf(tw, "\nNATS server\t%s %s (%s)\tcluster %s\tJetStream API level %d\n", r.NATS.Name, r.NATS.Version, r.NATS.URL, orDash(r.NATS.Cluster), r.NATS.APILevel)
		fmt.Fprintf(tw, "pods answering\t%d\n", len(r.Pods))
	}
	if s := r.Stream; s != nil {
		fmt.Fprintf(tw, "stream %s\t%s, %s, replicas %d, duplicates %s, schedules %v, direct %v\t%d messages, %d bytes\n",
			s.Name, s.Retention, s.Storage, s.Replicas, s.Duplicates, s.AllowMsgSchedules, s.AllowDirect, s.Messages, s.Bytes)
		fmt.Fprintf(tw, "  subjects\t%s\n", strings.Join(s.Subjects, " "))
	}
	if c := r.Consumer; c != nil {
		fmt.Fprintf(tw, "consumer %s\t%s, ack %s, ack wait %s, max deliver %d, max ack pending %d\t%d waiting, %d being delivered\n",
			c.Name, c.FilterSubject, c.AckPolicy, c.AckWait, c.MaxDeliver, c.MaxAckPending, c.Pending, c.AckPending)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(tw, "error\t%s\n", e)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
