package tests

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// BenchmarkEndToEnd pushes b.N 1 KiB messages (one recipient each) through
// ingress → JetStream → worker → SMTP sink with 10 concurrent client
// sessions, and reports the ingress accept rate and the end-to-end rate.
// Body store: local directory with fsync. Bounded: at most 5 minutes.
func BenchmarkEndToEnd(b *testing.B) {
	for _, sessions := range []int{1, 10} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			e := newEnv(b, envOptions{blob: "fs"})
			dest := e.sinks["127.0.0.2"]
			body := message("bench", "bench@origin.test", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15))
			var next, failed atomic.Int64
			deadline := time.Now().Add(5 * time.Minute)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range sessions {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(e.smtp)
					if err != nil {
						failed.Add(1)
						return
					}
					defer c.Close()
					for {
						i := next.Add(1)
						if i > int64(b.N) || time.Now().After(deadline) {
							return
						}
						if err := c.SendMail("sender@origin.test", []string{fmt.Sprintf("r%d@alpha.test", i)}, strings.NewReader(string(body))); err != nil {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			accepted := time.Since(start)
			waitFor(b, "every message at the destination", 5*time.Minute, func() bool { return dest.Count() >= b.N-int(failed.Load()) })
			total := time.Since(start)
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d sends failed", failed.Load())
			}
			b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted/s")
			b.ReportMetric(float64(b.N)/total.Seconds(), "delivered/s")
		})
	}
}

// BenchmarkHealthyLatencyDeadBacklog reports the delivery latency (accept
// → destination) of mail to a healthy domain, alone and with a 10k-message
// backlog for a dead domain (one that accepts connections and never
// answers): deferred (waiting for retry), or ready all at once (a burst that
// the workers meet first). One message per op, sent sequentially.
func BenchmarkHealthyLatencyDeadBacklog(b *testing.B) {
	for _, bl := range []struct {
		name  string
		n     int
		ready bool
	}{{"backlog=none", 0, false}, {"backlog=10k-deferred", 10000, false}, {"backlog=10k-ready", 10000, true}} {
		b.Run(bl.name, func(b *testing.B) {
			e := newEnv(b, envOptions{blob: "fs", retryFirst: time.Minute, workerSetup: func(w *daemon.Worker) {
				w.Delivery.CommandTimeout = 30 * time.Second
			}})
			if bl.n > 0 {
				seedDeadBacklog(b, e, bl.n, bl.ready)
			}
			dest := e.sinks["127.0.0.2"]
			c, err := smtp.Dial(e.smtp)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			deadline := time.Now().Add(5 * time.Minute)
			sent := make([]time.Time, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N && time.Now().Before(deadline); i++ {
				sent = append(sent, time.Now())
				body := message("lat", "lat"+strconv.Itoa(i), "x\r\n")
				if err := c.SendMail("s@origin.test", []string{"h" + strconv.Itoa(i) + "@alpha.test"}, bytes.NewReader(body)); err != nil {
					b.Fatal(err)
				}
				waitFor(b, "healthy message delivered", time.Minute, func() bool { return dest.Count() > i })
			}
			b.StopTimer()
			lat := make([]float64, 0, len(sent))
			for i, m := range dest.Messages() {
				if i < len(sent) {
					lat = append(lat, float64(m.At.Sub(sent[i]).Microseconds())/1000)
				}
			}
			sort.Float64s(lat)
			if len(lat) > 0 {
				b.ReportMetric(lat[len(lat)/2], "p50-ms")
				b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// seedDeadBacklog queues n envelopes for dead.test straight into JetStream.
func seedDeadBacklog(b *testing.B, e *env, n int, ready bool) {
	b.Helper()
	ctx := context.Background()
	q, err := queue.Connect(ctx, queue.Config{URL: e.nats.URL(), ClientName: "bench-seed"})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	store, err := blob.Open(ctx, e.blobURL)
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Put(ctx, "deadbody", message("dead", "dead@x", "x\r\n")); err != nil {
		b.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	for i := range n {
		env := &envelope.Envelope{QueueID: fmt.Sprintf("dead%06d", i), From: "s@origin.test", Domain: "dead.test",
			Recipients: []envelope.Recipient{{Addr: fmt.Sprintf("u%d@dead.test", i)}}, BodyKey: "deadbody", Size: 100, Parts: 1, Arrived: time.Now()}
		if ready {
			err = q.Enqueue(ctx, []*envelope.Envelope{env})
		} else {
			err = q.Defer(ctx, env, later, "seed")
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
