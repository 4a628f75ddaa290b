package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// minioStartTimeout bounds how long StartMinio/Start wait for health.
	minioStartTimeout = 60 * time.Second
	// minioStopTimeout bounds how long Stop waits for the killed process.
	minioStopTimeout = 30 * time.Second
	// minioOutputLimit is how much of the server's output is kept.
	minioOutputLimit = 256 << 10
)

// errMinioExited reports that the server process died while starting (for
// instance because its port was taken).
var errMinioExited = errors.New("minio exited before becoming healthy")

// MinioBinary returns the path of a MinIO server binary: $MAILFWD_MINIO_BIN,
// else $HOME/.cache/mailfwd/bin/minio, else "minio" on PATH. If there is none
// the test is skipped, or fails when MAILFWD_REQUIRE_MINIO=1.
func MinioBinary(t testing.TB) string {
	t.Helper()
	var tried []string
	if p := os.Getenv("MAILFWD_MINIO_BIN"); p != "" {
		if isExecutable(p) {
			return p
		}
		tried = append(tried, p+" ($MAILFWD_MINIO_BIN)")
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "mailfwd", "bin", "minio")
		if isExecutable(p) {
			return p
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p
	}
	tried = append(tried, "minio on $PATH")
	msg := fmt.Sprintf("no MinIO server binary (tried %s); run make test (it builds minio) or set MAILFWD_MINIO_BIN", strings.Join(tried, ", "))
	if os.Getenv("MAILFWD_REQUIRE_MINIO") == "1" {
		t.Fatal(msg + " [MAILFWD_REQUIRE_MINIO=1]")
		return ""
	}
	t.Skip(msg)
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// Minio is a real MinIO server on loopback, owned by one test. It keeps its
// data directory and port across Stop/Start, so bodies survive a restart.
type Minio struct {
	// Endpoint is the S3 API address, 127.0.0.1:port.
	Endpoint string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string

	t           testing.TB
	bin         string
	dataDir     string
	certsDir    string
	consoleAddr string
	out         *tailBuffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been reaped
	err    error         // cmd.Wait result, valid after exited is closed
}

// StartMinio starts a MinIO server with a fresh data directory on free
// loopback ports and waits until it serves requests. The server is killed when
// the test ends; its output is logged if the test failed.
func StartMinio(t testing.TB) *Minio {
	t.Helper()
	bin := MinioBinary(t)
	base := t.TempDir() // before the kill cleanup so it is removed after it
	m := &Minio{
		AccessKey: "mailfwd-test",
		SecretKey: randomHex(t, 20),
		t:         t,
		bin:       bin,
		dataDir:   filepath.Join(base, "data"),
		certsDir:  filepath.Join(base, "certs"),
		out:       &tailBuffer{limit: minioOutputLimit},
	}
	for _, d := range []string{m.dataDir, m.certsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatalf("testenv: minio: %v", err)
		}
	}
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			t.Logf("testenv: minio output (last %d KiB):\n%s", minioOutputLimit>>10, m.out.String())
		}
	})
	// A port picked here may be taken by someone else before MinIO binds
	// it; a few attempts with fresh ports make that harmless.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		m.Endpoint, m.consoleAddr = freeLoopbackAddr(t), freeLoopbackAddr(t)
		if err = m.startOnce(); err == nil {
			return m
		}
		m.stop()
	}
	t.Fatalf("testenv: minio: %v\n--- minio output ---\n%s", err, m.out.String())
	return nil
}

// Stop kills the server (SIGKILL, like a crash) and waits for it to exit.
// Stopping a stopped server does nothing.
func (m *Minio) Stop() {
	m.t.Helper()
	if err := m.stop(); err != nil {
		m.t.Fatalf("testenv: minio: stop: %v", err)
	}
}

// Start starts the server again on the same port and data directory and waits
// until it serves requests. Starting a running server does nothing.
func (m *Minio) Start() {
	m.t.Helper()
	m.mu.Lock()
	running := m.cmd != nil
	m.mu.Unlock()
	if running {
		return
	}
	// The old process is reaped, so its listener is closed; Go listeners
	// (MinIO's included) set SO_REUSEADDR, so TIME_WAIT connections do not
	// block the bind. Still retry briefly in case the kernel is slow.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = m.startOnce(); err == nil {
			return
		}
		m.stop()
		if !errors.Is(err, errMinioExited) {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	m.t.Fatalf("testenv: minio: restart on %s: %v\n--- minio output ---\n%s", m.Endpoint, err, m.out.String())
}

// URL returns a blob store URL for bucket on this server, with the
// credentials in the user info: s3://key:secret@bucket?endpoint=127.0.0.1:port&secure=false
func (m *Minio) URL(bucket string) string {
	u := url.URL{
		Scheme:   "s3",
		User:     url.UserPassword(m.AccessKey, m.SecretKey),
		Host:     bucket,
		RawQuery: url.Values{"endpoint": {m.Endpoint}, "secure": {"false"}}.Encode(),
	}
	return u.String()
}

// Output returns the tail of the server's combined stdout and stderr.
func (m *Minio) Output() string { return m.out.String() }

func (m *Minio) startOnce() error {
	cmd := exec.Command(m.bin, "server",
		"--address", m.Endpoint,
		"--console-address", m.consoleAddr,
		"--certs-dir", m.certsDir,
		m.dataDir)
	cmd.Env = append(minioFreeEnv(),
		"MINIO_ROOT_USER="+m.AccessKey,
		"MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CI_CD=on",
	)
	cmd.Stdout = m.out
	cmd.Stderr = m.out
	cmd.SysProcAttr = minioSysProcAttr()
	fmt.Fprintf(m.out, "=== testenv: starting minio on %s at %s\n", m.Endpoint, time.Now().Format(time.RFC3339Nano))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", m.bin, err)
	}
	exited := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.exited, m.err = cmd, exited, nil
	m.mu.Unlock()
	go func() {
		err := cmd.Wait()
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
		close(exited)
	}()
	return m.waitHealthy(exited)
}

// waitHealthy polls until the liveness endpoint answers 200 with the object
// layer up and the cluster endpoint reports the drive writable.
func (m *Minio) waitHealthy(exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second}
	start := time.Now()
	deadline := start.Add(minioStartTimeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			m.mu.Lock()
			err := m.err
			m.mu.Unlock()
			return fmt.Errorf("%w: %v", errMinioExited, err)
		default:
		}
		ok, why := m.probe(client)
		if ok {
			fmt.Fprintf(m.out, "=== testenv: minio healthy after %v\n", time.Since(start).Round(time.Millisecond))
			return nil
		}
		last = why
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("minio on %s not healthy after %v (last: %s)", m.Endpoint, minioStartTimeout, last)
}

func (m *Minio) probe(client *http.Client) (bool, string) {
	for _, p := range []string{"/minio/health/live", "/minio/health/cluster"} {
		resp, err := client.Get("http://" + m.Endpoint + p)
		if err != nil {
			return false, err.Error()
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Sprintf("%s: %s", p, resp.Status)
		}
		if s := resp.Header.Get("X-Minio-Server-Status"); s != "" {
			return false, fmt.Sprintf("%s: server status %s", p, s)
		}
	}
	return true, ""
}

// stop kills the current process, if any, and waits until it is reaped.
func (m *Minio) stop() error {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Kill() // fails only if it already exited
	select {
	case <-exited:
		fmt.Fprintf(m.out, "=== testenv: minio stopped at %s\n", time.Now().Format(time.RFC3339Nano))
		return nil
	case <-time.After(minioStopTimeout):
		return fmt.Errorf("minio pid %d did not exit %v after SIGKILL", cmd.Process.Pid, minioStopTimeout)
	}
}

// minioFreeEnv is the test process environment without MINIO_* variables,
// so an outer MinIO configuration cannot leak into the test server.
func minioFreeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MINIO_") {
			env = append(env, kv)
		}
	}
	return env
}

func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: find free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("testenv: release port: %v", err)
	}
	return addr
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testenv: minio: random: %v", err)
	}
	return hex.EncodeToString(b)
}

// tailBuffer is a concurrency-safe writer keeping the last limit bytes.
type tailBuffer struct {
	mu      sync.Mutex
	limit   int
	buf     []byte
	dropped bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.limit; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.dropped = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped {
		return "[... earlier output dropped ...]\n" + string(b.buf)
	}
	return string(b.buf)
}
