package chart_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// TestPolicySecret: the chart creates the policy Secret empty (no data to
// overwrite mailfwdctl's edits on upgrade), keeps it on uninstall, and lets the
// ctl ServiceAccount get and update that Secret by name, and nothing else:
// no create and no other Secret.
func TestPolicySecret(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	var sec corev1.Secret
	mustFind(t, objs, "Secret", "mailfwd-policy-secret").into(t, &sec)
	if len(sec.Data) > 0 || len(sec.StringData) > 0 {
		t.Errorf("policy Secret renders data %v: an upgrade would overwrite users and DKIM keys", sec.Data)
	}
	if sec.Type != corev1.SecretTypeOpaque || sec.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Errorf("policy Secret type %q annotations %v, want Opaque and resource-policy keep", sec.Type, sec.Annotations)
	}
	var role rbacv1.Role
	mustFind(t, objs, "Role", "mailfwd-ctl").into(t, &role)
	var secretRules []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if slices.Contains(r.Resources, "secrets") || slices.Contains(r.Resources, "*") {
			secretRules = append(secretRules, r)
		}
	}
	if len(secretRules) != 1 {
		t.Fatalf("ctl Role has %d rules on secrets, want 1: %+v", len(secretRules), role.Rules)
	}
	r := secretRules[0]
	if !slices.Equal(r.ResourceNames, []string{"mailfwd-policy-secret"}) {
		t.Errorf("secrets rule resourceNames = %v, want only mailfwd-policy-secret", r.ResourceNames)
	}
	for _, v := range []string{"get", "update"} {
		if !slices.Contains(r.Verbs, v) {
			t.Errorf("secrets rule verbs %v lack %s (mailfwdctl users/dkim)", r.Verbs, v)
		}
	}
	for _, v := range []string{"create", "list", "watch", "delete", "*"} {
		if slices.Contains(r.Verbs, v) {
			t.Errorf("secrets rule grants %s: %v", v, r.Verbs)
		}
	}

	// An existing Secret: not rendered, mounted and granted by its name.
	out, err = template(t, helm, "--set", "policy.existingSecret=smarthost")
	if err != nil {
		t.Fatal(err)
	}
	objs = parseManifests(t, out)
	if _, ok := find(objs, "Secret", "mailfwd-policy-secret"); ok {
		t.Error("policy Secret rendered although policy.existingSecret is set")
	}
	mustFind(t, objs, "Role", "mailfwd-ctl").into(t, &role)
	if !strings.Contains(strings.Join(role.Rules[len(role.Rules)-1].ResourceNames, ","), "smarthost") {
		t.Errorf("ctl Role does not name Secret smarthost: %+v", role.Rules)
	}
	for d, ps := range podSpecs(t, objs) {
		if !strings.HasPrefix(d, "Deployment/") {
			continue
		}
		ok := false
		for _, v := range ps.Volumes {
			if v.Projected == nil {
				continue
			}
			for _, s := range v.Projected.Sources {
				ok = ok || (s.Secret != nil && s.Secret.Name == "smarthost")
			}
		}
		if !ok {
			t.Errorf("%s does not project Secret smarthost into the policy directory", d)
		}
	}
}

// TestSubmissionAndSMTPSListeners: the two listeners are off by default; on,
// each gets its flag, a container port, a Service port targeting it and the
// NetworkPolicy opening; the probes stay on the HTTP port; without TLS the
// chart refuses.
func TestSubmissionAndSMTPSListeners(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	ing := podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-ingress"].Containers[0]
	for _, f := range []string{"submission-listen", "smtps-listen"} {
		if v, ok := flagValue(ing.Args, f); ok {
			t.Errorf("default renders --%s=%s", f, v)
		}
	}

	out, err = template(t, helm, "--set", "tls.enabled=true,tls.secretName=smtp-tls,ingress.submission.enabled=true,ingress.smtps.enabled=true,networkPolicy.enabled=true,ingress.service.type=NodePort,ingress.service.smtps.nodePort=30465")
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	ps := podSpecs(t, objs)["Deployment/mailfwd-ingress"]
	c := ps.Containers[0]
	cports := map[string]int32{}
	for _, p := range c.Ports {
		cports[p.Name] = p.ContainerPort
	}
	if v, _ := flagValue(c.Args, "submission-listen"); v != ":2587" || cports["submission"] != 2587 {
		t.Errorf("--submission-listen=%q, container port %d, want :2587 and 2587", v, cports["submission"])
	}
	if v, _ := flagValue(c.Args, "smtps-listen"); v != ":2465" || cports["smtps"] != 2465 {
		t.Errorf("--smtps-listen=%q, container port %d, want :2465 and 2465", v, cports["smtps"])
	}
	if v, _ := flagValue(c.Args, "tls-cert"); v == "" {
		t.Error("listeners without --tls-cert")
	}
	for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "http" {
			t.Errorf("probe %+v not on the http port", p)
		}
	}
	var svc corev1.Service
	mustFind(t, objs, "Service", "mailfwd-ingress").into(t, &svc)
	want := map[string]struct {
		port   int32
		target string
	}{"smtp": {25, "smtp"}, "submission": {587, "submission"}, "smtps": {465, "smtps"}}
	for _, p := range svc.Spec.Ports {
		w, ok := want[p.Name]
		if !ok || p.Port != w.port || p.TargetPort.String() != w.target {
			t.Errorf("Service port %s %d -> %s, want %v", p.Name, p.Port, p.TargetPort.String(), w)
		}
		delete(want, p.Name)
		if p.Name == "smtps" && p.NodePort != 30465 {
			t.Errorf("smtps nodePort = %d, want 30465", p.NodePort)
		}
	}
	if len(want) > 0 {
		t.Errorf("Service lacks ports %v", want)
	}
	var np networkingv1.NetworkPolicy
	mustFind(t, objs, "NetworkPolicy", "mailfwd-ingress").into(t, &np)
	open := map[string]bool{}
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			open[p.Port.String()] = true
		}
	}
	for _, port := range []string{"smtp", "submission", "smtps"} {
		if !open[port] {
			t.Errorf("NetworkPolicy does not open port %s (%v)", port, open)
		}
	}

	for _, set := range []string{"ingress.submission.enabled=true", "ingress.smtps.enabled=true"} {
		if _, err := template(t, helm, "--set", set); err == nil || !strings.Contains(err.Error(), "tls.enabled") {
			t.Errorf("%s without TLS: err = %v, want a refusal naming tls.enabled", set, err)
		}
	}
	if _, err := template(t, helm, "--set", "tls.enabled=true,tls.secretName=x,ingress.smtps.enabled=true,ingress.smtps.containerPort=2525"); err == nil || !strings.Contains(err.Error(), "must differ") {
		t.Errorf("smtps on the SMTP port: err = %v, want a refusal", err)
	}
}

// TestWorkerLoopDetection: the worker knows the ingress Service's names and
// the configured host names as its own, plus the addresses users add.
func TestWorkerLoopDetection(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	w := podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-worker"].Containers[0]
	names, _ := flagValue(w.Args, "local-name")
	svc := "mailfwd-ingress." + namespace + ".svc"
	for _, n := range []string{"mailfwd-ingress", svc, svc + ".cluster.local"} {
		if !slices.Contains(strings.Split(names, ","), n) {
			t.Errorf("--local-name=%q lacks %s", names, n)
		}
	}
	if v, ok := flagValue(w.Args, "local-addr"); ok {
		t.Errorf("default renders --local-addr=%s", v)
	}

	out, err = template(t, helm, "--set", "ingress.hostname=relay.example.com,worker.heloName=out.example.com,worker.localNames={mx1.example.com},worker.localAddrs={203.0.113.25:25,[2001:db8::25]:25},clusterDomain=")
	if err != nil {
		t.Fatal(err)
	}
	w = podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-worker"].Containers[0]
	names, _ = flagValue(w.Args, "local-name")
	for _, n := range []string{"mailfwd-ingress", "relay.example.com", "out.example.com", "mx1.example.com"} {
		if !slices.Contains(strings.Split(names, ","), n) {
			t.Errorf("--local-name=%q lacks %s", names, n)
		}
	}
	if strings.Contains(names, "cluster.local") {
		t.Errorf("--local-name=%q has the cluster domain although clusterDomain is empty", names)
	}
	if v, _ := flagValue(w.Args, "local-addr"); v != "203.0.113.25:25,[2001:db8::25]:25" {
		t.Errorf("--local-addr=%q", v)
	}
	if _, err := template(t, helm, "--set", "worker.localAddrs={relay.example.com:25}"); err == nil {
		t.Error("a host name in worker.localAddrs accepted (the worker wants IP:port)")
	}
}

// TestWorkerOutboundTLS: --mta-sts, --dane and --tls-ca-file from values, the
// CA bundle mounted read-only from a Secret or a ConfigMap.
func TestWorkerOutboundTLS(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	w := podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-worker"].Containers[0]
	for _, f := range []string{"mta-sts", "dane", "tls-ca-file"} {
		if slices.ContainsFunc(w.Args, func(a string) bool { return a == "--"+f || strings.HasPrefix(a, "--"+f+"=") }) {
			t.Errorf("default renders --%s", f)
		}
	}
	for _, tt := range []struct{ set, kind string }{
		{"worker.tls.caBundle.secretName=corp-ca", "secret"},
		{"worker.tls.caBundle.configMapName=corp-ca,worker.tls.caBundle.key=bundle.pem", "configmap"},
	} {
		out, err := template(t, helm, "--set", "worker.tls.mtaSts=true,worker.tls.dane=true,"+tt.set)
		if err != nil {
			t.Fatal(err)
		}
		ps := podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-worker"]
		c := ps.Containers[0]
		if !slices.Contains(c.Args, "--mta-sts") || !slices.Contains(c.Args, "--dane") {
			t.Errorf("%s: args %q lack --mta-sts or --dane", tt.kind, c.Args)
		}
		ca, _ := flagValue(c.Args, "tls-ca-file")
		key := "ca.crt"
		if tt.kind == "configmap" {
			key = "bundle.pem"
		}
		if ca != "/etc/mailfwd/ca/"+key {
			t.Errorf("%s: --tls-ca-file=%q", tt.kind, ca)
		}
		var vol *corev1.Volume
		for i, v := range ps.Volumes {
			if v.Name == "tls-ca" {
				vol = &ps.Volumes[i]
			}
		}
		switch {
		case vol == nil:
			t.Errorf("%s: no tls-ca volume", tt.kind)
		case tt.kind == "secret" && (vol.Secret == nil || vol.Secret.SecretName != "corp-ca"):
			t.Errorf("secret: volume %+v", vol.VolumeSource)
		case tt.kind == "configmap" && (vol.ConfigMap == nil || vol.ConfigMap.Name != "corp-ca" || vol.ConfigMap.Items[0].Key != key):
			t.Errorf("configmap: volume %+v", vol.VolumeSource)
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (m.Name == "tls-ca" && m.MountPath == "/etc/mailfwd/ca" && m.ReadOnly)
		}
		if !mounted {
			t.Errorf("%s: tls-ca not mounted read-only at /etc/mailfwd/ca", tt.kind)
		}
	}
	if _, err := template(t, helm, "--set", "worker.tls.caBundle.secretName=a,worker.tls.caBundle.configMapName=b"); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("CA from a Secret and a ConfigMap: err = %v, want a refusal", err)
	}
}
