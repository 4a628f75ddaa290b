// Package daemon wires mailfwd's processes: it turns flags into the queue,
// body store, SMTP servers and workers, and runs them under one errgroup with
// graceful shutdown. cmd/ingress, cmd/worker and the dev all-in-one use it.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/certreload"
	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/control"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/ingress"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/telemetry"
)

// Common is what every process needs.
type Common struct {
	NATSURL      string
	NATSCreds    string
	NATSUser     string
	NATSPassword config.Secret
	BlobStore    string
	HTTPAddr     string
	Bootstrap    bool
	AckWait      time.Duration
	Replicas     int
	Pprof        bool
	Logging      config.Logging
	// NATSStoreDir is --nats-store-dir: the local nats-server's store_dir,
	// flushed after every durable write (queue.Config.LocalStore).
	NATSStoreDir string
	Events       Events
}

func (c *Common) register(fs *flag.FlagSet, httpDefault string) {
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&c.NATSCreds, "nats-creds", "", "NATS credentials file (JWT + nkey); or use --nats-user")
	fs.StringVar(&c.NATSUser, "nats-user", "", "NATS user name (with --nats-password; the chart sets the quickstart's least-privilege users)")
	fs.Var(&c.NATSPassword, "nats-password", "NATS password of --nats-user (prefer the environment: MAILFWD_NATS_PASSWORD)")
	fs.StringVar(&c.NATSStoreDir, "nats-store-dir", "", "single node: the store_dir of the nats-server at --nats-url, on this machine; every accepted message (and deferral, move, fan-out) is flushed to disk with it before the 250 (group-committed syncfs; the stream must have 1 replica). Empty: durability is the server's sync interval or the replicas' quorum")
	fs.StringVar(&c.BlobStore, "blob-store", "", "body store: file:///path or s3://bucket?endpoint=host:port[&secure=false]")
	fs.StringVar(&c.HTTPAddr, "http-addr", httpDefault, "health endpoints (/healthz, /readyz); empty disables")
	fs.BoolVar(&c.Bootstrap, "bootstrap", true, "create or update the JetStream stream, consumer and bucket at start (idempotent)")
	config.DurationVar(fs, &c.AckWait, "ack-wait", 2*time.Minute, "JetStream ack wait of the workers' consumer (set at bootstrap)")
	fs.IntVar(&c.Replicas, "replicas", 1, "JetStream replicas for the stream and bucket (set at bootstrap)")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go profiles at /debug/pprof/ on --http-addr")
	c.Logging.Register(fs)
	c.Events.register(fs)
}

func (c *Common) validate() error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, errors.New("--nats-url is required"))
	}
	if c.NATSCreds != "" && c.NATSUser != "" {
		errs = append(errs, errors.New("--nats-creds and --nats-user exclude each other"))
	}
	if c.NATSPassword != "" && c.NATSUser == "" {
		errs = append(errs, errors.New("--nats-password needs --nats-user"))
	}
	if c.BlobStore == "" {
		errs = append(errs, errors.New("--blob-store is required (file:///path or s3://bucket?endpoint=…)"))
	}
	if c.AckWait < 5*time.Second {
		errs = append(errs, errors.New("--ack-wait must be at least 5s"))
	}
	if _, err := c.Events.types(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Common) queueConfig(name string) queue.Config {
	return queue.Config{URL: c.NATSURL, CredsFile: c.NATSCreds, User: c.NATSUser, Password: c.NATSPassword.Reveal(),
		ClientName: name, AckWait: c.AckWait, Replicas: c.Replicas, LocalStore: c.NATSStoreDir,
		EventsMaxAge: c.Events.MaxAge, EventsMaxBytes: c.Events.MaxBytes}
}

// connect opens the queue and body store, bootstrapping them when asked.
// NATS may still be starting: bootstrap is retried until ctx ends.
func (c *Common) connect(ctx context.Context, name string, log *slog.Logger) (*queue.Queue, blob.Store, error) {
	qc := c.queueConfig(name)
	qc.Logger = log
	q, err := queue.Connect(ctx, qc)
	if err != nil {
		return nil, nil, err
	}
	store, err := blob.Open(ctx, c.BlobStore)
	if err != nil {
		q.Close()
		return nil, nil, err
	}
	q.DeleteBodiesOfFailedAccepts(store)
	if !c.Bootstrap {
		if err := q.CheckLocalStore(ctx); err != nil {
			q.Close()
			if errors.Is(err, queue.ErrUnsafeStream) {
				return nil, nil, &ConfigError{err}
			}
			return nil, nil, err
		}
		return q, store, nil
	}
	wait := 200 * time.Millisecond
	for {
		err := q.Bootstrap(ctx)
		if errors.Is(err, queue.ErrUnsafeStream) {
			q.Close()
			return nil, nil, &ConfigError{err}
		}
		if err == nil {
			err = blob.Bootstrap(ctx, store)
		}
		if err == nil {
			if w := q.DurabilityWarning(ctx); w != "" && !q.FlushesLocalStore() {
				log.Warn(w, "component", name)
			}
			return q, store, nil
		}
		log.Warn("bootstrap failed; retrying", "err", err, "wait", wait)
		select {
		case <-ctx.Done():
			q.Close()
			return nil, nil, fmt.Errorf("bootstrap: %w", err)
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// DefaultInlineBodyMax is the default --inline-body-max, 128 KiB: most mail
// (and the 100 KiB benchmark cells) rides in its JetStream envelope, one
// write and one flush (or one quorum) per message; the object store's PUT,
// GET and DELETE per body cost more CPU than replicating the bytes (see
// docs/benchmarks.md). Bigger bodies, and those shared by several recipient
// domains, go to --blob-store.
const DefaultInlineBodyMax = 128 << 10

// Ingress is the ingress process's configuration.
type Ingress struct {
	Common
	Listen          string
	TLSCert, TLSKey string
	RelayNetworks   config.StringList
	RelayDomains    config.StringList
	// ClientLimitExceptions is --client-limit-exceptions (nil: the default).
	ClientLimitExceptions config.StringList
	PolicyDir             string
	PolicyInterval        time.Duration
	DNSServer             string
	ShutdownTimeout       time.Duration
	SMTP                  ingress.Config
	// SubmissionListen is the submission listener (port 587: STARTTLS,
	// then AUTH); SMTPSListen the implicit-TLS one (port 465). "" disables.
	SubmissionListen string
	SMTPSListen      string

	// SubmissionAuthExceptions is --submission-auth-exceptions (default none).
	SubmissionAuthExceptions config.StringList
	// Proxy is the PROXY protocol on every listener (off without From).
	Proxy ProxyProtocol

	// AuthBudget bounds failed SMTP AUTH attempts per client
	// (--auth-max-failures, --auth-failure-window, --auth-failure-clients).
	AuthBudget smtpauth.BudgetConfig
	// AuthMaxConcurrentChecks bounds password-hash checks running at once.
	AuthMaxConcurrentChecks int
	// Trace bounds the live SMTP trace (--trace-*).
	Trace smtptrace.Limits
	// DKIMSigningNetworks is --dkim-signing-networks (nil: the default, relay).
	DKIMSigningNetworks config.StringList
	// SenderQuota and UserQuota are --sender-quota and --user-quota: the
	// quota of every sender domain and of every AUTH user without a rule
	// of the policy's quota key ("" none; docs/quotas.md).
	SenderQuota, UserQuota string
	// OnListen, when set, is told each listener's address once it listens
	// (kind "smtp", "submission" or "smtps"); tests use it with port 0.
	OnListen func(kind, addr string)
}

// Register adds the ingress flags.
func (o *Ingress) Register(fs *flag.FlagSet) {
	o.Common.register(fs, ":8080")
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:2525", "SMTP listen address")
	fs.StringVar(&o.SMTP.Hostname, "hostname", config.Hostname(), "host name in the greeting, EHLO and Received: headers")
	fs.StringVar(&o.SMTP.Banner, "banner", "ESMTP mailfwd", "greeting text after the host name (may be empty, as sendmail's confSMTP_LOGIN_MSG)")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "PEM certificate for STARTTLS (re-read when the file changes: no restart for a renewal)")
	fs.StringVar(&o.TLSKey, "tls-key", "", "PEM key for STARTTLS")
	fs.Int64Var(&o.SMTP.MaxMessageBytes, "max-message-size", 20_000_000, "SIZE limit in bytes (552 above it)")
	fs.IntVar(&o.SMTP.MaxRecipients, "max-recipients", 100, "recipients per message")
	fs.IntVar(&o.SMTP.MaxLineLength, "max-line-length", 2000, "longest command line (message data: --max-data-line-length)")
	config.DurationVar(fs, &o.SMTP.ReadTimeout, "read-timeout", 5*time.Minute, "idle time allowed per read of a command or of message data (not for the whole message); a timeout ends the session with 421")
	config.DurationVar(fs, &o.SMTP.WriteTimeout, "write-timeout", 5*time.Minute, "time allowed to write a reply")
	fs.IntVar(&o.SMTP.MaxSessions, "max-sessions", 500, "concurrent SMTP sessions; more get 421")
	fs.IntVar(&o.SMTP.InlineBodyMax, "inline-body-max", DefaultInlineBodyMax, "keep bodies up to this many bytes of single-domain messages in the JetStream envelope (made durable and replicated with it) instead of --blob-store; larger bodies and those of multi-domain messages go to the blob store (0: always the blob store; at most 524288)")
	fs.Int64Var(&o.SMTP.MaxInFlightBytes, "max-in-flight-bytes", ingress.DefaultMaxInFlightBytes, "body bytes all sessions may hold in memory at once (read buffers and the store's upload buffers, e.g. 5 MiB per S3 upload); beyond it 452 4.3.1")
	fs.Int64Var(&o.SMTP.MaxInFlightBytesPerClient, "max-in-flight-bytes-per-client", 0, "part of --max-in-flight-bytes one client address (IPv6: one /64) may hold; beyond it its messages get 452 4.3.1 (0: a quarter; at least one message's buffers; --client-limit-exceptions are exempt)")
	fs.IntVar(&o.SMTP.MaxSessionsPerClient, "max-sessions-per-client", 50, "concurrent SMTP sessions from one client address (IPv6: one /64); more get 421 4.7.0")
	fs.IntVar(&o.SMTP.MaxConnectionsPerClientPerMinute, "max-connections-per-client-per-minute", 600, "new connections from one client address per minute (token bucket, bursts up to this); more get 421 4.7.0")
	fs.Var(&o.ClientLimitExceptions, "client-limit-exceptions", "client networks exempt from the per-client session and connection-rate limits (CIDR or address, comma-separated; default 127.0.0.0/8,::1; \"none\" for no exceptions)")
	fs.IntVar(&o.SMTP.MaxErrorsPerSession, "max-errors-per-session", 20, "error replies (4xx/5xx) after which a session is closed with 421 4.7.0, as Postfix's smtpd_hard_error_limit (0: no limit)")
	fs.IntVar(&o.SMTP.MaxHops, "max-hops", 25, "Received: headers a message may carry; more get 554 5.4.6 Too many hops (sendmail's MaxHopCount)")
	config.DurationVar(fs, &o.SMTP.StoreTimeout, "store-timeout", 30*time.Second, "time to store the body and get every publish ack before answering 451")
	fs.Var(&o.RelayNetworks, "relay-networks", "client networks allowed to relay anywhere (CIDR or address, comma-separated; default 127.0.0.0/8,::1)")
	config.DurationVar(fs, &o.PolicyInterval, "policy-interval", 5*time.Second, "how often --policy-dir is checked for changes")
	fs.StringVar(&o.PolicyDir, "policy-dir", "", "sendmail-style policy directory (the mounted ConfigMap: access, aliases, virtusertable, local-host-names…), hot-reloaded; replaces --relay-networks/--relay-domains")
	fs.StringVar(&o.DNSServer, "dns-server", "", "DNS server host:port for client reverse lookups (Connect: host name rules); default: the system resolver")
	fs.Var(&o.RelayDomains, "relay-domains", "recipient domains any client may send to (and their subdomains), comma-separated")
	config.DurationVar(fs, &o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, time for open sessions to finish")
	fs.StringVar(&o.SubmissionListen, "submission-listen", "", "submission listener (port 587: STARTTLS, then SMTP AUTH); needs --tls-cert; empty disables")
	fs.StringVar(&o.SMTPSListen, "smtps-listen", "", "implicit-TLS listener (port 465, RFC 8314); needs --tls-cert; empty disables")
	fs.Var(&o.SubmissionAuthExceptions, "submission-auth-exceptions", "client networks that may send on --submission-listen and --smtps-listen without SMTP AUTH (CIDR or address, comma-separated; default none: MAIL before AUTH gets 530 5.7.0)")
	fs.IntVar(&o.SMTP.MaxRecipientOvershoot, "max-recipient-overshoot", ingress.DefaultMaxRecipientOvershoot, "recipients over --max-recipients a transaction may send (each answered 452 4.5.3) before further ones count toward --max-errors-per-session, as Postfix's smtpd_recipient_overshoot_limit")
	fs.IntVar(&o.SMTP.MaxAbandonedTransactions, "max-abandoned-transactions", ingress.DefaultMaxAbandonedTransactions, "transactions a session may end before DATA (RSET, a new MAIL FROM, every recipient refused); the next MAIL FROM gets 421 4.7.0 and the session is closed (about Postfix's smtpd_junk_command_limit; bounds the sender quotas' NATS KV writes a MAIL FROM/RSET loop makes; 0: no limit)")
	fs.IntVar(&o.SMTP.MinDataRate, "min-data-rate", ingress.DefaultMinDataRate, "slowest a message may come, in bytes per second (Postfix smtpd_min_data_rate): a transfer may take --read-timeout plus one second per this many bytes; slower clients get 421 4.4.2 and nothing is queued (0: no minimum)")
	fs.IntVar(&o.SMTP.MaxDataLineLength, "max-data-line-length", ingress.DefaultMaxDataLineLength, "longest line of message data (the body streams: no memory is held per line; header lines are bounded at 64 KiB); longer gets 500 5.5.2 and the session ends")
	fs.IntVar(&o.AuthBudget.MaxFailures, "auth-max-failures", smtpauth.DefaultMaxFailures, "failed SMTP AUTH attempts a client (IPv6: one /64) has within --auth-failure-window; the next gets 421 4.7.0 and the session is closed")
	fs.IntVar(&o.AuthBudget.MaxUserFailures, "auth-max-user-failures", smtpauth.DefaultMaxUserFailures, "failed SMTP AUTH attempts one user name has within --auth-failure-window, from any client; the next check gets 421 4.7.0 (a success as that user clears the name's count, not the client's)")
	config.DurationVar(fs, &o.AuthBudget.Window, "auth-failure-window", smtpauth.DefaultFailureWindow, "how long a client's failed SMTP AUTH attempts count, from its first one")
	fs.IntVar(&o.AuthBudget.MaxClients, "auth-failure-clients", smtpauth.DefaultMaxClients, "clients with failed SMTP AUTH attempts remembered at once, and apart as many user names (the least recently failing one is forgotten beyond it)")
	fs.IntVar(&o.AuthMaxConcurrentChecks, "auth-max-concurrent-checks", 4, "password-hash checks (bcrypt/argon2id: CPU and memory) running at once; others wait, then 454 4.7.0")
	fs.IntVar(&o.SMTP.DKIMMaxHeaderBytes, "dkim-max-header-bytes", dkim.DefaultMaxHeaderBytes, "header section a DKIM signer holds per message while it looks for From:; a longer header is delivered unsigned")
	fs.Var(&o.DKIMSigningNetworks, "dkim-signing-networks", "clients whose mail is DKIM-signed without SMTP AUTH, for any From: domain with a key (OpenDKIM's InternalHosts): CIDRs or addresses, and \"relay\" for the clients the policy lets relay anywhere (Connect: RELAY, --relay-networks); comma-separated; default relay; \"none\": only AUTH users, for the From: addresses they may send as")
	fs.StringVar(&o.SenderQuota, "sender-quota", "", "outbound quota of every envelope sender domain, each its own count for the whole ingress fleet: 'rate=R/s,burst=B,hourly=N' (any subset); more gets 450 4.7.1 at MAIL FROM; the policy key quota's \"*\" line and per-domain lines override it (docs/quotas.md); empty: none")
	fs.StringVar(&o.UserQuota, "user-quota", "", "outbound quota of every SMTP AUTH user, each its own count for the whole ingress fleet: 'rate=R/s,burst=B,hourly=N'; the policy key quota's \"user:*\" and user:NAME lines override it; empty: none")
	o.Trace.Register(fs)
	o.Proxy.Register(fs)
}

// quotaDefaults parses --sender-quota and --user-quota (nil: not set).
func (o *Ingress) quotaDefaults() (sender, user *policy.QuotaLimit, err error) {
	parse := func(name, spec string) (*policy.QuotaLimit, error) {
		if spec == "" {
			return nil, nil
		}
		l, err := policy.ParseQuotaLimit(spec)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %v", name, spec, err)
		}
		return &l, nil
	}
	if sender, err = parse("sender-quota", o.SenderQuota); err != nil {
		return nil, nil, err
	}
	user, err = parse("user-quota", o.UserQuota)
	return sender, user, err
}

// Validate checks the configuration before anything starts.
func (o *Ingress) Validate() error {
	errs := []error{o.Common.validate()}
	if o.Listen == "" {
		errs = append(errs, errors.New("--listen is required"))
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if o.SMTP.InlineBodyMax < 0 || o.SMTP.InlineBodyMax > 512*1024 {
		errs = append(errs, errors.New("--inline-body-max must be 0-524288 (JetStream messages are limited to 1 MB)"))
	}
	if o.SMTP.MaxInFlightBytes < 1<<20 {
		errs = append(errs, errors.New("--max-in-flight-bytes must be at least 1048576"))
	}
	if o.SMTP.MaxSessionsPerClient < 1 {
		errs = append(errs, errors.New("--max-sessions-per-client must be at least 1"))
	}
	if o.SMTP.MaxConnectionsPerClientPerMinute < 1 {
		errs = append(errs, errors.New("--max-connections-per-client-per-minute must be at least 1"))
	}
	if o.SMTP.MaxErrorsPerSession < 0 {
		errs = append(errs, errors.New("--max-errors-per-session must be 0 (no limit) or more"))
	}
	if o.SMTP.MaxHops < 1 {
		errs = append(errs, errors.New("--max-hops must be at least 1"))
	}
	if o.SMTP.ReadTimeout < time.Second {
		errs = append(errs, errors.New("--read-timeout must be at least 1s"))
	}
	if (o.SubmissionListen != "" || o.SMTPSListen != "") && o.TLSCert == "" {
		errs = append(errs, errors.New("--submission-listen and --smtps-listen need --tls-cert and --tls-key (AUTH is offered only over TLS)"))
	}
	if err := o.AuthBudget.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := o.Proxy.parse(); err != nil {
		errs = append(errs, err)
	}
	if o.AuthMaxConcurrentChecks < 1 {
		errs = append(errs, errors.New("--auth-max-concurrent-checks must be at least 1"))
	}
	if o.SMTP.DKIMMaxHeaderBytes < 1024 || o.SMTP.DKIMMaxHeaderBytes > 16<<20 {
		errs = append(errs, errors.New("--dkim-max-header-bytes must be 1024-16777216"))
	}
	if err := o.Trace.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.SMTP.MaxMessageBytes < 1024 {
		errs = append(errs, errors.New("--max-message-size must be at least 1024"))
	}
	if o.PolicyDir != "" && (len(o.RelayNetworks) > 0 || len(o.RelayDomains) > 0) {
		errs = append(errs, errors.New("--policy-dir replaces --relay-networks/--relay-domains (put Connect:/To: RELAY entries in its access file)"))
	}
	if _, _, err := o.dkimSigningNetworks(); err != nil {
		errs = append(errs, fmt.Errorf("--dkim-signing-networks: %w", err))
	}
	if _, err := o.clientLimitExceptions(); err != nil {
		errs = append(errs, fmt.Errorf("--client-limit-exceptions: %w", err))
	}
	if _, err := ingress.ParseNetworks(o.RelayNetworks); err != nil {
		errs = append(errs, fmt.Errorf("--relay-networks: %w", err))
	}
	if _, err := ingress.ParseNetworks(o.SubmissionAuthExceptions); err != nil {
		errs = append(errs, fmt.Errorf("--submission-auth-exceptions: %w", err))
	}
	if o.SMTP.MaxInFlightBytesPerClient < 0 || o.SMTP.MaxInFlightBytesPerClient > o.SMTP.MaxInFlightBytes {
		errs = append(errs, errors.New("--max-in-flight-bytes-per-client must be 0 (a quarter) up to --max-in-flight-bytes"))
	}
	if o.SMTP.MinDataRate < 0 {
		errs = append(errs, errors.New("--min-data-rate must be 0 (no minimum) or more"))
	}
	if o.SMTP.MaxRecipientOvershoot < 1 {
		errs = append(errs, errors.New("--max-recipient-overshoot must be at least 1"))
	}
	if o.SMTP.MaxAbandonedTransactions < 0 {
		errs = append(errs, errors.New("--max-abandoned-transactions must be 0 (no limit) or more"))
	}
	if _, _, err := o.quotaDefaults(); err != nil {
		errs = append(errs, err)
	}
	if o.SMTP.MaxDataLineLength < 1000 {
		errs = append(errs, errors.New("--max-data-line-length must be at least 1000 (RFC 5321: 998 and CR LF)"))
	}
	return errors.Join(errs...)
}

// clientLimitExceptions parses --client-limit-exceptions with its default.
func (o *Ingress) clientLimitExceptions() ([]netip.Prefix, error) {
	switch {
	case len(o.ClientLimitExceptions) == 0:
		return ingress.ParseNetworks([]string{"127.0.0.0/8", "::1"})
	case len(o.ClientLimitExceptions) == 1 && o.ClientLimitExceptions[0] == "none":
		return nil, nil
	}
	return ingress.ParseNetworks(o.ClientLimitExceptions)
}

// dkimSigningNetworks parses --dkim-signing-networks with its default
// ("relay"): the networks, and whether the policy's relay clients sign.
func (o *Ingress) dkimSigningNetworks() (nets []netip.Prefix, relay bool, err error) {
	list := o.DKIMSigningNetworks
	switch {
	case len(list) == 0:
		return nil, true, nil
	case len(list) == 1 && list[0] == "none":
		return nil, false, nil
	}
	var cidrs []string
	for _, s := range list {
		switch s {
		case "relay":
			relay = true
		case "none":
			return nil, false, errors.New(`"none" goes alone`)
		default:
			cidrs = append(cidrs, s)
		}
	}
	nets, err = ingress.ParseNetworks(cidrs)
	return nets, relay, err
}

// RunIngress runs an ingress until ctx is cancelled, then drains it.
// ready, if not nil, receives the SMTP address once it listens.
func RunIngress(ctx context.Context, o Ingress, log *slog.Logger, tp trace.TracerProvider, ready func(smtpAddr string)) error {
	if err := o.Validate(); err != nil {
		return &ConfigError{err}
	}
	metrics := telemetry.NewMetrics()
	o.SMTP.Metrics = metrics
	o.SMTP.ClientLimitExceptions, _ = o.clientLimitExceptions()
	o.SMTP.SubmissionAuthExceptions, _ = ingress.ParseNetworks(o.SubmissionAuthExceptions)
	if o.SMTP.MinDataRate == 0 {
		o.SMTP.MinDataRate = -1 // the flag's 0 is "no minimum"; Config's 0 the default
	}
	if o.SMTP.MaxAbandonedTransactions == 0 {
		o.SMTP.MaxAbandonedTransactions = -1 // the flag's 0 is "no limit"; Config's 0 the default
	}
	o.SMTP.DKIMSignNetworks, o.SMTP.DKIMSignRelayClients, _ = o.dkimSigningNetworks()
	if os.Getenv("GOMEMLIMIT") == "" {
		// Keep the heap near what --max-in-flight-bytes lets live.
		limit := ingress.MemoryLimit(o.SMTP.MaxInFlightBytes)
		debug.SetMemoryLimit(limit)
		log.Info("Go soft memory limit set from --max-in-flight-bytes (GOMEMLIMIT overrides)", "component", "ingress", "limit_bytes", limit)
	}
	var watcher *policy.Watcher
	if o.PolicyDir != "" {
		var err error
		watcher, err = policy.NewWatcher(o.PolicyDir, o.PolicyInterval, func(p *policy.Policy) {
			log.Info("policy loaded", "component", "ingress", "version", p.Version, "dir", o.PolicyDir, "from_whitelist", p.Settings.FromWhitelist)
			metrics.PolicyReload(true, p.Version)
		}, func(err error) {
			log.Error("policy update refused; the last good policy stays in force", "component", "ingress", "err", err)
			metrics.PolicyReload(false, "")
		})
		if err != nil {
			return &ConfigError{fmt.Errorf("--policy-dir: %w", err)}
		}
		p := watcher.Current()
		log.Info("policy loaded", "component", "ingress", "version", p.Version, "dir", o.PolicyDir, "from_whitelist", p.Settings.FromWhitelist)
		metrics.PolicyReload(true, p.Version)
		o.SMTP.Policy = &ingress.SendmailPolicy{Current: watcher.Current, MaxExpansion: o.SMTP.MaxRecipients}
		// users and dkim are keys of the same (hot-reloaded) policy directory.
		o.SMTP.Users = func() *smtpauth.Users { return watcher.Current().Users }
		o.SMTP.DKIM = func() *dkim.Keys { return watcher.Current().DKIM }
		budget, err := smtpauth.NewFailureBudget(o.AuthBudget)
		if err != nil {
			return &ConfigError{err}
		}
		o.SMTP.Auth = &smtpauth.Authenticator{Verifier: smtpauth.NewVerifier(o.AuthMaxConcurrentChecks), Budget: budget, Log: log.With("component", "ingress")}
	} else {
		if len(o.RelayNetworks) == 0 {
			o.RelayNetworks = config.StringList{"127.0.0.0/8", "::1"}
		}
		nets, _ := ingress.ParseNetworks(o.RelayNetworks)
		o.SMTP.Policy = &ingress.StaticRelay{Networks: nets, Domains: o.RelayDomains}
	}
	if o.DNSServer != "" {
		server := o.DNSServer
		o.SMTP.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	o.SMTP.Logger = log
	o.SMTP.TracerProvider = tp
	if o.TLSCert != "" {
		// Re-read at the next handshake when the files change (a cert-manager
		// renewal updates the mounted Secret): no restart.
		cert, err := certreload.Load(o.TLSCert, o.TLSKey, log.With("component", "ingress"))
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		o.SMTP.TLSConfig = cert.Config()
	}
	q, store, err := o.connect(ctx, "mailfwd-ingress", log)
	if err != nil {
		return err
	}
	defer q.Close()
	pub, err := o.Events.start(q, "ingress", log, metrics)
	if err != nil {
		return err
	}
	defer stopEvents(pub) // before q.Close
	if pub != nil {
		o.SMTP.Events = pub
	}
	var tw *smtptrace.Watcher // nil traces nothing
	if b, err := q.TraceBucket(ctx); err != nil {
		log.Warn("live SMTP trace unavailable (mailfwdctl trace records nothing here)", "component", "ingress", "err", err)
	} else {
		tw = smtptrace.NewWatcher(b, log, "ingress", o.Trace)
	}
	o.SMTP.Trace = tw
	o.SMTP.Quotas = o.quotas(ctx, q, watcher, metrics, log)
	srv, err := ingress.New(o.SMTP, q, store)
	if err != nil {
		return err
	}
	type listening struct {
		kind string
		ln   net.Listener
	}
	var lns []listening
	closeAll := func() {
		for _, l := range lns {
			l.ln.Close()
		}
	}
	for _, l := range []struct{ kind, addr string }{{"smtp", o.Listen}, {"submission", o.SubmissionListen}, {"smtps", o.SMTPSListen}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen %s (%s): %w", l.addr, l.kind, err)
		}
		if len(o.Proxy.From) > 0 {
			ln = newProxyListener(ln, &o.Proxy, l.kind, log)
		}
		lns = append(lns, listening{l.kind, ln})
	}
	attrs := []any{"component", "ingress", "hostname", o.SMTP.Hostname, "relay_networks", o.RelayNetworks.String(), "relay_domains", o.RelayDomains.String(),
		"policy_dir", o.PolicyDir, "starttls", o.SMTP.TLSConfig != nil, "proxy_protocol_from", o.Proxy.From.String(),
		"sender_quota", o.SenderQuota, "user_quota", o.UserQuota}
	for _, l := range lns {
		attrs = append(attrs, l.kind, l.ln.Addr().String())
	}
	log.Info("ingress listening", attrs...)
	for _, l := range lns {
		if o.OnListen != nil {
			o.OnListen(l.kind, l.ln.Addr().String())
		}
	}
	if ready != nil {
		ready(lns[0].ln.Addr().String())
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, l := range lns {
		switch l.kind {
		case "smtps":
			g.Go(func() error { return srv.ServeTLS(l.ln) })
		case "submission":
			g.Go(func() error { return srv.ServeSubmission(l.ln) })
		default:
			g.Go(func() error { return srv.Serve(l.ln) })
		}
	}
	if tw != nil {
		g.Go(func() error { return tw.Run(gctx) })
	}
	if watcher != nil {
		g.Go(func() error { watcher.Run(gctx); return nil })
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownTimeout)
		defer cancel()
		log.Info("ingress draining: no new sessions, open ones may finish", "component", "ingress", "sessions", srv.Sessions(), "timeout", o.ShutdownTimeout)
		return srv.Shutdown(sctx)
	})
	g.Go(func() error {
		auth, err := o.queueConfig("mailfwd-ingress").AuthOptions()
		if err != nil {
			return &ConfigError{err}
		}
		return control.Serve(gctx, control.Config{URL: o.NATSURL, Auth: auth, Component: "ingress", Logger: log})
	})
	// Inline bodies go raw only once every worker reads that form.
	g.Go(func() error { q.WatchEnvelopeReaders(gctx, 5*time.Second, log); return nil })
	startHealth(ctx, g, gctx, o.HTTPAddr, o.Pprof, log, map[string]config.Check{"queue": q.Check, "blob": store.Check}, metrics)
	return g.Wait()
}

// quotas sets up the sender quotas: the policy's quota key over the flags'
// defaults, counted in the fleet's bucket MAIL_QUOTAS (nil: no quota can
// apply: no flag and no policy directory).
func (o *Ingress) quotas(ctx context.Context, q *queue.Queue, watcher *policy.Watcher, metrics *telemetry.Metrics, log *slog.Logger) *ingress.Quotas {
	sender, user, _ := o.quotaDefaults()
	if watcher == nil && sender == nil && user == nil {
		return nil
	}
	rules := func() *policy.Quotas { return watcher.Current().Quotas.WithDefaults(sender, user) }
	if watcher == nil {
		static := policy.NewQuotas().WithDefaults(sender, user)
		rules = func() *policy.Quotas { return static }
	}
	qm := metrics.Quotas()
	b, err := q.LazyQuotaBucket(ctx)
	if err != nil {
		log.Warn("sender quota state unavailable; each ingress keeps a local share of every quota until it opens", "component", "ingress", "err", err,
			"share", "1/"+strconv.Itoa(shaping.LocalShareDivisor)) // counted at the first quota taken
	}
	return &ingress.Quotas{Rules: rules, Metrics: qm, Rates: shaping.NewRates(b, shaping.RatesConfig{
		Logger: log.With("component", "ingress"), What: "sender quotas", OnFallback: qm.LocalFallback})}
}

func startHealth(ctx context.Context, g *errgroup.Group, gctx context.Context, addr string, pprofOn bool, log *slog.Logger, checks map[string]config.Check, m *telemetry.Metrics) {
	if addr == "" {
		return
	}
	h := config.NewHealth(addr, checks)
	telemetry.RegisterDependencies(m, checks)
	h.Handle("/metrics", m.Handler())
	if pprofOn {
		h.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		h.Handle("/debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
		h.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		h.Handle("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
		h.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	}
	g.Go(func() error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("health listener %s: %w", addr, err)
		}
		log.Info("health endpoints", "addr", ln.Addr().String())
		return h.Serve(ln)
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return h.Shutdown(sctx)
	})
}
