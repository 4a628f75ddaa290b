package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

type rtTarget struct {
	Address string `json:"address"`
	Via     string `json:"via"`
	Rule    string `json:"rule"`
	MX      []struct {
		Pref  int      `json:"pref"`
		Name  string   `json:"name"`
		Addrs []string `json:"addrs"`
	} `json:"mx"`
	Hops   []string `json:"hops"`
	Action string   `json:"action"`
	Status string   `json:"status"`
}

type rtResult struct {
	Address   string     `json:"address"`
	Access    string     `json:"access"`
	Reply     string     `json:"reply"`
	Rule      string     `json:"rule"`
	Expansion []string   `json:"expansion"`
	Targets   []rtTarget `json:"targets"`
}

// TestRouteAgainstConfigMap runs `mailfwdctl route` on a policy held in a
// ConfigMap of a real API server, with MX data from a DNS server on loopback.
func TestRouteAgainstConfigMap(t *testing.T) {
	kube, cs := kubeWithNamespace(t, "mail")
	dns := testenv.StartDNS(t, `
$ORIGIN example.net.
@    60 IN MX 20 mx2.example.net.
@    60 IN MX 10 mx1.example.net.
mx1  60 IN A 192.0.2.10
mx2  60 IN A 192.0.2.20
$ORIGIN null.example.
@    60 IN MX 0 .
`)
	ctx := context.Background()
	_, err := cs.CoreV1().ConfigMaps("mail").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "mailfwd-policy"},
		Data: map[string]string{
			"access":           "Connect:192.0.2.0/24 RELAY\nTo:mms.mnc002.mcc238.gprs REJECT\n",
			"mailertable":      "mms.mnc001.mcc238.gprs smtp:[10.1.1.1]:[10.1.1.2]\n",
			"local-host-names": "example.com\n",
			"aliases":          "postmaster: ops@example.net\n",
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) ([]rtResult, string, int) {
		var out, errOut bytes.Buffer
		full := append([]string{"route", "--kubeconfig", kube.Kubeconfig, "-n", "mail", "--dns-server", dns.Addr, "-o", "json"}, args...)
		code := ctl.Execute(ctx, full, &out, &errOut)
		var res []rtResult
		if code == 0 {
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("route output is not JSON: %v\n%s", err, out.String())
			}
		}
		return res, out.String() + errOut.String(), code
	}

	res, out, code := run("--client", "192.0.2.7", "--from", "a@example.org",
		"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs", "postmaster@example.com", "x@mms.mnc002.mcc238.gprs", "y@null.example")
	if code != 0 || len(res) != 4 {
		t.Fatalf("exit %d, %d results\n%s", code, len(res), out)
	}
	mms := res[0]
	if mms.Access != "accept" || len(mms.Targets) != 1 || mms.Targets[0].Via != "mailertable" ||
		strings.Join(mms.Targets[0].Hops, "|") != "10.1.1.1 [10.1.1.1:25]|10.1.1.2 [10.1.1.2:25]" {
		t.Errorf("MMS route: %+v", mms)
	}
	pm := res[1]
	if pm.Access != "accept" || len(pm.Expansion) == 0 || len(pm.Targets) != 1 || pm.Targets[0].Address != "ops@example.net" {
		t.Fatalf("alias expansion: %+v", pm)
	}
	tg := pm.Targets[0]
	if tg.Via != "mx" || len(tg.MX) != 2 || tg.MX[0].Name != "mx1.example.net" || tg.MX[0].Pref != 10 || tg.MX[0].Addrs[0] != "192.0.2.10" {
		t.Errorf("MX list not in preference order with addresses: %+v", tg.MX)
	}
	if tg.Action != "deliver" || len(tg.Hops) != 2 || !strings.HasPrefix(tg.Hops[0], "mx1.example.net [192.0.2.10:25]") {
		t.Errorf("worker plan: %+v", tg)
	}
	if res[2].Access != "reject" || !strings.Contains(res[2].Reply, "550 5.7.1") || !strings.Contains(res[2].Rule, "To:mms.mnc002.mcc238.gprs REJECT") {
		t.Errorf("rejected destination: %+v", res[2])
	}
	if n := res[3]; n.Access != "accept" || len(n.Targets) != 1 || n.Targets[0].Action != "bounce" || n.Targets[0].Status != "5.1.10" {
		t.Errorf("null MX: %+v", n)
	}

	// A client outside 192.0.2.0/24 may not relay.
	res, out, code = run("--client", "198.51.100.1", "ops@example.net")
	if code != 0 || res[0].Access != "reject" || !strings.Contains(res[0].Reply, "Relaying denied") {
		t.Errorf("stranger: exit %d %+v\n%s", code, res, out)
	}
	// Usage errors are exit 2 with a message.
	if _, out, code := run("--client", "not-an-ip", "a@b.example"); code != 2 || !strings.Contains(out, "--client") {
		t.Errorf("bad --client: exit %d %s", code, out)
	}
}
