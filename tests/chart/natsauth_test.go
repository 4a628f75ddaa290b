package chart_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestNATSUsers: by default every component logs in to NATS as its own
// quickstart user, the password from Secret nats-users in the environment,
// never in the arguments (visible in ps and the pod spec).
func TestNATSUsers(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	specs := podSpecs(t, parseManifests(t, out))
	want := map[string][2]string{
		"Deployment/mailfwd-ingress": {"mailfwd-ingress", "ingress-password"},
		"Deployment/mailfwd-worker":  {"mailfwd-worker", "worker-password"},
		"Job/mailfwd-bootstrap":      {"mailfwdctl", "ctl-password"},
	}
	for name, w := range want {
		spec, ok := specs[name]
		if !ok {
			t.Fatalf("no pod spec %s (have %v)", name, keysOf(specs))
		}
		c := spec.Containers[0]
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		if u := env["MAILFWD_NATS_USER"]; u.Value != w[0] {
			t.Errorf("%s: MAILFWD_NATS_USER = %q, want %q", name, u.Value, w[0])
		}
		p := env["MAILFWD_NATS_PASSWORD"]
		if p.ValueFrom == nil || p.ValueFrom.SecretKeyRef == nil || p.ValueFrom.SecretKeyRef.Name != "nats-users" || p.ValueFrom.SecretKeyRef.Key != w[1] {
			t.Errorf("%s: MAILFWD_NATS_PASSWORD = %+v, want Secret nats-users key %s", name, p, w[1])
		}
		for _, a := range append(c.Args, c.Command...) {
			if strings.Contains(a, "password") || strings.Contains(a, "nats-creds") {
				t.Errorf("%s: argument %q carries a NATS secret", name, a)
			}
		}
	}
	// A creds file replaces the user logins (the binaries refuse both); so does an empty nats.auth.
	for _, set := range []string{"nats.credentials.existingSecret=x", "nats.auth.existingSecret="} {
		out, err = template(t, helm, "--set", set)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "MAILFWD_NATS_USER") || strings.Contains(out, "MAILFWD_NATS_PASSWORD") {
			t.Errorf("NATS user login rendered with %s", set)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestBootstrapMigrate: bootstrap.job.migrate=true makes the bootstrap Job
// move an earlier release's stream (mailfwdctl bootstrap --migrate); off by
// default.
func TestBootstrapMigrate(t *testing.T) {
	helm := helmBin(t)
	for _, c := range []struct {
		set  []string
		want bool
	}{{nil, false}, {[]string{"--set", "bootstrap.job.migrate=true"}, true}} {
		out, err := template(t, helm, c.set...)
		if err != nil {
			t.Fatal(err)
		}
		spec, ok := podSpecs(t, parseManifests(t, out))["Job/mailfwd-bootstrap"]
		if !ok {
			t.Fatal("no bootstrap Job")
		}
		got := false
		for _, a := range spec.Containers[0].Args {
			got = got || a == "--migrate"
		}
		if got != c.want {
			t.Errorf("%v: --migrate in the Job's args %v, want %v", c.set, spec.Containers[0].Args, c.want)
		}
	}
}
