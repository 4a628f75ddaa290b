package chart_test

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"

	"github.com/mailfwd/mailfwd/pkg/policy"
)

func TestHelmLintStrict(t *testing.T) {
	helm := helmBin(t)
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			args := append(append([]string{"lint", "--strict", chartDir(t), "--namespace", namespace, "--kube-version", "1.32.13"}, required...), r.args...)
			out, err := runHelm(t, helm, nil, args...)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Errorf("helm lint output has no success line:\n%s", out)
			}
		})
	}
}

// TestRenderings checks what every rendering must hold.
func TestRenderings(t *testing.T) {
	helm := helmBin(t)
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			out, err := template(t, helm, r.args...)
			if err != nil {
				t.Fatal(err)
			}
			objs := parseManifests(t, out)
			pods := podSpecs(t, objs)
			for _, want := range []string{"Deployment/mailfwd-ingress", "Deployment/mailfwd-worker"} {
				if _, ok := pods[want]; !ok {
					t.Fatalf("%s not rendered", want)
				}
			}
			checkSecurityDefaults(t, pods)
			checkDeploymentContainers(t, objs, pods)
			checkPolicyMounted(t, objs, pods)
			checkNoSecretsInConfigMaps(t, objs)
			checkPDBs(t, objs)
			checkServices(t, objs)
		})
	}
}

func checkSecurityDefaults(t *testing.T, pods map[string]corev1.PodSpec) {
	t.Helper()
	for name, ps := range pods {
		psc := ps.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Errorf("%s: pod securityContext.runAsNonRoot is not true", name)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod seccompProfile is not RuntimeDefault", name)
		}
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			t.Errorf("%s: the service account token is mounted; the pods never call the API", name)
		}
		tmpVolumes := map[string]bool{}
		for _, v := range ps.Volumes {
			if v.EmptyDir != nil {
				tmpVolumes[v.Name] = true
			}
		}
		for _, c := range ps.Containers {
			sc := c.SecurityContext
			where := name + " container " + c.Name
			if sc == nil {
				t.Errorf("%s: no securityContext", where)
				continue
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem is not true", where)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation is not false", where)
			}
			if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
				t.Errorf("%s: not running as a non-root uid", where)
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
				t.Errorf("%s: capabilities = %+v, want drop [ALL] and nothing added", where, sc.Capabilities)
			}
			if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("%s: seccompProfile is not RuntimeDefault", where)
			}
			tmp := false
			for _, m := range c.VolumeMounts {
				if m.MountPath == "/tmp" && tmpVolumes[m.Name] {
					tmp = true
				}
			}
			if !tmp {
				t.Errorf("%s: no emptyDir at /tmp", where)
			}
			if c.Resources.Requests.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
				t.Errorf("%s: no cpu and memory requests", where)
			}
		}
	}
}

// flagValue returns the value of --name=value in args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func checkDeploymentContainers(t *testing.T, objs []object, pods map[string]corev1.PodSpec) {
	t.Helper()
	for _, tt := range []struct {
		deploy, drainFlag string
		httpPort          int32
	}{
		{"Deployment/mailfwd-ingress", "shutdown-timeout", 8080},
		{"Deployment/mailfwd-worker", "drain-timeout", 8081},
	} {
		ps := pods[tt.deploy]
		if len(ps.Containers) != 1 {
			t.Errorf("%s: %d containers, want 1", tt.deploy, len(ps.Containers))
			continue
		}
		c := ps.Containers[0]
		// Probes on the real health endpoints, on the port --http-addr listens on.
		httpAddr, _ := flagValue(c.Args, "http-addr")
		var httpPort int32
		for _, p := range c.Ports {
			if p.Name == "http" {
				httpPort = p.ContainerPort
			}
		}
		if httpPort != tt.httpPort || httpAddr != fmt.Sprintf(":%d", httpPort) {
			t.Errorf("%s: http port %d and --http-addr=%s disagree (want %d)", tt.deploy, httpPort, httpAddr, tt.httpPort)
		}
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"startup", c.StartupProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s: no %s httpGet probe", tt.deploy, p.name)
				continue
			}
			if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
				t.Errorf("%s: %s probe = %s on %s, want %s on http", tt.deploy, p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
			}
		}
		// Graceful termination covers preStop + the drain.
		drain, ok := flagValue(c.Args, tt.drainFlag)
		var drainSec int64
		if _, err := fmt.Sscanf(drain, "%ds", &drainSec); !ok || err != nil {
			t.Errorf("%s: --%s=%q is not whole seconds", tt.deploy, tt.drainFlag, drain)
		}
		var sleep int64
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
			sleep = c.Lifecycle.PreStop.Sleep.Seconds
		}
		if sleep <= 0 {
			t.Errorf("%s: no preStop sleep (endpoints must be removed before SIGTERM)", tt.deploy)
		}
		if ps.TerminationGracePeriodSeconds == nil || *ps.TerminationGracePeriodSeconds <= sleep+drainSec {
			t.Errorf("%s: terminationGracePeriodSeconds %v does not exceed preStop %ds + drain %ds", tt.deploy, ps.TerminationGracePeriodSeconds, sleep, drainSec)
		}
		// S3 credentials only by reference.
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "AWS_") && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				t.Errorf("%s: env %s is not a secretKeyRef", tt.deploy, e.Name)
			}
		}
		if v, _ := flagValue(c.Args, "blob-store"); !strings.HasPrefix(v, "s3://") || strings.Contains(v, "@") {
			t.Errorf("%s: --blob-store=%q: want an s3:// URL without credentials", tt.deploy, v)
		}
	}
	ing := pods["Deployment/mailfwd-ingress"].Containers[0]
	listen, _ := flagValue(ing.Args, "listen")
	var smtpPort int32
	for _, p := range ing.Ports {
		if p.Name == "smtp" {
			smtpPort = p.ContainerPort
		}
	}
	if smtpPort < 1024 || listen != fmt.Sprintf(":%d", smtpPort) {
		t.Errorf("ingress: --listen=%s and container port smtp %d disagree or the port is privileged", listen, smtpPort)
	}
	// TLS: the flags point into the mounted kubernetes.io/tls Secret.
	if cert, ok := flagValue(ing.Args, "tls-cert"); ok {
		key, _ := flagValue(ing.Args, "tls-key")
		ps := pods["Deployment/mailfwd-ingress"]
		var secret string
		for _, v := range ps.Volumes {
			if v.Name == "tls" && v.Secret != nil {
				secret = v.Secret.SecretName
			}
		}
		mounted := false
		for _, m := range ing.VolumeMounts {
			if m.Name == "tls" && strings.HasPrefix(cert, m.MountPath+"/") && key == m.MountPath+"/tls.key" && cert == m.MountPath+"/tls.crt" {
				mounted = true
			}
		}
		if secret == "" || !mounted {
			t.Errorf("ingress: --tls-cert=%s --tls-key=%s not backed by a mounted Secret (secret %q)", cert, key, secret)
		}
	}
	// Bootstrap: either the hook Job runs `mailfwdctl bootstrap`, or the pods bootstrap themselves.
	job, hasJob := pods["Job/mailfwd-bootstrap"]
	for _, d := range []string{"Deployment/mailfwd-ingress", "Deployment/mailfwd-worker"} {
		v, _ := flagValue(pods[d].Containers[0].Args, "bootstrap")
		if want := fmt.Sprint(!hasJob); v != want {
			t.Errorf("%s: --bootstrap=%s, want %s (hook Job rendered: %v)", d, v, want, hasJob)
		}
	}
	if hasJob {
		o := mustFind(t, objs, "Job", "mailfwd-bootstrap")
		anns, _ := o.Raw["metadata"].(map[string]any)["annotations"].(map[string]any)
		if hook, _ := anns["helm.sh/hook"].(string); !strings.Contains(hook, "pre-install") || !strings.Contains(hook, "pre-upgrade") {
			t.Errorf("bootstrap Job hook = %q, want pre-install,pre-upgrade", hook)
		}
		args := job.Containers[0].Args
		if len(args) == 0 || args[0] != "bootstrap" {
			t.Errorf("bootstrap Job args = %q, want the bootstrap subcommand first", args)
		}
		// Same queue settings as the pods, so bootstrap creates what they use.
		for _, f := range []string{"nats-url", "blob-store", "replicas", "ack-wait"} {
			jv, _ := flagValue(args, f)
			iv, _ := flagValue(ing.Args, f)
			if jv == "" || jv != iv {
				t.Errorf("bootstrap Job --%s=%q, ingress --%s=%q: want equal and set", f, jv, f, iv)
			}
		}
	}
}

func checkPolicyMounted(t *testing.T, objs []object, pods map[string]corev1.PodSpec) {
	t.Helper()
	var cmName string
	for _, d := range []string{"Deployment/mailfwd-ingress", "Deployment/mailfwd-worker"} {
		ps := pods[d]
		// The policy directory is one projected volume: the ConfigMap and the
		// policy Secret (optional, so pods start without it).
		vols := map[string]string{}
		secrets := map[string]string{}
		for _, v := range ps.Volumes {
			if v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if src.ConfigMap != nil {
					vols[v.Name] = src.ConfigMap.Name
				}
				if src.Secret != nil && src.Secret.Optional != nil && *src.Secret.Optional {
					secrets[v.Name] = src.Secret.Name
				}
			}
		}
		c := ps.Containers[0]
		dir, _ := flagValue(c.Args, "policy-dir")
		found := ""
		for _, m := range c.VolumeMounts {
			if m.MountPath == dir && vols[m.Name] != "" && m.SubPath == "" {
				found = vols[m.Name]
				if secrets[m.Name] == "" {
					t.Errorf("%s: the policy directory has no optional policy Secret beside ConfigMap %s", d, found)
				}
			}
		}
		if found == "" {
			t.Errorf("%s: --policy-dir=%q is not a whole-ConfigMap mount (subPath mounts do not hot-reload)", d, dir)
			continue
		}
		if cmName == "" {
			cmName = found
		} else if found != cmName {
			t.Errorf("ingress mounts policy %s, worker %s", cmName, found)
		}
	}
	if cmName == "" {
		return
	}
	o, rendered := find(objs, "ConfigMap", cmName)
	if !rendered {
		// An existing ConfigMap (policy.existingConfigMap): nothing to parse.
		if len(ofKind(objs, "ConfigMap")) > 0 {
			t.Errorf("policy ConfigMap %s not rendered but other ConfigMaps are", cmName)
		}
		return
	}
	var cm corev1.ConfigMap
	o.into(t, &cm)
	files := map[string][]byte{}
	for k, v := range cm.Data {
		files[k] = []byte(v)
	}
	if _, err := policy.Parse(files); err != nil {
		t.Errorf("policy ConfigMap %s does not parse as mailfwd policy: %v", cmName, err)
	}
}

// checkNoSecretsInConfigMaps: Secret values (base64 data in Secrets) never
// show up in plain text anywhere, and ConfigMaps hold no credentials.
func checkNoSecretsInConfigMaps(t *testing.T, objs []object) {
	t.Helper()
	var secrets []string
	for _, o := range ofKind(objs, "Secret") {
		var s corev1.Secret
		o.into(t, &s)
		for _, v := range s.Data {
			if len(v) >= 4 {
				secrets = append(secrets, string(v))
			}
		}
	}
	for _, o := range objs {
		if o.Kind == "Secret" {
			continue
		}
		text := string(o.JSON)
		for _, s := range secrets {
			if strings.Contains(text, s) || strings.Contains(text, base64.StdEncoding.EncodeToString([]byte(s))) {
				t.Errorf("%s/%s contains a Secret value", o.Kind, o.Name)
			}
		}
		if o.Kind == "ConfigMap" {
			lower := strings.ToLower(text)
			for _, bad := range []string{"aws_secret", "secret_access_key", "password", "-----begin", "nkey"} {
				if strings.Contains(lower, bad) {
					t.Errorf("ConfigMap %s mentions %q", o.Name, bad)
				}
			}
		}
	}
}

func checkPDBs(t *testing.T, objs []object) {
	t.Helper()
	for _, c := range []string{"ingress", "worker"} {
		o := mustFind(t, objs, "PodDisruptionBudget", "mailfwd-"+c)
		var pdb policyv1.PodDisruptionBudget
		o.into(t, &pdb)
		if pdb.Spec.Selector == nil || pdb.Spec.Selector.MatchLabels["app.kubernetes.io/component"] != c {
			t.Errorf("PDB mailfwd-%s selects %v", c, pdb.Spec.Selector)
		}
		if (pdb.Spec.MinAvailable == nil) == (pdb.Spec.MaxUnavailable == nil) {
			t.Errorf("PDB mailfwd-%s: want exactly one of minAvailable and maxUnavailable", c)
		}
	}
}

func checkServices(t *testing.T, objs []object) {
	t.Helper()
	var svc corev1.Service
	mustFind(t, objs, "Service", "mailfwd-ingress").into(t, &svc)
	smtp := false
	for _, p := range svc.Spec.Ports {
		if p.Name == "smtp" && p.TargetPort.String() == "smtp" {
			smtp = true
		}
		if p.Port == 8080 || p.TargetPort.String() == "http" {
			t.Errorf("the SMTP Service exposes the health/metrics port %v", p)
		}
	}
	if !smtp {
		t.Errorf("Service mailfwd-ingress has no smtp port to the container's smtp port: %+v", svc.Spec.Ports)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP && svc.Spec.ExternalTrafficPolicy == "" {
		t.Errorf("%s Service without externalTrafficPolicy", svc.Spec.Type)
	}
}

func TestDefaultsSpecifics(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm)
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	var svc corev1.Service
	mustFind(t, objs, "Service", "mailfwd-ingress").into(t, &svc)
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("ingress Service = %s/%s, want LoadBalancer with externalTrafficPolicy Local", svc.Spec.Type, svc.Spec.ExternalTrafficPolicy)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 25 {
		t.Errorf("ingress Service ports = %+v, want only 25", svc.Spec.Ports)
	}
	var hpa autoscalingv2.HorizontalPodAutoscaler
	mustFind(t, objs, "HorizontalPodAutoscaler", "mailfwd-ingress").into(t, &hpa)
	if hpa.Spec.ScaleTargetRef.Name != "mailfwd-ingress" || len(hpa.Spec.Metrics) == 0 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU {
		t.Errorf("ingress HPA = %+v, want CPU on Deployment mailfwd-ingress", hpa.Spec)
	}
	if _, ok := find(objs, "ScaledObject", "mailfwd-worker"); ok {
		t.Error("ScaledObject rendered with keda.enabled=false")
	}
	// Neither KEDA nor a worker HPA: the Deployment sets replicas.
	w := mustFind(t, objs, "Deployment", "mailfwd-worker")
	if _, ok := w.Raw["spec"].(map[string]any)["replicas"]; !ok {
		t.Error("worker Deployment without replicas although nothing autoscales it")
	}
	// The ingress has an HPA, so its Deployment must not fight it.
	i := mustFind(t, objs, "Deployment", "mailfwd-ingress")
	if _, ok := i.Raw["spec"].(map[string]any)["replicas"]; ok {
		t.Error("ingress Deployment sets replicas although its HPA owns them")
	}
	// RBAC for an in-cluster mailfwdctl.
	role := mustFind(t, objs, "Role", "mailfwd-ctl")
	rules, _ := role.Raw["rules"].([]any)
	verbs := map[string]bool{}
	for _, r := range rules {
		rm := r.(map[string]any)
		res := fmt.Sprint(rm["resources"])
		if !strings.Contains(res, "configmaps") {
			continue
		}
		for _, v := range rm["verbs"].([]any) {
			verbs[v.(string)] = true
		}
	}
	for _, v := range []string{"get", "list", "watch", "create", "update", "patch"} {
		if !verbs[v] {
			t.Errorf("Role mailfwd-ctl cannot %s configmaps", v)
		}
	}
	if verbs["delete"] || verbs["*"] {
		t.Errorf("Role mailfwd-ctl may delete configmaps: %v", verbs)
	}
	mustFind(t, objs, "RoleBinding", "mailfwd-ctl")
	mustFind(t, objs, "ServiceAccount", "mailfwd-ctl")
}

func TestKEDAScaledObject(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm, "--set", "keda.enabled=true,keda.lagThreshold=150,keda.activationLagThreshold=5,keda.minReplicaCount=0,keda.maxReplicaCount=12")
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	so := mustFind(t, objs, "ScaledObject", "mailfwd-worker")
	spec := so.Raw["spec"].(map[string]any)
	if ref := spec["scaleTargetRef"].(map[string]any); ref["name"] != "mailfwd-worker" || ref["kind"] != "Deployment" {
		t.Errorf("scaleTargetRef = %v, want Deployment mailfwd-worker", ref)
	}
	if spec["minReplicaCount"] != float64(0) || spec["maxReplicaCount"] != float64(12) {
		t.Errorf("replica counts = %v..%v, want 0..12", spec["minReplicaCount"], spec["maxReplicaCount"])
	}
	// Two triggers: ready envelopes (consumer workers), and accept records of
	// multi-domain messages (consumer accepts), which only a running worker
	// fans out — scaled to zero on the first alone, a multi-domain message
	// would wait forever.
	triggers := spec["triggers"].([]any)
	if len(triggers) != 2 {
		t.Fatalf("%d triggers, want 2 (consumers workers and accepts)", len(triggers))
	}
	for i, consumer := range []string{"workers", "accepts"} {
		tr := triggers[i].(map[string]any)
		if tr["type"] != "nats-jetstream" {
			t.Errorf("trigger %d type = %v, want nats-jetstream", i, tr["type"])
		}
		md := tr["metadata"].(map[string]any)
		want := map[string]string{
			"natsServerMonitoringEndpoint": "nats.mail.svc:8222",
			"account":                      "$G",
			"stream":                       "MAIL",
			"consumer":                     consumer,
			"lagThreshold":                 "150",
			"activationLagThreshold":       "5",
			"useHttps":                     "false",
		}
		for k, v := range want {
			if md[k] != v {
				t.Errorf("trigger %d metadata %s = %#v, want %q (KEDA metadata values are strings)", i, k, md[k], v)
			}
		}
		for k := range md {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected trigger %d metadata %s", i, k)
			}
		}
	}
	// KEDA owns the worker replicas: no HPA of our own, no replicas in the Deployment.
	if _, ok := find(objs, "HorizontalPodAutoscaler", "mailfwd-worker"); ok {
		t.Error("worker HPA rendered next to the ScaledObject")
	}
	if _, ok := mustFind(t, objs, "Deployment", "mailfwd-worker").Raw["spec"].(map[string]any)["replicas"]; ok {
		t.Error("worker Deployment sets replicas although KEDA owns them")
	}
	// The worker consumer is the one the pods bootstrap: same stream, and the
	// ready subjects only (documented contract; the name is fixed in the schema).
	if _, err := template(t, helm, "--set", "keda.enabled=true,keda.consumer=deferred"); err == nil || !strings.Contains(err.Error(), "consumer") {
		t.Errorf("keda.consumer other than workers accepted: %v", err)
	}
}

func TestWorkerHPAWithoutKEDA(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm, "--set", "worker.autoscaling.enabled=true,worker.autoscaling.maxReplicas=7")
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	var hpa autoscalingv2.HorizontalPodAutoscaler
	mustFind(t, objs, "HorizontalPodAutoscaler", "mailfwd-worker").into(t, &hpa)
	if hpa.Spec.MaxReplicas != 7 || hpa.Spec.ScaleTargetRef.Name != "mailfwd-worker" {
		t.Errorf("worker HPA = %+v", hpa.Spec)
	}
	if _, err := template(t, helm, "--set", "worker.autoscaling.enabled=true,keda.enabled=true"); err == nil || !strings.Contains(err.Error(), "enable one") {
		t.Errorf("KEDA and a worker HPA together: err = %v, want a refusal", err)
	}
}

func TestSubmissionPortAndTLS(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm, "--set", "ingress.service.submission.enabled=true,tls.enabled=true,tls.secretName=smtp-tls,ingress.service.externalTrafficPolicy=Cluster")
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifests(t, out)
	var svc corev1.Service
	mustFind(t, objs, "Service", "mailfwd-ingress").into(t, &svc)
	ports := map[string]int32{}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort.String() != "smtp" {
			t.Errorf("port %s targets %s, want smtp", p.Name, p.TargetPort.String())
		}
		ports[p.Name] = p.Port
	}
	if ports["smtp"] != 25 || ports["submission"] != 587 {
		t.Errorf("Service ports = %v, want smtp 25 and submission 587", ports)
	}
	if svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster {
		t.Errorf("externalTrafficPolicy = %s, want Cluster as set", svc.Spec.ExternalTrafficPolicy)
	}
	ps := podSpecs(t, objs)["Deployment/mailfwd-ingress"]
	found := false
	for _, v := range ps.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "smtp-tls" {
			found = true
		}
	}
	if !found {
		t.Error("TLS Secret smtp-tls not mounted in the ingress")
	}
	if _, err := template(t, helm, "--set", "tls.enabled=true"); err == nil || !strings.Contains(err.Error(), "tls.secretName") {
		t.Errorf("tls.enabled without a secret: err = %v, want a message naming tls.secretName", err)
	}
}

func TestInlineCredentialsStayInSecrets(t *testing.T) {
	helm := helmBin(t)
	const id, key = "AKIDLEAKCHECK0001", "leak-check-secret-key-0001"
	out, err := template(t, helm, "--set", "s3.existingSecret=,s3.accessKeyId="+id+",s3.secretAccessKey="+key)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, id) || strings.Contains(out, key) {
		t.Error("plain-text S3 credentials in the rendered manifests")
	}
	objs := parseManifests(t, out)
	var s corev1.Secret
	mustFind(t, objs, "Secret", "mailfwd-s3").into(t, &s)
	if string(s.Data["AWS_ACCESS_KEY_ID"]) != id || string(s.Data["AWS_SECRET_ACCESS_KEY"]) != key {
		t.Errorf("Secret mailfwd-s3 data = %q", s.Data)
	}
	b64 := base64.StdEncoding.EncodeToString([]byte(key))
	for _, o := range objs {
		if o.Kind != "Secret" && strings.Contains(string(o.JSON), b64) {
			t.Errorf("%s/%s holds the encoded secret key", o.Kind, o.Name)
		}
	}
	// The pre-install hook Job cannot use the release's Secret (not created
	// yet): it reads a hook Secret created just before it.
	hook := mustFind(t, objs, "Secret", "mailfwd-bootstrap")
	anns := hook.Raw["metadata"].(map[string]any)["annotations"].(map[string]any)
	if anns["helm.sh/hook"] != "pre-install,pre-upgrade" || anns["helm.sh/hook-weight"] != "-10" {
		t.Errorf("bootstrap Secret annotations = %v, want a pre-install hook before the Job", anns)
	}
	job := podSpecs(t, objs)["Job/mailfwd-bootstrap"]
	for _, e := range job.Containers[0].Env {
		if !strings.HasPrefix(e.Name, "AWS_") {
			continue // the NATS login comes from the existing Secret nats-users
		}
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "mailfwd-bootstrap" {
			t.Errorf("bootstrap Job env %s does not come from Secret mailfwd-bootstrap", e.Name)
		}
	}
	if _, err := template(t, helm, "--set", "s3.existingSecret=,s3.accessKeyId="+id); err == nil || !strings.Contains(err.Error(), "s3.existingSecret") {
		t.Errorf("half the credentials: err = %v, want a message naming s3.existingSecret", err)
	}
}

func TestSchemaRejectsTypos(t *testing.T) {
	helm := helmBin(t)
	for _, tt := range []struct {
		set, want string
	}{
		{"ingress.replicaCuont=3", "replicaCuont"},
		{"kedda.enabled=true", "kedda"},
		{"policy.data.acess=Connect:10.0.0.0/8 RELAY", "acess"},
		{"worker.autoscaling.maxReplica=3", "maxReplica"},
		{"ingress.service.type=LoadBalancr", "LoadBalancr"},
		{"ingress.service.externalTrafficPolicy=local", "local"},
		{"ingress.containerPort=25", "containerPort"},
		{"log.level=verbose", "verbose"},
		{"queue.ackWait=2 minutes", "ackWait"},
		{"worker.extraArgs[0]=concurrency=3", "extraArgs"},
	} {
		t.Run(tt.set, func(t *testing.T) {
			_, err := template(t, helm, "--set", tt.set)
			if err == nil {
				t.Fatalf("helm template --set %s succeeded; the schema should refuse it", tt.set)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not name the schema and %q:\n%v", tt.want, err)
			}
		})
	}
}

// The chart refuses to install without a real host name for the banner and
// EHLO (issue 21: the pod name, not an FQDN, greeted internet MX hosts), and
// hands the one value to both.
func TestChartRequiresHostname(t *testing.T) {
	helm := helmBin(t)
	if _, err := templateWithout(t, helm, "--set", "image.registry="+testRegistry); err == nil || !strings.Contains(err.Error(), "hostname is required") {
		t.Errorf("no hostname: err = %v, want \"hostname is required\"", err)
	}
	// No public registry: image.registry is required too (issue 21: ghcr.io images that do not exist).
	if _, err := templateWithout(t, helm, "--set", "hostname=mail.example.com"); err == nil || !strings.Contains(err.Error(), "image.registry is required") {
		t.Errorf("no image.registry: err = %v, want \"image.registry is required\"", err)
	}
	for _, bad := range []string{"mailfwd-ingress-7d9f", "localhost", "-x.example.com", "mail..example.com"} {
		if _, err := templateWithout(t, helm, "--set", "image.registry="+testRegistry, "--set", "hostname="+bad); err == nil || !strings.Contains(err.Error(), "hostname") {
			t.Errorf("hostname=%s: err = %v, want a refusal naming hostname", bad, err)
		}
	}
	if _, err := templateWithout(t, helm, "--set", "image.registry="+testRegistry, "--set", "hostname=mail.example.com,worker.heloName=pod-1"); err == nil {
		t.Errorf("worker.heloName=pod-1 (not an FQDN) accepted")
	}
	out, err := templateWithout(t, helm, "--set", "image.registry="+testRegistry, "--set", "hostname=mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	pods := podSpecs(t, parseManifests(t, out))
	if v, _ := flagValue(pods["Deployment/mailfwd-ingress"].Containers[0].Args, "hostname"); v != "mail.example.com" {
		t.Errorf("ingress --hostname=%q, want mail.example.com", v)
	}
	if v, _ := flagValue(pods["Deployment/mailfwd-worker"].Containers[0].Args, "helo-name"); v != "mail.example.com" {
		t.Errorf("worker --helo-name=%q, want mail.example.com", v)
	}
	// The per-component values still win.
	out, err = templateWithout(t, helm, "--set", "image.registry="+testRegistry, "--set", "hostname=mail.example.com,ingress.hostname=in.example.com,worker.heloName=out.example.com")
	if err != nil {
		t.Fatal(err)
	}
	pods = podSpecs(t, parseManifests(t, out))
	if v, _ := flagValue(pods["Deployment/mailfwd-ingress"].Containers[0].Args, "hostname"); v != "in.example.com" {
		t.Errorf("ingress --hostname=%q, want in.example.com", v)
	}
	if v, _ := flagValue(pods["Deployment/mailfwd-worker"].Containers[0].Args, "helo-name"); v != "out.example.com" {
		t.Errorf("worker --helo-name=%q, want out.example.com", v)
	}
}

// ingress.proxyProtocol.from becomes --proxy-protocol-from on the ingress.
func TestProxyProtocolValue(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm, "--set", "ingress.proxyProtocol.from={10.0.0.0/8,192.0.2.10}")
	if err != nil {
		t.Fatal(err)
	}
	in := podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-ingress"].Containers[0]
	if v, _ := flagValue(in.Args, "proxy-protocol-from"); v != "10.0.0.0/8,192.0.2.10" {
		t.Errorf("--proxy-protocol-from=%q", v)
	}
	if _, err := template(t, helm, "--set", "ingress.proxyProtocol.from={lb.example.com}"); err == nil {
		t.Errorf("a host name in ingress.proxyProtocol.from was accepted")
	}
}

// worker.queueReturn and warnAfter take days, as the worker's flags do
// (issue 21: durations in days where sendmail users write them).
func TestQueueLifetimeInDays(t *testing.T) {
	helm := helmBin(t)
	out, err := template(t, helm, "--set", "worker.queueReturn=1w,worker.warnAfter=1d4h")
	if err != nil {
		t.Fatal(err)
	}
	w := podSpecs(t, parseManifests(t, out))["Deployment/mailfwd-worker"].Containers[0]
	if v, _ := flagValue(w.Args, "queue-return"); v != "1w" {
		t.Errorf("--queue-return=%q", v)
	}
	if v, _ := flagValue(w.Args, "warn-after"); v != "1d4h" {
		t.Errorf("--warn-after=%q", v)
	}
	for _, bad := range []string{"5 days", "d", ""} {
		if _, err := template(t, helm, "--set", "worker.queueReturn="+bad); err == nil {
			t.Errorf("worker.queueReturn=%q accepted", bad)
		}
	}
}
