package testenv

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

const kubeTestDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: %NS%
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.invalid/web:1
        ports:
        - containerPort: 8080
`

// kubeTestBadDeployment has a field that no Deployment has.
const kubeTestBadDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
  namespace: %NS%
spec:
  replicas: 1
  notAField: true
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: bad}
    spec:
      containers:
      - name: bad
        image: registry.invalid/bad:1
`

func TestKubeConfigMapsAndKubectl(t *testing.T) {
	k := StartKube(t)
	if !strings.HasPrefix(k.Server, "https://127.0.0.1:") {
		t.Fatalf("Server = %q, want https://127.0.0.1:port", k.Server)
	}
	cs := k.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The server reports the pinned version.
	info, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if info.GitVersion != KubeVersion {
		t.Errorf("server version = %q, want %q", info.GitVersion, KubeVersion)
	}

	const ns, name = "mailfwd-kube-test", "policy"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	created, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Data:       map[string]string{"policy.yaml": "domains: []\n"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	got, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get configmap: %v", err)
	}
	if got.Data["policy.yaml"] != "domains: []\n" || got.ResourceVersion != created.ResourceVersion {
		t.Fatalf("read back %v rv %s, want created data at rv %s", got.Data, got.ResourceVersion, created.ResourceVersion)
	}

	// A write with a stale resourceVersion is a conflict...
	stale := got.DeepCopy()
	got.Data["policy.yaml"] = "domains: [a.test]\n"
	if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update configmap: %v", err)
	}
	stale.Data["policy.yaml"] = "domains: [stale.test]\n"
	_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, stale, metav1.UpdateOptions{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("update with stale resourceVersion: err = %v, want a conflict", err)
	}

	// ...so concurrent read-modify-write loops retried on conflict must
	// all land: each appends its own key.
	const writers = 4
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- retry.RetryOnConflict(retry.DefaultBackoff, func() error {
				cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				cm.Data["writer-"+string(rune('a'+i))] = "done"
				_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("update with conflict retry: %v", err)
		}
	}

	// kubectl sees the same object.
	out, err := k.Kubectl(t, "get", "configmap", "-n", ns, name, "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var fromKubectl corev1.ConfigMap
	if err := json.Unmarshal([]byte(out), &fromKubectl); err != nil {
		t.Fatalf("kubectl output is not a ConfigMap: %v\n%s", err, out)
	}
	want := map[string]string{"policy.yaml": "domains: [a.test]\n"}
	for i := range writers {
		want["writer-"+string(rune('a'+i))] = "done"
	}
	if len(fromKubectl.Data) != len(want) {
		t.Errorf("kubectl data = %v, want %v", fromKubectl.Data, want)
	}
	for key, v := range want {
		if fromKubectl.Data[key] != v {
			t.Errorf("kubectl data[%q] = %q, want %q", key, fromKubectl.Data[key], v)
		}
	}

	// Server-side dry run validates against the real API and stores nothing.
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	writeKubeTestFile(t, good, strings.ReplaceAll(kubeTestDeployment, "%NS%", ns))
	writeKubeTestFile(t, bad, strings.ReplaceAll(kubeTestBadDeployment, "%NS%", ns))

	out, err = k.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-f", good)
	if err != nil {
		t.Fatalf("dry-run apply of a valid Deployment: %v\n%s", err, out)
	}
	if !strings.Contains(out, "deployment.apps/web") || !strings.Contains(out, "server dry run") {
		t.Errorf("dry-run apply output = %q, want deployment.apps/web ... (server dry run)", out)
	}
	if _, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after a dry run, get deployment: err = %v, want not found", err)
	}

	out, err = k.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-f", bad)
	if err == nil {
		t.Fatalf("dry-run apply of a Deployment with an unknown field succeeded:\n%s", out)
	}
	if !strings.Contains(out, "notAField") {
		t.Errorf("dry-run apply error output = %q, want it to name the unknown field", out)
	}
}

func TestKubeBinariesSkipOrFail(t *testing.T) {
	// With an empty binary directory KubeBinaries must skip (or fail when
	// required); run it in a subtest whose outcome is observed.
	t.Setenv("MAILFWD_KUBE_BIN_DIR", t.TempDir())
	t.Setenv("MAILFWD_REQUIRE_KUBE", "")
	var reached bool
	ok := t.Run("missing", func(t *testing.T) {
		KubeBinaries(t)
		reached = true
	})
	if !ok || reached {
		t.Fatalf("KubeBinaries with no binaries: subtest passed=%v, returned=%v; want a skip", ok, reached)
	}
}

func writeKubeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}
