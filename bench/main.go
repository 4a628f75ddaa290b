// Command bench measures mailfwd side by side with a private Postfix, with
// maddy (a queueing relay in Go) and with the smtp-source → smtp-sink
// ceiling, using Postfix's own load generator (smtp-source) and sink
// (smtp-sink), all on loopback, interleaved run by run.
//
//	go run ./bench            # full grid: a connection per message and reused sessions
//	                          # × 1/10/100 KiB × 10/50 sessions × 1/10 recipients
//	BENCH_QUICK=1 go run ./bench
//
// Configurations of mailfwd measured by default (see docs/benchmarks.md):
//
//	mailfwd-file-sync   single node with Postfix's durability (what make run uses): one
//	                    nats-server, ingress and worker with --nats-store-dir (every
//	                    accept flushed to disk before the 250), bodies over 128 KiB in files
//	mailfwd-jsync       round 1's single node: nats-server sync_interval always, every
//	                    body in a file (--inline-body-max 0); not in the default list
//	mailfwd-chart       what the chart ships: bodies over 128 KiB in a real MinIO, NATS
//	                    as the quickstart deploys it (3-node JetStream cluster, R3, default sync)
//	mailfwd-r3          the same 3-node cluster, bodies over 128 KiB in files
//
// Environment:
//
//	BENCH_QUICK=1        a subset of the grid with smaller N (a few minutes)
//	BENCH_RUNS=3         runs per cell and system (the median is reported)
//	BENCH_N=1000         messages per run (quick: 300)
//	BENCH_MODES=conn,reuse   connection modes: conn = a new connection per message
//	                     (smtp-source's default), reuse = sessions reused (smtp-source -d)
//	BENCH_SYSTEMS=...    comma list of ceiling,postfix,maddy,mailfwd-file-sync,mailfwd-chart,
//	                     mailfwd-r3,mailfwd-jsync,mailfwd-file,mailfwd-inline-sync,mailfwd-inline,mailfwd-s3-sync,mailfwd-s3
//	BENCH_MAX_MINUTES=120   stop the grid after this long (the summary covers what ran)
//	BENCH_GRID=0         skip the grid (e.g. only BENCH_PROFILE=1 or the cost growth)
//	BENCH_GROWTH=1       also run the cost-growth section (deferred backlog, worker processes); 0 skips
//	BENCH_BACKLOG=10000,100000   deferred backlog sizes (quick: 10000)
//	BENCH_WORKERS=1,2,4  worker process counts
//	BENCH_PROFILE=1      also run a CPU-profiled mailfwd (ingress and worker) in one cell of
//	                     each configuration and print the top functions
//	BENCH_SIZES=1,10,100      only the cells of these message sizes (KiB); with BENCH_PROFILE=1
//	                     also the profiled cells
//	BENCH_PROFILE_VARIANTS=single,chart,r3   the profiled configurations
//	BENCH_EVENTS=0       skip the event stream's cost (events.go: mailfwd-file-sync with
//	                     events on and off, interleaved); BENCH_EVENTS_RUNS=7 runs per cell,
//	                     BENCH_EVENTS_N=3000 messages per run (quick: 1000)
//	BENCH_WAN=0          skip the WAN rows (wan.go: destination behind a latency proxy,
//	                     Postfix vs mailfwd-file-sync, 4 connections each)
//	BENCH_WAN_N=300      messages per WAN run (quick: 100); BENCH_WAN_DELAY_MS=25 one way;
//	                     BENCH_WAN_RCPTS=1,10 and BENCH_SIZES select WAN cells
//	BENCH_SMART=0        skip the smart-sink workload (smart.go); BENCH_SMART_N=1000 (quick: 300)
//	BENCH_OUT=bench-results   directory for the CSV files and profiles
//
// It must run as root if the postfix system is measured (Postfix's master
// needs it); the system Postfix is never touched: a private instance with
// its own config, queue and data directories is started and stopped. maddy
// is built by scripts/maddy.sh (make bench runs it); without the binary the
// maddy system is skipped with a note.
package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
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
	modes    []bool // reuse sessions?
	maxTime  time.Duration
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
	o.n = envInt("BENCH_N", map[bool]int{true: 300, false: 1000}[o.quick])
	o.systems = []string{"ceiling", "postfix", "maddy", "mailfwd-file-sync", "mailfwd-chart", "mailfwd-r3"}
	o.modes = []bool{false, true}
	if v := os.Getenv("BENCH_MODES"); v != "" {
		o.modes = nil
		for _, m := range strings.Split(v, ",") {
			o.modes = append(o.modes, strings.TrimSpace(m) == "reuse")
		}
	}
	o.maxTime = time.Duration(envInt("BENCH_MAX_MINUTES", 120)) * time.Minute
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
	reuse                    bool // smtp-source -d: sessions reused; else a new connection per message
}

func (c cell) mode() string {
	if c.reuse {
		return "reuse"
	}
	return "conn"
}

func (c cell) String() string {
	return fmt.Sprintf("%s/%dKiB/%ds/%dr", c.mode(), c.sizeKiB, c.sessions, c.rcpts)
}

// grid is every cell of the goal (≥ 10 sessions) in each mode.
func grid(quick bool, modes []bool) []cell {
	var out []cell
	for _, reuse := range modes {
		if quick {
			out = append(out, cell{1, 10, 1, reuse}, cell{100, 10, 1, reuse}, cell{10, 10, 10, reuse})
			continue
		}
		for _, size := range []int{1, 10, 100} {
			for _, s := range []int{10, 50} {
				for _, r := range []int{1, 10} {
					out = append(out, cell{size, s, r, reuse})
				}
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
	// rss is the memory reported per cell in KiB: the summed PSS of every
	// process of the relay (rig.TreePSS), the same way for every system.
	rss func() int64
	// procs is each relay process's CPU time by name (nil: not broken down).
	procs func() map[string]time.Duration
	close func()
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
	fmt.Printf("systems: %s; results in %s\n", strings.Join(o.systems, ", "), rec.path)
	fmt.Printf("work directory %s on %s\n\n", work, fileSystemOf(work))

	var minio *rig.Minio
	needMinio := false
	for _, s := range o.systems {
		needMinio = needMinio || strings.HasPrefix(s, "mailfwd-s3") || s == "mailfwd-chart"
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
		if name == "maddy" && rig.FindMaddy() == "" {
			fmt.Println("maddy: no binary (run scripts/maddy.sh, which make bench does); skipped")
			continue
		}
		s, err := startSystem(tools, work, name, minio)
		if err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		systems = append(systems, s)
	}

	cells := grid(o.quick, o.modes)
	if sizes := envInts("BENCH_SIZES", nil); len(sizes) > 0 {
		cells = slices.DeleteFunc(cells, func(c cell) bool { return !slices.Contains(sizes, c.sizeKiB) })
	}
	if os.Getenv("BENCH_GRID") == "0" {
		cells = nil
	}
	results := map[string][]sample{} // key cell|system
	deadline := time.Now().Add(o.maxTime)
	for ci, c := range cells {
		if time.Now().After(deadline) {
			fmt.Printf("\nBENCH_MAX_MINUTES=%d reached: %d of %d cells measured\n", int(o.maxTime.Minutes()), ci, len(cells))
			cells = cells[:ci]
			break
		}
		for r := range o.runs {
			// A new random system order in every run.
			for _, k := range rand.Perm(len(systems)) {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s := systems[k]
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
	if os.Getenv("BENCH_EVENTS") != "0" && ctx.Err() == nil {
		if err := eventsCost(ctx, tools, work, o, rec); err != nil {
			return fmt.Errorf("events cost: %w", err)
		}
	}
	if os.Getenv("BENCH_WAN") != "0" && ctx.Err() == nil {
		if err := wan(ctx, tools, work, o); err != nil {
			return fmt.Errorf("wan: %w", err)
		}
	}
	if os.Getenv("BENCH_SMART") != "0" && ctx.Err() == nil {
		if err := smartSink(ctx, tools, work, o); err != nil {
			return fmt.Errorf("smart sink: %w", err)
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

// mailfwdVariant is how one mailfwd-* system of the benchmark is run.
type mailfwdVariant struct {
	blob          string // body store: file or s3
	syncAlways    bool   // nats-server sync_interval always
	localStore    bool   // every accept flushed (syncfs of the server's store) before the 250
	inlineBodyMax string // the ingress's --inline-body-max; "" its default (128 KiB)
	noEvents      bool   // --events=false on ingress and workers
	eventTypes    string // --events-types on ingress and workers ("": all)
	cluster       bool   // a 3-node NATS cluster, R3
	durability    string
}

var mailfwdVariants = map[string]mailfwdVariant{
	"mailfwd-chart": {blob: "s3", cluster: true,
		durability: "envelope (body inline ≤128 KiB, larger bodies in MinIO) on a quorum of 3 JetStream nodes (R3, default sync) before the 250"},
	"mailfwd-r3": {blob: "file", cluster: true,
		durability: "envelope (body inline ≤128 KiB, larger bodies fsynced files) on a quorum of 3 JetStream nodes (R3, default sync)"},
	// What make run and the single-node docs use: bodies up to the default
	// --inline-body-max in the envelope, larger ones in file://; every
	// accept flushed to disk (syncfs of the server's store, group commit)
	// before the 250.
	"mailfwd-file-sync": {blob: "file", localStore: true,
		durability: "on disk before the 250: envelope (body inline ≤128 KiB) written by nats-server, then syncfs of its store (group commit); larger bodies fsynced files"},
	// The same without the event stream (the events section's control).
	"mailfwd-file-sync-noevents": {blob: "file", localStore: true, noEvents: true,
		durability: "as mailfwd-file-sync, event stream off (--events=false)"},
	"mailfwd-file-sync-failures": {blob: "file", localStore: true, eventTypes: "deferred,bounced,expired,failed,not_queued",
		durability: "as mailfwd-file-sync, failure events only (--events-types)"},
	// Round 1's single-node configuration: JetStream fsyncs every write,
	// bodies in files.
	"mailfwd-jsync":       {blob: "file", syncAlways: true, inlineBodyMax: "0", durability: "body fsync + JetStream sync always"},
	"mailfwd-file":        {blob: "file", inlineBodyMax: "0", durability: "body fsync + JetStream default sync (2m)"},
	"mailfwd-inline-sync": {blob: "file", syncAlways: true, inlineBodyMax: "65536", durability: "bodies ≤64 KiB inline in JetStream, sync always"},
	"mailfwd-inline":      {blob: "file", inlineBodyMax: "65536", durability: "bodies ≤64 KiB inline in JetStream, default sync (2m)"},
	"mailfwd-s3-sync":     {blob: "s3", syncAlways: true, inlineBodyMax: "0", durability: "MinIO + JetStream sync always"},
	"mailfwd-s3":          {blob: "s3", inlineBodyMax: "0", durability: "MinIO + JetStream default sync (2m)"},
}

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
	case "maddy":
		md, err := rig.StartMaddy(rig.FindMaddy(), dir, sink.Addr)
		if err != nil {
			_ = sink.Kill()
			return nil, err
		}
		s.durability = "queue: 3 files fsynced before the 250 (not the directory)"
		s.addr, s.cpu = md.SMTPAddr, md.CPU
		s.rss = func() int64 { return rig.TreePSS(md.Pid()) }
		s.close = func() { _ = md.Stop(10 * time.Second); _ = sink.Kill() }
		return s, nil
	case "postfix":
		pf, err := rig.StartPostfix(tools.Postfix, dir, sink.Addr)
		if err != nil {
			_ = sink.Kill()
			return nil, err
		}
		s.durability = "fsync queue file before 250"
		s.addr, s.cpu = pf.SMTPAddr, pf.CPU
		s.rss = func() int64 { return rig.TreePSS(pf.MasterPid()) }
		s.close = func() { pf.Stop(); _ = sink.Kill() }
		return s, nil
	}
	v, ok := mailfwdVariants[name]
	if !ok {
		_ = sink.Kill()
		return nil, fmt.Errorf("unknown system %q", name)
	}
	cfg := rig.MailfwdConfig{Dir: dir, Route: sink.Addr, Minio: minio, Blob: v.blob, SyncAlways: v.syncAlways, LocalStore: v.localStore}
	if v.inlineBodyMax != "" {
		cfg.IngressArgs = append(cfg.IngressArgs, "--inline-body-max", v.inlineBodyMax)
	}
	if v.noEvents {
		cfg.IngressArgs = append(cfg.IngressArgs, "--events=false")
		cfg.WorkerArgs = append(cfg.WorkerArgs, "--events=false")
	}
	if v.eventTypes != "" {
		cfg.IngressArgs = append(cfg.IngressArgs, "--events-types="+v.eventTypes)
		cfg.WorkerArgs = append(cfg.WorkerArgs, "--events-types="+v.eventTypes)
	}
	s.durability = v.durability
	m, stop, err := startMailfwd(tools, cfg, v.cluster, sink)
	if err != nil {
		return nil, err
	}
	s.addr, s.cpu = m.SMTPAddr, m.CPU
	s.rss = func() int64 { return rig.TreePSS(procPids(m.Procs())...) }
	s.procs = func() map[string]time.Duration {
		cpu := map[string]time.Duration{}
		for _, p := range m.Procs() {
			cpu[p.Name] += p.CPU()
		}
		return cpu
	}
	s.close = stop
	return s, nil
}

// startMailfwd starts mailfwd as cfg says, on a 3-node NATS cluster (R3) in
// cfg.Dir when cluster is set, delivering to sink; stop ends it all, sink
// too. When it fails, what it started and sink are stopped.
func startMailfwd(tools rig.Tools, cfg rig.MailfwdConfig, cluster bool, sink *rig.Sink) (m *rig.Mailfwd, stop func(), err error) {
	var nc *rig.NATSCluster
	if cluster {
		if nc, err = rig.StartNATSCluster(tools.NATSServer, filepath.Join(cfg.Dir, "nats"), 3, false); err != nil {
			_ = sink.Kill()
			return nil, nil, err
		}
		cfg.Cluster, cfg.Replicas = nc, 3
	}
	stopAll := func() {
		if m != nil {
			m.Close()
		}
		if nc != nil {
			nc.Stop()
		}
		_ = sink.Kill()
	}
	if m, err = rig.StartMailfwd(tools, cfg); err != nil {
		stopAll()
		return nil, nil, err
	}
	return m, stopAll, nil
}

// sample is one run's measurement.
type sample struct {
	accept, e2e time.Duration
	cpu         time.Duration // relay CPU for the run (0 for the ceiling)
	machine     time.Duration // whole-machine busy CPU (/proc/stat) over the run, any process
	rssKiB      int64         // peak of system.rss sampled during the run
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
	var args []string
	if c.reuse {
		args = append(args, "-d")
	}
	args = append(args, "-s", strconv.Itoa(c.sessions), "-m", strconv.Itoa(n),
		"-l", strconv.Itoa(c.sizeKiB*1024), "-r", strconv.Itoa(c.rcpts),
		"-M", "client.bench.test", "-f", "sender@client.bench.test", "-t", "rcpt@dest.bench.test", s.addr)
	peak := sampleRSS(s.rss)
	start := time.Now()
	out, err := exec.Command(tools.SMTPSource, args...).CombinedOutput()
	accept := time.Since(start)
	if err != nil {
		peak()
		return sample{err: fmt.Errorf("smtp-source: %w: %s", err, strings.TrimSpace(string(out)))}
	}
	timeout := 2*time.Minute + time.Duration(n)*50*time.Millisecond
	at, err := s.sink.WaitCount(before+int64(n), timeout)
	smp := sample{accept: accept, e2e: at.Sub(start), err: err, rssKiB: peak()}
	if s.cpu != nil {
		smp.cpu = settleCPU(s.cpu) - cpu0
	} else {
		time.Sleep(time.Second) // let late duplicates arrive before the count check
	}
	// Exactly n: a duplicate, or a leftover of an earlier failed run, would
	// otherwise end a run early unseen.
	if got := s.sink.Count() - before; smp.err == nil && got != int64(n) {
		smp.err = fmt.Errorf("the sink got %d new transactions, want exactly %d", got, n)
	}
	smp.machine = machineBusy() - m0
	return smp
}

// sampleRSS polls rss every 250 ms (every system alike: one /proc scan
// per sample) until the returned function is called,
// which stops it and returns the peak (KiB).
func sampleRSS(rss func() int64) func() int64 {
	if rss == nil {
		return func() int64 { return 0 }
	}
	stop, done := make(chan struct{}), make(chan int64)
	go func() {
		peak := rss()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				done <- max(peak, rss())
				return
			case <-t.C:
				peak = max(peak, rss())
			}
		}
	}()
	return func() int64 { close(stop); return <-done }
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

// fileSystemOf names the file system holding path (type, device, mount
// point, from /proc/self/mounts).
func fileSystemOf(path string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "?"
	}
	best, desc := "", "?"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, desc = mp, fmt.Sprintf("%s (%s, mounted on %s)", f[2], f[0], mp)
		}
	}
	return desc
}
