package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Pinned versions of the Kubernetes test tools; scripts/kube-tools.sh builds
// them into the tools directory under these names.
const (
	KubeVersion = "v1.32.13"
	EtcdVersion = "v3.5.21"
)

const (
	// kubeStartTimeout bounds how long StartKube waits for etcd and for the
	// API server's /readyz (each).
	kubeStartTimeout = 90 * time.Second
	// kubeStopTimeout bounds how long a killed process may take to exit.
	kubeStopTimeout = 30 * time.Second
	// kubectlTimeout bounds one Kubectl call.
	kubectlTimeout = 2 * time.Minute
	// kubeOutputLimit is how much of each server's output is kept.
	kubeOutputLimit = 256 << 10
	// kubeStartAttempts is how often StartKube retries with fresh ports when
	// a server exits while starting (a port picked as free was taken).
	kubeStartAttempts = 3
)

// errKubeProcExited reports that etcd or kube-apiserver died while starting.
var errKubeProcExited = errors.New("exited before becoming ready")

// KubeBins are the paths of the pinned Kubernetes test binaries.
type KubeBins struct {
	APIServer string // kube-apiserver-v1.32.13
	Etcd      string // etcd-v3.5.21
	Kubectl   string // kubectl-v1.32.13
}

// KubeBinaries finds kube-apiserver, etcd and kubectl under their pinned names
// in $MAILFWD_KUBE_BIN_DIR, else $HOME/.cache/mailfwd/bin. If any is missing
// the test is skipped, or fails when MAILFWD_REQUIRE_KUBE=1.
func KubeBinaries(t testing.TB) KubeBins {
	t.Helper()
	dir := os.Getenv("MAILFWD_KUBE_BIN_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			kubeMissing(t, fmt.Sprintf("no $MAILFWD_KUBE_BIN_DIR and no home directory (%v)", err))
			return KubeBins{}
		}
		dir = filepath.Join(home, ".cache", "mailfwd", "bin")
	}
	b := KubeBins{
		APIServer: filepath.Join(dir, "kube-apiserver-"+KubeVersion),
		Etcd:      filepath.Join(dir, "etcd-"+EtcdVersion),
		Kubectl:   filepath.Join(dir, "kubectl-"+KubeVersion),
	}
	var missing []string
	for _, p := range []string{b.APIServer, b.Etcd, b.Kubectl} {
		if !isExecutable(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		kubeMissing(t, "missing "+strings.Join(missing, ", "))
		return KubeBins{}
	}
	return b
}

func kubeMissing(t testing.TB, why string) {
	t.Helper()
	msg := "testenv: kube: " + why + "; run make test-tools / scripts/kube-tools.sh (or set MAILFWD_KUBE_BIN_DIR)"
	if os.Getenv("MAILFWD_REQUIRE_KUBE") == "1" {
		t.Fatal(msg + " [MAILFWD_REQUIRE_KUBE=1]")
		return
	}
	t.Skip(msg)
}

// Kube is a real kube-apiserver backed by a real etcd, both on loopback and
// owned by one test. No controllers, scheduler or kubelet run: objects are
// stored and validated, nothing reconciles them.
type Kube struct {
	// Kubeconfig is the path of a kubeconfig file with admin credentials
	// (a bearer token in group system:masters) and the cluster CA.
	Kubeconfig string
	// Server is the API server URL, https://127.0.0.1:port.
	Server string
	// KubectlBin is the path of the pinned kubectl.
	KubectlBin string

	// Token is the admin bearer token; CAPEM the PEM CA certificate that
	// signed the serving certificate.
	Token string
	CAPEM []byte

	dir      string
	cacheDir string
}

// StartKube starts etcd and kube-apiserver with fresh state on free loopback
// ports, waits (bounded) until the API server is ready and the default
// namespace exists, and writes a kubeconfig for it. Both processes are killed
// when the test ends (and by the kernel if the test binary dies); their
// output is logged if the test failed.
func StartKube(t testing.TB) *Kube {
	t.Helper()
	bins := KubeBinaries(t)
	dir := t.TempDir() // before the kill cleanups, so it is removed after them
	k := &Kube{
		KubectlBin: bins.Kubectl,
		Token:      randomToken(t),
		dir:        dir,
		cacheDir:   filepath.Join(dir, "kubectl-cache"),
	}
	pki := writeKubePKI(t, dir, k.Token)
	k.CAPEM = pki.caPEM

	var lastErr error
	for attempt := 1; attempt <= kubeStartAttempts; attempt++ {
		etcdOut := &tailBuffer{limit: kubeOutputLimit}
		apiOut := &tailBuffer{limit: kubeOutputLimit}
		var etcd, api *kubeProc
		t.Cleanup(func() {
			// Kill the API server before its storage.
			for _, p := range []*kubeProc{api, etcd} {
				if err := p.stop(); err != nil {
					t.Errorf("testenv: kube: %v", err)
				}
			}
			if t.Failed() {
				t.Logf("testenv: kube: etcd output (attempt %d, last %d KiB):\n%s", attempt, kubeOutputLimit>>10, etcdOut.String())
				t.Logf("testenv: kube: kube-apiserver output (attempt %d, last %d KiB):\n%s", attempt, kubeOutputLimit>>10, apiOut.String())
			}
		})
		var err error
		etcd, api, err = k.startOnce(t, bins, pki, attempt, etcdOut, apiOut)
		if err == nil {
			return k
		}
		lastErr = err
		_ = api.stop()
		_ = etcd.stop()
		if !errors.Is(err, errKubeProcExited) {
			break
		}
	}
	t.Fatalf("testenv: kube: %v", lastErr)
	return nil
}

// startOnce starts etcd and kube-apiserver on fresh ports and waits for both.
// The returned processes are non-nil once started, even with an error.
func (k *Kube) startOnce(t testing.TB, bins KubeBins, pki kubePKI, attempt int, etcdOut, apiOut *tailBuffer) (etcd, api *kubeProc, err error) {
	t.Helper()
	clientURL := "http://" + freeLoopbackAddr(t)
	peerURL := "http://" + freeLoopbackAddr(t)
	etcdDir := filepath.Join(k.dir, fmt.Sprintf("etcd-%d", attempt))
	etcd, err = startKubeProc("etcd", bins.Etcd, etcdOut,
		"--name=mailfwd-test",
		"--data-dir="+etcdDir,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=mailfwd-test="+peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync", // test data; speeds up every write
		"--log-level=warn",
	)
	if err != nil {
		return nil, nil, err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitKube(etcd, func() (bool, string) {
		return probeHTTP(plain, clientURL+"/health", "", `"health":"true"`)
	}); err != nil {
		return etcd, nil, err
	}

	apiAddr := freeLoopbackAddr(t)
	_, port, _ := net.SplitHostPort(apiAddr)
	k.Server = "https://" + apiAddr
	api, err = startKubeProc("kube-apiserver", bins.APIServer, apiOut,
		"--etcd-servers="+clientURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+port,
		"--cert-dir="+filepath.Join(k.dir, "apiserver-certs"),
		"--tls-cert-file="+pki.certFile,
		"--tls-private-key-file="+pki.keyFile,
		"--client-ca-file="+pki.caFile,
		"--token-auth-file="+pki.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.saKeyFile,
		"--service-account-signing-key-file="+pki.saKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		// No controller manager creates default service accounts, so pods
		// could not be admitted with this plugin on.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		// The "kubernetes" Service's endpoints may not be a loopback
		// address; without this the reconciler logs an error every 10s.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	)
	if err != nil {
		return etcd, nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.caPEM)
	tlsClient := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	defer tlsClient.CloseIdleConnections()
	err = waitKube(api, func() (bool, string) {
		if ok, why := probeHTTP(tlsClient, k.Server+"/readyz", k.Token, "ok"); !ok {
			return false, "/readyz: " + why
		}
		// The bootstrap controller creates "default" shortly after
		// readiness; tools that default to it should find it.
		return probeHTTP(tlsClient, k.Server+"/api/v1/namespaces/default", k.Token, `"name":"default"`)
	})
	if err != nil {
		return etcd, api, err
	}
	k.Kubeconfig = filepath.Join(k.dir, "kubeconfig")
	if err := os.WriteFile(k.Kubeconfig, []byte(kubeconfigYAML(k.Server, pki.caPEM, k.Token)), 0o600); err != nil {
		return etcd, api, fmt.Errorf("write kubeconfig: %w", err)
	}
	return etcd, api, nil
}

// Client returns a client-go clientset for the API server, built from the
// kubeconfig file.
func (k *Kube) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		t.Fatalf("testenv: kube: load kubeconfig %s: %v", k.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("testenv: kube: clientset: %v", err)
	}
	return cs
}

// Kubectl runs the pinned kubectl with --kubeconfig set to this server and
// returns its combined output. A non-zero exit is returned as the error (with
// the output still returned), so tests can assert that a command fails.
// $KUBECONFIG is removed from its environment and its discovery cache lives
// in the test's temporary directory.
func (k *Kube) Kubectl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	full := append([]string{"--kubeconfig=" + k.Kubeconfig, "--cache-dir=" + k.cacheDir}, args...)
	cmd := exec.CommandContext(ctx, k.KubectlBin, full...)
	cmd.Env = kubeEnv("KUBECONFIG=")
	cmd.SysProcAttr = minioSysProcAttr()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("kubectl %s: timed out after %v: %w", strings.Join(args, " "), kubectlTimeout, ctx.Err())
	}
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// kubeProc is one started server process.
type kubeProc struct {
	name   string
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{} // closed when cmd has been reaped
	mu     sync.Mutex
	err    error // cmd.Wait result, valid after exited is closed
	once   sync.Once
}

func startKubeProc(name, bin string, out *tailBuffer, args ...string) (*kubeProc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = kubeEnv("ETCD_", "KUBECONFIG=")
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = minioSysProcAttr()
	fmt.Fprintf(out, "=== testenv: starting %s at %s: %s\n", name, time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &kubeProc{name: name, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// stop kills the process (if started) and waits until it is reaped.
func (p *kubeProc) stop() error {
	if p == nil {
		return nil
	}
	var err error
	p.once.Do(func() {
		_ = p.cmd.Process.Kill() // fails only if it already exited
		select {
		case <-p.exited:
			fmt.Fprintf(p.out, "=== testenv: %s stopped at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
		case <-time.After(kubeStopTimeout):
			err = fmt.Errorf("%s pid %d did not exit %v after SIGKILL", p.name, p.cmd.Process.Pid, kubeStopTimeout)
		}
	})
	return err
}

// waitKube polls probe every 100ms until it succeeds, the process exits, or
// kubeStartTimeout passes.
func waitKube(p *kubeProc, probe func() (bool, string)) error {
	start := time.Now()
	deadline := start.Add(kubeStartTimeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			p.mu.Lock()
			err := p.err
			p.mu.Unlock()
			return fmt.Errorf("%s %w: %v (last probe: %s)", p.name, errKubeProcExited, err, last)
		default:
		}
		ok, why := probe()
		if ok {
			fmt.Fprintf(p.out, "=== testenv: %s ready after %v\n", p.name, time.Since(start).Round(time.Millisecond))
			return nil
		}
		last = why
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v (last probe: %s)", p.name, kubeStartTimeout, last)
}

// probeHTTP GETs url (with a bearer token if set) and reports whether it
// answered 200 with a body containing want.
func probeHTTP(c *http.Client, url, token, want string) (bool, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return false, fmt.Sprintf("%s: read body: %v", resp.Status, err)
	}
	body := string(b)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, want) {
		return false, fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(body))
	}
	return true, ""
}

// kubePKI holds the files the API server is started with.
type kubePKI struct {
	caPEM     []byte
	caFile    string
	certFile  string
	keyFile   string
	saKeyFile string
	tokenFile string
}

// writeKubePKI generates a CA, a serving certificate it signs for
// 127.0.0.1/localhost, an RSA service account key and a token file with token
// as an admin in system:masters, and writes them under dir/pki.
func writeKubePKI(t testing.TB, dir, token string) kubePKI {
	t.Helper()
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		t.Fatalf("testenv: kube: %v", err)
	}
	caKey := newECKey(t)
	caDER, ca := newCert(t, rootTemplate("mailfwd-test-ca", x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature), nil, &caKey.PublicKey, caKey)
	srvKey := newECKey(t)
	srvTmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver", Organization: []string{"mailfwd test"}},
		NotBefore:   ca.NotBefore,
		NotAfter:    ca.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 1)},
	}
	srvDER, _ := newCert(t, srvTmpl, ca, &srvKey.PublicKey, caKey)
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("testenv: kube: generate service account key: %v", err)
	}

	p := kubePKI{
		caPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		caFile:    filepath.Join(pkiDir, "ca.crt"),
		certFile:  filepath.Join(pkiDir, "apiserver.crt"),
		keyFile:   filepath.Join(pkiDir, "apiserver.key"),
		saKeyFile: filepath.Join(pkiDir, "sa.key"),
		tokenFile: filepath.Join(pkiDir, "tokens.csv"),
	}
	files := map[string][]byte{
		p.caFile:    p.caPEM,
		p.certFile:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		p.keyFile:   pemECKey(t, srvKey),
		p.saKeyFile: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		// token,user,uid,"group1,group2"
		p.tokenFile: []byte(token + `,mailfwd-admin,mailfwd-admin-uid,"system:masters"` + "\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatalf("testenv: kube: write %s: %v", name, err)
		}
	}
	return p
}

func pemECKey(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: kube: marshal ECDSA key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testenv: kube: random token: %v", err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// kubeconfigYAML is a kubeconfig with one cluster, one token user and a
// current context joining them (namespace "default").
func kubeconfigYAML(server string, caPEM []byte, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: mailfwd-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: mailfwd-admin
  user:
    token: %s
contexts:
- name: mailfwd-test
  context:
    cluster: mailfwd-test
    user: mailfwd-admin
    namespace: default
current-context: mailfwd-test
`, server, base64.StdEncoding.EncodeToString(caPEM), token)
}

// kubeEnv is the test process environment without variables starting with
// any of the prefixes, so outer configuration cannot leak into the servers.
func kubeEnv(dropPrefixes ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, p := range dropPrefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		env = append(env, kv)
	}
	return env
}
