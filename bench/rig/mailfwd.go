package rig

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MailfwdConfig describes one mailfwd deployment of separate processes.
type MailfwdConfig struct {
	Dir        string // state and logs
	SyncAlways bool   // nats-server sync_interval: always
	// LocalStore passes --nats-store-dir (the one local server's store_dir)
	// to ingress and workers: every accept flushed to disk before its 250.
	LocalStore bool
	// Blob is "file" (fsync per body, the default), "file-nofsync" or "s3".
	Blob        string
	Minio       *Minio // required for Blob "s3"; not owned by the stack
	Workers     int    // default 1; negative: none (mail stays queued)
	Route       string // destination host:port for every domain
	IngressArgs []string
	WorkerArgs  []string
	// ProfileDir, if set, passes --cpuprofile DIR/<proc>.pprof (the tools
	// must be the bench/profiled wrapper).
	ProfileDir string
	// NATS, if set, is used instead of starting a server (not owned).
	NATS *NATS
	// Cluster, if set, is a JetStream cluster used instead of one server
	// (not owned); the stream and buckets get Replicas replicas.
	Cluster  *NATSCluster
	Replicas int // --replicas for ingress and workers; 0: the daemons' default (1)
}

// Mailfwd is a running nats-server + ingress + workers.
type Mailfwd struct {
	Cfg        MailfwdConfig
	NATS       *NATS
	Ingress    *Proc
	Workers    []*Proc
	SMTPAddr   string
	BlobURL    string
	ProfileDir string
	tools      Tools
	ownNATS    bool
	natsURL    string
}

// NATSURL is the client URL (list) the daemons use.
func (m *Mailfwd) NATSURL() string { return m.natsURL }

// localStoreArgs passes --nats-store-dir when the configuration asks.
func (m *Mailfwd) localStoreArgs() []string {
	if !m.Cfg.LocalStore || m.NATS == nil {
		return nil
	}
	return []string{"--nats-store-dir", m.NATS.StoreDir()}
}

// replicasArgs passes --replicas when the configuration sets it.
func (m *Mailfwd) replicasArgs() []string {
	if m.Cfg.Replicas <= 0 {
		return nil
	}
	return []string{"--replicas", strconv.Itoa(m.Cfg.Replicas)}
}

// IngressRSS is the ingress process's resident set size in KiB.
func (m *Mailfwd) IngressRSS() int64 {
	if m.Ingress == nil {
		return 0
	}
	return RSS(m.Ingress.Pid())
}

// StartMailfwd starts the stack and waits until the ingress greets.
func StartMailfwd(t Tools, cfg MailfwdConfig) (*Mailfwd, error) {
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("rig: %w", err)
	}
	m := &Mailfwd{Cfg: cfg, tools: t, ProfileDir: cfg.ProfileDir}
	switch cfg.Blob {
	case "", "file":
		m.BlobURL = "file://" + filepath.Join(cfg.Dir, "bodies")
	case "file-nofsync":
		m.BlobURL = "file://" + filepath.Join(cfg.Dir, "bodies") + "?fsync=false"
	case "s3":
		if cfg.Minio == nil {
			return nil, fmt.Errorf("rig: blob s3 needs a MinIO")
		}
		m.BlobURL = cfg.Minio.URL("mailfwd-" + strconv.FormatInt(time.Now().UnixNano(), 36))
	default:
		return nil, fmt.Errorf("rig: unknown blob store %q", cfg.Blob)
	}
	switch {
	case cfg.Cluster != nil:
		m.natsURL = cfg.Cluster.URLs()
	case cfg.NATS != nil:
		m.NATS = cfg.NATS
	default:
		n, err := StartNATS(t.NATSServer, filepath.Join(cfg.Dir, "nats"), cfg.SyncAlways)
		if err != nil {
			return nil, err
		}
		m.NATS, m.ownNATS = n, true
	}
	if m.NATS != nil {
		m.natsURL = m.NATS.URL()
	}
	port, err := FreePort()
	if err != nil {
		m.Close()
		return nil, err
	}
	m.SMTPAddr = "127.0.0.1:" + strconv.Itoa(port)
	args := append(append([]string{}, t.IngressPre...), "--listen", m.SMTPAddr, "--nats-url", m.natsURL, "--blob-store", m.BlobURL,
		"--http-addr", "", "--relay-networks", "127.0.0.0/8", "--hostname", "ingress.bench.test",
		"--max-sessions", "1000")
	args = append(args, m.replicasArgs()...)
	args = append(args, m.localStoreArgs()...)
	args = append(args, cfg.IngressArgs...)
	if cfg.ProfileDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(cfg.ProfileDir, "ingress.pprof"))
	}
	m.Ingress, err = StartProc("ingress", filepath.Join(cfg.Dir, "ingress.log"), nil, t.Ingress, args...)
	if err != nil {
		m.Close()
		return nil, err
	}
	if err := WaitTCP(m.SMTPAddr, 60*time.Second, true); err != nil {
		m.Close()
		return nil, fmt.Errorf("%w (see %s)", err, m.Ingress.LogPath)
	}
	for i := range cfg.Workers {
		if err := m.AddWorker(i); err != nil {
			m.Close()
			return nil, err
		}
	}
	if cfg.Workers > 0 {
		// Until the ingress has seen every worker read the raw envelope
		// form it writes inline bodies as base64 JSON (queue.
		// WatchEnvelopeReaders, asked every second): a run started before
		// would measure that form (at 100 KiB, JSON scanning and base64 in
		// the worker doubled its CPU per message).
		m.waitLog(m.Ingress.LogPath, "inline bodies are written as raw bytes", 20*time.Second)
	}
	return m, nil
}

// waitLog waits until the file at path contains s, at most timeout.
func (m *Mailfwd) waitLog(path, s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), s) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// WorkerArgs is the command line of worker i.
func (m *Mailfwd) workerArgs(i int) []string {
	host, port, _ := strings.Cut(m.Cfg.Route, ":")
	args := append(append([]string{}, m.tools.WorkerPre...), "--nats-url", m.natsURL, "--blob-store", m.BlobURL, "--http-addr", "",
		"--route", ".=smtp:["+host+"]:"+port, "--no-starttls",
		"--helo-name", "worker"+strconv.Itoa(i)+".bench.test")
	args = append(args, m.replicasArgs()...)
	args = append(args, m.localStoreArgs()...)
	args = append(args, m.Cfg.WorkerArgs...)
	if m.ProfileDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(m.ProfileDir, "worker"+strconv.Itoa(i)+".pprof"))
	}
	return args
}

// AddWorker starts worker process number i.
func (m *Mailfwd) AddWorker(i int) error {
	p, err := StartProc("worker"+strconv.Itoa(i), filepath.Join(m.Cfg.Dir, "worker"+strconv.Itoa(i)+".log"), nil, m.tools.Worker, m.workerArgs(i)...)
	if err != nil {
		return err
	}
	m.Workers = append(m.Workers, p)
	return nil
}

// Procs lists every process of the relay (the MinIO of an s3 stack included).
func (m *Mailfwd) Procs() []*Proc {
	ps := []*Proc{m.Ingress}
	ps = append(ps, m.Workers...)
	if m.NATS != nil {
		ps = append(ps, m.NATS.Proc)
	}
	if m.Cfg.Cluster != nil {
		ps = append(ps, m.Cfg.Cluster.Procs()...)
	}
	if m.Cfg.Blob == "s3" && m.Cfg.Minio != nil {
		ps = append(ps, m.Cfg.Minio.Proc)
	}
	return ps
}

// CPU sums the CPU time of every relay process.
func (m *Mailfwd) CPU() time.Duration {
	var d time.Duration
	for _, p := range m.Procs() {
		if p != nil {
			d += p.CPU()
		}
	}
	return d
}

// Close stops the workers, the ingress and (if owned) nats-server.
func (m *Mailfwd) Close() {
	for _, w := range m.Workers {
		_ = w.Stop(5 * time.Second)
	}
	if m.Ingress != nil {
		_ = m.Ingress.Stop(5 * time.Second)
	}
	if m.ownNATS && m.NATS != nil {
		_ = m.NATS.Stop(5 * time.Second)
	}
}
