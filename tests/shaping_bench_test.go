package tests

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/daemon"
)

// cpuTime is the process's user+system CPU time so far (ingress, worker
// and the embedded nats-server all run in it).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkShapingCost: the cost of fleet-wide limits. The same end-to-end
// run (10 client sessions, 1 KiB messages to one domain) with no limit,
// and with a fleet limit that never binds (concurrency 500, 100000/s), so
// each message takes a KV slot lease (Create, Delete) and a GCRA step
// (Get, CAS) but never waits. Reports delivered/s and CPU per message.
func BenchmarkShapingCost(b *testing.B) {
	for _, mode := range []struct {
		name   string
		limits []string
	}{{"limits=off", nil}, {"limits=fleet-rate", []string{"alpha.test:rate=100000/s"}}, {"limits=fleet", []string{"alpha.test:concurrency=500,rate=100000/s"}}} {
		b.Run(mode.name, func(b *testing.B) {
			e := newEnv(b, envOptions{blob: "fs", workerSetup: func(w *daemon.Worker) { w.Limits = mode.limits }})
			dest := e.sinks["127.0.0.2"]
			body := string(message("bench", "bench@origin.test", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15)))
			var next, failed atomic.Int64
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			var wg sync.WaitGroup
			for range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(e.smtp)
					if err != nil {
						failed.Add(1)
						return
					}
					defer c.Close()
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						if err := c.SendMail("sender@origin.test", []string{fmt.Sprintf("r%d@alpha.test", i)}, strings.NewReader(body)); err != nil {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			waitFor(b, "every message at the destination", 5*time.Minute, func() bool { return dest.Count() >= b.N-int(failed.Load()) })
			total, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d sends failed", failed.Load())
			}
			b.ReportMetric(float64(b.N)/total.Seconds(), "delivered/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
		})
	}
}

// BenchmarkFleetRateUse: four worker processes share one destination's
// rate (20/s); reports the rate the MX saw from its first to its last
// message as a fraction of the limit (goal ≥ 0.9) and the busiest second.
func BenchmarkFleetRateUse(b *testing.B) {
	const limit, n = 20.0, 120
	mx := startCountingMX(b, 0)
	f := startFleet(b, mx)
	for range 4 {
		f.worker("--domain-limit", "dest.test:rate=20/s", "--log-level", "info")
	}
	// One round of n messages whatever b.N (-benchtime 2000x in make
	// bench-go would otherwise take hours at 20/s).
	b.ResetTimer()
	f.sendN("u", n)
	waitFor(b, "all mail delivered", 5*time.Minute, func() bool { return len(mx.Messages()) >= n })
	msgs := mx.Messages()
	first, last := msgs[0].At, msgs[0].At
	for _, m := range msgs {
		if m.At.Before(first) {
			first = m.At
		}
		if m.At.After(last) {
			last = m.At
		}
	}
	b.ReportMetric(float64(n-1)/last.Sub(first).Seconds()/limit, "of-limit")
	b.ReportMetric(float64(mx.busiest()), "busiest-1s")
}
