package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/control"
	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/mtasts"
	"github.com/mailfwd/mailfwd/pkg/mxresolve"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/route"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
	"github.com/mailfwd/mailfwd/pkg/worker"
)

// Worker is the worker process's configuration.
type Worker struct {
	Common
	DNSServers     config.StringList
	DNSTimeout     time.Duration
	SMTPPort       uint
	Routes         config.StringList
	NoTLS          bool
	LineLimit      int // --smtp-line-length-limit (0: lines sent as they are)
	Limits         LimitList
	LocalNames     config.StringList
	LocalAddrs     config.StringList
	PolicyDir      string
	PolicyInterval time.Duration
	Delivery       delivery.Config
	Engine         worker.Config
	TLS            WorkerTLS
	Sweep          SweepConfig
	QueueMetrics   QueueMetricsConfig
	Trace          smtptrace.Limits // --trace-*: mailfwdctl trace --destination
}

// WorkerTLS is the outbound TLS policy's process-wide part (the per-hop
// part is tls_policy and authinfo in the policy directory).
type WorkerTLS struct {
	CAFile       string        // --tls-ca-file
	MTASTS       bool          // --mta-sts
	STS          mtasts.Config // --mta-sts-* bounds (DNS filled at start)
	DANE         bool          // --dane
	TokenTimeout time.Duration // --oauth2-token-timeout
}

// SweepConfig is the orphan sweeper's (bodies and refs no envelope refers to).
type SweepConfig struct {
	Interval time.Duration
	MinAge   time.Duration
}

// Register adds the worker flags.
func (o *Worker) Register(fs *flag.FlagSet) {
	o.Trace.Register(fs)
	o.Common.register(fs, ":8081")
	o.Events.registerLinger(fs)
	fs.Var(&o.DNSServers, "dns-server", "DNS server(s) host:port for MX lookups, comma-separated (default: /etc/resolv.conf)")
	config.DurationVar(fs, &o.DNSTimeout, "dns-timeout", 5*time.Second, "timeout of one DNS query")
	fs.UintVar(&o.SMTPPort, "smtp-port", 25, "destination SMTP port for MX and routes without a port")
	config.DurationVar(fs, &o.PolicyInterval, "policy-interval", 5*time.Second, "how often --policy-dir is checked for changes")
	fs.StringVar(&o.PolicyDir, "policy-dir", "", "sendmail-style policy directory (the mounted ConfigMap); its mailertable is used, hot-reloaded; --route entries override it")
	fs.Var(&o.Routes, "route", "static route, mailertable style: 'domain=smtp:[host]:[host2]', '.example.com=relay.example.com', '.=[127.0.0.1]:2526' (repeatable)")
	fs.StringVar(&o.Delivery.HeloName, "helo-name", config.Hostname(), "EHLO name used towards destinations")
	fs.Var(&o.LocalNames, "local-name", "this mail system's own host names (the ingress's --hostname, its MX names), comma-separated: a next hop by one of them is a mail loop, 5.4.6 (default: --helo-name)")
	fs.Var(&o.LocalAddrs, "local-addr", "this mail system's own listening addresses host:port (the ingress's --listen, its Service/LB addresses; ':25' = every address of this host), comma-separated: a next hop there is a mail loop, 5.4.6 (default: 127.0.0.1:2525)")
	fs.BoolVar(&o.NoTLS, "no-starttls", false, "make the default TLS level none instead of may (opportunistic STARTTLS); tls_policy entries and authinfo credentials still apply")
	fs.StringVar(&o.TLS.CAFile, "tls-ca-file", "", "PEM file of the CA certificates that verify/secure (and MTA-STS enforce) check destination certificates against, instead of the system roots (at most 1 MiB; re-read when it changes)")
	fs.BoolVar(&o.TLS.MTASTS, "mta-sts", false, "look up the recipient domain's MTA-STS policy (RFC 8461) for MX delivery: under mode enforce only the listed MX hosts, over verified TLS (needs HTTPS to mta-sts.DOMAIN)")
	config.DurationVar(fs, &o.TLS.STS.FetchTimeout, "mta-sts-fetch-timeout", mtasts.DefaultFetchTimeout, "limit of one MTA-STS policy fetch, connect to last byte")
	fs.Int64Var(&o.TLS.STS.MaxPolicyBytes, "mta-sts-max-policy-bytes", mtasts.DefaultMaxPolicyBytes, "bytes of one MTA-STS policy file")
	fs.IntVar(&o.TLS.STS.MaxCachedPolicies, "mta-sts-cache-size", mtasts.DefaultMaxCachedPolicies, "MTA-STS policies cached (one per recipient domain)")
	fs.BoolVar(&o.TLS.DANE, "dane", false, "use DANE TLSA records (RFC 7672) for MX delivery; only answers the resolver marks authenticated (AD) count, so --dns-server must be a validating resolver on a trusted path")
	config.DurationVar(fs, &o.TLS.TokenTimeout, "oauth2-token-timeout", tlspolicy.DefaultTokenTimeout, "limit of one XOAUTH2 access token request (authinfo xoauth2 entries)")
	config.DurationVar(fs, &o.Delivery.ConnectTimeout, "connect-timeout", 30*time.Second, "TCP connect timeout (sendmail Timeout.connect)")
	config.DurationVar(fs, &o.Delivery.CommandTimeout, "command-timeout", 5*time.Minute, "timeout per SMTP command")
	config.DurationVar(fs, &o.Delivery.DataTimeout, "data-timeout", 10*time.Minute, "timeout for DATA and its final reply")
	fs.IntVar(&o.Delivery.MaxConnsPerHost, "max-conns-per-host", 10, "concurrent connections per destination address")
	fs.IntVar(&o.Delivery.MaxReplyBytes, "max-reply-bytes", 64<<10, "bytes one reply of a destination may take (all its lines); beyond it the step fails temporarily and the connection is dropped")
	fs.IntVar(&o.Delivery.MaxMsgsPerConn, "max-msgs-per-conn", 100, "transactions per connection before it is closed")
	fs.BoolVar(&o.Delivery.NoPipelining, "no-pipelining", false, "never pipeline commands to destinations (by default MAIL, every RCPT and DATA go in one write when the destination offers PIPELINING, RFC 2920)")
	fs.BoolVar(&o.Delivery.NoChunking, "no-chunking", false, "never send bodies with BDAT (by default, to a destination offering CHUNKING and PIPELINING, MAIL, the RCPTs and BDAT LAST go in one round trip, RFC 3030)")
	fs.IntVar(&o.LineLimit, "smtp-line-length-limit", delivery.DefaultLineLengthLimit, "longest header or body line sent to a destination (CRLF not counted); a longer one is broken by inserting CRLF and a space, as Postfix's smtp_line_length_limit; 0 sends lines as they are")
	config.DurationVar(fs, &o.Delivery.IdleTimeout, "idle-timeout", 30*time.Second, "close pooled idle connections after this")
	config.DurationVar(fs, &o.Delivery.HostDownTTL, "host-down-ttl", 30*time.Second, "after a connect failure, skip that address for this long (sendmail host status)")
	fs.IntVar(&o.Engine.Concurrency, "concurrency", 64, "envelopes delivered at once by this process")
	config.DurationVar(fs, &o.Engine.AttemptTimeout, "attempt-timeout", 15*time.Minute, "limit of one delivery attempt")
	config.DurationVar(fs, &o.Engine.RetryFirst, "retry-first", 5*time.Minute, "delay before the first retry")
	fs.Float64Var(&o.Engine.RetryFactor, "retry-factor", 2, "retry delay growth factor")
	config.DurationVar(fs, &o.Engine.RetryMax, "retry-max", time.Hour, "longest retry delay")
	config.DurationVar(fs, &o.Engine.QueueReturn, "queue-return", 5*24*time.Hour, "give up on a message after this long (sendmail Timeout.queuereturn)")
	config.DurationVar(fs, &o.Engine.DrainTimeout, "drain-timeout", 25*time.Second, "on SIGTERM, time for in-flight deliveries to finish before they go back to the queue")
	config.DurationVar(fs, &o.Engine.WarnAfter, "warn-after", 0, "send the sender a delay warning DSN after this long undelivered, e.g. 4h (sendmail Timeout.queuewarn); 0 disables")
	fs.IntVar(&o.Engine.DomainConcurrency, "domain-concurrency", 20, "deliveries in flight per recipient domain in this process")
	fs.Var(&o.Limits, "domain-limit", "per-domain limits, 'DOMAIN:concurrency=N,rate=R/s,burst=B,msgs-per-conn=M,new-conns=R/s,conn-burst=B' (also covers subdomains; repeatable); concurrency, rate and new-conns hold for the whole fleet (the policy key shaping overrides them)")
	config.DurationVar(fs, &o.Engine.StallAfter, "stall-after", 10*time.Second, "a domain whose deliveries are all stuck this long is congested: its waiting mail goes back to the queue")
	fs.Int64Var(&o.Engine.MaxBodyBytesInFlight, "max-body-bytes-in-flight", 256<<20, "body bytes being transferred to destinations at once by this process (bodies are streamed from the store; a transfer waits for room)")
	fs.IntVar(&o.Engine.MaxHandlings, "max-handlings", 10, "failed handlings of one envelope (outcome not recorded, panic, ack deadline missed) before it goes to the terminal failed state with a DSN")
	config.DurationVar(fs, &o.Engine.BusyDelay, "busy-delay", 30*time.Second, "how long mail handed back from a congested domain or next hop waits (not counted as an attempt); doubles with each hand-back in a row, up to --retry-max")
	fs.IntVar(&o.Engine.CongestedConcurrency, "congested-concurrency", 0, "deliveries all congested next hops together may hold in this process (stuck ones beyond it are handed back), so healthy mail always has slots; below --concurrency (0: --concurrency/4)")
	config.DurationVar(fs, &o.Sweep.Interval, "orphan-sweep-interval", 15*time.Minute, "how often to remove bodies and refs that no queued envelope refers to; 0 disables")
	config.DurationVar(fs, &o.Sweep.MinAge, "orphan-min-age", time.Hour, "only bodies and refs older than this can be orphans (longer than any accept takes)")
	o.QueueMetrics.register(fs)
}

// Validate checks the configuration before anything starts.
func (o *Worker) Validate() error {
	errs := []error{o.Common.validate(), o.QueueMetrics.validate()}
	if o.SMTPPort == 0 || o.SMTPPort > 65535 {
		errs = append(errs, errors.New("--smtp-port must be 1-65535"))
	}
	if _, err := o.routeTable(); err != nil {
		errs = append(errs, err)
	}
	if o.Delivery.HeloName == "" {
		errs = append(errs, errors.New("--helo-name is required"))
	}
	if _, err := ParseDomainLimits(o.Limits); err != nil {
		errs = append(errs, err)
	}
	if o.Sweep.Interval < 0 {
		errs = append(errs, errors.New("--orphan-sweep-interval must not be negative"))
	}
	if o.Sweep.MinAge < time.Minute {
		errs = append(errs, errors.New("--orphan-min-age must be at least 1m (an accept in progress must never look orphaned)"))
	}
	if o.LineLimit < 0 {
		errs = append(errs, errors.New("--smtp-line-length-limit must be 0 (no limit) or more"))
	}
	if o.Delivery.MaxReplyBytes < 1024 {
		errs = append(errs, errors.New("--max-reply-bytes must be at least 1024"))
	}
	if o.Engine.MaxBodyBytesInFlight < 1<<20 {
		errs = append(errs, errors.New("--max-body-bytes-in-flight must be at least 1 MiB"))
	}
	if o.Engine.CongestedConcurrency < 0 || (o.Engine.CongestedConcurrency > 0 && o.Engine.CongestedConcurrency >= o.Engine.Concurrency) {
		errs = append(errs, errors.New("--congested-concurrency must be below --concurrency (0: a quarter of it)"))
	}
	if _, err := o.localAddrs(); err != nil {
		errs = append(errs, err)
	}
	if _, err := o.caPool(); err != nil {
		errs = append(errs, err)
	}
	sts := o.TLS.STS
	sts.DNS = &dnsquery.Client{}
	if err := sts.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.TLS.TokenTimeout <= 0 {
		errs = append(errs, errors.New("--oauth2-token-timeout must be positive"))
	}
	if err := o.Trace.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Engine.MaxHandlings < 1 {
		errs = append(errs, errors.New("--max-handlings must be at least 1"))
	}
	if o.Engine.Heartbeat == 0 {
		o.Engine.Heartbeat = max(o.AckWait/4, time.Second)
	}
	return errors.Join(errs...)
}

// caPool reads --tls-ca-file (nil: the system roots).
func (o *Worker) caPool() (*x509.CertPool, error) {
	if o.TLS.CAFile == "" {
		return nil, nil
	}
	f, err := os.Open(o.TLS.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, tlspolicy.MaxCAFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("--tls-ca-file: %w", err)
	}
	if len(b) > tlspolicy.MaxCAFileSize {
		return nil, fmt.Errorf("--tls-ca-file %s: larger than %d bytes", o.TLS.CAFile, tlspolicy.MaxCAFileSize)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--tls-ca-file %s: no PEM certificate in it", o.TLS.CAFile)
	}
	return pool, nil
}

// queryServers are the resolvers the TXT (MTA-STS) and TLSA (DANE) queries
// go to: --dns-server, else /etc/resolv.conf; "host" means port 53.
func (o *Worker) queryServers() ([]string, error) {
	list := []string(o.DNSServers)
	if len(list) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("read name servers: %w", err)
		}
		list = cc.Servers
	}
	var out []string
	for _, s := range list {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, errors.New("no name servers")
	}
	return out, nil
}

// localAddrs parses --local-addr (default: the ingress's default --listen).
func (o *Worker) localAddrs() ([]netip.AddrPort, error) {
	list := o.LocalAddrs
	if len(list) == 0 {
		list = config.StringList{"127.0.0.1:2525"}
	}
	var out []netip.AddrPort
	for _, a := range list {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("--local-addr %q: %w", a, err)
		}
		if host == "" {
			host = "0.0.0.0"
		}
		ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
		if err != nil {
			return nil, fmt.Errorf("--local-addr %q: want IP:port: %w", a, err)
		}
		out = append(out, ap)
	}
	return out, nil
}

func (o *Worker) routeTable() (*route.Table, error) {
	t := route.NewTable()
	for _, r := range o.Routes {
		k, v, ok := strings.Cut(r, "=")
		if !ok {
			return nil, fmt.Errorf("--route %q: want domain=destination", r)
		}
		if err := t.Add(k, v); err != nil {
			return nil, fmt.Errorf("--route %q: %w", r, err)
		}
	}
	return t, nil
}

// LimitList is the repeatable --domain-limit flag. One value may hold
// several domains ("a.test:rate=1/s,b.test:concurrency=2", as in
// MAILFWD_DOMAIN_LIMIT), so it is split on commas, but a piece without a
// colon (`rate=4/s`) belongs to the domain before it: a domain name never
// holds a colon and a limit never does.
type LimitList []string

func (l *LimitList) String() string { return strings.Join(*l, ",") }

// Set appends the domains of v.
func (l *LimitList) Set(v string) error {
	first := true
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !first && !strings.Contains(s, ":") && len(*l) > 0 {
			(*l)[len(*l)-1] += "," + s
			continue
		}
		*l = append(*l, s)
		first = false
	}
	return nil
}

// ParseDomainLimits parses --domain-limit values.
func ParseDomainLimits(list []string) (map[string]worker.DomainLimit, error) {
	out := map[string]worker.DomainLimit{}
	for _, item := range list {
		dom, spec, ok := strings.Cut(item, ":")
		if !ok {
			return nil, fmt.Errorf("--domain-limit %q: want DOMAIN:concurrency=N,rate=R/s", item)
		}
		d, err := address.Domain(strings.TrimPrefix(strings.TrimSpace(dom), "."))
		if err != nil {
			return nil, fmt.Errorf("--domain-limit %q: %w", item, err)
		}
		l, err := shaping.ParseLimit(spec)
		if err != nil {
			return nil, fmt.Errorf("--domain-limit %q: %v", item, err)
		}
		out[d] = l
	}
	return out, nil
}

// RunWorker runs a worker until ctx is cancelled, then drains it.
func RunWorker(ctx context.Context, o Worker, log *slog.Logger, tp trace.TracerProvider) error {
	if err := o.Validate(); err != nil {
		return &ConfigError{err}
	}
	metrics := telemetry.NewMetrics()
	o.Engine.Metrics = metrics
	flagRoutes, _ := o.routeTable()
	var table atomic.Pointer[route.Table]
	table.Store(flagRoutes)
	var tlsPol atomic.Pointer[tlspolicy.Policy] // tls_policy + authinfo, hot-reloaded
	flagLimits, _ := ParseDomainLimits(o.Limits)
	var shapingRules atomic.Pointer[shaping.Rules] // the shaping key over --domain-limit
	shapingRules.Store(shaping.NewRules().Merge(flagLimits))
	var watcher *policy.Watcher
	if o.PolicyDir != "" {
		var err error
		watcher, err = policy.NewWatcher(o.PolicyDir, o.PolicyInterval, func(p *policy.Policy) {
			table.Store(p.Mailertable.Merge(flagRoutes))
			tlsPol.Store(p.TLS)
			shapingRules.Store(p.Shaping.Merge(flagLimits))
			log.Info("policy loaded", "component", "worker", "version", p.Version, "dir", o.PolicyDir, "mailertable", p.Mailertable.Len())
			metrics.PolicyReload(true, p.Version)
		}, func(err error) {
			log.Error("policy update refused; the last good policy stays in force", "component", "worker", "err", err)
			metrics.PolicyReload(false, "")
		})
		if err != nil {
			return &ConfigError{fmt.Errorf("--policy-dir: %w", err)}
		}
		p := watcher.Current()
		table.Store(p.Mailertable.Merge(flagRoutes))
		tlsPol.Store(p.TLS)
		shapingRules.Store(p.Shaping.Merge(flagLimits))
		log.Info("policy loaded", "component", "worker", "version", p.Version, "dir", o.PolicyDir, "mailertable", p.Mailertable.Len())
		metrics.PolicyReload(true, p.Version)
		// DSNs are signed with the dkim key of the --hostname's domain.
		o.Engine.DKIM = func() *dkim.Keys { return watcher.Current().DKIM }
	}
	res, err := mxresolve.New(mxresolve.Config{Servers: o.DNSServers, Timeout: o.DNSTimeout})
	if err != nil {
		return err
	}
	o.Delivery.StartTLS = !o.NoTLS
	o.Delivery.LineLengthLimit = o.LineLimit
	if o.LineLimit == 0 {
		o.Delivery.LineLengthLimit = -1 // Postfix's 0: no limit
	}
	o.Delivery.Logger = log.With("component", "delivery")
	o.Delivery.TLSPolicy = tlsPol.Load
	if o.TLS.CAFile != "" {
		// Re-read when the file changes (a renewed CA bundle in a mounted
		// Secret or ConfigMap applies to the next connection, no restart).
		o.Delivery.TLSBuilder = &tlspolicy.Builder{RootsFile: o.TLS.CAFile}
	} else {
		// Loaded once: Builder would otherwise copy the system pool for
		// every certificate it checks.
		roots, _ := x509.SystemCertPool()
		o.Delivery.TLSBuilder = &tlspolicy.Builder{Roots: roots}
	}
	o.Delivery.Tokens = tlspolicy.NewTokens(nil, o.TLS.TokenTimeout)
	if o.TLS.MTASTS || o.TLS.DANE {
		servers, err := o.queryServers()
		if err != nil {
			return &ConfigError{fmt.Errorf("--mta-sts/--dane: %w", err)}
		}
		q := &dnsquery.Client{Servers: servers, Timeout: o.DNSTimeout}
		if o.TLS.DANE {
			o.Delivery.DANE = q
		}
		if o.TLS.MTASTS {
			sts := o.TLS.STS
			sts.DNS = q
			if o.Delivery.MTASTS, err = mtasts.New(sts); err != nil {
				return &ConfigError{err}
			}
		}
	}
	// Deliveries to a destination named by mailfwdctl trace --destination
	// record their dialog; the watcher exists once the queue is connected.
	var tracer atomic.Pointer[smtptrace.Watcher]
	o.Delivery.Trace = tracer.Load
	// New connections to a destination limited in them (new-conns=R/s)
	// take one from the fleet's pace; the shaper exists once the queue is
	// connected.
	var shaperRef atomic.Pointer[shaping.Shaper]
	o.Delivery.Dial = worker.ShapedDial(shaperRef.Load, shapingRules.Load, o.Delivery.Dial)
	client, err := delivery.New(o.Delivery)
	if err != nil {
		return err
	}
	defer client.Close()
	q, store, err := o.connect(ctx, "mailfwd-worker", log)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.AnnounceQueueReturn(ctx, o.Engine.QueueReturn); err != nil {
		log.Warn("cannot record --queue-return for mailfwdctl", "component", "worker", "err", err)
	}
	var cons *queue.Consumer
	for wait := 200 * time.Millisecond; ; wait = min(wait*2, 5*time.Second) {
		cons, err = q.Consumer(ctx)
		if err == nil {
			break
		}
		log.Warn("cannot bind to the workers' consumer; retrying", "err", err, "wait", wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker: %w", err)
		case <-time.After(wait):
		}
	}
	pub, err := o.Events.start(q, "worker", log, metrics)
	if err != nil {
		return err
	}
	defer stopEvents(pub) // before q.Close
	if pub != nil {
		o.Engine.Events = pub
	}
	o.Engine.Logger = log
	o.Engine.TracerProvider = tp
	o.Engine.Hostname = o.Delivery.HeloName
	o.Engine.LocalNames = o.LocalNames
	if len(o.Engine.LocalNames) == 0 {
		o.Engine.LocalNames = []string{o.Delivery.HeloName}
	}
	o.Engine.LocalAddrs, _ = o.localAddrs()
	o.Engine.DomainLimits = flagLimits
	o.Engine.Shaping = shapingRules.Load
	sb, err := q.LazyShapingBucket(ctx)
	if err != nil {
		log.Warn("fleet-wide limits are kept as local shares until the shaping bucket opens", "component", "worker", "err", err)
	}
	o.Engine.ShapingMetrics = metrics.Shaping()
	shaper := shaping.New(sb, shaping.Config{Owner: o.Delivery.HeloName + "/" + strconv.Itoa(os.Getpid()), Logger: log,
		Metrics: o.Engine.ShapingMetrics, Rules: shapingRules.Load})
	o.Engine.Shaper = shaper
	shaperRef.Store(shaper)
	o.Engine.HopConcurrency = o.Delivery.MaxConnsPerHost
	var holds atomic.Pointer[map[string]queue.Hold]
	o.Engine.Held = func(domain string) bool {
		h := holds.Load()
		return h != nil && queue.IsHeld(*h, domain)
	}
	router := &route.Router{Current: table.Load, Resolver: res, Port: uint16(o.SMTPPort)}
	if watcher != nil {
		// senderroutes: the relay chosen by the sender or AUTH user,
		// hot-reloaded with the rest of the policy.
		router.BySender = func(sender, user string) (route.SenderRoute, bool) {
			return watcher.Current().SenderRoute(sender, user)
		}
		// A DSN to an SRS address of ours goes straight to the sender it
		// stands for (through our own MX it would be a loop to ourselves).
		o.Engine.ReturnPath = func(from string) string {
			if r := watcher.Current().SRS(); r != nil {
				if orig, err := r.Reverse(from); err == nil {
					return orig
				}
			}
			return from
		}
	}
	w := worker.New(o.Engine, cons, q, store, router, client)
	log.Info("worker started", "component", "worker", "concurrency", o.Engine.Concurrency, "routes", table.Load().Len(), "dns", o.DNSServers.String(),
		"starttls", !o.NoTLS, "tls_ca_file", o.TLS.CAFile, "mta_sts", o.TLS.MTASTS, "dane", o.TLS.DANE)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(gctx) })
	g.Go(func() error { shaper.Run(gctx); return nil })
	if watcher != nil {
		g.Go(func() error { watcher.Run(gctx); return nil })
	}
	if b, err := q.TraceBucket(ctx); err != nil {
		log.Warn("SMTP traces are off: no trace settings bucket", "component", "worker", "err", err)
	} else {
		tw := smtptrace.NewWatcher(b, log, "worker", o.Trace)
		tracer.Store(tw)
		g.Go(func() error { return tw.Run(gctx) })
	}
	g.Go(func() error {
		// The operators' actions, in the fleet's logs (one worker each).
		if err := q.LogOperatorEvents(gctx, log.With("component", "audit")); err != nil {
			log.Warn("operator actions are not logged here (no audit-log consumer: run the bootstrap)", "component", "worker", "err", err)
		}
		return nil
	})
	g.Go(func() error {
		// Follow operators' domain holds; re-establish the watch if NATS restarts.
		for gctx.Err() == nil {
			err := q.WatchHolds(gctx, func(m map[string]queue.Hold) {
				holds.Store(&m)
				if len(m) > 0 {
					log.Info("domains on hold", "component", "worker", "count", len(m))
				}
			})
			if err != nil && gctx.Err() == nil {
				log.Warn("watching holds failed; retrying", "err", err)
				select {
				case <-gctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
		return nil
	})
	if o.Sweep.Interval > 0 {
		sw := &queue.Sweeper{Queue: q, Bodies: store, Interval: o.Sweep.Interval, MinAge: o.Sweep.MinAge,
			Log: log, Removed: metrics.OrphansRemoved()}
		g.Go(func() error { sw.Run(gctx); return nil })
	}
	g.Go(func() error {
		auth, err := o.queueConfig("mailfwd-worker").AuthOptions()
		if err != nil {
			return &ConfigError{err}
		}
		return control.Serve(gctx, control.Config{URL: o.NATSURL, Auth: auth, Component: "worker", Logger: log})
	})
	// Inline bodies go raw only once every worker reads that form.
	g.Go(func() error { q.WatchEnvelopeReaders(gctx, 5*time.Second, log); return nil })
	o.QueueMetrics.start(g, gctx, q, metrics, log)
	startHealth(ctx, g, gctx, o.HTTPAddr, o.Pprof, log, map[string]config.Check{"queue": q.Check, "blob": store.Check}, metrics)
	return g.Wait()
}
