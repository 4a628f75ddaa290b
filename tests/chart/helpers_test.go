// Package chart_test checks the Helm chart charts/mailfwd, the quickstart
// manifests in deploy/ and the container images: every rendering is linted,
// inspected, and applied with --dry-run=server to a real kube-apiserver
// (pkg/testenv) with the KEDA and prometheus-operator CRDs installed.
//
// The pinned helm binary comes from deploy/scripts/helm-tool.sh (cached in
// ~/.cache/mailfwd/bin); without it the tests skip, or fail when
// MAILFWD_REQUIRE_KUBE=1.
package chart_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// HelmVersion is the helm that deploy/scripts/helm-tool.sh builds.
const HelmVersion = "v3.22.0"

const (
	releaseName = "mailfwd"
	namespace   = "mail"
	helmTimeout = 2 * time.Minute
)

// repoRoot is the module root (tests/chart is two levels down).
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func chartDir(t testing.TB) string { return filepath.Join(repoRoot(t), "charts", "mailfwd") }

// helmBin finds the pinned helm: $MAILFWD_HELM_BIN, else helm-<version> in
// $MAILFWD_KUBE_BIN_DIR or ~/.cache/mailfwd/bin. Missing: skip, or fail with
// MAILFWD_REQUIRE_KUBE=1.
func helmBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("MAILFWD_HELM_BIN"); p != "" {
		return p
	}
	dir := os.Getenv("MAILFWD_KUBE_BIN_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err == nil {
			dir = filepath.Join(home, ".cache", "mailfwd", "bin")
		}
	}
	p := filepath.Join(dir, "helm-"+HelmVersion)
	if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
		return p
	}
	msg := fmt.Sprintf("helm %s not found at %s; build it with deploy/scripts/helm-tool.sh (or set MAILFWD_HELM_BIN)", HelmVersion, p)
	if os.Getenv("MAILFWD_REQUIRE_KUBE") == "1" {
		t.Fatal(msg + " [MAILFWD_REQUIRE_KUBE=1]")
	}
	t.Skip(msg)
	return ""
}

// runHelm runs helm and returns stdout; stderr is in the error.
func runHelm(t testing.TB, helm string, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), helmTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, helm, args...)
	home := t.TempDir()
	// Keep helm's cache/config/data out of the user's home.
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"), "KUBECONFIG=/nonexistent")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return stdout.String(), fmt.Errorf("helm %s: timed out after %v", strings.Join(args, " "), helmTimeout)
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// rendering is one way the tests render the chart.
type rendering struct {
	name string
	args []string // helm template arguments after the chart (-f, --set)
}

// renderings are defaults, the feature switches, and every documented example.
func renderings(t testing.TB) []rendering {
	t.Helper()
	r := []rendering{
		{name: "defaults"},
		{name: "keda", args: []string{"--set", "keda.enabled=true"}},
		{name: "existing-secrets", args: []string{"--set", "s3.existingSecret=my-s3,s3.existingSecretKeys.accessKeyId=id,s3.existingSecretKeys.secretAccessKey=key,nats.credentials.existingSecret=my-nats,policy.existingConfigMap=my-policy"}},
		{name: "inline-s3-credentials", args: []string{"--set", "s3.existingSecret=,s3.accessKeyId=AKIDINLINE,s3.secretAccessKey=inline-secret-key"}},
		{name: "tls", args: []string{"--set", "tls.enabled=true,tls.secretName=smtp-tls"}},
		{name: "worker-hpa-no-job", args: []string{"--set", "worker.autoscaling.enabled=true,bootstrap.job.enabled=false,ingress.autoscaling.enabled=false,ingress.service.type=ClusterIP,ingress.pdb.maxUnavailable=1"}},
		{name: "proxy-protocol", args: []string{"--set", "ingress.proxyProtocol.from={10.0.0.0/8,192.0.2.10}"}},
		{name: "monitoring-and-netpol", args: []string{"--set", "serviceMonitor.enabled=true,networkPolicy.enabled=true,ingress.service.submission.enabled=true"}},
		{name: "alerts-and-dashboard", args: []string{"--set", "prometheusRule.enabled=true,grafanaDashboard.enabled=true"}},
		{name: "events-webhook", args: []string{"--set", "events.webhook.enabled=true,events.webhook.url=https://hooks.example.test/mail,events.webhook.secret.existingSecret=hook,events.webhook.outcomes={bounced,expired}"}},
	}
	examples, err := filepath.Glob(filepath.Join(chartDir(t), "examples", "*.yaml"))
	if err != nil || len(examples) == 0 {
		t.Fatalf("no chart examples found (%v)", err)
	}
	sort.Strings(examples)
	for _, f := range examples {
		r = append(r, rendering{name: "example-" + strings.TrimSuffix(filepath.Base(f), ".yaml"), args: []string{"-f", f}})
	}
	return r
}

// testHostname is the one value the chart requires (hostname); every
// rendering and install here passes it, as a user must.
const testHostname = "mail.example.test"

// testRegistry is where the tests' images are said to be (image.registry is required).
const testRegistry = "registry.example.test/mailfwd"

// required is the --set of the chart's required values.
var required = []string{"--set", "hostname=" + testHostname, "--set", "image.registry=" + testRegistry}

// template renders the chart for Kubernetes testenv.KubeVersion.
func template(t testing.TB, helm string, extra ...string) (string, error) {
	t.Helper()
	return templateWithout(t, helm, append(append([]string{}, required...), extra...)...)
}

// templateWithout renders the chart without the required values.
func templateWithout(t testing.TB, helm string, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"template", releaseName, chartDir(t), "--namespace", namespace,
		"--kube-version", testenv.KubeVersion, "--api-versions", "keda.sh/v1alpha1", "--api-versions", "monitoring.coreos.com/v1"}, extra...)
	return runHelm(t, helm, nil, args...)
}

// object is one rendered manifest.
type object struct {
	Kind string
	Name string
	Raw  map[string]any
	JSON []byte
}

func (o object) into(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(o.JSON, v); err != nil {
		t.Fatalf("%s/%s: decode: %v", o.Kind, o.Name, err)
	}
}

// parseManifests splits a multi-document YAML stream into objects.
func parseManifests(t testing.TB, stream string) []object {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	var out []object
	for i := 0; i < 1000; i++ {
		var raw map[string]any
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("rendered manifests: document %d: %v", i, err)
		}
		if raw == nil {
			continue
		}
		js, err := json.Marshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		kind, _ := raw["kind"].(string)
		meta, _ := raw["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		out = append(out, object{Kind: kind, Name: name, Raw: raw, JSON: js})
	}
	t.Fatal("more than 1000 documents")
	return nil
}

func find(objs []object, kind, name string) (object, bool) {
	for _, o := range objs {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return object{}, false
}

func mustFind(t testing.TB, objs []object, kind, name string) object {
	t.Helper()
	o, ok := find(objs, kind, name)
	if !ok {
		var have []string
		for _, o := range objs {
			have = append(have, o.Kind+"/"+o.Name)
		}
		t.Fatalf("no %s/%s rendered; have %v", kind, name, have)
	}
	return o
}

func ofKind(objs []object, kind string) []object {
	var out []object
	for _, o := range objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// podSpecs returns the pod templates of Deployments and Jobs by object name.
func podSpecs(t testing.TB, objs []object) map[string]corev1.PodSpec {
	t.Helper()
	out := map[string]corev1.PodSpec{}
	for _, o := range objs {
		switch o.Kind {
		case "Deployment":
			var d appsv1.Deployment
			o.into(t, &d)
			out["Deployment/"+o.Name] = d.Spec.Template.Spec
		case "Job":
			var j batchv1.Job
			o.into(t, &j)
			out["Job/"+o.Name] = j.Spec.Template.Spec
		}
	}
	return out
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
