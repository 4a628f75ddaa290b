//go:build cluster

// Package cluster is `make test-cluster`: scripts/cluster-test.sh brings up a
// one-node Kubernetes cluster inside a network namespace and runs this test
// binary inside it. The test installs the quickstart and the chart as
// deploy/README.md tells a user (only the images are overridden), sends mail
// through the ingress Service, lets KEDA scale the workers on a burst, deletes
// pods under load, operates the queue and the policy with mailfwdctl, and
// reads a trace back from Jaeger. The mailfwd images are those of a release
// built by `make release` (scripts/release.sh), imported with ctr, and the
// chart is the release's. The checks include a fleet-wide concurrency limit
// held while KEDA scales, a suspended destination that does not scale the
// workers, a certificate reloaded from an updated Secret, and the PROXY
// protocol behind a proxy pod.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

const (
	ns          = "mail"
	sinkDomain  = "sink.test"
	natsVersion = "v2.15.2"
	minioVer    = "v0.0.0-20260212201848-7aac2a2c5b7c"
	kedaVersion = "v2.21.0"
	// burstSize messages are sent as fast as the ingress takes them; the sink
	// answers each DATA after sinkDelay, so the ready backlog outgrows one worker
	// for long enough that KEDA's first polls and the HPA's 15 s doubling reach
	// 3 pods with backlog left (with 2000, one run reached 3 only as it drained).
	burstSize   = 3000
	burstConns  = 8
	sinkDelay   = "400ms"
	stepTimeout = 5 * time.Minute
)

var (
	repo     = os.Getenv("MAILFWD_CLUSTER_REPO")
	work     = os.Getenv("MAILFWD_CLUSTER_WORK")
	pvDir    = os.Getenv("MAILFWD_CLUSTER_PV_DIR")
	cacheDir = os.Getenv("MAILFWD_CLUSTER_CACHE")
	kubectlB = os.Getenv("MAILFWD_KUBECTL")
	helmB    = os.Getenv("MAILFWD_HELM_BIN")
	ctlB     = os.Getenv("MAILFWD_CTL_BIN")
)

func TestCluster(t *testing.T) {
	for k, v := range map[string]string{"MAILFWD_CLUSTER_REPO": repo, "MAILFWD_CLUSTER_WORK": work, "MAILFWD_KUBECTL": kubectlB, "MAILFWD_HELM_BIN": helmB, "MAILFWD_CTL_BIN": ctlB,
		"MAILFWD_CLUSTER_RELEASE": releaseDir, "MAILFWD_CLUSTER_VERSION": version, "MAILFWD_CLUSTER_CONTAINERD": containerd,
		"MAILFWD_CLUSTER_NODE_IP": nodeIP, "MAILFWD_CLUSTER_POD_CIDR": podCIDR} {
		if v == "" {
			t.Fatalf("%s is not set: run make test-cluster (scripts/cluster-test.sh)", k)
		}
	}
	start := time.Now()
	c := &cluster{t: t}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.kubectlErr("get", "pods", "-A", "-o", "wide")
			t.Logf("pods:\n%s", out)
			out, _ = c.kubectlErr("get", "events", "-A", "--sort-by=.lastTimestamp")
			t.Logf("events (tail):\n%s", tail(out, 40))
			for _, d := range []string{"deploy/mailfwd-ingress", "deploy/mailfwd-worker"} {
				out, _ = c.kubectlErr("logs", "-n", ns, d, "--tail=30")
				t.Logf("%s logs:\n%s", d, out)
			}
		}
	})

	c.step("cluster add-ons: PVs, CoreDNS, Jaeger, the sinks, the PROXY-protocol proxy", c.addons)
	c.step("release archives: named and tagged as docs/releases.md says, imported with ctr", c.releaseArchives)
	c.step("quickstart: NATS ×3 (JetStream, users) and MinIO", c.quickstart)
	c.step("KEDA from its config/default", c.keda)
	c.step("chart from the release's .tgz with KEDA, tracing and STARTTLS from a Secret", c.chart)
	c.step("release images: the pods run the imported archives", c.releaseImagesRun)
	c.step("policy: relay for the cluster, mailertable to the sinks, shaping limit and reply rule", c.policy)
	c.step("mail through the Service, byte for byte", c.mailThroughService)
	c.step("burst: KEDA scales the workers; pods deleted under load; the fleet-wide limit holds", c.burst)
	c.step("operations: policy REJECT, queue hold/release/flush", c.operations)
	c.step("traces: one message's trace from Jaeger", c.traces)
	c.step("observability: a delivery's events, every pod's metrics by the ServiceMonitor's selectors", c.observability)
	c.step("certificate reload: the updated Secret's certificate served by STARTTLS, no restart", c.certReload)
	c.step("scale-down: workers back to the minimum after the window", c.scaleDown)
	c.step("suspension: a burst to a suspended domain does not scale the workers", c.suspendedBurst)
	c.step("PROXY protocol: the real client through a proxy pod; an untrusted header refused", c.proxyProtocol)
	t.Logf("cluster test steps took %s", time.Since(start).Round(time.Second))
}

type cluster struct {
	t        *testing.T
	ingress  string // ingress Service ClusterIP:25
	sinkHTTP string
	natsURL  string
	ctlPass  string
	jaeger   string
	burstEnd time.Time // when the burst backlog was drained
	ledger   sync.Map  // Message-ID → body sent, for every message that got a 250
	qids     sync.Map  // Message-ID → queue id

	// limitedHTTP is sink-limited's HTTP base (limitedDomain's destination).
	limitedHTTP string
	limitedIP   string // its pod's address (port 2525)
	tlsCert     []byte // the DER certificate in the tlsSecret now
	// images maps each release image reference to the digests it may run
	// under (the archive's config digest, the manifest digest ctr lists).
	images map[string][]string
}

func (c *cluster) step(name string, fn func()) {
	c.t.Helper()
	t0 := time.Now()
	c.t.Logf("== %s", name)
	fn()
	c.t.Logf("== %s: done in %s", name, time.Since(t0).Round(time.Second))
	// MAILFWD_CLUSTER_UNTIL=<first word of a step> stops after it (for debugging the setup).
	if u := os.Getenv("MAILFWD_CLUSTER_UNTIL"); u != "" && strings.HasPrefix(name, u) {
		c.t.Skipf("MAILFWD_CLUSTER_UNTIL=%s", u)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func run(timeout time.Duration, stdin []byte, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out.String(), 30))
	}
	return out.String(), nil
}

func (c *cluster) kubectlErr(args ...string) (string, error) {
	return run(stepTimeout, nil, kubectlB, args...)
}

func (c *cluster) kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.kubectlErr(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *cluster) apply(yaml string) {
	c.t.Helper()
	if out, err := run(stepTimeout, []byte(yaml), kubectlB, "apply", "-f", "-"); err != nil {
		c.t.Fatalf("%v\n%s", err, out)
	}
}

func (c *cluster) helm(args ...string) string {
	c.t.Helper()
	out, err := run(10*time.Minute, nil, helmB, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// ctl runs mailfwdctl as the quickstart's admin user against the in-cluster NATS.
func (c *cluster) ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ctlB, args...)
	cmd.Env = append(os.Environ(), "MAILFWD_NATS_URL="+c.natsURL, "MAILFWD_NATS_USER=mailfwdctl", "MAILFWD_NATS_PASSWORD="+c.ctlPass)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("mailfwdctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(time.Second)
	}
}

func (c *cluster) clusterIP(namespace, svc string) string {
	c.t.Helper()
	return strings.TrimSpace(c.kubectl("get", "svc", "-n", namespace, svc, "-o", "jsonpath={.spec.clusterIP}"))
}

func (c *cluster) addons() {
	var pvs strings.Builder
	for i := range 6 {
		dir := filepath.Join(pvDir, fmt.Sprintf("pv%d", i))
		if err := os.MkdirAll(dir, 0o777); err != nil {
			c.t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			c.t.Fatal(err)
		}
		fmt.Fprintf(&pvs, `apiVersion: v1
kind: PersistentVolume
metadata: {name: pv%d}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: %q, type: Directory}
---
`, i, dir)
	}
	c.apply(pvs.String())
	for _, f := range []string{"coredns.yaml", "jaeger.yaml", "sink.yaml", "proxy.yaml"} {
		b, err := os.ReadFile(filepath.Join(repo, "tests/cluster/manifests", f))
		if err != nil {
			c.t.Fatal(err)
		}
		c.apply(strings.ReplaceAll(string(b), "DELAY", sinkDelay))
	}
	c.kubectl("-n", "kube-system", "rollout", "status", "deploy/coredns", "--timeout=5m")
	c.kubectl("-n", "observability", "rollout", "status", "deploy/jaeger", "--timeout=5m")
	c.kubectl("-n", "mailfwd-test", "rollout", "status", "deploy/sink", "--timeout=5m")
	c.kubectl("-n", "mailfwd-test", "rollout", "status", "deploy/sink-limited", "--timeout=5m")
	c.kubectl("-n", "mailfwd-test", "rollout", "status", "deploy/smtp-proxy", "--timeout=5m")
	c.sinkHTTP = "http://" + c.clusterIP("mailfwd-test", "sink") + ":8080"
	c.limitedHTTP = "http://" + c.clusterIP("mailfwd-test", "sink-limited") + ":8080"
	c.limitedIP = strings.TrimSpace(c.kubectl("-n", "mailfwd-test", "get", "pods", "-l", "app=sink-limited", "-o", "jsonpath={.items[0].status.podIP}"))
	c.jaeger = "http://" + c.clusterIP("observability", "jaeger") + ":16686"
}

// quickstart applies deploy/quickstart/ unchanged but for the two image
// references (a kustomize images override, as a user with a mirror would).
func (c *cluster) quickstart() {
	dir := filepath.Join(work, "quickstart")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(repo, "deploy/quickstart/*.yaml"))
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			c.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			c.t.Fatal(err)
		}
		names = append(names, filepath.Base(f))
	}
	k := "resources: [" + strings.Join(names, ", ") + "]\nimages:\n" +
		"  - {name: nats, newName: mailfwd.local/nats, newTag: " + natsVersion + "}\n" +
		"  - {name: quay.io/minio/minio, newName: mailfwd.local/minio, newTag: " + minioVer + "}\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.kubectl("apply", "-k", dir)
	c.kubectl("-n", ns, "rollout", "status", "statefulset/nats", "--timeout=5m")
	c.kubectl("-n", ns, "rollout", "status", "deployment/minio", "--timeout=5m")
	mon := "http://" + c.clusterIP(ns, "nats") + ":8222"
	waitUntil(c.t, "a JetStream meta leader", 3*time.Minute, func() bool {
		b, err := httpGet(mon + "/jsz")
		return err == nil && strings.Contains(string(b), `"leader"`)
	})
	c.natsURL = "nats://" + c.clusterIP(ns, "nats") + ":4222"
	pw := c.kubectl("-n", ns, "get", "secret", "nats-users", "-o", "jsonpath={.data.ctl-password}")
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(pw))
	if err != nil {
		c.t.Fatal(err)
	}
	c.ctlPass = string(b)
}

func httpGet(u string) ([]byte, error) {
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return b, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return b, nil
}

// keda installs KEDA v2.21.0 from its own config/default kustomization, with
// the locally built images and without the admission webhooks.
func (c *cluster) keda() {
	dir := filepath.Join(work, "keda")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	src := filepath.Join(cacheDir, "keda-config-"+kedaVersion)
	if out, err := run(time.Minute, nil, "cp", "-r", src, filepath.Join(dir, "config")); err != nil {
		c.t.Fatal(err, out)
	}
	// The admission webhooks are left out (config/default lists ../webhooks).
	kpath := filepath.Join(dir, "config/default/kustomization.yaml")
	kb, err := os.ReadFile(kpath)
	if err != nil {
		c.t.Fatal(err)
	}
	if !bytes.Contains(kb, []byte("- ../webhooks\n")) {
		c.t.Fatalf("KEDA's config/default no longer lists ../webhooks:\n%s", kb)
	}
	if err := os.WriteFile(kpath, bytes.Replace(kb, []byte("- ../webhooks\n"), nil, 1), 0o644); err != nil {
		c.t.Fatal(err)
	}
	// Images built by cluster-tools.sh install the binaries in /usr/local/bin;
	// KEDA's manifests say imagePullPolicy Always, and nothing may be pulled.
	k := `resources: [config/default]
images:
  - {name: ghcr.io/kedacore/keda, newName: mailfwd.local/keda, newTag: ` + kedaVersion + `}
  - {name: ghcr.io/kedacore/keda-metrics-apiserver, newName: mailfwd.local/keda-metrics-apiserver, newTag: ` + kedaVersion + `}
patches:
  - target: {kind: Deployment, name: keda-operator}
    patch: |
      - {op: replace, path: /spec/template/spec/containers/0/command, value: [/usr/local/bin/keda]}
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --enable-webhook-patching=false}
  - target: {kind: Deployment, name: keda-metrics-apiserver}
    patch: |
      - {op: replace, path: /spec/template/spec/containers/0/command, value: [/usr/local/bin/keda-adapter]}
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent}
`
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		c.t.Fatal(err)
	}
	out, err := run(time.Minute, nil, kubectlB, "kustomize", dir)
	if err != nil {
		c.t.Fatal(err)
	}
	if strings.Contains(out, "ghcr.io") {
		c.t.Fatalf("KEDA manifests still reference ghcr.io images")
	}
	if o, err := run(stepTimeout, []byte(out), kubectlB, "apply", "--server-side", "-f", "-"); err != nil {
		c.t.Fatalf("%v\n%s", err, o)
	}
	c.kubectl("-n", "keda", "rollout", "status", "deploy/keda-operator", "--timeout=5m")
	c.kubectl("-n", "keda", "rollout", "status", "deploy/keda-metrics-apiserver", "--timeout=5m")
	waitUntil(c.t, "the external metrics API", 3*time.Minute, func() bool {
		_, err := c.kubectlErr("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1")
		return err == nil
	})
}

// chart installs mailfwd as deploy/README.md says, with KEDA (examples/keda.yaml)
// and Jaeger as the OTLP endpoint; only the image registry is overridden.
func (c *cluster) chart() {
	// STARTTLS with a certificate from a Secret, as cert-manager would write it.
	c.putTLSSecret("create")
	// docs/releases.md: helm install the release's .tgz with image.registry
	// where its archives are (here: imported under their own names); the
	// image tag is the chart's appVersion.
	c.helm("install", "mailfwd", c.releaseChart(), "-n", ns,
		"-f", filepath.Join(repo, "charts/mailfwd/examples/keda.yaml"),
		"--set", "hostname=mail.example.test",
		"--set", "image.registry="+releaseRegistry,
		"--set", "tracing.otlpEndpoint=http://jaeger.observability.svc:4318",
		"--set", "tls.enabled=true", "--set", "tls.secretName="+tlsSecret,
		"--timeout", "10m")
	c.kubectl("-n", ns, "rollout", "status", "deploy/mailfwd-ingress", "--timeout=5m")
	c.kubectl("-n", ns, "rollout", "status", "deploy/mailfwd-worker", "--timeout=5m")
	c.ingress = net.JoinHostPort(c.clusterIP(ns, "mailfwd-ingress"), "25")
	waitUntil(c.t, "the ScaledObject to be ready", 3*time.Minute, func() bool {
		out, err := c.kubectlErr("-n", ns, "get", "scaledobject", "mailfwd-worker", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
		return err == nil && strings.TrimSpace(out) == "True"
	})
}

func (c *cluster) policy() {
	kc := []string{"-n", ns}
	for _, a := range [][]string{
		// docs/shaping.md: a fleet-wide limit and a reply rule. First: a pod
		// that has the last mailertable entry (waited for below) has these.
		{"policy", "add", "shaping", fmt.Sprintf("%s concurrency=%d", limitedDomain, limitedConc)},
		{"policy", "add", "shaping", `reply: ^421 4\.7\.0 .*try again later suspend=10m`},
		{"policy", "add", "access", "Connect:10 RELAY"},
		{"policy", "add", "mailertable", suspendedDomain + " smtp:[sink.mailfwd-test.svc.cluster.local]"},
		// The sink pod's own address, not its Service's: the sink then sees
		// each worker pod's address (kube-proxy masquerades Service traffic).
		{"policy", "add", "mailertable", limitedDomain + " smtp:[" + c.limitedIP + "]:2525"},
		{"policy", "add", "mailertable", sinkDomain + " smtp:[sink.mailfwd-test.svc.cluster.local]"},
	} {
		if out, err := c.ctl(append(a, kc...)...); err != nil {
			c.t.Fatalf("%v\n%s", err, out)
		}
	}
	// The pods see the ConfigMap change within the kubelet's sync period:
	// every ingress pod (asked directly: through the Service a probe reaches
	// one at random) and every worker pod (its log line of the new policy).
	waitUntil(c.t, "the relay rule in every ingress pod", 3*time.Minute, func() bool {
		pods := c.ingressPods()
		for _, p := range pods {
			if rcptCodeAt(net.JoinHostPort(p.ip, "2525"), "probe@"+sinkDomain) != 250 {
				return false
			}
		}
		return len(pods) > 0
	})
	waitUntil(c.t, "the mailertable in every worker pod", 3*time.Minute, func() bool {
		pods := strings.Fields(c.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=worker",
			"--field-selector", "status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}"))
		for _, p := range pods {
			logs, err := c.kubectlErr("-n", ns, "logs", p)
			if err != nil || !strings.Contains(logs, `"mailertable":3`) {
				return false
			}
		}
		return len(pods) > 0
	})
	if out, err := c.ctl("policy", "get", "shaping", "-n", ns); err != nil || !strings.Contains(out, limitedDomain) {
		c.t.Fatalf("policy get shaping: %v\n%s", err, out)
	}
}

// rcptCode opens a session and reports the reply code to RCPT TO rcpt.
func (c *cluster) rcptCode(rcpt string) int { return rcptCodeAt(c.ingress, rcpt) }

// rcptCodeAt is rcptCode against addr.
func rcptCodeAt(addr, rcpt string) int {
	cl, err := smtp.Dial(addr)
	if err != nil {
		return 0
	}
	defer cl.Close()
	if err := cl.Hello("probe.test"); err != nil {
		return 0
	}
	if err := cl.Mail("probe@client.test", nil); err != nil {
		return 0
	}
	err = cl.Rcpt(rcpt, nil)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return 250
	case errors.As(err, &se):
		return se.Code
	}
	return 0
}

var qidRE = regexp.MustCompile(`([A-Za-z0-9]+)\s*$`)

// send submits messages on one connection; it records every 250 in the ledger.
func (c *cluster) send(from string, msgs []message) (accepted int, err error) {
	return c.sendVia("", c.ingress, from, msgs)
}

// sendVia is send from local address laddr (empty: the kernel's choice) to addr.
func (c *cluster) sendVia(laddr, addr, from string, msgs []message) (accepted int, err error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Minute))
	cl := smtp.NewClient(conn)
	defer cl.Close()
	if err := cl.Hello("client.test"); err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if err := cl.Mail(from, nil); err != nil {
			return accepted, err
		}
		if err := cl.Rcpt(m.rcpt, nil); err != nil {
			return accepted, err
		}
		w, err := cl.Data()
		if err != nil {
			return accepted, err
		}
		if _, err := w.Write(m.body); err != nil {
			return accepted, err
		}
		resp, err := w.CloseWithResponse()
		if err != nil {
			return accepted, err
		}
		c.ledger.Store(m.id, m.body)
		if q := qidRE.FindStringSubmatch(resp.StatusText); q != nil {
			c.qids.Store(m.id, q[1])
		}
		accepted++
	}
	_ = cl.Quit()
	return accepted, nil
}

type message struct {
	id, rcpt string
	body     []byte
}

func newMessage(tag string, i int, size int) message {
	return newMessageTo(tag, i, size, sinkDomain)
}

// newMessageTo is newMessage to a recipient in domain.
func newMessageTo(tag string, i int, size int, domain string) message {
	id := fmt.Sprintf("<%s-%d-%s@client.test>", tag, i, rand.Text()[:8])
	pad := make([]byte, size)
	_, _ = rand.Read(pad)
	body := fmt.Sprintf("From: <a@client.test>\r\nTo: <%s-%d@%s>\r\nSubject: %s %d\r\nMessage-ID: %s\r\n\r\n%s\r\n",
		tag, i, domain, tag, i, id, base64.StdEncoding.EncodeToString(pad))
	// Wrap the base64 at 76 columns (RFC 5322 line length).
	var b strings.Builder
	for _, line := range strings.Split(body, "\r\n") {
		for len(line) > 76 {
			b.WriteString(line[:76] + "\r\n")
			line = line[76:]
		}
		b.WriteString(line + "\r\n")
	}
	return message{id: id, rcpt: fmt.Sprintf("%s-%d@%s", tag, i, domain), body: []byte(strings.TrimSuffix(b.String(), "\r\n"))}
}

type received struct {
	Recipients []string
	Data       []byte
}

// sinkMessages is what both sinks received.
func (c *cluster) sinkMessages() []received {
	c.t.Helper()
	var out []received
	for _, s := range []string{c.sinkHTTP, c.limitedHTTP} {
		b, err := httpGet(s + "/messages")
		if err != nil {
			c.t.Fatal(err)
		}
		var got []received
		if err := json.Unmarshal(b, &got); err != nil {
			c.t.Fatal(err)
		}
		out = append(out, got...)
	}
	return out
}

// sinkCount is the number of messages both sinks received (-1: unknown).
func (c *cluster) sinkCount() int {
	n := 0
	for _, s := range []string{c.sinkHTTP, c.limitedHTTP} {
		v := sinkNumber(s + "/count")
		if v < 0 {
			return -1
		}
		n += v
	}
	return n
}

// sinkNumber reads one of sinkd's counters (/count, /peak); -1: unknown.
func sinkNumber(u string) int {
	b, err := httpGet(u)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

var msgIDRE = regexp.MustCompile(`(?im)^Message-ID: (<[^>]+>)`)

// check compares the sink with the ledger: every accepted message delivered
// with its exact bytes (after mailfwd's Received: header); it returns the
// number of duplicate deliveries.
func (c *cluster) check(tag string) (accepted, delivered, dups int) {
	c.t.Helper()
	seen := map[string]int{}
	for _, m := range c.sinkMessages() {
		id := msgIDRE.FindSubmatch(m.Data)
		if id == nil || !strings.Contains(string(id[1]), "<"+tag+"-") {
			continue
		}
		want, ok := c.ledger.Load(string(id[1]))
		if !ok {
			continue // sent but not acknowledged (a deleted ingress pod): may or may not arrive
		}
		if !bytes.HasSuffix(m.Data, want.([]byte)) {
			c.t.Errorf("%s delivered with different bytes", id[1])
		}
		seen[string(id[1])]++
	}
	c.ledger.Range(func(k, _ any) bool {
		if strings.Contains(k.(string), "<"+tag+"-") {
			accepted++
			if n := seen[k.(string)]; n > 0 {
				delivered++
				dups += n - 1
			}
		}
		return true
	})
	return
}

func (c *cluster) mailThroughService() {
	var msgs []message
	for i := range 20 {
		msgs = append(msgs, newMessage("basic", i, 200+i*997))
	}
	if n, err := c.send("a@client.test", msgs); err != nil || n != len(msgs) {
		c.t.Fatalf("sent %d of %d: %v", n, len(msgs), err)
	}
	waitUntil(c.t, "20 messages delivered", 3*time.Minute, func() bool {
		a, d, _ := c.check("basic")
		return a == 20 && d == 20
	})
	a, d, dups := c.check("basic")
	c.t.Logf("basic: %d accepted, %d delivered byte for byte, %d duplicates", a, d, dups)
}

func (c *cluster) workerReplicas() int {
	out, err := c.kubectlErr("-n", ns, "get", "deploy", "mailfwd-worker", "-o", "jsonpath={.status.readyReplicas}")
	if err != nil {
		return -1
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

// lag is num_pending + num_ack_pending of consumer workers (what KEDA reads),
// from whichever NATS server reports the consumer (its leader does).
func (c *cluster) lag() int {
	out, err := c.kubectlErr("-n", ns, "get", "pods", "-l", "app.kubernetes.io/name=nats", "-o", "jsonpath={.items[*].status.podIP}")
	if err != nil {
		return -1
	}
	best := -1
	for _, ip := range strings.Fields(out) {
		b, err := httpGet("http://" + ip + ":8222/jsz?consumers=true")
		if err != nil {
			continue
		}
		var jsz struct {
			AccountDetails []struct {
				StreamDetail []struct {
					Name           string
					ConsumerDetail []struct {
						Name          string
						NumPending    int `json:"num_pending"`
						NumAckPending int `json:"num_ack_pending"`
					} `json:"consumer_detail"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		if json.Unmarshal(b, &jsz) != nil {
			continue
		}
		for _, a := range jsz.AccountDetails {
			for _, s := range a.StreamDetail {
				for _, cd := range s.ConsumerDetail {
					if s.Name == "MAIL" && cd.Name == "workers" {
						best = max(best, cd.NumPending+cd.NumAckPending)
					}
				}
			}
		}
	}
	return best
}

func (c *cluster) burst() {
	t := c.t
	before := c.sinkCount()
	t0 := time.Now()
	var timeline strings.Builder
	fmt.Fprintf(&timeline, "| t (s) | ready lag | worker pods | delivered | %s delivered | its sink's peak deliveries / connections |\n|---|---|---|---|---|---|\n", limitedDomain)
	stopTL := make(chan struct{})
	tlDone := make(chan struct{})
	var maxReplicas atomic.Int64
	// Every 10th message goes to limitedDomain (concurrency=2 fleet-wide):
	// the most worker pods seen while some of it was still undelivered.
	var limitedAcc, limitedPods atomic.Int64
	go func() {
		defer close(tlDone)
		for {
			r := c.workerReplicas()
			if int64(r) > maxReplicas.Load() {
				maxReplicas.Store(int64(r))
			}
			acc := limitedAcc.Load()
			ld := sinkNumber(c.limitedHTTP + "/count")
			if ld >= 0 && int64(ld) < acc && int64(r) > limitedPods.Load() {
				limitedPods.Store(int64(r))
			}
			fmt.Fprintf(&timeline, "| %d | %d | %d | %d | %d | %d / %d |\n", int(time.Since(t0).Seconds()), c.lag(), r, c.sinkCount()-before,
				ld, sinkNumber(c.limitedHTTP+"/peak-deliveries"), sinkNumber(c.limitedHTTP+"/peak"))
			select {
			case <-stopTL:
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()

	// The burst, from burstConns connections; each reconnects after an error
	// (a deleted ingress pod) and goes on with the next message.
	var next atomic.Int64
	var wg sync.WaitGroup
	var sendErrs atomic.Int64
	for range burstConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var batch []message
				for range 25 {
					i := int(next.Add(1)) - 1
					if i >= burstSize {
						break
					}
					if i%10 == 9 {
						batch = append(batch, newMessageTo("burst", i, 1500, limitedDomain))
					} else {
						batch = append(batch, newMessage("burst", i, 1500))
					}
				}
				if len(batch) == 0 {
					return
				}
				n, err := c.send("b@client.test", batch)
				if err != nil {
					sendErrs.Add(1)
				}
				for _, m := range batch[:n] {
					if strings.HasSuffix(m.rcpt, "@"+limitedDomain) {
						limitedAcc.Add(1)
					}
				}
			}
		}()
	}
	// Faults while the backlog is there.
	faults := []string{}
	waitUntil(t, "the backlog to build", 3*time.Minute, func() bool { return c.lag() > 300 || next.Load() >= burstSize })
	for _, f := range []struct{ what, selector string }{
		{"ingress pod", "app.kubernetes.io/component=ingress"},
		{"worker pod", "app.kubernetes.io/component=worker"},
	} {
		pod := strings.TrimSpace(c.kubectl("-n", ns, "get", "pods", "-l", f.selector, "-o", "jsonpath={.items[0].metadata.name}"))
		c.kubectl("-n", ns, "delete", "pod", pod, "--wait=false")
		faults = append(faults, fmt.Sprintf("t=%ds deleted %s %s", int(time.Since(t0).Seconds()), f.what, pod))
		time.Sleep(5 * time.Second)
	}
	// The NATS pod goes after KEDA has scaled up: while a stream or consumer
	// leader is being re-elected KEDA cannot read the lag and holds the
	// workers at keda.fallbackReplicas (what the chart configures for an
	// unreadable metric), so deleting it earlier tests the fallback, not the
	// scaling. The backlog is still there then (it drains in tens of seconds).
	waitUntil(t, "KEDA to scale the workers to 3", 3*time.Minute, func() bool {
		return maxReplicas.Load() >= 3 || c.lag() == 0
	})
	c.kubectl("-n", ns, "delete", "pod", "nats-1", "--wait=false")
	faults = append(faults, fmt.Sprintf("t=%ds deleted NATS pod nats-1 (R3 stream), lag %d", int(time.Since(t0).Seconds()), c.lag()))
	wg.Wait()
	sent := time.Since(t0)
	waitUntil(t, "the burst delivered", 10*time.Minute, func() bool {
		a, d, _ := c.check("burst")
		return a > 0 && d == a
	})
	drained := time.Since(t0)
	c.burstEnd = time.Now()
	// The deleted NATS server is back before the next step (its KV watches).
	c.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/nats-1", "--timeout=3m")
	close(stopTL)
	<-tlDone
	a, d, dups := c.check("burst")
	t.Logf("burst: %d sent, %d got 250 (%d connections broke), all sent in %s, all delivered after %s, %d duplicates, peak %d worker pods",
		burstSize, a, sendErrs.Load(), sent.Round(time.Second), drained.Round(time.Second), dups, maxReplicas.Load())
	t.Logf("faults:\n  %s", strings.Join(faults, "\n  "))
	t.Logf("timeline:\n%s", timeline.String())
	if maxReplicas.Load() < 3 {
		t.Errorf("workers peaked at %d pods, want ≥ 3 (KEDA on the consumer lag)", maxReplicas.Load())
	}
	if d != a {
		t.Errorf("%d of %d acknowledged messages delivered", d, a)
	}
	// The fleet-wide limit: sink-limited only ever gets limitedDomain's mail.
	// Deliveries in progress (RCPT TO accepted, DATA not answered) and open
	// connections must both stay within it: a worker frees its slot only
	// once the sink has closed the connection after its 221.
	peak, conns, ld := sinkNumber(c.limitedHTTP+"/peak-deliveries"), sinkNumber(c.limitedHTTP+"/peak"), sinkNumber(c.limitedHTTP+"/count")
	t.Logf("shaping: %s concurrency=%d: its sink took %d messages (%d acknowledged) with at most %d deliveries in progress at once (%d connections open), while the workers ran up to %d pods",
		limitedDomain, limitedConc, ld, limitedAcc.Load(), peak, conns, limitedPods.Load())
	if peak > limitedConc || peak < 1 || conns > limitedConc {
		// Who held them: the sink's session log around each excess.
		logs, _ := c.kubectlErr("-n", "mailfwd-test", "logs", "deploy/sink-limited")
		lines := strings.Split(logs, "\n")
		var excess []string
		for i, l := range lines {
			if strings.Contains(l, "session open") && !strings.Contains(l, fmt.Sprintf("open=%d", limitedConc)) && !strings.Contains(l, "open=1") {
				excess = append(excess, lines[max(i-3, 0):min(i+3, len(lines))]...)
				excess = append(excess, "--")
			}
		}
		t.Logf("sink-limited's connections around each excess:\n%s", tail(strings.Join(excess, "\n"), 40))
	}
	if peak > limitedConc || peak < 1 || conns > limitedConc {
		t.Errorf("%s's sink had at most %d deliveries in progress and %d connections open at once; the fleet-wide limit is %d", limitedDomain, peak, conns, limitedConc)
	}
	if int64(ld) < limitedAcc.Load() {
		t.Errorf("%s's sink got %d of the %d acknowledged messages", limitedDomain, ld, limitedAcc.Load())
	}
	if limitedPods.Load() < 3 {
		t.Errorf("the workers ran at most %d pods while %s's mail was being delivered, want ≥ 3 (the limit must hold while KEDA scales)", limitedPods.Load(), limitedDomain)
	}
	if err := os.WriteFile(filepath.Join(work, "logs", "burst-timeline.md"), []byte(timeline.String()), 0o644); err != nil {
		t.Log(err)
	}
}

func (c *cluster) operations() {
	t := c.t
	// A recipient newly REJECTed gets 550 within the reload interval.
	if out, err := c.ctl("policy", "add", "access", "To:blocked@"+sinkDomain+" REJECT", "-n", ns); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	waitUntil(t, "550 for the newly rejected recipient", 3*time.Minute, func() bool { return c.rcptCode("blocked@"+sinkDomain) == 550 })

	// hold / release / flush against the in-cluster NATS.
	if out, err := c.ctl("queue", "hold", "--domain", sinkDomain); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Every worker pod applies the hold through its watch of MAIL_HOLDS; mail
	// sent before a pod has seen it would be delivered, as with sendmail's
	// queue moved aside while a runner is already working on it.
	waitUntil(t, "every worker pod to see the hold", 2*time.Minute, func() bool {
		pods := strings.Fields(c.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=worker",
			"--field-selector", "status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}"))
		for _, p := range pods {
			logs, err := c.kubectlErr("-n", ns, "logs", p, "--since=5m")
			if err != nil || !strings.Contains(logs, "domains on hold") {
				return false
			}
		}
		return len(pods) > 0
	})
	before := c.sinkCount()
	var msgs []message
	for i := range 5 {
		msgs = append(msgs, newMessage("ops", i, 300))
	}
	if n, err := c.send("o@client.test", msgs); err != nil || n != 5 {
		t.Fatalf("sent %d of 5: %v", n, err)
	}
	waitUntil(t, "5 held messages in the queue", 2*time.Minute, func() bool {
		out, err := c.ctl("queue", "list")
		return err == nil && strings.Count(strings.ToLower(out), "held") >= 5
	})
	if n := c.sinkCount() - before; n != 0 {
		t.Fatalf("%d messages delivered while the domain was held", n)
	}
	if out, err := c.ctl("queue", "release", "--domain", sinkDomain); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := c.ctl("queue", "flush", "--domain", sinkDomain); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	waitUntil(t, "released messages delivered", 3*time.Minute, func() bool {
		a, d, _ := c.check("ops")
		return a == 5 && d == 5
	})
}

func (c *cluster) traces() {
	t := c.t
	var id, qid string
	c.qids.Range(func(k, v any) bool {
		if strings.Contains(k.(string), "<basic-") {
			id, qid = k.(string), v.(string)
			return false
		}
		return true
	})
	if qid == "" {
		t.Fatal("no queue id recorded")
	}
	tags, _ := json.Marshal(map[string]string{"mailfwd.queue_id": qid})
	q := url.Values{"service": {"mailfwd-ingress"}, "tags": {string(tags)}, "limit": {"5"}}
	var tr struct {
		Data []struct {
			TraceID string
			Spans   []struct {
				OperationName string
				ProcessID     string
				Tags          []struct {
					Key   string
					Value any
				}
			}
			Processes map[string]struct{ ServiceName string }
		}
	}
	waitUntil(t, "the trace in Jaeger", 2*time.Minute, func() bool {
		b, err := httpGet(c.jaeger + "/api/traces?" + q.Encode())
		if err != nil || json.Unmarshal(b, &tr) != nil || len(tr.Data) == 0 {
			return false
		}
		svcs := map[string]bool{}
		for _, s := range tr.Data[0].Spans {
			svcs[tr.Data[0].Processes[s.ProcessID].ServiceName] = true
		}
		return svcs["mailfwd-ingress"] && svcs["mailfwd-worker"]
	})
	var lines []string
	var relay, status bool
	for _, s := range tr.Data[0].Spans {
		var kv []string
		for _, tg := range s.Tags {
			if strings.HasPrefix(tg.Key, "mailfwd.") || tg.Key == "otel.status_code" || tg.Key == "error" {
				kv = append(kv, fmt.Sprintf("%s=%v", tg.Key, tg.Value))
				relay = relay || tg.Key == "mailfwd.relay"
				status = status || (tg.Key == "mailfwd.dsn" && fmt.Sprint(tg.Value) == "2.0.0")
			}
		}
		lines = append(lines, fmt.Sprintf("%s %s %s", tr.Data[0].Processes[s.ProcessID].ServiceName, s.OperationName, strings.Join(kv, " ")))
	}
	t.Logf("trace %s of %s (queue id %s):\n  %s", tr.Data[0].TraceID, id, qid, strings.Join(lines, "\n  "))
	if !relay {
		t.Errorf("no span carries mailfwd.relay")
	}
	if !status {
		t.Errorf("no span carries the delivery status (mailfwd.dsn)")
	}
}

// observability checks what an operator watches: the events of one
// delivered message in the EVENTS stream (mailfwdctl events tail), and that
// the shipped ServiceMonitor's selector (rendered by helm with
// serviceMonitor.enabled) picks the metrics endpoint of every ingress and
// worker pod, each of which serves mailfwd metrics there.
func (c *cluster) observability() {
	t := c.t
	var qid string
	c.qids.Range(func(k, v any) bool {
		if strings.Contains(k.(string), "<basic-") {
			qid = v.(string)
			return false
		}
		return true
	})
	// The stream may be electing a leader still (the burst restarted a NATS
	// server): ask again for a while.
	var out string
	types := map[string]bool{}
	waitUntil(t, "the delivery's events", 2*time.Minute, func() bool {
		o, err := c.ctl("events", "tail", "--qid", qid, "--all", "--no-follow", "-o", "json")
		if err != nil {
			t.Logf("events tail: %v", err)
			return false
		}
		out = o
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var ev struct {
				Type    string `json:"type"`
				QueueID string `json:"queue_id"`
			}
			if json.Unmarshal([]byte(l), &ev) == nil && ev.QueueID == qid {
				types[ev.Type] = true
			}
		}
		return types["received"] && types["delivered"]
	})

	// The ServiceMonitor as the chart ships it, and its selector.
	rendered := c.helm("template", "mailfwd", filepath.Join(repo, "charts/mailfwd"), "-n", ns,
		"-f", filepath.Join(repo, "charts/mailfwd/examples/keda.yaml"), "--set", "image.registry=mailfwd.local",
		"--set", "hostname=mail.example.test", "--set", "serviceMonitor.enabled=true", "-s", "templates/servicemonitor.yaml")
	var labels []string
	port := ""
	inSel := false
	for _, l := range strings.Split(rendered, "\n") {
		tl := strings.TrimSpace(l)
		switch {
		case tl == "matchLabels:":
			inSel = true
		case inSel && strings.Contains(tl, ": ") && !strings.HasPrefix(tl, "-"):
			k, v, _ := strings.Cut(tl, ": ")
			labels = append(labels, k+"="+strings.Trim(v, `"`))
		case inSel:
			inSel = false
		}
		if strings.HasPrefix(tl, "- port: ") {
			port = strings.TrimPrefix(tl, "- port: ")
		}
	}
	if len(labels) == 0 || port == "" {
		t.Fatalf("no selector or port in the rendered ServiceMonitor:\n%s", rendered)
	}
	// The pod addresses behind the Services that selector picks, on its port.
	eps := c.kubectl("-n", ns, "get", "endpoints", "-l", strings.Join(labels, ","), "-o",
		`jsonpath={range .items[*].subsets[*]}{range .ports[?(@.name=="`+port+`")]}{"port="}{.port}{" "}{end}{range .addresses[*]}{.ip}{" "}{end}{"\n"}{end}`)
	scraped := map[string]string{} // pod IP → ip:port
	for _, l := range strings.Split(eps, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[0], "port=") {
			continue
		}
		for _, ip := range f[1:] {
			scraped[ip] = net.JoinHostPort(ip, strings.TrimPrefix(f[0], "port="))
		}
	}
	// Ready pods not being deleted (the workers may be scaling down now).
	var pods []string
	for _, l := range strings.Split(c.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component in (ingress,worker)",
		"-o", `jsonpath={range .items[*]}{.status.podIP}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.deletionTimestamp}{"\n"}{end}`), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[1] == "True" {
			pods = append(pods, f[0])
		}
	}
	if len(pods) < 2 {
		t.Fatalf("ingress and worker pods: %v", pods)
	}
	for _, ip := range pods {
		addr, ok := scraped[ip]
		if !ok {
			t.Errorf("pod %s is not behind the ServiceMonitor's selector %v port %s (endpoints: %v)", ip, labels, port, scraped)
			continue
		}
		b, err := httpGet("http://" + addr + "/metrics")
		if err != nil || !strings.Contains(string(b), "mailfwd_") {
			t.Errorf("GET http://%s/metrics: %v (%d bytes, no mailfwd_ metrics)", addr, err, len(b))
		}
	}
	t.Logf("events of %s: %v; ServiceMonitor selector %v port %s reaches %d pods", qid, types, labels, port, len(pods))
}

// scaleDown waits for KEDA's HPA to bring the workers back to the minimum
// (keda.behavior: a 5-minute window, then at most 2 pods a minute).
func (c *cluster) scaleDown() {
	var tl []string
	waitUntil(c.t, "workers back to 1 pod", 12*time.Minute, func() bool {
		r := c.workerReplicas()
		if n := len(tl); n == 0 || !strings.HasSuffix(tl[n-1], fmt.Sprintf(" %d pods", r)) {
			tl = append(tl, fmt.Sprintf("t=+%ds after drain: %d pods", int(time.Since(c.burstEnd).Seconds()), r))
		}
		time.Sleep(4 * time.Second)
		return r == 1
	})
	c.t.Logf("scale-down:\n  %s", strings.Join(tl, "\n  "))
}
