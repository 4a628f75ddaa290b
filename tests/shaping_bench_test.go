package tests

import (
	"context"
	"fmt"
	"sort"
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
// (Get, CAS) but never waits. Reports delivered/s, CPU per message and
// the delivery latency (the message's final dot, answered by the
// ingress's 250 once queued, to the destination's 250; p50 and p99 under
// this load of 10 sessions sending as fast as they can).
func BenchmarkShapingCost(b *testing.B) {
	for _, mode := range shapingModes {
		b.Run(mode.name, func(b *testing.B) {
			e := newEnv(b, envOptions{blob: "fs", workerSetup: func(w *daemon.Worker) { w.Limits = mode.limits }})
			dest := e.sinks["127.0.0.2"]
			body := string(message("bench", "bench@origin.test", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15)))
			var next, failed atomic.Int64
			var mu sync.Mutex
			accepted := make(map[string]time.Time, b.N) // recipient → the ingress's 250
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
						rcpt := fmt.Sprintf("r%d@alpha.test", i)
						at, err := sendTimed(c, "sender@origin.test", rcpt, body)
						if err != nil {
							failed.Add(1)
							continue
						}
						mu.Lock()
						accepted[rcpt] = at
						mu.Unlock()
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
			var lat []float64
			for _, m := range dest.Messages() {
				for _, r := range m.Recipients {
					if at, ok := accepted[r]; ok {
						lat = append(lat, float64(m.At.Sub(at).Microseconds())/1000)
					}
				}
			}
			if len(lat) > 0 {
				sort.Float64s(lat)
				b.ReportMetric(lat[len(lat)/2], "p50-ms")
				b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
			}
		})
	}
}

// shapingModes are the runs of the shaping benchmarks: no limit, a fleet
// rate, a fleet concurrency and rate; none of them ever binds.
var shapingModes = []struct {
	name   string
	limits []string
}{{"limits=off", nil}, {"limits=fleet-rate", []string{"alpha.test:rate=100000/s"}}, {"limits=fleet", []string{"alpha.test:concurrency=500,rate=100000/s"}}}

// BenchmarkShapingLatency: what fleet-wide limits add to one message's
// delivery latency on an idle system: one message at a time (its final
// dot to the destination's 250), p50 and p99, limits off and on.
func BenchmarkShapingLatency(b *testing.B) {
	for _, mode := range shapingModes {
		b.Run(mode.name, func(b *testing.B) {
			e := newEnv(b, envOptions{blob: "fs", workerSetup: func(w *daemon.Worker) { w.Limits = mode.limits }})
			dest := e.sinks["127.0.0.2"]
			c, err := smtp.Dial(e.smtp)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			n := min(b.N, 500) // sequential: -benchtime 2000x in make bench-go would take long
			body := string(message("lat", "lat@origin.test", "x\r\n"))
			lat := make([]float64, 0, n)
			b.ResetTimer()
			for i := range n {
				at, err := sendTimed(c, "s@origin.test", fmt.Sprintf("l%d@alpha.test", i), body)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err = dest.WaitCount(ctx, i+1)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, float64(dest.Messages()[i].At.Sub(at).Microseconds())/1000)
			}
			b.StopTimer()
			sort.Float64s(lat)
			b.ReportMetric(lat[len(lat)/2], "p50-ms")
			b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// sendTimed sends one message on c and returns when its final dot was
// sent: the ingress answers 250 once the message is queued, so latency
// from then includes that, not the client's own scheduling after the 250.
func sendTimed(c *smtp.Client, from, rcpt, body string) (time.Time, error) {
	if err := c.Mail(from, nil); err != nil {
		return time.Time{}, err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return time.Time{}, err
	}
	w, err := c.Data()
	if err != nil {
		return time.Time{}, err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	return at, w.Close()
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
