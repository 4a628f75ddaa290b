// Command bench measures mailfwd side by side with a private Postfix and
// with the smtp-source → smtp-sink ceiling, using Postfix's own load
// generator (smtp-source) and sink (smtp-sink), all on loopback.
//
//	go run ./bench            # full grid (1/10/100 KiB × 1/10/50 sessions × 1/10 recipients)
//	BENCH_QUICK=1 go run ./bench
//
// Environment:
//
//	BENCH_QUICK=1        a subset of the grid with smaller N (a few minutes)
//	BENCH_RUNS=3         runs per cell and system (the median is reported)
//	BENCH_N=2000         messages per run (quick: 500)
//	BENCH_SYSTEMS=...    comma list of ceiling,postfix,mailfwd-file-sync,mailfwd-file,mailfwd-inline-sync,mailfwd-inline,mailfwd-s3-sync,mailfwd-s3
//	BENCH_GROWTH=1       also run the cost-growth section (deferred backlog, worker processes); 0 skips
//	BENCH_BACKLOG=10000,100000   deferred backlog sizes (quick: 10000)
//	BENCH_WORKERS=1,2,4  worker process counts
//	BENCH_PROFILE=1      also run a CPU-profiled mailfwd (ingress and worker) and print the top functions
//	BENCH_OUT=bench-results   directory for the CSV files and profiles
//
// It must run as root if the postfix system is measured (Postfix's master
// needs it); the system Postfix is never touched: a private instance with
// its own config, queue and data directories is started and stopped.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mailfwd/mailfwd/bench/rig"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are read from the environment.
type options struct {
	quick    bool
	runs     int
	n        int
	systems  []string
	growth   bool
	backlogs []int
	workers  []int
	profile  bool
	out      string
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envInts(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n >= 0 {
			out = append(out, n)
		}
	}
	return out
}

func readOptions() options {
	o := options{quick: os.Getenv("BENCH_QUICK") == "1"}
	o.runs = envInt("BENCH_RUNS", 3)
	o.n = envInt("BENCH_N", map[bool]int{true: 500, false: 2000}[o.quick])
	o.systems = []string{"ceiling", "postfix", "mailfwd-file-sync", "mailfwd-file", "mailfwd-inline-sync", "mailfwd-inline", "mailfwd-s3-sync"}
	if v := os.Getenv("BENCH_SYSTEMS"); v != "" {
		o.systems = strings.Split(v, ",")
	}
	o.growth = os.Getenv("BENCH_GROWTH") != "0"
	o.backlogs = envInts("BENCH_BACKLOG", map[bool][]int{true: {10000}, false: {10000, 100000}}[o.quick])
	o.workers = envInts("BENCH_WORKERS", map[bool][]int{true: {1, 2}, false: {1, 2, 4}}[o.quick])
	o.profile = os.Getenv("BENCH_PROFILE") == "1"
	o.out = os.Getenv("BENCH_OUT")
	if o.out == "" {
		o.out = "bench-results"
	}
	return o
}

// cell is one workload.
type cell struct {
	sizeKiB, sessions, rcpts int
}

func (c cell) String() string {
	return fmt.Sprintf("%dKiB/%ds/%dr", c.sizeKiB, c.sessions, c.rcpts)
}

func grid(quick bool) []cell {
	if quick {
		return []cell{{1, 10, 1}, {10, 10, 1}, {1, 50, 10}}
	}
	var out []cell
	for _, size := range []int{1, 10, 100} {
		for _, s := range []int{1, 10, 50} {
			for _, r := range []int{1, 10} {
				out = append(out, cell{size, s, r})
			}
		}
	}
	return out
}

// system is something smtp-source can send to, with a sink behind it.
type system struct {
	name       string
	durability string
	addr       string
	sink       *rig.Sink
	cpu        func() time.Duration // nil: not a relay (the ceiling)
	close      func()
}

func run() error {
	o := readOptions()
	tools := rig.FindTools()
	if tools.SMTPSource == "" || tools.SMTPSink == "" || tools.Postfix == "" {
		return fmt.Errorf("smtp-source, smtp-sink and postfix are needed: apt-get install -y postfix (make bench does this)")
	}
	if tools.NATSServer == "" {
		return fmt.Errorf("no nats-server binary: run make tools or set MAILFWD_NATS_SERVER_BIN")
	}
	work, err := os.MkdirTemp("", "mailfwd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// Postfix's daemons (user postfix) must reach their data directory.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := tools.BuildMailfwd(ctx, work); err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	stamp := time.Now().Format("20060102-150405")
	rec, err := newRecorder(filepath.Join(o.out, "bench-"+stamp+".csv"))
	if err != nil {
		return err
	}
	defer rec.close()
	fmt.Printf("mailfwd bench: %d runs per cell, N=%d messages per run, %d CPUs, load average now %s\n",
		o.runs, o.n, numCPU(), loadavg())
	fmt.Printf("systems: %s; results in %s\n\n", strings.Join(o.systems, ", "), rec.path)

	var minio *rig.Minio
	needMinio := false
	for _, s := range o.systems {
		needMinio = needMinio || strings.HasPrefix(s, "mailfwd-s3")
	}
	if needMinio {
		if tools.Minio == "" {
			return fmt.Errorf("no MinIO binary: run make tools or set MAILFWD_MINIO_BIN")
		}
		if minio, err = rig.StartMinio(tools.Minio, filepath.Join(work, "minio")); err != nil {
			return err
		}
		defer minio.Stop(10 * time.Second)
	}

	var systems []*system
	defer func() {
		for _, s := range systems {
			s.close()
		}
	}()
	for _, name := range o.systems {
		s, err := startSystem(tools, work, name, minio)
		if err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		systems = append(systems, s)
	}

	cells := grid(o.quick)
	results := map[string][]sample{} // key cell|system
	for ci, c := range cells {
		for r := range o.runs {
			// Alternate: rotate the system order run by run.
			for k := range systems {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s := systems[(k+r+ci)%len(systems)]
				smp := measure(tools, s, c, o.n)
				rec.write("grid", s, c, o.n, r, smp)
				results[c.String()+"|"+s.name] = append(results[c.String()+"|"+s.name], smp)
				if smp.err != nil {
					fmt.Printf("  %-18s %-14s run %d: %v\n", s.name, c, r+1, smp.err)
				}
			}
		}
		printCell(c, o.n, systems, results)
	}
	summary := filepath.Join(o.out, "bench-"+stamp+"-summary.csv")
	if err := writeSummary(summary, cells, o.n, systems, results); err != nil {
		return err
	}
	fmt.Printf("\nsummary (medians, ratios): %s\n", summary)
	printGoal(cells, o.n, systems, results)
	for _, s := range systems {
		s.close()
	}
	systems = nil

	if o.growth && ctx.Err() == nil {
		if err := growth(ctx, tools, work, o, rec); err != nil {
			return fmt.Errorf("cost growth: %w", err)
		}
	}
	if o.profile && ctx.Err() == nil {
		if err := profile(ctx, work, o, stamp); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	return nil
}

// startSystem starts one system with its own smtp-sink.
func startSystem(tools rig.Tools, work, name string, minio *rig.Minio) (*system, error) {
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	sink, err := rig.StartSink(tools.SMTPSink, dir)
	if err != nil {
		return nil, err
	}
	s := &system{name: name, sink: sink}
	switch name {
	case "ceiling":
		s.durability = "none (no relay)"
		s.addr = sink.Addr
		s.close = func() { _ = sink.Kill() }
		return s, nil
	case "postfix":
		pf, err := rig.StartPostfix(tools.Postfix, dir, sink.Addr)
		if err != nil {
			_ = sink.Kill()
			return nil, err
		}
		s.durability = "fsync queue file before 250"
		s.addr, s.cpu = pf.SMTPAddr, pf.CPU
		s.close = func() { pf.Stop(); _ = sink.Kill() }
		return s, nil
	}
	cfg := rig.MailfwdConfig{Dir: dir, Route: sink.Addr, Minio: minio}
	switch name {
	case "mailfwd-file-sync":
		cfg.Blob, cfg.SyncAlways = "file", true
		s.durability = "body fsync + JetStream sync always"
	case "mailfwd-file":
		cfg.Blob = "file"
		s.durability = "body fsync + JetStream default sync (2m)"
	case "mailfwd-inline-sync":
		cfg.Blob, cfg.SyncAlways = "file", true
		cfg.IngressArgs = append(cfg.IngressArgs, "--inline-body-max", "65536")
		s.durability = "bodies ≤64 KiB inline in JetStream, sync always"
	case "mailfwd-inline":
		cfg.Blob = "file"
		cfg.IngressArgs = append(cfg.IngressArgs, "--inline-body-max", "65536")
		s.durability = "bodies ≤64 KiB inline in JetStream, default sync (2m)"
	case "mailfwd-s3-sync":
		cfg.Blob, cfg.SyncAlways = "s3", true
		s.durability = "MinIO + JetStream sync always"
	case "mailfwd-s3":
		cfg.Blob = "s3"
		s.durability = "MinIO + JetStream default sync (2m)"
	default:
		_ = sink.Kill()
		return nil, fmt.Errorf("unknown system %q", name)
	}
	m, err := rig.StartMailfwd(tools, cfg)
	if err != nil {
		_ = sink.Kill()
		return nil, err
	}
	s.addr, s.cpu = m.SMTPAddr, m.CPU
	s.close = func() { m.Close(); _ = sink.Kill() }
	return s, nil
}

// sample is one run's measurement.
type sample struct {
	accept, e2e time.Duration
	cpu         time.Duration // relay CPU for the run (0 for the ceiling)
	machine     time.Duration // whole-machine busy CPU (/proc/stat) over the run, any process
	err         error
}

func (s sample) acceptRate(n int) float64 { return float64(n) / s.accept.Seconds() }
func (s sample) e2eRate(n int) float64    { return float64(n) / s.e2e.Seconds() }
func (s sample) cpuPerMsg(n int) float64  { return float64(s.cpu.Microseconds()) / 1000 / float64(n) }
func (s sample) machinePerMsg(n int) float64 {
	return float64(s.machine.Microseconds()) / 1000 / float64(n)
}

// machineBusy is the busy CPU time of the whole machine (user, nice,
// system, irq, softirq, steal from /proc/stat).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i > 7 { // guest time is already in user
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// measure sends n messages with smtp-source and waits until the sink has
// them all; CPU is taken before the send and once the relay is idle after.
func measure(tools rig.Tools, s *system, c cell, n int) sample {
	before := s.sink.Count()
	var cpu0 time.Duration
	if s.cpu != nil {
		cpu0 = s.cpu()
	}
	m0 := machineBusy()
	args := []string{"-d", "-s", strconv.Itoa(c.sessions), "-m", strconv.Itoa(n),
		"-l", strconv.Itoa(c.sizeKiB * 1024), "-r", strconv.Itoa(c.rcpts),
		"-M", "client.bench.test", "-f", "sender@client.bench.test", "-t", "rcpt@dest.bench.test", s.addr}
	start := time.Now()
	out, err := exec.Command(tools.SMTPSource, args...).CombinedOutput()
	accept := time.Since(start)
	if err != nil {
		return sample{err: fmt.Errorf("smtp-source: %w: %s", err, strings.TrimSpace(string(out)))}
	}
	timeout := 2*time.Minute + time.Duration(n)*50*time.Millisecond
	at, err := s.sink.WaitCount(before+int64(n), timeout)
	smp := sample{accept: accept, e2e: at.Sub(start), err: err}
	if s.cpu != nil {
		smp.cpu = settleCPU(s.cpu) - cpu0
	}
	smp.machine = machineBusy() - m0
	return smp
}

// settleCPU waits until the relay's CPU counter stops moving (acks, body
// deletes, queue file removal finish after the sink has the message), at
// most 2 s, and returns it.
func settleCPU(cpu func() time.Duration) time.Duration {
	last := cpu()
	for range 10 {
		time.Sleep(200 * time.Millisecond)
		now := cpu()
		if now-last <= 10*time.Millisecond {
			return now
		}
		last = now
	}
	return last
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return max(1, strings.Count(string(b), "\nprocessor")+boolInt(strings.HasPrefix(string(b), "processor")))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
