// Package maillog writes delivery and receipt log lines in sendmail's format,
// so that the grep recipes operators already use (stat=Sent, to=<…PLMN…>,
// dsn=4.) keep working. Each line is one slog record: the sendmail text is
// the message, the same facts are attributes for structured consumers.
package maillog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Received is the ingress line: from=<…>, size=…, nrcpts=…, msgid=<…>, relay=…
type Received struct {
	QueueID    string
	From       string
	Size       int64
	NRcpts     int
	MsgID      string
	Proto      string // ESMTP, ESMTPS
	ClientHelo string
	ClientAddr string
}

// LogReceived writes the "from=" line.
func LogReceived(ctx context.Context, log *slog.Logger, r Received) {
	msgid := r.MsgID
	if msgid == "" {
		msgid = "<none>"
	}
	line := fmt.Sprintf("%s: from=<%s>, size=%d, class=0, nrcpts=%d, msgid=%s, proto=%s, daemon=MTA, relay=%s [%s]",
		r.QueueID, r.From, r.Size, r.NRcpts, msgid, r.Proto, r.ClientHelo, r.ClientAddr)
	log.LogAttrs(ctx, slog.LevelInfo, line,
		slog.String("queue_id", r.QueueID), slog.String("from", r.From), slog.Int64("size", r.Size),
		slog.Int("nrcpts", r.NRcpts), slog.String("msgid", r.MsgID), slog.String("client", r.ClientAddr))
}

// Attempt is one delivery attempt to one recipient.
type Attempt struct {
	QueueID   string
	To        string
	Arrived   time.Time // for delay=
	Started   time.Time // for xdelay=
	Ended     time.Time
	Size      int64
	NRcpts    int
	Attempts  int    // attempts made including this one
	RelayHost string // "mx1.example.com" (logged with a trailing dot, as sendmail does)
	RelayAddr string // "192.0.2.1"
	DSN       string // enhanced status, e.g. "2.0.0"
	Stat      string // "Sent (…)", "Deferred: …", "Failed: …"
	// TLS and Verify say what protected the hop the transaction ran on
	// ("tls=TLSv1.3 verified=yes", sendmail's verify=OK|FAIL|NO|NONE);
	// empty when no connection was used, and then not logged.
	TLS    string
	Verify string
}

// Priority is sendmail's queue priority: size + nrcpts·RecipientFactor +
// retries·WorkTimeFactor, with sendmail's default factors.
func Priority(size int64, nrcpts, attempts int) int64 {
	return size + int64(nrcpts)*30000 + int64(max(attempts-1, 0))*90000
}

// Delay formats a duration as sendmail does: HH:MM:SS, or D+HH:MM:SS.
func Delay(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	days, s := s/86400, s%86400
	out := fmt.Sprintf("%02d:%02d:%02d", s/3600, s%3600/60, s%60)
	if days > 0 {
		out = fmt.Sprintf("%d+%s", days, out)
	}
	return out
}

// LogAttempt writes one "to=" line.
func LogAttempt(ctx context.Context, log *slog.Logger, a Attempt) {
	relay := "[none]"
	if a.RelayHost != "" {
		host := a.RelayHost
		if !strings.HasPrefix(host, "[") {
			host += "."
		}
		relay = host
		if a.RelayAddr != "" && !strings.HasPrefix(host, "[") {
			relay += " [" + a.RelayAddr + "]"
		}
	}
	sec := ""
	if a.TLS != "" {
		sec = ", " + a.TLS + ", verify=" + a.Verify
	}
	line := fmt.Sprintf("%s: to=<%s>, delay=%s, xdelay=%s, mailer=esmtp, pri=%d, relay=%s%s, dsn=%s, stat=%s",
		a.QueueID, a.To, Delay(a.Ended.Sub(a.Arrived)), Delay(a.Ended.Sub(a.Started)),
		Priority(a.Size, a.NRcpts, a.Attempts), relay, sec, a.DSN, oneLine(a.Stat))
	level := slog.LevelInfo
	if !strings.HasPrefix(a.DSN, "2") {
		level = slog.LevelWarn
	}
	// The queue id is not an attribute here: the caller's logger carries
	// it (log.With("queue_id", …)), and a second copy would repeat the key.
	attrs := []slog.Attr{
		slog.String("to", a.To), slog.String("relay", a.RelayHost),
		slog.String("dsn", a.DSN), slog.Int("attempts", a.Attempts),
		slog.Duration("delay", a.Ended.Sub(a.Arrived)), slog.Duration("xdelay", a.Ended.Sub(a.Started)),
	}
	if a.TLS != "" {
		attrs = append(attrs, slog.String("tls", TLSVersion(a.TLS)), slog.String("verify", a.Verify))
	}
	log.LogAttrs(ctx, level, line, attrs...)
}

// TLSVersion turns the worker's hop description ("tls=TLSv1.3
// verified=yes", "tls=none") into its protocol alone: "TLSv1.3", "none".
func TLSVersion(desc string) string {
	v, _, _ := strings.Cut(desc, " ")
	return strings.TrimPrefix(v, "tls=")
}

// Seconds is a slog.HandlerOptions.ReplaceAttr that logs every duration in
// seconds (a float) under its key with "_seconds" added, so that no
// attribute is a bare count of nanoseconds and every duration has one
// stated unit.
func Seconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key+"_seconds", a.Value.Duration().Seconds())
	}
	return a
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
