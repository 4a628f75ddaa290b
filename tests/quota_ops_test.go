package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/ctl"
)

// ctlRun runs mailfwdctl in-process.
func ctlRun(t *testing.T, args ...string) (code int, out, errOut string) {
	t.Helper()
	var o, e bytes.Buffer
	code = ctl.Execute(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

// TestQuotaOperatorStatusAndReset: against a running ingress process
// (cmd/ingress) that refuses two senders over their quotas, `mailfwdctl
// quota status` shows each count as the ingress took it (rule, used/left,
// full again), and `mailfwdctl quota reset` lifts one sender's quota at
// once in that running ingress, leaving the other refused.
func TestQuotaOperatorStatusAndReset(t *testing.T) {
	n := quotaFleetNATS(t)
	dir := t.TempDir()
	for k, v := range map[string]string{
		"access": "Connect:127.0.0.1 RELAY\n",
		"quota":  "ops.test   hourly=2\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := startIngressProc(t, n.URL(), "file://"+filepath.Join(t.TempDir(), "bodies"), "--policy-dir", dir, "--sender-quota", "hourly=1")
	send := func(from string) quotaReply {
		t.Helper()
		r, err := sendQuota(p.smtp, from, "x@dest.test", quotaClient{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, from := range []string{"a@ops.test", "b@mail.ops.test", "c@other.test"} {
		if r := send(from); r.code != 250 {
			t.Fatalf("%s within its quota: %+v", from, r)
		}
	}
	if r := send("a@ops.test"); r.code != 450 || !strings.Contains(r.msg, "Sender quota ops.test exceeded (2/hour)") {
		t.Fatalf("third from ops.test: %+v, want its quota's 450", r)
	}
	if r := send("c@other.test"); r.code != 450 || !strings.Contains(r.msg, "Sender quota other.test exceeded (1/hour)") {
		t.Fatalf("second from other.test: %+v, want the default quota's 450", r)
	}

	code, out, errOut := ctlRun(t, "--nats-url", n.URL(), "quota", "status", "-o", "json", "--policy-dir", dir, "--sender-quota", "hourly=1")
	if code != 0 {
		t.Fatalf("quota status: exit %d\n%s%s", code, out, errOut)
	}
	var items []struct {
		Name, Rule string
		Hourly     struct{ Used, Left int }
	}
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := map[string]string{}
	for _, it := range items {
		got[it.Name] = it.Rule + " " + strings.Repeat("u", it.Hourly.Used) + strings.Repeat("l", it.Hourly.Left)
	}
	if len(got) != 2 || got["ops.test"] != "ops.test uu" || got["other.test"] != "* u" {
		t.Fatalf("quota status: %v (rule, u per message used, l per message left), want ops.test 2/0 and other.test 1/0\n%s", got, out)
	}

	code, out, errOut = ctlRun(t, "--nats-url", n.URL(), "quota", "reset", "ops.test")
	if code != 0 || !strings.Contains(errOut, "audit: action=quota.reset") {
		t.Fatalf("quota reset: exit %d\n%s%s", code, out, errOut)
	}
	for i := range 2 {
		if r := send("a@ops.test"); r.code != 250 {
			t.Fatalf("message %d from ops.test after its reset: %+v", i+1, r)
		}
	}
	if r := send("a@ops.test"); r.code != 450 {
		t.Fatalf("third from ops.test after its reset: %+v, want the quota again", r)
	}
	if r := send("c@other.test"); r.code != 450 {
		t.Fatalf("other.test after a reset of ops.test: %+v, want still refused", r)
	}
}
