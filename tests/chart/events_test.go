package chart_test

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestEventsWebhookDeployment: events.webhook.enabled runs `mailfwdctl
// events webhook` as one replica with the mailfwdctl image, logged in as
// the events reader (password from Secret nats-users), the HMAC key from
// its own Secret in the environment (never in the arguments), and the
// values' endpoint, filters, backoff and resources. Off by default; on
// without a url the chart refuses.
func TestEventsWebhookDeployment(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "events-webhook") {
		t.Fatal("the webhook forwarder is rendered by default")
	}
	if _, err := template(t, helm, "--set", "events.webhook.enabled=true"); err == nil || !strings.Contains(err.Error(), "url") {
		t.Fatalf("enabled without a url: err %v, want a refusal naming url", err)
	}

	out, err = template(t, helm, "--set", "events.webhook.enabled=true,events.webhook.url=https://hooks.example.test/{{ .Release.Name }}",
		"--set", "events.webhook.secret.existingSecret=hook,events.webhook.secret.key=hmac,events.webhook.name=crm",
		"--set", "events.webhook.outcomes={bounced,expired},events.webhook.domains={example.com}",
		"--set", "events.webhook.maxBackoff=10m,events.webhook.resources.limits.memory=64Mi")
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "mailfwd-events-webhook").into(t, &d)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("replicas %v, strategy %s: want one replica, Recreate (two forwarders would take turns)", d.Spec.Replicas, d.Spec.Strategy.Type)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if !strings.HasSuffix(strings.Split(c.Image, ":")[0], "/mailfwdctl") {
		t.Errorf("image %s, want mailfwdctl", c.Image)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"events webhook ", "--url=https://hooks.example.test/mailfwd", "--name=crm", "--outcome=bounced,expired",
		"--domain=example.com", "--max-backoff=10m", "--nats-url=nats://nats.mail.svc:4222"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if strings.Contains(args, "secret") || strings.Contains(args, "password") {
		t.Errorf("args %q carry a secret", args)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if env["MAILFWD_NATS_USER"].Value != "mailfwd-events" {
		t.Errorf("NATS user %q, want the events reader mailfwd-events", env["MAILFWD_NATS_USER"].Value)
	}
	for name, want := range map[string][2]string{"MAILFWD_NATS_PASSWORD": {"nats-users", "events-password"}, "MAILFWD_WEBHOOK_SECRET": {"hook", "hmac"}} {
		r := env[name].ValueFrom
		if r == nil || r.SecretKeyRef == nil || r.SecretKeyRef.Name != want[0] || r.SecretKeyRef.Key != want[1] {
			t.Errorf("%s = %+v, want Secret %s key %s", name, env[name], want[0], want[1])
		}
	}
	if m := c.Resources.Limits.Memory(); m.String() != "64Mi" {
		t.Errorf("memory limit %s, want the value's 64Mi", m)
	}
	// No secret: nothing signs, and the variable is not set at all.
	out, err = template(t, helm, "--set", "events.webhook.enabled=true,events.webhook.url=https://hooks.example.test/")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "MAILFWD_WEBHOOK_SECRET") {
		t.Error("MAILFWD_WEBHOOK_SECRET rendered without events.webhook.secret.existingSecret")
	}
}

// events.types reaches the ingress and the workers as --events-types; by
// default neither has it (every type is published).
func TestEventsTypesValue(t *testing.T) {
	helm := helmBin(t)
	for _, c := range []struct {
		set  []string
		want string
	}{
		{nil, ""},
		{[]string{"--set", "events.types={deferred,bounced,expired}"}, "--events-types=deferred,bounced,expired"},
	} {
		out, err := template(t, helm, c.set...)
		if err != nil {
			t.Fatal(err)
		}
		objs := parseManifests(t, out)
		for _, name := range []string{"mailfwd-ingress", "mailfwd-worker"} {
			var d appsv1.Deployment
			mustFind(t, objs, "Deployment", name).into(t, &d)
			args := strings.Join(d.Spec.Template.Spec.Containers[0].Args, " ")
			if got := strings.Contains(args, "--events-types"); got != (c.want != "") || (c.want != "" && !strings.Contains(args, c.want)) {
				t.Errorf("%v: %s args %q, want %q", c.set, name, args, c.want)
			}
		}
	}
}
