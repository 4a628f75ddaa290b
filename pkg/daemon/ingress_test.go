package daemon

import (
	"flag"
	"strings"
	"testing"
)

// The ingress's limits have defaults and are validated once (issue 9).
func TestIngressLimitFlags(t *testing.T) {
	parse := func(args ...string) (*Ingress, error) {
		var o Ingress
		fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
		o.Register(fs)
		if err := fs.Parse(append([]string{"--blob-store", "file:///tmp/x"}, args...)); err != nil {
			return nil, err
		}
		return &o, o.Validate()
	}
	o, err := parse()
	if err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if o.SMTP.MaxHops != 25 || o.SMTP.MaxSessionsPerClient != 50 || o.SMTP.MaxConnectionsPerClientPerMinute != 600 ||
		o.SMTP.MaxErrorsPerSession != 20 || o.SMTP.MaxInFlightBytes != 80<<20 ||
		o.SMTP.MaxRecipientOvershoot != 1000 || o.SMTP.MaxDataLineLength != 1<<20 || o.SMTP.MinDataRate != 500 ||
		o.SMTP.MaxAbandonedTransactions != 50 || o.AuthBudget.MaxUserFailures != 20 || len(o.SubmissionAuthExceptions) != 0 {
		t.Errorf("defaults: %+v", o.SMTP)
	}
	if ex, _ := o.clientLimitExceptions(); len(ex) != 2 {
		t.Errorf("default exceptions %v, want loopback", ex)
	}
	if o, _ := parse("--client-limit-exceptions", "none"); o != nil {
		if ex, _ := o.clientLimitExceptions(); len(ex) != 0 {
			t.Errorf("none: %v", ex)
		}
	}
	for _, bad := range []struct{ flag, val, want string }{
		{"--max-hops", "0", "--max-hops"},
		{"--max-sessions-per-client", "0", "--max-sessions-per-client"},
		{"--max-connections-per-client-per-minute", "0", "--max-connections-per-client-per-minute"},
		{"--max-errors-per-session", "-1", "--max-errors-per-session"},
		{"--max-in-flight-bytes", "1000", "--max-in-flight-bytes"},
		{"--read-timeout", "10ms", "--read-timeout"},
		{"--client-limit-exceptions", "10.0.0.0/33", "--client-limit-exceptions"},
		{"--submission-listen", ":587", "--submission-listen"},
		{"--smtps-listen", ":465", "--smtps-listen"},
		{"--auth-max-failures", "-1", "--auth-max-failures"},
		{"--auth-failure-window", "10ms", "--auth-failure-window"},
		{"--auth-failure-clients", "-5", "--auth-failure-clients"},
		{"--auth-max-concurrent-checks", "0", "--auth-max-concurrent-checks"},
		{"--dkim-max-header-bytes", "10", "--dkim-max-header-bytes"},
		{"--trace-max-line-bytes", "5", "--trace-max-line-bytes"},
		{"--auth-max-user-failures", "-1", "--auth-max-user-failures"},
		{"--submission-auth-exceptions", "10.0.0.0/33", "--submission-auth-exceptions"},
		{"--max-recipient-overshoot", "0", "--max-recipient-overshoot"},
		{"--max-data-line-length", "500", "--max-data-line-length"},
		{"--min-data-rate", "-1", "--min-data-rate"},
		{"--max-abandoned-transactions", "-1", "--max-abandoned-transactions"},
		{"--max-in-flight-bytes-per-client", "-1", "--max-in-flight-bytes-per-client"},
	} {
		if _, err := parse(bad.flag, bad.val); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s %s: err %v, want it to name %s", bad.flag, bad.val, err, bad.want)
		}
	}
}

// --dkim-signing-networks: default relay (the policy's relay clients);
// "none" leaves only AUTH users; networks and relay mix (issue 19).
func TestDKIMSigningNetworksFlag(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		nets  int
		relay bool
		err   string
	}{
		{nil, 0, true, ""},
		{[]string{"--dkim-signing-networks", "none"}, 0, false, ""},
		{[]string{"--dkim-signing-networks", "10.1.0.0/16,192.0.2.7"}, 2, false, ""},
		{[]string{"--dkim-signing-networks", "relay,10.1.0.0/16"}, 1, true, ""},
		{[]string{"--dkim-signing-networks", "10.0.0.0/33"}, 0, false, "--dkim-signing-networks"},
		{[]string{"--dkim-signing-networks", "none,relay"}, 0, false, "--dkim-signing-networks"},
	} {
		var o Ingress
		fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
		o.Register(fs)
		if err := fs.Parse(append([]string{"--blob-store", "file:///tmp/x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err %v, want it to name %s", tc.args, err, tc.err)
			}
			continue
		}
		nets, relay, perr := o.dkimSigningNetworks()
		if err != nil || perr != nil || len(nets) != tc.nets || relay != tc.relay {
			t.Errorf("%v: %v relay=%v (%v, %v), want %d networks relay=%v", tc.args, nets, relay, err, perr, tc.nets, tc.relay)
		}
	}
}

// --events-types names event types; a mistyped one stops the daemon at
// start with the valid names, not later at the first event.
func TestEventsTypesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // error substring; "" valid
		n    int    // types selected (0: all)
	}{
		{nil, "", 0},
		{[]string{"--events-types", "deferred,Bounced", "--events-types", "expired"}, "", 3},
		{[]string{"--events-types", "bounce"}, `unknown event type "bounce"`, 0},
	} {
		var o Ingress
		fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
		o.Register(fs)
		if err := fs.Parse(append([]string{"--blob-store", "file:///tmp/x"}, c.args...)); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		if c.want != "" {
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--events-types") {
				t.Errorf("%v: error %v, want one naming --events-types and %q", c.args, err, c.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		if set, _ := o.Events.types(); len(set) != c.n {
			t.Errorf("%v: %d types selected, want %d", c.args, len(set), c.n)
		}
	}
}
