package rig

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Tools locates the external binaries.
type Tools struct {
	NATSServer string // nats-server v2.15.2
	Minio      string
	SMTPSink   string // Postfix smtp-sink
	SMTPSource string // Postfix smtp-source
	Postfix    string // /usr/sbin/postfix
	Ingress    string // built from ./cmd/ingress
	Worker     string // built from ./cmd/worker
	// IngressPre and WorkerPre are arguments put before the flags (the
	// profiled wrapper takes "ingress"/"worker" and --cpuprofile there).
	IngressPre, WorkerPre []string
}

// FindTools locates the pinned nats-server and MinIO (env
// MAILFWD_NATS_SERVER_BIN / MAILFWD_MINIO_BIN, else ~/.cache/mailfwd/bin) and
// Postfix's tools. Missing ones are left empty.
func FindTools() Tools {
	home, _ := os.UserHomeDir()
	cache := filepath.Join(home, ".cache", "mailfwd", "bin")
	var t Tools
	t.NATSServer, _ = LookBin(os.Getenv("MAILFWD_NATS_SERVER_BIN"), filepath.Join(cache, "nats-server-v2.15.2"), filepath.Join(cache, "nats-server"), "nats-server")
	t.Minio, _ = LookBin(os.Getenv("MAILFWD_MINIO_BIN"), filepath.Join(cache, "minio-v0.0.0-20260212201848-7aac2a2c5b7c"), filepath.Join(cache, "minio"), "minio")
	t.SMTPSink, _ = LookBin("/usr/sbin/smtp-sink", "smtp-sink")
	t.SMTPSource, _ = LookBin("/usr/sbin/smtp-source", "smtp-source")
	t.Postfix, _ = LookBin("/usr/sbin/postfix", "postfix")
	return t
}

// BuildMailfwd builds cmd/ingress and cmd/worker into dir (run from inside
// the module). Extra -gcflags etc. are not used: these are the release binaries.
func (t *Tools) BuildMailfwd(ctx context.Context, dir string) error {
	for _, name := range []string{"ingress", "worker"} {
		out := filepath.Join(dir, "mailfwd-"+name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/mailfwd/mailfwd/cmd/"+name)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("rig: go build ./cmd/%s: %w\n%s", name, err, b)
		}
		if name == "ingress" {
			t.Ingress = out
		} else {
			t.Worker = out
		}
	}
	return nil
}

// NATS is a nats-server process with JetStream file storage in Dir.
type NATS struct {
	*Proc
	Port       int
	Dir        string
	SyncAlways bool
}

// URL is the client URL.
func (n *NATS) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.Port) }

// StoreDir is the server's JetStream store_dir (--nats-store-dir).
func (n *NATS) StoreDir() string { return filepath.Join(n.Dir, "js") }

// StartNATS starts nats-server on a free loopback port. syncAlways sets
// JetStream's sync_interval to "always" (fsync every write); otherwise the
// server default applies (fsync every 2 minutes; writes reach the OS at once).
func StartNATS(bin, dir string, syncAlways bool) (*NATS, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "js"), 0o755); err != nil {
		return nil, fmt.Errorf("rig: nats dir: %w", err)
	}
	sync := ""
	if syncAlways {
		sync = "\n  sync_interval: always"
	}
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\nserver_name: bench\njetstream {\n  store_dir: %q%s\n}\n", port, filepath.Join(dir, "js"), sync)
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("rig: nats config: %w", err)
	}
	p, err := StartProc("nats-server", filepath.Join(dir, "nats.log"), nil, bin, "-c", confPath)
	if err != nil {
		return nil, err
	}
	n := &NATS{Proc: p, Port: port, Dir: dir, SyncAlways: syncAlways}
	if err := n.WaitReady(20 * time.Second); err != nil {
		_ = p.Kill()
		return nil, err
	}
	return n, nil
}

// WaitReady waits until the server accepts connections.
func (n *NATS) WaitReady(timeout time.Duration) error {
	return WaitTCP("127.0.0.1:"+strconv.Itoa(n.Port), timeout, false)
}

// Restart starts the server again on the same port and store.
func (n *NATS) Restart() error {
	return restart(n.Proc, n.WaitReady, 20, 20*time.Second, 200*time.Millisecond)
}

// restart starts p again and waits (up to wait) until ready says it
// serves, trying up to tries times, pause apart (the port may still be
// held for a moment after a kill).
func restart(p *Proc, ready func(time.Duration) error, tries int, wait, pause time.Duration) error {
	var err error
	for range tries {
		if err = p.Start(); err == nil {
			if err = ready(wait); err == nil {
				return nil
			}
		}
		time.Sleep(pause)
	}
	return err
}

// Minio is a MinIO server process.
type Minio struct {
	*Proc
	Endpoint             string
	AccessKey, SecretKey string
}

// StartMinio starts MinIO on free loopback ports with data in dir.
func StartMinio(bin, dir string) (*Minio, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	cport, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("rig: minio dir: %w", err)
	}
	m := &Minio{Endpoint: "127.0.0.1:" + strconv.Itoa(port), AccessKey: "mailfwd-bench", SecretKey: "mailfwd-bench-secret"}
	env := []string{"MINIO_ROOT_USER=" + m.AccessKey, "MINIO_ROOT_PASSWORD=" + m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=on"}
	p, err := StartProc("minio", filepath.Join(dir, "minio.log"), env, bin, "server",
		"--address", m.Endpoint, "--console-address", "127.0.0.1:"+strconv.Itoa(cport),
		"--certs-dir", filepath.Join(dir, "certs"), filepath.Join(dir, "data"))
	if err != nil {
		return nil, err
	}
	m.Proc = p
	if err := m.WaitReady(60 * time.Second); err != nil {
		_ = p.Kill()
		return nil, err
	}
	return m, nil
}

// WaitReady polls MinIO's health endpoints.
func (m *Minio) WaitReady(timeout time.Duration) error {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		ok := true
		for _, p := range []string{"/minio/health/live", "/minio/health/cluster"} {
			resp, err := c.Get("http://" + m.Endpoint + p)
			if err != nil {
				ok, last = false, err.Error()
				break
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				ok, last = false, p+": "+resp.Status
				break
			}
		}
		if ok {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("rig: minio on %s not ready after %v: %s", m.Endpoint, timeout, last)
}

// Restart starts MinIO again with the same data and port.
func (m *Minio) Restart() error {
	return restart(m.Proc, m.WaitReady, 10, 60*time.Second, 300*time.Millisecond)
}

// URL is the mailfwd blob store URL for bucket.
func (m *Minio) URL(bucket string) string {
	u := url.URL{Scheme: "s3", User: url.UserPassword(m.AccessKey, m.SecretKey), Host: bucket,
		RawQuery: url.Values{"endpoint": {m.Endpoint}, "secure": {"false"}}.Encode()}
	return u.String()
}

// Sink is Postfix's smtp-sink counting delivered messages (-c).
type Sink struct {
	*Proc
	Addr  string
	count atomic.Int64
}

// StartSink runs smtp-sink on a free loopback port (as user nobody when
// root, which smtp-sink requires to drop privileges).
func StartSink(bin, dir string) (*Sink, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	s := &Sink{Addr: "127.0.0.1:" + strconv.Itoa(port)}
	args := []string{"-c", "-m", "1000"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody")
	}
	args = append(args, s.Addr, "1024")
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(filepath.Join(dir, "smtp-sink-"+strconv.Itoa(port)+".log"))
	if err != nil {
		return nil, fmt.Errorf("rig: sink log: %w", err)
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("rig: sink pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("rig: start smtp-sink: %w", err)
	}
	// Wrap the started command in a Proc for Kill and CPU.
	p := &Proc{Name: "smtp-sink", Bin: bin, Args: args, LogPath: logf.Name()}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		sc := bufio.NewScanner(out)
		sc.Split(splitCR)
		for sc.Scan() {
			// "sess=2 quit=1 mesg=20"
			line := sc.Text()
			if i := strings.Index(line, "mesg="); i >= 0 {
				if n, err := strconv.ParseInt(strings.TrimSpace(line[i+5:]), 10, 64); err == nil {
					s.count.Store(n)
				}
			}
		}
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.Proc = p
	if err := WaitTCP(s.Addr, 10*time.Second, true); err != nil {
		_ = p.Kill()
		return nil, err
	}
	return s, nil
}

func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// Count is the number of messages (completed DATA) the sink has received.
func (s *Sink) Count() int64 { return s.count.Load() }

// WaitCount waits until Count() >= n; it returns the time it was reached.
func (s *Sink) WaitCount(n int64, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		if s.Count() >= n {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Now(), fmt.Errorf("rig: sink %s has %d of %d messages after %v", s.Addr, s.Count(), n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
