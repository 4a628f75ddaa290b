package daemon

import "github.com/mailfwd/mailfwd/pkg/config"

// helpGroups orders the daemons' --help by what the flags configure. One
// table serves both daemons (a group with none of a daemon's flags is not
// shown); a flag no group names is listed under "Other".
var helpGroups = []config.FlagGroup{
	{Title: "Configuration file and logs", Flags: []string{config.ConfigFlag, "log-*"}},
	{Title: "SMTP listeners (ingress)", Flags: []string{"listen", "submission-listen", "smtps-listen", "hostname", "banner", "tls-cert", "tls-key", "proxy-*"}},
	{Title: "Queue (NATS JetStream)", Flags: []string{"nats-*", "bootstrap", "ack-wait", "replicas"}},
	{Title: "Body store", Flags: []string{"blob-store", "inline-body-max"}},
	{Title: "Policy", Flags: []string{"policy-*", "relay-networks", "relay-domains", "route"}},
	{Title: "Session limits (ingress)", Flags: []string{"max-recipients", "max-line-length", "read-timeout", "write-timeout", "max-sessions", "max-sessions-per-client", "max-connections-per-client-per-minute", "client-limit-exceptions", "max-errors-per-session", "max-hops", "store-timeout", "max-message-size", "max-in-flight-bytes", "max-in-flight-bytes-per-client", "max-data-line-length", "max-recipient-overshoot", "min-data-rate", "max-abandoned-transactions"}},
	{Title: "Sender quotas (ingress, fleet-wide)", Flags: []string{"sender-quota", "user-quota"}},
	{Title: "SMTP AUTH (ingress)", Flags: []string{"auth-*", "submission-auth-exceptions"}},
	{Title: "DKIM", Flags: []string{"dkim-*"}},
	{Title: "Delivery: connections to next hops (worker)", Flags: []string{"helo-name", "local-name", "local-addr", "smtp-port", "connect-timeout", "command-timeout", "data-timeout", "idle-timeout", "host-down-ttl", "max-conns-per-host", "max-reply-bytes", "max-msgs-per-conn", "max-body-bytes-in-flight", "no-chunking", "no-pipelining", "smtp-line-length-limit"}},
	{Title: "Delivery: outbound TLS (worker)", Flags: []string{"no-starttls", "tls-ca-file", "mta-sts*", "dane", "oauth2-*"}},
	{Title: "DNS", Flags: []string{"dns-*"}},
	{Title: "Delivery: concurrency, retries, queue lifetime (worker)", Flags: []string{"concurrency", "domain-*", "congested-concurrency", "attempt-timeout", "retry-*", "queue-return", "warn-after", "stall-after", "max-handlings", "busy-delay"}},
	{Title: "Orphan sweep (worker)", Flags: []string{"orphan-*"}},
	{Title: "SMTP trace", Flags: []string{"trace-*"}},
	{Title: "Health, metrics, profiling, shutdown", Flags: []string{"http-addr", "pprof", "shutdown-timeout", "drain-timeout"}},
}
