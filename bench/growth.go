package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/bench/rig"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// growthCell is the healthy-domain workload of the cost-growth section.
var growthCell = cell{sizeKiB: 1, sessions: 10, rcpts: 1, reuse: true}

// growth measures (1) the healthy-domain rate with a deferred backlog of a
// dead domain and (2) the rate with 1, 2, 4 worker processes.
func growth(ctx context.Context, tools rig.Tools, work string, o options, rec *recorder) error {
	fmt.Printf("\n== cost growth (mailfwd-file-sync: the single-node configuration, on disk before the 250; %s, N=%d, median of %d)\n", growthCell, o.n, o.runs)
	dir := filepath.Join(work, "growth-backlog")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	sink, err := rig.StartSink(tools.SMTPSink, dir)
	if err != nil {
		return err
	}
	defer sink.Kill()
	m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{Dir: dir, Route: sink.Addr, Blob: "file", LocalStore: true})
	if err != nil {
		return err
	}
	defer m.Close()
	sys := &system{name: "mailfwd-file-sync", durability: "on disk before the 250 (--nats-store-dir)", addr: m.SMTPAddr, sink: sink, cpu: m.CPU}
	have := 0
	fmt.Printf("  %-28s %10s %10s %12s\n", "deferred backlog (dead domain)", "accept/s", "e2e/s", "cpu ms/msg")
	for _, want := range append([]int{0}, o.backlogs...) {
		if want > have {
			t0 := time.Now()
			if err := addBacklog(ctx, m.NATS.URL(), want-have); err != nil {
				return err
			}
			msgs, _ := streamMsgs(ctx, m.NATS.URL())
			fmt.Printf("  (published %d deferred envelopes in %v; stream holds %d messages)\n", want-have, time.Since(t0).Round(time.Millisecond), msgs)
			have = want
		}
		var smps []sample
		sys.name = fmt.Sprintf("mailfwd-file-sync backlog=%d", want)
		for r := range o.runs {
			smp := measure(tools, sys, growthCell, o.n)
			rec.write("backlog", sys, growthCell, o.n, r, smp)
			smps = append(smps, smp)
		}
		st := summarize(smps, o.n, true)
		fmt.Printf("  %-28d %10s %10s %12s%s\n", want, f1(st.accept), f1(st.e2e), f3(st.cpu), failNote(st))
	}
	m.Close()
	_ = sink.Kill()

	fmt.Printf("\n  %-28s %10s %10s %12s   (%s)\n", "worker processes", "accept/s", "e2e/s", "cpu ms/msg", cell{1, 50, 1, true})
	for _, k := range o.workers {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st, err := workersRun(tools, filepath.Join(work, fmt.Sprintf("growth-workers-%d", k)), k, o, rec)
		if err != nil {
			return err
		}
		fmt.Printf("  %-28d %10s %10s %12s%s\n", k, f1(st.accept), f1(st.e2e), f3(st.cpu), failNote(st))
	}
	return nil
}

func failNote(st stats) string {
	if st.failed > 0 {
		return fmt.Sprintf("  (%d failed runs)", st.failed)
	}
	return ""
}

func workersRun(tools rig.Tools, dir string, k int, o options, rec *recorder) (stats, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return stats{}, err
	}
	sink, err := rig.StartSink(tools.SMTPSink, dir)
	if err != nil {
		return stats{}, err
	}
	defer sink.Kill()
	m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{Dir: dir, Route: sink.Addr, Blob: "file", Workers: k, LocalStore: true})
	if err != nil {
		return stats{}, err
	}
	defer m.Close()
	sys := &system{name: fmt.Sprintf("mailfwd-file-sync workers=%d", k), durability: "on disk before the 250 (--nats-store-dir)", addr: m.SMTPAddr, sink: sink, cpu: m.CPU}
	c := cell{1, 50, 1, true}
	var smps []sample
	for r := range o.runs {
		smp := measure(tools, sys, c, o.n)
		rec.write("workers", sys, c, o.n, r, smp)
		smps = append(smps, smp)
	}
	return summarize(smps, o.n, true), nil
}

// addBacklog publishes n deferred envelopes of a dead domain, due in an
// hour, through the queue package (what a worker does after a 4xx).
func addBacklog(ctx context.Context, natsURL string, n int) error {
	q, err := queue.Connect(ctx, queue.Config{URL: natsURL, ClientName: "bench-backlog"})
	if err != nil {
		return err
	}
	defer q.Close()
	due := time.Now().Add(time.Hour)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) || ctx.Err() != nil {
					return
				}
				qid := envelope.NewQueueID()
				e := &envelope.Envelope{QueueID: qid, From: "sender@client.bench.test", Domain: "dead.bench.test",
					Recipients: []envelope.Recipient{{Addr: "user@dead.bench.test", Attempts: 1, LastError: "421 4.4.2 connection refused"}},
					BodyKey:    qid, Size: 1024, Arrived: time.Now().UTC(), Parts: 1, Attempts: 1}
				if err := q.Defer(ctx, e, due, "1"); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("backlog: %w", firstErr)
	}
	return ctx.Err()
}

func streamMsgs(ctx context.Context, natsURL string) (uint64, error) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	s, err := js.Stream(ctx, "MAIL")
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// profileCells are the workloads profiled in each configuration: the
// per-message cost (1 KiB) and the per-byte cost (100 KiB), both with a new
// connection per message.
var profileCells = []cell{{1, 10, 1, false}, {100, 10, 1, false}}

// profile runs each mailfwd configuration (single node with sync always,
// the chart's MinIO + R3 cluster, R3 with file bodies) with CPU-profiled
// ingress and worker under each profile cell and prints the CPU split per
// process and the top of each profile (go tool pprof -top).
func profile(ctx context.Context, work string, o options, stamp string) error {
	tools := rig.FindTools()
	bin := filepath.Join(work, "profiled")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/mailfwd/mailfwd/bench/profiled").CombinedOutput(); err != nil {
		return fmt.Errorf("build profiled: %w\n%s", err, out)
	}
	tools.Ingress, tools.Worker = bin, bin
	tools.IngressPre, tools.WorkerPre = []string{"ingress"}, []string{"worker"}
	profDir, err := filepath.Abs(filepath.Join(o.out, "profile-"+stamp))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(profDir, 0o755); err != nil {
		return err
	}
	var minio *rig.Minio
	variants := []string{"single", "chart", "r3"}
	if v := os.Getenv("BENCH_PROFILE_VARIANTS"); v != "" {
		variants = strings.Split(v, ",")
	}
	cells := profileCells
	if sizes := envInts("BENCH_SIZES", nil); len(sizes) > 0 {
		cells = slices.DeleteFunc(slices.Clone(cells), func(c cell) bool { return !slices.Contains(sizes, c.sizeKiB) })
	}
	for _, variant := range variants {
		for _, c := range cells {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			name := variant + "-" + strings.ReplaceAll(c.String(), "/", "-")
			dir := filepath.Join(work, "profile-"+name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			sink, err := rig.StartSink(tools.SMTPSink, dir)
			if err != nil {
				return err
			}
			pdir := filepath.Join(profDir, name)
			_ = os.MkdirAll(pdir, 0o755)
			cfg := rig.MailfwdConfig{Dir: dir, Route: sink.Addr, Blob: "file", ProfileDir: pdir}
			switch variant {
			case "single":
				cfg.LocalStore = true // mailfwd-file-sync
			case "chart":
				if minio == nil {
					if minio, err = rig.StartMinio(tools.Minio, filepath.Join(work, "profile-minio")); err != nil {
						_ = sink.Kill()
						return err
					}
					defer minio.Stop(10 * time.Second)
				}
				cfg.Blob, cfg.Minio = "s3", minio
			}
			m, stop, err := startMailfwd(tools, cfg, variant == "chart" || variant == "r3", sink)
			if err != nil {
				return err
			}
			sys := &system{name: "mailfwd-" + name + " (profiled)", addr: m.SMTPAddr, sink: sink, cpu: m.CPU}
			n := o.n
			if c.sizeKiB < 10 {
				n = max(o.n, 3000)
			}
			cpu0 := map[string]time.Duration{}
			for _, p := range m.Procs() {
				cpu0[p.Name] = p.CPU()
			}
			smp := measure(tools, sys, c, n)
			var split []string
			for _, p := range m.Procs() {
				split = append(split, fmt.Sprintf("%s %.3f", p.Name, float64((p.CPU()-cpu0[p.Name]).Microseconds())/1000/float64(n)))
			}
			stop()
			if smp.err != nil {
				return smp.err
			}
			sort.Strings(split)
			fmt.Printf("\n== profile %s, %s: %d msgs, accept %.0f/s, e2e %.0f/s, CPU ms/msg %.3f (per process: %s)\n",
				variant, c, n, smp.acceptRate(n), smp.e2eRate(n), smp.cpuPerMsg(n), strings.Join(split, ", "))
			for _, p := range []string{"ingress", "worker0"} {
				file := filepath.Join(pdir, p+".pprof")
				out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=25", file).CombinedOutput()
				if err != nil {
					fmt.Printf("  pprof %s: %v\n%s\n", file, err, out)
					continue
				}
				fmt.Printf("-- %s (%s)\n%s\n", p, file, out)
				cum, _ := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=40", file).CombinedOutput()
				_ = os.WriteFile(filepath.Join(pdir, p+"-cum.txt"), cum, 0o644)
			}
		}
	}
	return nil
}
