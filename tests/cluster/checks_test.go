//go:build cluster

package cluster

// The checks issues 18 and 21 asked of the cluster test: the release's image
// archives imported and run, the certificate reloaded from an updated Secret,
// a burst to a suspended destination that does not scale the workers, and
// the PROXY protocol behind a proxy pod. (The fleet-wide limit during the
// KEDA burst is part of the burst step.)

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	proxyproto "github.com/pires/go-proxyproto"
)

const (
	// limitedDomain has a fleet-wide concurrency limit (the shaping key) and
	// its own sink (sink-limited), whose /peak is checked against the limit.
	limitedDomain = "limited.test"
	limitedConc   = 2
	// suspendedDomain's recipients get "421 4.7.0 Try again later" from the
	// sink, which a reply rule turns into a fleet-wide suspension.
	suspendedDomain = "suspended.test"
	// releaseRegistry is the image references' prefix inside the release
	// archives (scripts/release.sh's REGISTRY default).
	releaseRegistry = "mailfwd.local"
	tlsSecret       = "mailfwd-tls"
)

var (
	// The release `make test-cluster` built (make release, this architecture).
	releaseDir = os.Getenv("MAILFWD_CLUSTER_RELEASE")
	version    = os.Getenv("MAILFWD_CLUSTER_VERSION")
	containerd = os.Getenv("MAILFWD_CLUSTER_CONTAINERD")
	// nodeIP is the node's own address: outside the pod network, a client
	// address distinct from every pod's.
	nodeIP  = os.Getenv("MAILFWD_CLUSTER_NODE_IP")
	podCIDR = os.Getenv("MAILFWD_CLUSTER_POD_CIDR")
)

func (c *cluster) ctr(args ...string) string {
	c.t.Helper()
	out, err := run(3*time.Minute, nil, "ctr", append([]string{"--address", containerd, "-n", "k8s.io"}, args...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *cluster) releaseChart() string {
	return filepath.Join(releaseDir, "mailfwd-chart-"+version+".tgz")
}

var (
	// docs/releases.md: `for img in mailfwd-ingress …; do` and the archive
	// each is pushed from, tagged with the release's version.
	docImagesRE  = regexp.MustCompile(`(?m)^for img in ([a-z0-9 -]+); do$`)
	docArchiveRE = regexp.MustCompile(`crane push dist/release/\$V/images/linux-amd64/\$img\.tar \$REG/\$img:\$V\n`)
)

// releaseArchives checks the release `make release` built for this
// architecture against what docs/releases.md tells a user (the image
// archives' names and paths, their tags, the chart's appVersion, the
// checksums) and imports the archives into the node's containerd with ctr,
// as the docs say for a cluster without a registry.
func (c *cluster) releaseArchives() {
	t := c.t
	doc, err := os.ReadFile(filepath.Join(repo, "docs/releases.md"))
	if err != nil {
		t.Fatal(err)
	}
	lists := docImagesRE.FindAllSubmatch(doc, -1)
	if len(lists) == 0 || !docArchiveRE.Match(doc) {
		t.Fatalf("docs/releases.md no longer says which archives to push (want `for img in …; do` and %q)", docArchiveRE)
	}
	names := strings.Fields(string(lists[0][1]))
	for _, l := range lists[1:] {
		if !slices.Equal(strings.Fields(string(l[1])), names) {
			t.Errorf("docs/releases.md names two different image lists: %v and %v", names, strings.Fields(string(l[1])))
		}
	}
	dir := filepath.Join(releaseDir, "images", "linux-"+runtime.GOARCH)
	files, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
	var got []string
	for _, f := range files {
		got = append(got, strings.TrimSuffix(filepath.Base(f), ".tar"))
	}
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(names))) {
		t.Fatalf("%s holds %v; docs/releases.md tells users to push %v", dir, got, names)
	}
	cmd := exec.Command("sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS")
	cmd.Dir = releaseDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum --check SHA256SUMS in %s: %v\n%s", releaseDir, err, out)
	}
	sums, err := os.ReadFile(filepath.Join(releaseDir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	chart := c.helm("show", "chart", c.releaseChart())
	if !regexp.MustCompile(`(?m)^appVersion: "?` + regexp.QuoteMeta(version) + `"?$`).MatchString(chart) {
		t.Errorf("the release chart's appVersion is not %s (image.tag follows it):\n%s", version, chart)
	}

	c.images = map[string][]string{}
	for _, n := range names {
		path := filepath.Join(dir, n+".tar")
		if !bytes.Contains(sums, []byte("  images/linux-"+runtime.GOARCH+"/"+n+".tar\n")) {
			t.Errorf("SHA256SUMS does not list %s", path)
		}
		ref := releaseRegistry + "/" + n + ":" + version
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{ref}) {
			t.Errorf("%s is tagged %v, want [%s] (the release version)", path, m, ref)
		}
		img, err := tarball.ImageFromPath(path, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if v := cf.Config.Labels["org.opencontainers.image.version"]; v != version || cf.Architecture != runtime.GOARCH {
			t.Errorf("%s: org.opencontainers.image.version %q, architecture %q; want %s, %s", path, v, cf.Architecture, version, runtime.GOARCH)
		}
		cfg, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		c.ctr("images", "import", "--no-unpack=false", path)
		c.images[ref] = []string{cfg.String()}
	}
	// The digests containerd gives them (a pod's imageID names one).
	for _, l := range strings.Split(c.ctr("images", "ls"), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && c.images[f[0]] != nil {
			c.images[f[0]] = append(c.images[f[0]], f[2])
		}
	}
	var refs []string
	for ref, d := range c.images {
		if len(d) < 2 {
			t.Errorf("%s is not in containerd after ctr images import", ref)
		}
		refs = append(refs, ref)
	}
	slices.Sort(refs)
	t.Logf("release %s: %d archives as docs/releases.md names them, checksums good, imported: %s", version, len(refs), strings.Join(refs, " "))
}

// releaseImagesRun checks that the chart's ingress and worker pods run the
// imported release images (reference and digest), and runs the sendmail
// image, which the chart does not use, as a pod (mailfwdctl's ran as the
// chart's bootstrap hook Job, which helm install waited for).
func (c *cluster) releaseImagesRun() {
	t := c.t
	out := c.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component in (ingress,worker)", "-o",
		`jsonpath={range .items[*]}{.metadata.name}{" "}{.status.containerStatuses[0].image}{" "}{.status.containerStatuses[0].imageID}{"\n"}{end}`)
	seen := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Errorf("pod without a running container: %q", l)
			continue
		}
		img := strings.TrimPrefix(f[1], "docker.io/")
		digests, ok := c.images[img]
		if !ok {
			t.Errorf("pod %s runs %s, not a release image %s/…:%s", f[0], f[1], releaseRegistry, version)
			continue
		}
		if !slices.ContainsFunc(digests, func(d string) bool { return strings.Contains(f[2], d) }) {
			t.Errorf("pod %s runs %s with image id %s, not the imported archive's (%v)", f[0], img, f[2], digests)
			continue
		}
		seen[img]++
	}
	for _, n := range []string{"mailfwd-ingress", "mailfwd-worker"} {
		if seen[releaseRegistry+"/"+n+":"+version] == 0 {
			t.Errorf("no pod runs %s from the release", n)
		}
	}
	// mailfwd-sendmail --version in a pod of its own.
	ref := releaseRegistry + "/mailfwd-sendmail:" + version
	c.kubectl("-n", "mailfwd-test", "run", "sendmail-version", "--image="+ref, "--image-pull-policy=Never", "--restart=Never", "--", "--version")
	waitUntil(t, "the sendmail pod to finish", 3*time.Minute, func() bool {
		p, _ := c.kubectlErr("-n", "mailfwd-test", "get", "pod", "sendmail-version", "-o", "jsonpath={.status.phase}")
		if p == "Failed" {
			t.Fatalf("the sendmail image's pod failed: %s", c.kubectl("-n", "mailfwd-test", "logs", "sendmail-version"))
		}
		return p == "Succeeded"
	})
	logs := c.kubectl("-n", "mailfwd-test", "logs", "sendmail-version")
	if !strings.Contains(logs, "Version "+version+" (mailfwd-sendmail") {
		t.Errorf("%s --version printed %q, want Version %s", ref, logs, version)
	}
	t.Logf("pods per release image: %v; %s --version: %s", seen, ref, strings.TrimSpace(logs))
}

// putTLSSecret writes a new self-signed certificate for the ingress into
// the TLS Secret (verb create, or apply to replace it) and remembers it.
func (c *cluster) putTLSSecret(verb string) {
	t := c.t
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "mail.example.test"}, DNSNames: []string{"mail.example.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(work, "tls.crt"), filepath.Join(work, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-n", ns, "create", "secret", "tls", tlsSecret, "--cert", certFile, "--key", keyFile}
	if verb == "create" {
		c.kubectl(args...)
	} else {
		y := c.kubectl(append(args, "--dry-run=client", "-o", "yaml")...)
		c.apply(y)
	}
	c.tlsCert = der
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8])
}

// servedCert is the fingerprint of the certificate addr presents after STARTTLS.
func servedCert(addr string) (string, error) {
	cl, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true, ServerName: "mail.example.test"})
	if err != nil {
		return "", err
	}
	defer cl.Close()
	if err := cl.Hello("probe.test"); err != nil { // the handshake
		return "", err
	}
	st, ok := cl.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		return "", errors.New("no certificate after STARTTLS")
	}
	_ = cl.Quit()
	return fingerprint(st.PeerCertificates[0].Raw), nil
}

type podState struct {
	name, uid, ip string
	restarts      int
}

// ingressPods lists the ready ingress pods that are not being deleted.
func (c *cluster) ingressPods() map[string]podState {
	out := c.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=ingress", "-o",
		`jsonpath={range .items[*]}{.metadata.name}{" "}{.metadata.uid}{" "}{.status.podIP}{" "}{.status.containerStatuses[0].restartCount}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.deletionTimestamp}{"\n"}{end}`)
	pods := map[string]podState{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) != 5 || f[4] != "True" {
			continue
		}
		n, _ := strconv.Atoi(f[3])
		pods[f[0]] = podState{name: f[0], uid: f[1], ip: f[2], restarts: n}
	}
	return pods
}

// certReload replaces the certificate in the ingress's TLS Secret and waits
// for every ingress pod to serve the new one by STARTTLS, with no restart:
// the same pods (UIDs), the same restart counts.
func (c *cluster) certReload() {
	t := c.t
	before := c.ingressPods()
	if len(before) == 0 {
		t.Fatal("no ready ingress pod")
	}
	oldFP := fingerprint(c.tlsCert)
	for _, p := range before {
		fp, err := servedCert(net.JoinHostPort(p.ip, "2525"))
		if err != nil || fp != oldFP {
			t.Fatalf("pod %s serves %s (%v), want the Secret's certificate %s", p.name, fp, err, oldFP)
		}
	}
	c.putTLSSecret("apply")
	newFP := fingerprint(c.tlsCert)
	t0 := time.Now()
	var checked []string
	waitUntil(t, "every ingress pod to serve the new certificate", 4*time.Minute, func() bool {
		now := c.ingressPods()
		checked = checked[:0]
		for name, p := range before {
			if q, ok := now[name]; !ok || q.uid != p.uid {
				continue // gone (the HPA scaled the ingress down): not a restart
			}
			if fp, err := servedCert(net.JoinHostPort(p.ip, "2525")); err != nil || fp != newFP {
				return false
			}
			checked = append(checked, name)
		}
		return len(checked) > 0
	})
	took := time.Since(t0)
	fp, err := servedCert(c.ingress)
	if err != nil || fp != newFP {
		t.Errorf("the Service serves %s (%v), want %s", fp, err, newFP)
	}
	now := c.ingressPods()
	for _, name := range checked {
		if q := now[name]; q.uid != before[name].uid || q.restarts != before[name].restarts {
			t.Errorf("pod %s: uid %s restarts %d, was uid %s restarts %d", name, q.uid, q.restarts, before[name].uid, before[name].restarts)
		}
	}
	slices.Sort(checked)
	t.Logf("certificate %s → %s served by STARTTLS on %v %s after the Secret update; same pod UIDs, restart counts unchanged",
		oldFP, newFP, checked, took.Round(time.Second))
}

// suspended reports whether the fleet holds suspendedDomain suspended.
func (c *cluster) suspended() (bool, string) {
	out, err := c.ctl("shaping", "status", "-o", "json")
	if err != nil {
		return false, err.Error()
	}
	var items []struct {
		Destination    string     `json:"destination"`
		SuspendedUntil *time.Time `json:"suspendedUntil"`
		Why            string     `json:"why"`
	}
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		return false, fmt.Sprintf("%v: %s", err, out)
	}
	for _, it := range items {
		if it.Destination == suspendedDomain && it.SuspendedUntil != nil && it.SuspendedUntil.After(time.Now()) {
			return true, fmt.Sprintf("until %s: %s", it.SuspendedUntil.Format(time.TimeOnly), it.Why)
		}
	}
	return false, out
}

func (c *cluster) workerSpecReplicas() int {
	out, err := c.kubectlErr("-n", ns, "get", "deploy", "mailfwd-worker", "-o", "jsonpath={.spec.replicas}")
	if err != nil {
		return -1
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

// suspendedBurst: with the workers at the minimum, one message to
// suspendedDomain gets the sink's 421 4.7.0, which the reply rule turns into
// a fleet-wide suspension; then a burst to that domain must not scale the
// workers up (its mail is set aside as deferred, out of KEDA's ready lag),
// during the burst and for a minute after it (KEDA polls every 10 s, the
// HPA acts within 15 s).
func (c *cluster) suspendedBurst() {
	t := c.t
	const n, conns = 1000, 4
	if r, s := c.workerReplicas(), c.workerSpecReplicas(); r != 1 || s != 1 {
		t.Fatalf("workers: %d ready, %d wanted; want 1 (the minimum) before the burst", r, s)
	}
	if _, err := c.send("s@client.test", []message{newMessageTo("susp-probe", 0, 300, suspendedDomain)}); err != nil {
		t.Fatal(err)
	}
	var why string
	waitUntil(t, suspendedDomain+" suspended by the reply rule", 3*time.Minute, func() bool {
		var ok bool
		ok, why = c.suspended()
		return ok
	})
	t0 := time.Now()
	var maxSpec, maxReady, maxLag atomic.Int64
	var tl []string
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			s, r, l := c.workerSpecReplicas(), c.workerReplicas(), c.lag()
			maxSpec.Store(max(maxSpec.Load(), int64(s)))
			maxReady.Store(max(maxReady.Load(), int64(r)))
			maxLag.Store(max(maxLag.Load(), int64(l)))
			tl = append(tl, fmt.Sprintf("t=%ds %d/%d pods lag %d", int(time.Since(t0).Seconds()), r, s, l))
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Second):
			}
		}
	}()
	var next, acc atomic.Int64
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var batch []message
				for range 25 {
					i := int(next.Add(1)) - 1
					if i >= n {
						break
					}
					batch = append(batch, newMessageTo("susp", i, 800, suspendedDomain))
				}
				if len(batch) == 0 {
					return
				}
				k, err := c.send("s@client.test", batch)
				acc.Add(int64(k))
				if err != nil {
					t.Errorf("sending to %s: %v", suspendedDomain, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	sent := time.Since(t0)
	time.Sleep(60 * time.Second)
	close(stop)
	<-done
	stillSuspended, _ := c.suspended()
	t.Logf("suspension: %s %s; %d of %d sent in %s, workers at most %d ready / %d wanted (KEDA's ready lag at most %d) until %s after\n  %s",
		suspendedDomain, why, acc.Load(), n, sent.Round(time.Second), maxReady.Load(), maxSpec.Load(), maxLag.Load(),
		time.Since(t0).Round(time.Second), strings.Join(tl, "\n  "))
	if acc.Load() != n {
		t.Errorf("%d of %d messages to %s accepted", acc.Load(), n, suspendedDomain)
	}
	if maxSpec.Load() != 1 || maxReady.Load() != 1 {
		t.Errorf("the burst to the suspended %s scaled the workers to %d ready / %d wanted, want 1", suspendedDomain, maxReady.Load(), maxSpec.Load())
	}
	if !stillSuspended {
		t.Errorf("%s is no longer suspended after the burst", suspendedDomain)
	}
}

// proxyProtocol turns the PROXY protocol on for the ingress (the chart's
// ingress.proxyProtocol.from: the pod network, where the proxy pod is; its
// connections to the ingress Service arrive from there), then sends mail
// through the proxy pod (v1 and v2 headers) from the node's address, a
// client outside the pod network, and checks that the delivered Received:
// header names that client; a connection straight to an ingress pod from
// the node's address, with a header naming someone else, is refused.
func (c *cluster) proxyProtocol() {
	t := c.t
	proxyIP := strings.TrimSpace(c.kubectl("-n", "mailfwd-test", "get", "pods", "-l", "app=smtp-proxy", "-o", "jsonpath={.items[0].status.podIP}"))
	// Before: the node's address reaches an ingress pod and gets the banner
	// (so the refusal below is the PROXY rule, not the network).
	var pod podState
	for _, p := range c.ingressPods() {
		pod = p
		break
	}
	if b, err := rawExchange(net.JoinHostPort(pod.ip, "2525"), nil); !strings.HasPrefix(b, "220") {
		t.Fatalf("from %s to ingress pod %s before the PROXY protocol: %q %v, want the 220 banner", nodeIP, pod.name, b, err)
	}

	c.helm("upgrade", "mailfwd", c.releaseChart(), "-n", ns, "--reuse-values",
		"--set", "ingress.proxyProtocol.from={"+podCIDR+"}", "--timeout", "10m")
	c.kubectl("-n", ns, "rollout", "status", "deploy/mailfwd-ingress", "--timeout=5m")
	// Every ingress pod, terminating ones too: an old pod in its preStop
	// drain still gets connections until kube-proxy has dropped it.
	var pods map[string]podState
	waitUntil(t, "only ingress pods with the PROXY protocol", 3*time.Minute, func() bool {
		pods = c.ingressPods()
		all := strings.Fields(c.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=ingress", "-o", "jsonpath={.items[*].metadata.name}"))
		for _, p := range all {
			logs, err := c.kubectlErr("-n", ns, "logs", p)
			// The start line (JSON logs): "proxy_protocol_from":"<networks>".
			if err != nil || !strings.Contains(logs, `"proxy_protocol_from":"`+podCIDR+`"`) {
				return false
			}
		}
		return len(pods) > 0 && len(pods) == len(all)
	})

	// Through the proxy pod, from the node's address.
	for _, v := range []struct{ tag, port string }{{"proxy-v1", "2525"}, {"proxy-v2", "2526"}} {
		if n, err := c.sendVia(nodeIP, net.JoinHostPort(proxyIP, v.port), "p@client.test", []message{newMessage(v.tag, 0, 300)}); err != nil || n != 1 {
			t.Fatalf("through the proxy pod (%s): sent %d of 1: %v", v.tag, n, err)
		}
	}
	waitUntil(t, "the two messages sent through the proxy delivered", 3*time.Minute, func() bool {
		a1, d1, _ := c.check("proxy-v1")
		a2, d2, _ := c.check("proxy-v2")
		return a1 == 1 && d1 == 1 && a2 == 1 && d2 == 1
	})
	var recv []string
	for _, m := range c.sinkMessages() {
		id := msgIDRE.FindSubmatch(m.Data)
		if id == nil || !(bytes.Contains(id[1], []byte("<proxy-v1-")) || bytes.Contains(id[1], []byte("<proxy-v2-"))) {
			continue
		}
		r := firstReceived(m.Data)
		recv = append(recv, r)
		if !strings.Contains(r, "(["+nodeIP+"])") || strings.Contains(r, proxyIP) {
			t.Errorf("%s: the ingress's Received: is %q, want the client [%s], not the proxy %s", id[1], r, nodeIP, proxyIP)
		}
	}

	// Around the proxy: a header from an address outside the trusted network.
	forged := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("198.51.100.9"), Port: 40000}, &net.TCPAddr{IP: net.ParseIP(pod.ip), Port: 2525})
	var hdr bytes.Buffer
	if _, err := forged.WriteTo(&hdr); err != nil {
		t.Fatal(err)
	}
	var direct podState
	for _, p := range pods {
		direct = p
		break
	}
	for _, h := range [][]byte{[]byte("PROXY TCP4 198.51.100.9 " + direct.ip + " 40000 2525\r\n"), hdr.Bytes()} {
		b, err := rawExchange(net.JoinHostPort(direct.ip, "2525"), h)
		var ne net.Error
		if b != "" || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("a PROXY header from %s straight to ingress pod %s: got %q (%v), want the connection closed without a reply", nodeIP, direct.name, b, err)
		}
	}
	var refusal string
	waitUntil(t, "the refusal in the ingress log", time.Minute, func() bool {
		logs, _ := c.kubectlErr("-n", ns, "logs", direct.name)
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "not from a --proxy-protocol-from network") && strings.Contains(l, nodeIP) {
				refusal = l
				return true
			}
		}
		return false
	})
	t.Logf("PROXY protocol from %s: through proxy pod %s the ingress saw the client:\n  %s\nstraight from %s with a header: refused: %s",
		podCIDR, proxyIP, strings.Join(recv, "\n  "), nodeIP, refusal)
}

// rawExchange connects to addr from the node's address, writes w (if any)
// and returns what the server sends within 15 s, until it closes.
func rawExchange(addr string, w []byte) (string, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(nodeIP)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if w != nil {
		if _, err := conn.Write(w); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 512)
	var got []byte
	for {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if w == nil && bytes.Contains(got, []byte("\n")) {
			return string(got), nil // the banner is enough
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return string(got), err
		}
	}
}

// firstReceived is a message's first Received: header, unfolded.
func firstReceived(msg []byte) string {
	hdr, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var out []string
	in := false
	for _, l := range strings.Split(string(hdr), "\r\n") {
		switch {
		case strings.HasPrefix(strings.ToLower(l), "received:") && !in && len(out) == 0:
			in = true
			out = append(out, l)
		case in && (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")):
			out = append(out, strings.TrimSpace(l))
		default:
			in = false
		}
	}
	return strings.Join(out, " ")
}
