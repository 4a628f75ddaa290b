package ctl_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/shaping"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// quotaView is `quota status -o json` as a reader sees it.
type quotaView struct {
	Name, Rule, Limit string
	Rate, Hourly      *struct {
		Limit      string
		Used, Left *int
		NextInMs   int64
		FullAt     *time.Time
	}
	FullAt *time.Time
}

func quotaStatus(t *testing.T, args ...string) (map[string]quotaView, ctlResult) {
	t.Helper()
	r := mustCtl(t, ctl.ExitOK, append([]string{"quota", "status", "-o", "json"}, args...)...)
	var items []quotaView
	if err := json.Unmarshal([]byte(r.out), &items); err != nil {
		t.Fatalf("quota status -o json: %v\n%s", err, r)
	}
	m := map[string]quotaView{}
	for _, it := range items {
		m[it.Name] = it
	}
	return m, r
}

// ingressCounts takes messages against the quotas as the ingress does
// (pkg/ingress takeQuotas: the rules' For, one GCRA step on each key in
// MAIL_QUOTAS), keeping its view of each key between calls as a running
// ingress does. It says whether the message was admitted.
type ingressCounts struct {
	t     *testing.T
	rules *policy.Quotas
	g     *shaping.GCRA
}

func (ic ingressCounts) take(domain, user string) bool {
	ic.t.Helper()
	for _, q := range ic.rules.For(domain, user) {
		wait, _, err := ic.g.Take(context.Background(), q.Key, q.Limit.Paces())
		if err != nil {
			ic.t.Fatal(err)
		}
		if wait > 0 {
			return false
		}
	}
	return true
}

func (ic ingressCounts) mustTake(n int, domain, user string) {
	ic.t.Helper()
	for i := range n {
		if !ic.take(domain, user) {
			ic.t.Fatalf("message %d of %s/%s refused", i+1, domain, user)
		}
	}
	if ic.take(domain, user) {
		ic.t.Fatalf("message %d of %s/%s admitted beyond its quota", n+1, domain, user)
	}
}

func usedLeft(t *testing.T, what string, p *struct {
	Limit      string
	Used, Left *int
	NextInMs   int64
	FullAt     *time.Time
}, used, left int) {
	t.Helper()
	if p == nil || p.Used == nil || p.Left == nil {
		t.Fatalf("%s: no used/left: %+v", what, p)
	}
	if *p.Used != used || *p.Left != left {
		t.Errorf("%s: used %d left %d, want %d/%d", what, *p.Used, *p.Left, used, left)
	}
	if left == 0 && (p.FullAt == nil || !p.FullAt.After(time.Now()) || p.NextInMs <= 0) {
		t.Errorf("%s: spent, but full again at %v, next in %dms", what, p.FullAt, p.NextInMs)
	}
}

// `quota status` shows every count in MAIL_QUOTAS under the rule that
// makes it, with what is used and left of each limit and when it is full
// again; `quota reset NAME` clears one sender's count, so an ingress that
// refused it admits it again at once, leaves the others alone, and is an
// audit line and event.
func TestQuotaStatusAndReset(t *testing.T) {
	t.Setenv("MAILFWD_SENDER_QUOTA", "")
	t.Setenv("MAILFWD_USER_QUOTA", "")
	n := testenv.StartNATS(t)
	bootstrap(t, n.URL(), 30*time.Second)
	dir := t.TempDir()
	quotaFile := "ops.test  rate=100/s,hourly=3\nuser:alice  hourly=2\n"
	if err := os.WriteFile(filepath.Join(dir, "quota"), []byte(quotaFile), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(map[string][]byte{"quota": []byte(quotaFile)})
	if err != nil {
		t.Fatal(err)
	}
	sender, user := policy.QuotaLimit{Hourly: 2}, policy.QuotaLimit{Hourly: 5}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: "test-ingress"})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	b, err := q.QuotaBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ic := ingressCounts{t: t, rules: p.Quotas.WithDefaults(&sender, &user), g: shaping.NewGCRA(b, 0, nil)}
	ic.mustTake(3, "mail.ops.test", "") // the rule's domain counts its subdomains
	ic.mustTake(2, "other.test", "")    // "*": each domain its own count
	ic.mustTake(2, "", "Alice")
	ic.mustTake(5, "", "bob@x.test") // user:*, a name that is no key token

	// A key no ingress makes (by hand, or a stolen credential): not a
	// sender's count, named in a warning.
	if _, err := b.Create(ctx, "u.=G1sySg", []byte("1"), time.Hour); err != nil { // "\x1b[2J"
		t.Fatal(err)
	}

	nats := []string{"--nats-url", n.URL()}
	full := append(nats, "--policy-dir", dir, "--sender-quota", "hourly=2", "--user-quota", "hourly=5")
	st, r := quotaStatus(t, full...)
	mustContain(t, "odd key", r.errOut, `1 keys in MAIL_QUOTAS are no sender's count`, `"u.=G1sySg"`)
	if len(st) != 4 {
		t.Fatalf("want 4 counts, got %+v", st)
	}
	ops := st["ops.test"]
	if ops.Rule != "ops.test" || ops.Limit != "rate=100/s,hourly=3" || ops.FullAt == nil {
		t.Errorf("ops.test: %+v", ops)
	}
	usedLeft(t, "ops.test hourly", ops.Hourly, 3, 0)
	if ops.Rate == nil || ops.Rate.Used == nil || *ops.Rate.Used+*ops.Rate.Left != 100 || !strings.HasPrefix(ops.Rate.Limit, "100/s") {
		t.Errorf("ops.test rate: %+v", ops.Rate)
	}
	if o := st["other.test"]; o.Rule != "*" || o.Rate != nil {
		t.Errorf("other.test: %+v", o)
	}
	usedLeft(t, "other.test hourly", st["other.test"].Hourly, 2, 0)
	if a := st["user:alice"]; a.Rule != "user:alice" {
		t.Errorf("user:alice: %+v", a)
	}
	usedLeft(t, "user:alice hourly", st["user:alice"].Hourly, 2, 0)
	if u := st["user:bob@x.test"]; u.Rule != "user:*" {
		t.Errorf("user:bob@x.test: %+v", u)
	}
	usedLeft(t, "user:bob@x.test hourly", st["user:bob@x.test"].Hourly, 5, 0)

	// The table says the same.
	r = mustCtl(t, ctl.ExitOK, append([]string{"quota", "status"}, full...)...)
	y := mustCtl(t, ctl.ExitOK, append([]string{"quota", "status", "-o", "yaml"}, full...)...)
	mustContain(t, "status yaml", y.out, "- fullAt:", "name: ops.test", "rule: user:*", "used: 3")
	mustContain(t, "status table", r.out, "NAME", "HOURLY USED/LEFT", "FULL AGAIN", "ops.test", "3/0", "user:bob@x.test", "user:*")

	// Without the policy and the defaults: the counts and when each is full
	// again, and a warning that the limits are not known here.
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("MAILFWD_POLICY_DIR", "")
	bare, r := quotaStatus(t, nats...)
	mustContain(t, "status without limits", r.errOut, "warning", "--policy-dir")
	if o := bare["ops.test"]; len(bare) != 4 || o.Rule != "" || o.FullAt == nil || o.Hourly == nil || o.Hourly.Used != nil {
		t.Errorf("without limits: %+v", bare)
	}

	// Reset ops.test: the ingress (its view of the key is the spent one)
	// admits it again, up to its whole quota; the other counts stay.
	r = mustCtl(t, ctl.ExitOK, append([]string{"quota", "reset", "ops.test"}, nats...)...)
	mustContain(t, "reset", r.out, "reset ops.test")
	mustContain(t, "reset audit line", r.errOut, "audit: action=quota.reset actor=", `target="ops.test"`, "matched=1", "full again at")
	ic.mustTake(3, "ops.test", "")
	if ic.take("other.test", "") || ic.take("", "alice") {
		t.Fatal("a reset of ops.test gave other senders messages")
	}
	// A user by the name status shows.
	mustCtl(t, ctl.ExitOK, append([]string{"quota", "reset", "user:bob@x.test"}, nats...)...)
	ic.mustTake(5, "", "BOB@x.test")
	st, _ = quotaStatus(t, full...)
	usedLeft(t, "ops.test hourly after the reset", st["ops.test"].Hourly, 3, 0)
	usedLeft(t, "other.test hourly after the reset", st["other.test"].Hourly, 2, 0)

	// A name without a count: nothing to do, said so, audited with matched=0.
	r = mustCtl(t, ctl.ExitOK, append([]string{"quota", "reset", "quiet.test"}, nats...)...)
	mustContain(t, "reset of nothing", r.out, "quiet.test has no count")
	mustContain(t, "reset of nothing audited", r.errOut, "matched=0")
	for _, bad := range []string{"*", "user:*", "bad domain"} {
		mustCtl(t, ctl.ExitUsage, append([]string{"quota", "reset", bad}, nats...)...)
	}
	audits := tailJSON(t, n.URL(), "--outcome", "audit")
	if len(audits) != 3 || audits[0].Action != "quota.reset" || audits[0].Target != "ops.test" || audits[0].Matched != 1 ||
		audits[0].Actor == "" || audits[1].Target != "user:bob@x.test" || audits[2].Matched != 0 {
		t.Fatalf("audit events: %+v, want three quota.reset", audits)
	}
	mustCtl(t, ctl.ExitUsage, append([]string{"quota", "status", "--sender-quota", "daily=3"}, nats...)...)
}
