package daemon

import (
	"flag"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/policy"
)

// TestQuotaFlagForm: --sender-quota and --user-quota take the form --help
// and docs/quotas.md show, from the command line and the environment; a
// bad one stops the ingress before it starts.
func TestQuotaFlagForm(t *testing.T) {
	var o Ingress
	fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
	o.Register(fs)
	env := map[string]string{"MAILFWD_USER_QUOTA": "rate=2/s,hourly=500"}
	if err := config.Parse(fs, []string{"--sender-quota", "rate=10/s,burst=20,hourly=5000"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	s, u, err := o.quotaDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if *s != (policy.QuotaLimit{Rate: 10, Burst: 20, Hourly: 5000}) || *u != (policy.QuotaLimit{Rate: 2, Hourly: 500}) {
		t.Fatalf("sender %+v, user %+v", *s, *u)
	}
	o.SenderQuota = "hourly=lots"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), `--sender-quota "hourly=lots"`) {
		t.Fatalf("a bad --sender-quota passed validation: %v", err)
	}
}
