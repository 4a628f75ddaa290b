package maillog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "00:00:00"},
		{-time.Second, "00:00:00"},
		{61 * time.Second, "00:01:01"},
		{5*24*time.Hour + 11*time.Minute + 49*time.Second, "5+00:11:49"},
	} {
		if got := Delay(tc.d); got != tc.want {
			t.Errorf("Delay(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestLogAttemptSendmailFormat(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("queue_id", "k7TKRB926176") // as the worker's
	t0 := time.Date(2026, 8, 29, 20, 27, 11, 0, time.UTC)
	LogAttempt(context.Background(), log, Attempt{
		QueueID: "k7TKRB926176", To: "Monique.Sullivan@cpships.com", Arrived: t0, Started: t0.Add(time.Second),
		Ended: t0.Add(2 * time.Second), Size: 1938, NRcpts: 1, Attempts: 1,
		RelayHost: "tpaexfe.ad.cpships.corp", RelayAddr: "10.152.38.168", DSN: "2.0.0",
		Stat: "Sent (<remown@c2pr0001.cpships.com> Queued mail\r\n for delivery)",
	})
	want := "k7TKRB926176: to=<Monique.Sullivan@cpships.com>, delay=00:00:02, xdelay=00:00:01, mailer=esmtp, pri=31938, relay=tpaexfe.ad.cpships.corp. [10.152.38.168], dsn=2.0.0, stat=Sent (<remown@c2pr0001.cpships.com> Queued mail for delivery)"
	if !strings.Contains(buf.String(), want) {
		t.Fatalf("log line\n%s\ndoes not contain\n%s", buf.String(), want)
	}
	if !strings.Contains(buf.String(), "level=INFO") || !strings.Contains(buf.String(), "queue_id=k7TKRB926176") {
		t.Fatalf("missing level or attributes: %s", buf.String())
	}
}

func TestLogReceived(t *testing.T) {
	var buf bytes.Buffer
	LogReceived(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)), Received{
		QueueID: "q1", From: "HelpdeskMU@CPShips.com", Size: 1938, NRcpts: 1, MsgID: "<remown@c2pr0001>",
		Proto: "ESMTP", ClientHelo: "c2pr0001", ClientAddr: "10.70.80.116",
	})
	want := "q1: from=<HelpdeskMU@CPShips.com>, size=1938, class=0, nrcpts=1, msgid=<remown@c2pr0001>, proto=ESMTP, daemon=MTA, relay=c2pr0001 [10.70.80.116]"
	if !strings.Contains(buf.String(), want) {
		t.Fatalf("got %s", buf.String())
	}
}

// What protected the hop follows relay=, as its own fields.
func TestLogAttemptTLS(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	LogAttempt(context.Background(), log, Attempt{
		QueueID: "Q1", To: "ops@example.net", Arrived: t0, Started: t0, Ended: t0, Size: 100, NRcpts: 1, Attempts: 1,
		RelayHost: "email-smtp.eu-west-1.amazonaws.com", RelayAddr: "127.0.0.1", DSN: "2.0.0", Stat: "Sent (Ok)",
		TLS: "tls=TLSv1.3 verified=yes", Verify: "OK",
	})
	want := "relay=email-smtp.eu-west-1.amazonaws.com. [127.0.0.1], tls=TLSv1.3 verified=yes, verify=OK, dsn=2.0.0, stat=Sent (Ok)"
	if !strings.Contains(buf.String(), want) || !strings.Contains(buf.String(), `tls=TLSv1.3 verify=OK`) {
		t.Fatalf("log line\n%s\ndoes not contain\n%s", buf.String(), want)
	}
}
