package chart_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type ruleFile struct {
	Groups []struct {
		Name  string           `json:"name"`
		Rules []map[string]any `json:"rules"`
	} `json:"groups"`
}

func rulesOf(t *testing.T, args ...string) ruleFile {
	t.Helper()
	out, err := template(t, helmBin(t), append([]string{"--set", "prometheusRule.enabled=true"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Spec ruleFile `json:"spec"`
	}
	mustFind(t, parseManifests(t, out), "PrometheusRule", "mailfwd").into(t, &spec)
	return spec.Spec
}

func byAlert(f ruleFile) map[string]map[string]any {
	m := map[string]map[string]any{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			m[r["alert"].(string)] = r
		}
	}
	return m
}

// The PrometheusRule carries files/alerts.yaml (the file promtool tests)
// unchanged by default; thresholds, waits, severities and disabled alerts
// change only what they name, and the result still passes promtool.
func TestPrometheusRuleIsTheTestedFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir(t), "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var src ruleFile
	if err := yaml.Unmarshal(b, &src); err != nil {
		t.Fatal(err)
	}
	if got := rulesOf(t); !reflect.DeepEqual(got, src) {
		t.Fatalf("rendered rules differ from files/alerts.yaml:\n%+v\n---\n%+v", got, src)
	}

	tuned := rulesOf(t, "--set", "prometheusRule.thresholds.MailfwdOldestDeferredTooOld=3600,prometheusRule.thresholds.MailfwdDeliveryFailuresHigh=0.05,"+
		"prometheusRule.for.MailfwdReadyMailNotDelivered=30m,prometheusRule.severity.MailfwdOldestDeferredTooOld=critical,prometheusRule.disabled={MailfwdAuthBruteForce}")
	want, got := byAlert(src), byAlert(tuned)
	if _, ok := got["MailfwdAuthBruteForce"]; ok || len(got) != len(want)-1 {
		t.Errorf("disabled alert still rendered, or others lost: %d of %d", len(got), len(want))
	}
	if e := got["MailfwdOldestDeferredTooOld"]["expr"].(string); !strings.HasSuffix(e, "> 3600") {
		t.Errorf("threshold not applied: %q", e)
	}
	if e := got["MailfwdDeliveryFailuresHigh"]["expr"].(string); !strings.HasSuffix(e, "> 0.05") || !strings.Contains(e, `result=~"failed|expired"`) {
		t.Errorf("threshold not applied, or the expression damaged: %q", e)
	}
	if f := got["MailfwdReadyMailNotDelivered"]["for"]; f != "30m" {
		t.Errorf("for = %v, want 30m", f)
	}
	if s := got["MailfwdOldestDeferredTooOld"]["labels"].(map[string]any)["severity"]; s != "critical" {
		t.Errorf("severity = %v, want critical", s)
	}
	for name, r := range want {
		if name == "MailfwdAuthBruteForce" || name == "MailfwdOldestDeferredTooOld" || name == "MailfwdDeliveryFailuresHigh" || name == "MailfwdReadyMailNotDelivered" {
			continue
		}
		if !reflect.DeepEqual(got[name], r) {
			t.Errorf("%s changed though nothing named it:\n%v\n%v", name, got[name], r)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not found: the tuned rules are not checked (make prometheus installs it)")
		return
	}
	out, _ := json.Marshal(tuned)
	f := writeFile(t, t.TempDir(), "tuned.yaml", string(out))
	if b, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the tuned rules: %v\n%s", err, b)
	}
}

// The dashboard ConfigMap has the sidecar's label and the JSON in the repository.
func TestDashboardConfigMap(t *testing.T) {
	out, err := template(t, helmBin(t), "--set", "grafanaDashboard.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	mustFind(t, parseManifests(t, out), "ConfigMap", "mailfwd-dashboard").into(t, &cm)
	if cm.Metadata.Labels["grafana_dashboard"] != "1" {
		t.Errorf("labels = %v, want grafana_dashboard: \"1\"", cm.Metadata.Labels)
	}
	want, err := os.ReadFile(filepath.Join(chartDir(t), "files", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(cm.Data["mailfwd.json"]) != strings.TrimSpace(string(want)) {
		t.Error("the ConfigMap's mailfwd.json is not files/dashboard.json")
	}
	if !json.Valid([]byte(cm.Data["mailfwd.json"])) {
		t.Error("mailfwd.json is not valid JSON")
	}
	if out, _ := template(t, helmBin(t)); strings.Contains(out, "kind: PrometheusRule") || strings.Contains(out, "mailfwd-dashboard") {
		t.Error("the defaults render a PrometheusRule or the dashboard; both are opt-in")
	}
}
