package ctl

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/miekg/dns"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/mxresolve"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/route"
)

// Doctor check states.
const (
	statusOK   = "OK"
	statusWarn = "WARN"
	statusFail = "FAIL"
)

type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

type doctorReport struct {
	OK     bool          `json:"ok"`
	Checks []checkResult `json:"checks"`
}

// doctor is one mailfwdctl doctor run: its settings and what it found.
type doctor struct {
	g             *globals
	kf            kubeFlags
	blobURL       string
	dnsServers    []string
	to            string
	routes        []string
	smtpPort      uint16
	ackWait       time.Duration
	replicas      int
	maxClockSkew  time.Duration
	minFreeBytes  uint64
	minFreeInodes uint64
	checkTimeout  time.Duration
	now           func() time.Time // the local clock (a test moves it)

	checks []checkResult
	pol    *policy.Policy
}

func (d *doctor) add(check, status, detail, fix string) {
	d.checks = append(d.checks, checkResult{Check: check, Status: status, Detail: detail, Fix: fix})
}

func newDoctorCmd(g *globals) *cobra.Command {
	d := &doctor{g: g, now: time.Now}
	var out printer
	var minFree int64
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check everything mailfwd depends on; one line each, OK/WARN/FAIL with what to do (exit 1 on any FAIL)",
		Long: `Checks, in order: NATS reachable and authenticated; JetStream; the stream, the workers'
consumer and the KV buckets as "mailfwdctl bootstrap" makes them (with --ack-wait/--replicas
as given to the pods); clock skew against the NATS server; the body store (a probe object is
written, read back and deleted) and the free disk space of a file store; the policy parses;
the DNS resolvers answer; with --to, the next hop of that address accepts SMTP connections.`,
		Example: `  mailfwdctl doctor --blob-store file:///var/lib/mailfwd/bodies --policy-dir /etc/mailfwd/policy
  mailfwdctl doctor -n mail --blob-store 's3://mail-bodies?endpoint=minio:9000' --dns-server 10.96.0.10:53 --to postmaster@example.com -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if minFree < 0 || d.maxClockSkew <= 0 || d.checkTimeout <= 0 {
				return usageError("--min-free-bytes must be ≥ 0, --max-clock-skew and --check-timeout > 0")
			}
			d.minFreeBytes = uint64(minFree)
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			defer cancel()
			rep := d.run(ctx)
			if err := out.print(g.out, rep, func(tw *tabwriter.Writer) {
				for _, c := range rep.Checks {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Status, c.Check, c.Detail)
					if c.Fix != "" {
						fmt.Fprintf(tw, "\t\t→ %s\n", c.Fix)
					}
				}
			}); err != nil {
				return err
			}
			if !rep.OK {
				n := 0
				for _, c := range rep.Checks {
					if c.Status == statusFail {
						n++
					}
				}
				return &ExitError{Code: ExitFailure, Err: fmt.Errorf("doctor: %d check(s) failed", n)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	d.kf.register(f)
	out.register(cmd)
	f.StringVar(&d.blobURL, "blob-store", envOr("MAILFWD_BLOB_STORE", ""), "body store URL to check (env MAILFWD_BLOB_STORE)")
	f.StringSliceVar(&d.dnsServers, "dns-server", nil, "DNS servers host:port to check (default: /etc/resolv.conf), as the workers' --dns-server")
	f.StringVar(&d.to, "to", "", "an address whose next hop must accept SMTP connections")
	f.StringArrayVar(&d.routes, "route", nil, "extra static routes, as the workers' --route")
	f.Uint16Var(&d.smtpPort, "smtp-port", 25, "destination port, as the workers' --smtp-port")
	f.Var(config.DurationValue(&d.ackWait, 2*time.Minute), "ack-wait", "the consumer's ack wait as the pods bootstrap it (their --ack-wait)")
	f.IntVar(&d.replicas, "replicas", 1, "JetStream replicas as the pods bootstrap them (their --replicas)")
	f.Var(config.DurationValue(&d.maxClockSkew, 2*time.Second), "max-clock-skew", "clock difference to the NATS server above which the check fails")
	f.Int64Var(&minFree, "min-free-bytes", 1<<30, "free space a file body store needs, in bytes")
	f.Uint64Var(&d.minFreeInodes, "min-free-inodes", 10000, "free inodes a file body store needs (one file per message)")
	f.Var(config.DurationValue(&d.checkTimeout, 5*time.Second), "check-timeout", "time limit of each network check")
	return cmd
}

// run performs every check.
func (d *doctor) run(ctx context.Context) doctorReport {
	nc := d.checkNATS()
	if nc != nil {
		d.checkQueue(ctx)
		nc.Close()
	} else {
		for _, c := range []string{"jetstream", "stream", "consumer", "buckets", "clock"} {
			d.add(c, statusWarn, "not checked: NATS is not reachable", "fix the nats check first")
		}
	}
	d.checkBlob(ctx)
	d.checkPolicy(ctx)
	d.checkDNS(ctx)
	d.checkNextHop(ctx)
	rep := doctorReport{OK: true, Checks: d.checks}
	for _, c := range d.checks {
		if c.Status == statusFail {
			rep.OK = false
		}
	}
	return rep
}

func (d *doctor) checkNATS() *nats.Conn {
	nc, err := d.g.dialNATS("mailfwdctl doctor")
	if err != nil {
		fix := "check --nats-url (" + redactNATSURL(d.g.natsURL) + ") and that NATS is running and reachable from here"
		if errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization") {
			fix = "NATS refused the credentials: check --nats-creds (or the user and password in --nats-url) against the server's users"
		}
		d.add("nats", statusFail, err.Error(), fix)
		return nil
	}
	who := "without credentials"
	if d.g.natsCreds != "" {
		who = "with credentials " + d.g.natsCreds
	} else if u, err := url.Parse(strings.Split(d.g.natsURL, ",")[0]); err == nil && u.User != nil {
		who = "as user " + u.User.Username()
	}
	detail := fmt.Sprintf("connected to %s (%s %s) %s", nc.ConnectedUrlRedacted(), nc.ConnectedServerName(), nc.ConnectedServerVersion(), who)
	if who == "without credentials" {
		d.add("nats", statusWarn, detail, "the server lets anyone in: production configurations give each component a NATS user with least privilege (contract 8)")
	} else {
		d.add("nats", statusOK, detail, "")
	}
	return nc
}

func (d *doctor) checkQueue(ctx context.Context) {
	qc := d.g.queueConfig()
	qc.ClientName, qc.AckWait, qc.Replicas = "mailfwdctl doctor", d.ackWait, d.replicas
	q, err := queue.Connect(ctx, qc)
	if err != nil {
		d.add("jetstream", statusFail, err.Error(), "check --nats-url")
		return
	}
	defer q.Close()
	cctx, cancel := context.WithTimeout(ctx, d.checkTimeout)
	defer cancel()
	before := d.now()
	l, findings, err := q.Verify(cctx)
	after := d.now()
	if err != nil {
		d.add("jetstream", statusFail, err.Error(), "enable JetStream on the NATS servers, and give this user access to the $JS.API subjects")
		for _, c := range []string{"stream", "consumer", "buckets", "clock"} {
			d.add(c, statusWarn, "not checked: JetStream did not answer", "fix the jetstream check first")
		}
		return
	}
	a := l.Account
	detail := fmt.Sprintf("%d streams, %d consumers, %s on disk", a.Streams, a.Consumers, humanBytes(a.Store))
	switch {
	case a.Limits.MaxStore > 0 && a.Store > uint64(a.Limits.MaxStore)/10*9:
		d.add("jetstream", statusWarn, detail+fmt.Sprintf(" of a %s limit", humanBytes(uint64(a.Limits.MaxStore))), "raise the account's JetStream storage limit or drain the queue")
	default:
		if a.Limits.MaxStore > 0 {
			detail += fmt.Sprintf(" (limit %s)", humanBytes(uint64(a.Limits.MaxStore)))
		}
		d.add("jetstream", statusOK, detail, "")
	}
	x := q.Expected()
	byKind := map[string][]queue.Finding{}
	for _, f := range findings {
		byKind[f.Kind] = append(byKind[f.Kind], f)
	}
	const bootstrapFix = "run `mailfwdctl bootstrap` (pods started with --bootstrap, the default, create it too)"
	for _, k := range []struct{ kind, name string }{{"stream", x.Stream.Name}, {"consumer", x.Consumer.Durable}} {
		fs := byKind[k.kind]
		switch {
		case len(fs) == 0:
			d.add(k.kind, statusOK, k.name+" as bootstrap makes it", "")
		case fs[0].Missing:
			d.add(k.kind, statusFail, k.name+" does not exist: no mail can be queued or delivered", bootstrapFix)
		case len(fs[0].Unsafe) > 0:
			d.add(k.kind, statusFail, k.name+" lets any daemon's publish right remove or multiply mail: "+strings.Join(fs[0].Unsafe, "; "),
				"`mailfwdctl bootstrap` says how to fix it (`nats stream edit`, or `mailfwdctl bootstrap --migrate` for schedules and TTLs); see docs/nats-security.md")
		default:
			d.add(k.kind, statusWarn, k.name+" differs from what bootstrap makes: "+strings.Join(fs[0].Diffs, "; "),
				fmt.Sprintf("if the pods run with other --ack-wait/--replicas, give doctor the same; else `mailfwdctl bootstrap --ack-wait %s --replicas %d` updates it", d.ackWait, d.replicas))
		}
	}
	var missing, unsafe []string
	for _, f := range byKind["bucket"] {
		if f.Missing {
			missing = append(missing, f.Name)
		} else if len(f.Unsafe) > 0 {
			unsafe = append(unsafe, f.Name+": "+strings.Join(f.Unsafe, "; "))
		}
	}
	switch {
	case len(unsafe) > 0 && len(missing) == 0:
		d.add("buckets", statusFail, strings.Join(unsafe, ", "), "run `mailfwdctl bootstrap` (it turns roll-ups off on the refs bucket)")
	case len(missing) > 0:
		d.add("buckets", statusFail, "missing: "+strings.Join(missing, ", "), bootstrapFix)
	default:
		var names []string
		for _, b := range x.Buckets {
			names = append(names, b.Bucket)
		}
		d.add("buckets", statusOK, strings.Join(names, ", ")+" exist", "")
	}
	// Clock: the server's time is the timestamp of its stream info reply,
	// taken between before and after on our clock.
	var ts time.Time
	switch {
	case l.Stream != nil:
		ts = l.Stream.TimeStamp
	case l.Consumer != nil:
		ts = l.Consumer.TimeStamp
	}
	if ts.IsZero() {
		d.add("clock", statusWarn, "not checked: the NATS server gave no time (no stream to ask, or a server before 2.10)", "compare `date -u` here and on a NATS host by hand")
		return
	}
	mid := before.Add(after.Sub(before) / 2)
	skew := ts.Sub(mid)
	slack := after.Sub(before) / 2
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	detail = fmt.Sprintf("this host's clock is %s %s the NATS server's (±%s, from the JetStream stream info time stamp)",
		(abs).Round(time.Millisecond), map[bool]string{true: "behind", false: "ahead of"}[skew > 0], slack.Round(time.Millisecond))
	if abs-slack > d.maxClockSkew {
		d.add("clock", statusFail, detail, fmt.Sprintf("more than --max-clock-skew %s: run NTP (chrony, systemd-timesyncd) on this host and the NATS hosts; retry schedules and Date: headers depend on it", d.maxClockSkew))
		return
	}
	d.add("clock", statusOK, detail, "")
}

func (d *doctor) checkBlob(ctx context.Context) {
	if d.blobURL == "" {
		d.add("body-store", statusWarn, "not checked: no --blob-store given", "pass the pods' --blob-store (or set MAILFWD_BLOB_STORE)")
		d.add("disk", statusWarn, "not checked: no --blob-store given", "pass the pods' --blob-store to check a file store's free space")
		return
	}
	s, err := blob.Open(ctx, d.blobURL)
	if err != nil {
		d.add("body-store", statusFail, err.Error(), "fix the --blob-store URL (file:///path or s3://bucket?endpoint=host:port)")
		d.add("disk", statusWarn, "not checked: the body store URL is invalid", "fix the body-store check first")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, d.checkTimeout)
	defer cancel()
	var r [8]byte
	_, _ = rand.Read(r[:])
	key := "mailfwd-doctor-" + hex.EncodeToString(r[:])
	probe := []byte("mailfwd doctor probe " + key + "\r\n")
	where := redactedURL(d.blobURL)
	if err := s.Put(cctx, key, probe); err != nil {
		d.add("body-store", statusFail, "cannot write to "+where+": "+err.Error(), "check the store's credentials, bucket and permissions (`mailfwdctl bootstrap --blob-store …` creates the bucket)")
	} else if got, err := s.Get(cctx, key); err != nil || !bytes.Equal(got, probe) {
		d.add("body-store", statusFail, fmt.Sprintf("wrote a probe to %s but could not read it back (%v)", where, err), "the store loses or changes what it was given: check its health")
		_ = s.Delete(cctx, key)
	} else if err := s.Delete(cctx, key); err != nil {
		d.add("body-store", statusWarn, "written and read back, but the probe could not be deleted: "+err.Error(), "workers delete bodies when mail is done: grant delete permission, or the store fills up")
	} else {
		d.add("body-store", statusOK, where+": written, read back and deleted", "")
	}
	fsStore, ok := s.(*blob.FS)
	if !ok {
		d.add("disk", statusOK, "not applicable: the capacity of an object store is its own", "")
		return
	}
	free, inodes, total, err := freeSpace(fsStore.Dir())
	if err != nil {
		d.add("disk", statusFail, err.Error(), "check that the store's directory exists and is readable")
		return
	}
	detail := fmt.Sprintf("%s: %s free of %s, %d inodes free", fsStore.Dir(), humanBytes(free), humanBytes(total), inodes)
	switch {
	case free < d.minFreeBytes || inodes < d.minFreeInodes:
		d.add("disk", statusFail, detail, fmt.Sprintf("below --min-free-bytes %s or --min-free-inodes %d: free space or move the store; the ingress answers 451 when it cannot write", humanBytes(d.minFreeBytes), d.minFreeInodes))
	default:
		d.add("disk", statusOK, detail, "")
	}
}

func (d *doctor) checkPolicy(ctx context.Context) {
	st, err := d.kf.store()
	if err != nil {
		if errors.Is(err, errNoPolicySource) {
			d.add("policy", statusWarn, "not checked: no policy directory and no Kubernetes cluster here", "pass --policy-dir DIR (the daemons' --policy-dir) on a one-machine setup")
			return
		}
		d.add("policy", statusWarn, "not checked: "+err.Error(), "pass --policy-dir (the pods' --policy-dir) or the cluster's --kubeconfig/--context/-n")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, d.checkTimeout)
	defer cancel()
	files, _, err := st.Load(cctx)
	if err != nil {
		d.add("policy", statusFail, "cannot read the policy from "+st.Where()+": "+err.Error(), "check the ConfigMap's name and namespace (or --policy-dir) and your access to it")
		return
	}
	if len(files) == 0 {
		d.add("policy", statusWarn, st.Where()+" has no policy files: only the pods' --relay-networks/--relay-domains apply", "`mailfwdctl policy import /etc/mail` or `policy set access -f FILE`")
		return
	}
	p, err := policy.Parse(files)
	if err != nil {
		d.add("policy", statusFail, st.Where()+": "+err.Error(), "fix that line (`mailfwdctl policy edit KEY`); the pods keep the last good policy until it parses")
		return
	}
	d.pol = p
	d.add("policy", statusOK, fmt.Sprintf("%s parses (version %s, %d mailertable entries)", st.Where(), p.Version, p.Mailertable.Len()), "")
}

func (d *doctor) checkDNS(ctx context.Context) {
	servers := d.dnsServers
	source := "--dns-server"
	if len(servers) == 0 {
		source = "/etc/resolv.conf"
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			d.add("dns", statusFail, "no --dns-server and /etc/resolv.conf unreadable: "+err.Error(), "pass the workers' --dns-server")
			return
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
	}
	name := "."
	if a, err := address.Parse(d.to); err == nil && d.to != "" && !strings.HasPrefix(a.ASCII, "[") {
		name = dns.Fqdn(a.ASCII)
	}
	var good, bad []string
	for _, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(s, "53")
		}
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeMX)
		c := &dns.Client{Timeout: d.checkTimeout}
		r, rtt, err := c.ExchangeContext(ctx, m, s)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", s, err))
		case r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError:
			bad = append(bad, fmt.Sprintf("%s: %s for %s MX", s, dns.RcodeToString[r.Rcode], name))
		default:
			good = append(good, fmt.Sprintf("%s (%s for %s MX in %s)", s, dns.RcodeToString[r.Rcode], name, rtt.Round(time.Millisecond)))
		}
	}
	switch {
	case len(servers) == 0:
		d.add("dns", statusFail, "no resolvers in "+source, "pass the workers' --dns-server")
	case len(good) == 0:
		d.add("dns", statusFail, "no resolver answers: "+strings.Join(bad, "; "), "workers cannot find MX hosts: check the resolvers ("+source+") and that UDP/TCP 53 is open to them")
	case len(bad) > 0:
		d.add("dns", statusWarn, "answering: "+strings.Join(good, ", ")+"; not answering: "+strings.Join(bad, "; "), "lookups wait for the dead resolver's timeout first: remove or fix it")
	default:
		d.add("dns", statusOK, "answering: "+strings.Join(good, ", "), "")
	}
}

func (d *doctor) checkNextHop(ctx context.Context) {
	if d.to == "" {
		return
	}
	a, err := address.Parse(d.to)
	if err != nil {
		d.add("next-hop", statusFail, fmt.Sprintf("--to %q: %v", d.to, err), "give an address like user@example.com")
		return
	}
	table := route.NewTable()
	if d.pol != nil {
		table = d.pol.Mailertable
	}
	extra := route.NewTable()
	for _, r := range d.routes {
		k, v, ok := strings.Cut(r, "=")
		if !ok {
			d.add("next-hop", statusFail, fmt.Sprintf("--route %q: want domain=destination", r), "")
			return
		}
		if err := extra.Add(k, v); err != nil {
			d.add("next-hop", statusFail, fmt.Sprintf("--route %q: %v", r, err), "")
			return
		}
	}
	res, err := mxresolve.New(mxresolve.Config{Servers: d.dnsServers, Timeout: d.checkTimeout})
	if err != nil {
		d.add("next-hop", statusFail, err.Error(), "")
		return
	}
	router := &route.Router{Table: table.Merge(extra), Resolver: res, Port: d.smtpPort}
	hops, err := router.Route(ctx, a.ASCII)
	if err != nil {
		d.add("next-hop", statusFail, fmt.Sprintf("%s: no route: %v", a.ASCII, err), "`mailfwdctl route "+d.to+"` shows the lookup step by step")
		return
	}
	var tried []string
	for i, h := range hops {
		greeting, err := smtpGreeting(ctx, h.Addr.String(), d.checkTimeout)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s [%s]: %v", h.Name, h.Addr, err))
			continue
		}
		detail := fmt.Sprintf("%s [%s] answers %q", h.Name, h.Addr, greeting)
		if i > 0 {
			d.add("next-hop", statusWarn, detail+" after "+strings.Join(tried, "; "), "the preferred hops do not answer: mail goes to a backup, or waits for the connect timeout first")
			return
		}
		d.add("next-hop", statusOK, detail, "")
		return
	}
	d.add("next-hop", statusFail, "no hop of "+a.ASCII+" accepts SMTP: "+strings.Join(tried, "; "), "mail for it will be deferred: check the destination, the route (`mailfwdctl route "+d.to+"`) and the firewall")
}

// maxGreeting bounds what is read of a next hop's greeting.
const maxGreeting = 4096

// smtpGreeting connects, reads the (possibly multi-line) 220 greeting
// within timeout and at most maxGreeting bytes, and says QUIT.
func smtpGreeting(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	dl := net.Dialer{Timeout: timeout}
	conn, err := dl.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	br := bufio.NewReader(io.LimitReader(conn, maxGreeting))
	var first string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("no complete greeting: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if first == "" {
			first = line
		}
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	if !strings.HasPrefix(first, "220") {
		return first, fmt.Errorf("greeting %q is not 220", first)
	}
	_, _ = conn.Write([]byte("QUIT\r\n"))
	return first, nil
}

func redactedURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "the body store"
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
