package chart_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// startKube starts a real kube-apiserver with the CRDs the chart may render
// and the release namespace.
func startKube(t *testing.T) *testenv.Kube {
	t.Helper()
	k := testenv.StartKube(t)
	for _, crd := range []string{"keda.sh_scaledobjects.yaml", "monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"} {
		// Large CRDs exceed the last-applied annotation: server-side apply.
		if out, err := k.Kubectl(t, "apply", "--server-side", "-f", filepath.Join("testdata", crd)); err != nil {
			t.Fatalf("install CRD %s: %v\n%s", crd, err, out)
		}
	}
	if out, err := k.Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/scaledobjects.keda.sh", "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"); err != nil {
		t.Fatalf("CRDs not established: %v\n%s", err, out)
	}
	if out, err := k.Kubectl(t, "create", "namespace", namespace); err != nil {
		t.Fatalf("create namespace: %v\n%s", err, out)
	}
	return k
}

// TestServerSideDryRun applies every rendering of the chart, and the
// quickstart manifests in deploy/, to a real API server with
// --dry-run=server --validate=strict: schema, defaulting and admission run,
// nothing is stored.
func TestServerSideDryRun(t *testing.T) {
	helm := helmBin(t)
	k := startKube(t)
	dir := t.TempDir()
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			out, err := template(t, helm, r.args...)
			if err != nil {
				t.Fatal(err)
			}
			kinds := map[string]int{}
			for _, o := range parseManifests(t, out) {
				kinds[o.Kind]++
			}
			f := writeFile(t, dir, r.name+".yaml", out)
			res, err := k.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", f)
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, res)
			}
			// Every object was accepted (kubectl prints one line per object).
			n := 0
			for _, c := range kinds {
				n += c
			}
			if got := strings.Count(res, "(server dry run)"); got != n {
				t.Errorf("server accepted %d objects, rendered %d (%v):\n%s", got, n, kinds, res)
			}
			if strings.HasPrefix(r.name, "example-keda") || r.name == "keda" {
				if !strings.Contains(res, "scaledobject.keda.sh/mailfwd-worker") {
					t.Errorf("ScaledObject not applied:\n%s", res)
				}
			}
		})
	}
	// The same apply refuses what the chart must never render: a typo in a
	// ScaledObject (CRD schema) and in a Deployment (built-in schema).
	t.Run("strict-validation-refuses-typos", func(t *testing.T) {
		out, err := template(t, helm, "--set", "keda.enabled=true")
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct{ name, from, to string }{
			{"scaledobject", "  minReplicaCount:", "  minReplicaCuont:"},
			{"deployment", "      terminationGracePeriodSeconds:", "      terminationGracePeriodSecond:"},
		} {
			bad := strings.Replace(out, tt.from, tt.to, 1)
			if bad == out {
				t.Fatalf("%s: %q not in the rendering", tt.name, tt.from)
			}
			f := writeFile(t, dir, "bad-"+tt.name+".yaml", bad)
			res, err := k.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", f)
			if err == nil || !strings.Contains(res, strings.TrimSuffix(strings.TrimSpace(tt.to), ":")) {
				t.Errorf("%s: typo %q accepted or not named: err=%v\n%s", tt.name, tt.to, err, res)
			}
		}
	})
	t.Run("deploy-quickstart", func(t *testing.T) {
		qs := filepath.Join(repoRoot(t), "deploy", "quickstart")
		res, err := k.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-f", qs)
		if err != nil {
			t.Fatalf("kubectl apply --dry-run=server -f deploy/quickstart: %v\n%s", err, res)
		}
		for _, want := range []string{"statefulset.apps/nats", "service/nats ", "service/nats-headless", "configmap/nats-config",
			"deployment.apps/minio", "persistentvolumeclaim/minio-data", "secret/minio-credentials", "service/minio"} {
			if !strings.Contains(res, want) {
				t.Errorf("quickstart output lacks %q:\n%s", want, res)
			}
		}
	})
}

// TestInstallKeepsClusterPolicyEdits installs the chart for real (without
// hooks: no controllers run the Job), edits the policy the way mailfwdctl
// does, upgrades, and checks the edit survived; with keepClusterEdits=false
// the values win.
func TestInstallKeepsClusterPolicyEdits(t *testing.T) {
	helm := helmBin(t)
	k := startKube(t)
	env := []string{"KUBECONFIG=" + k.Kubeconfig}
	base := append([]string{chartDir(t), "--namespace", namespace, "--no-hooks", "--timeout", "60s"}, required...)

	out, err := runHelm(t, helm, env, append([]string{"install", releaseName}, base...)...)
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	// NOTES.txt tells where the policy lives and how it is edited.
	for _, want := range []string{"NOTES:", "ConfigMap mailfwd-policy", "mailfwdctl policy import /etc/mail -n mail --configmap mailfwd-policy", "Nothing relays"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	cs := k.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cm, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, "mailfwd-policy", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("policy ConfigMap after install: %v", err)
	}
	if !strings.Contains(cm.Data["access"], "Connect:10.0.0.0/8") {
		t.Fatalf("installed access map = %q, want the values' seed", cm.Data["access"])
	}
	// Edit the policy as an in-cluster mailfwdctl would: with the chart's
	// ServiceAccount mailfwd-ctl (impersonated), whose Role allows exactly that.
	sa := "--as=system:serviceaccount:" + namespace + ":mailfwd-ctl"
	edited := "Connect:192.0.2.7 RELAY\n"
	patch := `{"data":{"access":"Connect:192.0.2.7 RELAY\n"}}`
	if out, err := k.Kubectl(t, sa, "-n", namespace, "patch", "configmap", "mailfwd-policy", "--type=merge", "-p", patch); err != nil {
		t.Fatalf("edit policy as mailfwd-ctl: %v\n%s", err, out)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "configmaps"}, "yes"},
		{[]string{"create", "configmaps"}, "yes"},
		{[]string{"update", "configmap/mailfwd-policy"}, "yes"},
		{[]string{"delete", "configmap/mailfwd-policy"}, "no"},
		{[]string{"get", "secrets"}, "no"},
		{[]string{"list", "pods"}, "no"},
	} {
		out, _ := k.Kubectl(t, append([]string{sa, "-n", namespace, "auth", "can-i"}, tt.args...)...)
		if got := strings.TrimSpace(out); got != tt.want {
			t.Errorf("mailfwd-ctl can-i %v = %q, want %s", tt.args, got, tt.want)
		}
	}
	// The ingress/worker ServiceAccount has no API rights at all.
	if out, _ := k.Kubectl(t, "--as=system:serviceaccount:"+namespace+":mailfwd", "-n", namespace, "auth", "can-i", "get", "configmaps"); strings.TrimSpace(out) != "no" {
		t.Errorf("ServiceAccount mailfwd can get configmaps: %q", out)
	}

	if out, err := runHelm(t, helm, env, append([]string{"upgrade", releaseName}, append(base, "--set", "worker.concurrency=32")...)...); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	cm, err = cs.CoreV1().ConfigMaps(namespace).Get(ctx, "mailfwd-policy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["access"] != edited || cm.Annotations["mailfwd.io/policy-source"] != "cluster" {
		t.Errorf("after upgrade access = %q (source %q), want the in-cluster edit %q kept", cm.Data["access"], cm.Annotations["mailfwd.io/policy-source"], edited)
	}
	d, err := cs.AppsV1().Deployments(namespace).Get(ctx, "mailfwd-worker", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !containsArg(d.Spec.Template.Spec.Containers[0].Args, "--concurrency=32") {
		t.Errorf("upgrade did not reach the worker: args %q", d.Spec.Template.Spec.Containers[0].Args)
	}

	if out, err := runHelm(t, helm, env, append([]string{"upgrade", releaseName}, append(base, "--set", "policy.keepClusterEdits=false")...)...); err != nil {
		t.Fatalf("helm upgrade keepClusterEdits=false: %v\n%s", err, out)
	}
	cm, err = cs.CoreV1().ConfigMaps(namespace).Get(ctx, "mailfwd-policy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["access"] == edited || !strings.Contains(cm.Data["access"], "Connect:10.0.0.0/8") {
		t.Errorf("with keepClusterEdits=false access = %q, want the values' seed back", cm.Data["access"])
	}
}

func containsArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}
