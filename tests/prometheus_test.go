package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"sigs.k8s.io/yaml"

	"github.com/mailfwd/mailfwd/pkg/daemon"
)

// prometheusBin is Debian's Prometheus (make prometheus installs it), or
// MAILFWD_PROMETHEUS_BIN. Without it the test is skipped, or fails when
// MAILFWD_REQUIRE_PROMETHEUS=1 (make test).
func prometheusBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MAILFWD_PROMETHEUS_BIN"); p != "" {
		return p
	}
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	msg := "prometheus not found (Debian package prometheus; make prometheus installs it, or set MAILFWD_PROMETHEUS_BIN)"
	if os.Getenv("MAILFWD_REQUIRE_PROMETHEUS") == "1" {
		t.Fatal(msg + " [MAILFWD_REQUIRE_PROMETHEUS=1]")
	}
	t.Skip(msg)
	return ""
}

// promQuery runs an instant query; it returns the number of series, or
// the API's error (a query that does not parse or evaluate).
func promQuery(base, q string) (int, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s", r.Error)
	}
	return len(r.Data.Result), nil
}

// dashboardQueries are the PromQL of every panel of the shipped dashboard,
// with Grafana's variables set as "All" would set them.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../charts/mailfwd/files/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			q := strings.NewReplacer("$__rate_interval", "1m", "$namespace", ".*").Replace(tg.Expr)
			out["panel "+p.Title+" "+tg.RefID] = q
		}
	}
	return out
}

// ruleQueries are every alert's expression and, since a healthy system
// fires none, each metric selector in it (they must find series).
func ruleQueries(t *testing.T, file string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
				Expr  string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	sel := regexp.MustCompile(`mailfwd_[a-z_]+(\{[^}]*\})?`)
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out["rule "+r.Alert] = r.Expr
			for _, s := range sel.FindAllString(r.Expr, -1) {
				out["rule "+r.Alert+" selector "+s] = s
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no rules found in %s", file)
	}
	return out
}

// TestPrometheusScrapesDashboardAndRules runs a real Prometheus (scrape
// every second) against a running ingress and worker under a small load
// with failures (a 5xx and a 4xx recipient, a sender over its quota), with
// the shipped alert rules loaded, and runs every dashboard panel's query
// and every rule's expression through its HTTP API: each must parse and
// return series.
func TestPrometheusScrapesDashboardAndRules(t *testing.T) {
	bin := prometheusBin(t)
	ingressHTTP := "127.0.0.1:" + strconv.Itoa(freePortForAuth(t))
	workerHTTP := "127.0.0.1:" + strconv.Itoa(freePortForAuth(t))
	e := newEnv(t, envOptions{blob: "fs", retryFirst: 2 * time.Second,
		onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
			switch {
			case strings.HasPrefix(rcpt, "bounce"):
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			case strings.HasPrefix(rcpt, "later"):
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
			}
			return nil
		},
		ingressSetup: func(in *daemon.Ingress) {
			in.HTTPAddr = ingressHTTP
			in.SenderQuota = "hourly=1" // each sender domain one message an hour: the load's second from one is refused
		},
		workerSetup: func(w *daemon.Worker) {
			w.HTTPAddr = workerHTTP
			w.QueueMetrics.Interval = time.Second
		},
	})

	rules, err := filepath.Abs("../charts/mailfwd/files/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	promAddr := "127.0.0.1:" + strconv.Itoa(freePortForAuth(t))
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: mailfwd-ingress
    static_configs: [{targets: [%q]}]
  - job_name: mailfwd-worker
    static_configs: [{targets: [%q]}]
`, rules, ingressHTTP, workerHTTP)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var plog syncBuffer
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr)
	cmd.Stdout, cmd.Stderr = &plog, &plog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", plog.String())
		}
	})
	base := "http://" + promAddr
	waitFor(t, "prometheus scraping ingress and worker", 90*time.Second, func() bool {
		n, err := promQuery(base, `up == 1`)
		return err == nil && n == 2
	})

	// A small load: delivered, bounced (5xx, with a DSN) and deferred (4xx) recipients.
	for i := range 12 {
		rcpts := []string{fmt.Sprintf("ok%d@alpha.test", i)}
		switch i % 4 {
		case 1:
			rcpts = append(rcpts, fmt.Sprintf("bounce%d@alpha.test", i))
		case 2:
			rcpts = append(rcpts, fmt.Sprintf("later%d@alpha.test", i))
		}
		// Each message from a sender domain of its own (its quota's one).
		if r := send(e.smtp, "", fmt.Sprintf("sender@s%d.origin.test", i), rcpts, message("m", fmt.Sprintf("m%d@origin.test", i), "hello\r\n"), nil); r.Err != nil {
			t.Fatalf("send %d: %v", i, r.Err)
		}
	}
	// And one over its sender quota: refused at MAIL FROM.
	if r, err := sendQuota(e.smtp, "sender@s0.origin.test", "ok@alpha.test", quotaClient{}); err != nil || r.code != 450 || r.at != "MAIL" {
		t.Fatalf("a second message from s0.origin.test: %+v %v, want 450 at MAIL FROM (its sender quota)", r, err)
	}

	queries := dashboardQueries(t)
	// And what this load must have produced, end to end (not only the
	// series every process starts with at 0).
	for name, q := range map[string]string{
		"sent to alpha.test":          `mailfwd_delivery_destination_recipients_total{destination="alpha.test",result="sent"} > 0`,
		"5xx from alpha.test":         `mailfwd_delivery_destination_recipients_total{destination="alpha.test",result="failed"} > 0`,
		"4xx from alpha.test":         `mailfwd_delivery_next_hop_recipients_total{next_hop="mx.alpha.test",result="deferred"} > 0`,
		"failure DSNs":                `mailfwd_dsn_total{kind="failed"} > 0`,
		"plain-text deliveries":       `mailfwd_delivery_tls_total{tls="none"} > 0`,
		"250 to sent observed":        `mailfwd_delivery_time_to_final_seconds_count{result="sent"} > 0`,
		"attempts observed":           `mailfwd_delivery_attempt_duration_seconds_count > 0`,
		"DATA to 250 observed":        `mailfwd_ingress_data_duration_seconds_count > 0`,
		"deferred mail queued":        `mailfwd_queue_destination_messages{destination="alpha.test",state="deferred"} > 0`,
		"its age since arrival":       `mailfwd_queue_destination_oldest_age_seconds{destination="alpha.test",state="deferred"} > 0`,
		"one queue-metrics leader":    `sum(mailfwd_queue_stats_leader) == 1`,
		"NATS and body store up":      `count(mailfwd_dependency_up == 1) == 4`,
		"ingress replies 2xx counted": `mailfwd_ingress_replies_total{class="2xx"} > 0`,
		"sender quota refusal":        `mailfwd_ingress_quota_refused_total{quota="*"} > 0`,
		"as the ingress limit quota":  `mailfwd_ingress_limit_refusals_total{limit="quota"} > 0`,
	} {
		queries["load "+name] = q
	}
	for k, v := range ruleQueries(t, rules) {
		queries[k] = v
	}
	// Every query must parse; each must find series once the load has been
	// scraped (the deferred mail is retried every 2s and stays queued).
	// Two kinds may be empty: an alert expression (a healthy system fires
	// none; its selectors must find series) and the shaping panel (its
	// gauges come with the fleet's shaping, absent from some builds).
	optional := func(name, q string) bool {
		return strings.Contains(q, "mailfwd_shaping_") || strings.HasPrefix(name, "rule ") && !strings.Contains(name, " selector ")
	}
	pending := map[string]string{}
	for name, q := range queries {
		if _, err := promQuery(base, q); err != nil {
			t.Errorf("%s does not run: %v\n%s", name, err, q)
			continue
		}
		if !optional(name, q) {
			pending[name] = q
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for len(pending) > 0 && time.Now().Before(deadline) {
		for name, q := range pending {
			if n, err := promQuery(base, q); err == nil && n > 0 {
				delete(pending, name)
			}
		}
		time.Sleep(time.Second)
	}
	for name, q := range pending {
		t.Errorf("%s returned no series:\n%s", name, q)
	}
	for name, q := range queries {
		if n, err := promQuery(base, q); err == nil && n == 0 && strings.Contains(q, "mailfwd_shaping_") {
			t.Logf("%s: no series (no mailfwd_shaping_* gauges in this build; the panel stays empty)", name)
		}
	}
	t.Logf("%d queries run (%d dashboard targets and rules with their selectors)", len(queries), len(dashboardQueries(t)))
}
