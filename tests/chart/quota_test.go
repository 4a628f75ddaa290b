package chart_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/policy"
)

// readmeYAML returns the first ```yaml block after heading in the chart's
// README.
func readmeYAML(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("the chart README has no %q", heading)
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	block, _, closed := strings.Cut(rest, "```")
	if !ok || !closed {
		t.Fatalf("no yaml block under %q in the chart README", heading)
	}
	return block
}

// ingress.senderQuota and ingress.userQuota become the ingress's
// --sender-quota and --user-quota (absent when empty, the default: no
// quota), and policy.data.quota the policy's quota key: the README's quota
// example renders into flags the ingress accepts and a quota key the
// policy parser accepts; the schema refuses a quota the ingress would not.
func TestSenderQuotaValues(t *testing.T) {
	helm := helmBin(t)
	ingressArgs := func(out string) ([]string, []object) {
		objs := parseManifests(t, out)
		return podSpecs(t, objs)["Deployment/mailfwd-ingress"].Containers[0].Args, objs
	}
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	args, _ := ingressArgs(out)
	for _, f := range []string{"sender-quota", "user-quota"} {
		if v, ok := flagValue(args, f); ok {
			t.Errorf("defaults render --%s=%q; want no quota", f, v)
		}
	}

	example := writeFile(t, t.TempDir(), "quota.yaml", readmeYAML(t, "### Sender quotas"))
	out, err = template(t, helm, "-f", example)
	if err != nil {
		t.Fatalf("the README's quota example: %v", err)
	}
	args, objs := ingressArgs(out)
	want := map[string]string{"sender-quota": "hourly=2000", "user-quota": "rate=2/s,hourly=500"}
	for f, w := range want {
		if v, _ := flagValue(args, f); v != w {
			t.Errorf("--%s=%q, want %q", f, v, w)
		}
	}
	// The ingress takes the rendered arguments and its validation (every
	// error at once) has nothing to say about the quotas.
	var in daemon.Ingress
	fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
	in.Register(fs)
	if err := config.Parse(fs, args, func(string) string { return "" }); err != nil {
		t.Fatalf("the ingress refuses the rendered arguments: %v", err)
	}
	if in.SenderQuota != want["sender-quota"] || in.UserQuota != want["user-quota"] {
		t.Errorf("parsed --sender-quota %q --user-quota %q", in.SenderQuota, in.UserQuota)
	}
	if err := in.Validate(); err != nil && strings.Contains(err.Error(), "quota") {
		t.Errorf("the ingress refuses the rendered quotas: %v", err)
	}
	var cm corev1.ConfigMap
	mustFind(t, objs, "ConfigMap", "mailfwd-policy").into(t, &cm)
	p, err := policy.Parse(map[string][]byte{policy.KeyQuota: []byte(cm.Data["quota"])})
	if err != nil {
		t.Fatalf("the rendered quota key: %v", err)
	}
	if got := p.Quotas.For("mail.example.com", "newsletter"); len(got) != 2 || got[0].Limit.Hourly != 50000 || got[1].Rule != "example.com" {
		t.Errorf("the rendered quota key counts newsletter@example.com as %+v", got)
	}

	for _, bad := range []string{"ingress.senderQuota=daily=3", "ingress.userQuota=rate=fast", "ingress.senderQuota=hourly=5;rm"} {
		if _, err := template(t, helm, "--set-string", bad); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("--set-string %s: err = %v, want the schema to refuse it", bad, err)
		}
	}
}
