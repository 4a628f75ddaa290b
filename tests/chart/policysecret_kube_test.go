package chart_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// TestInstallPolicySecretWithMailfwdctl installs the chart for real, then runs
// the real mailfwdctl (the binary from the image) as the chart's ctl
// ServiceAccount to add an SMTP AUTH user: the Role must allow exactly that.
// The user survives helm upgrade, uninstall (the Secret is kept) and a
// reinstall; a Secret made by hand before the chart is left alone.
func TestInstallPolicySecretWithMailfwdctl(t *testing.T) {
	helm := helmBin(t)
	ctl := buildImages(t)["mailfwdctl"].binary
	k := startKube(t)
	env := []string{"KUBECONFIG=" + k.Kubeconfig}
	base := append([]string{chartDir(t), "--namespace", namespace, "--no-hooks", "--timeout", "60s"}, required...)
	if out, err := runHelm(t, helm, env, append([]string{"install", releaseName}, base...)...); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	cs := k.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const name = "mailfwd-policy-secret"
	sec, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("policy Secret after install: %v", err)
	}
	if len(sec.Data) != 0 {
		t.Fatalf("policy Secret after install has data %v, want empty", sec.Data)
	}

	// A kubeconfig that impersonates the chart's ctl ServiceAccount.
	cfg, err := clientcmd.LoadFromFile(k.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = "system:serviceaccount:" + namespace + ":mailfwd-ctl"
	}
	asCtl := filepath.Join(t.TempDir(), "ctl.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, asCtl); err != nil {
		t.Fatal(err)
	}
	runCtl := func(stdin string, args ...string) (string, error) {
		c, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(c, ctl, append(args, "--kubeconfig", asCtl, "-n", namespace)...)
		cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := runCtl("correct horse battery staple\n", "users", "add", "billing", "--sender", "example.com", "--password-stdin"); err != nil {
		t.Fatalf("mailfwdctl users add as mailfwd-ctl: %v\n%s", err, out)
	}
	if out, err := runCtl("", "users", "list"); err != nil || !strings.Contains(out, "billing") {
		t.Fatalf("mailfwdctl users list as mailfwd-ctl: %v\n%s", err, out)
	}
	users := func() string {
		t.Helper()
		sec, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("policy Secret: %v", err)
		}
		return string(sec.Data["users"])
	}
	u := users()
	if !strings.HasPrefix(u, "billing") || !strings.Contains(u, "$argon2id$") || strings.Contains(u, "correct horse") {
		t.Fatalf("users key = %q, want billing with an argon2id hash", u)
	}

	sa := "--as=system:serviceaccount:" + namespace + ":mailfwd-ctl"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "secret/" + name}, "yes"},
		{[]string{"update", "secret/" + name}, "yes"},
		{[]string{"create", "secrets"}, "no"},
		{[]string{"delete", "secret/" + name}, "no"},
		{[]string{"get", "secret/nats-users"}, "no"},
		{[]string{"list", "secrets"}, "no"},
	} {
		out, _ := k.Kubectl(t, append([]string{sa, "-n", namespace, "auth", "can-i"}, tt.args...)...)
		if got := strings.TrimSpace(out); got != tt.want {
			t.Errorf("mailfwd-ctl can-i %v = %q, want %s", tt.args, got, tt.want)
		}
	}

	if out, err := runHelm(t, helm, env, append([]string{"upgrade", releaseName}, append(base, "--set", "worker.concurrency=32")...)...); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	if got := users(); got != u {
		t.Errorf("after helm upgrade users = %q, want %q", got, u)
	}
	if out, err := runHelm(t, helm, env, "uninstall", releaseName, "--namespace", namespace, "--no-hooks"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if got := users(); got != u {
		t.Errorf("after helm uninstall users = %q, want the Secret kept", got)
	}
	if out, err := runHelm(t, helm, env, append([]string{"install", releaseName}, base...)...); err != nil {
		t.Fatalf("helm install over the kept Secret: %v\n%s", err, out)
	}
	if got := users(); got != u {
		t.Errorf("after reinstall users = %q, want %q", got, u)
	}

	// A Secret made by hand (docs/smarthost.md's kubectl create secret) before
	// the chart: the install neither fails on it nor takes it over.
	if out, err := runHelm(t, helm, env, "uninstall", releaseName, "--namespace", namespace, "--no-hooks"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if err := cs.CoreV1().Secrets(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	authinfo := "[relay.example.net]:587 user:pass\n"
	if out, err := k.Kubectl(t, "-n", namespace, "create", "secret", "generic", name, "--from-literal=authinfo="+authinfo); err != nil {
		t.Fatalf("kubectl create secret: %v\n%s", err, out)
	}
	if out, err := runHelm(t, helm, env, append([]string{"install", releaseName}, base...)...); err != nil {
		t.Fatalf("helm install beside a hand-made policy Secret: %v\n%s", err, out)
	}
	sec, err = cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["authinfo"]) != authinfo || sec.Annotations["meta.helm.sh/release-name"] != "" {
		t.Errorf("hand-made Secret after install: data %q annotations %v, want it untouched", sec.Data, sec.Annotations)
	}
}

// TestServerSideDryRunSmarthostValues: the renderings with the AUTH listeners,
// the CA bundle, MTA-STS/DANE and loop-detection values are accepted by a
// real kube-apiserver with strict validation (they are not in renderings():
// the images do not declare the listener ports, see TestChartMatchesImages).
func TestServerSideDryRunSmarthostValues(t *testing.T) {
	helm := helmBin(t)
	k := startKube(t)
	dir := t.TempDir()
	for _, tt := range []struct{ name, set string }{
		{"listeners-secret-ca", "tls.enabled=true,tls.secretName=smtp-tls,ingress.submission.enabled=true,ingress.smtps.enabled=true,networkPolicy.enabled=true,ingress.service.type=NodePort,ingress.service.smtps.nodePort=30465,worker.tls.caBundle.secretName=corp-ca,worker.tls.mtaSts=true,worker.tls.dane=true,worker.localAddrs={203.0.113.25:25}"},
		{"configmap-ca-existing-secret", "worker.tls.caBundle.configMapName=corp-ca,policy.existingSecret=smarthost,ingress.hostname=relay.example.com,worker.localNames={mx.example.com}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := template(t, helm, "--set", tt.set)
			if err != nil {
				t.Fatal(err)
			}
			n := len(parseManifests(t, out))
			f := writeFile(t, dir, tt.name+".yaml", out)
			res, err := k.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", f)
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, res)
			}
			if got := strings.Count(res, "(server dry run)"); got != n {
				t.Errorf("server accepted %d objects, rendered %d:\n%s", got, n, res)
			}
		})
	}
}
