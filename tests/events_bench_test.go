package tests

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// BenchmarkEvents is BenchmarkEndToEnd (10 sessions, 1 KiB messages) with
// the event stream off, on, and on for failures only (--events-types): the
// CPU per message of the whole pipeline (this process runs all of it) and
// the delivery rate. The goal is at most 10 % more CPU per message with
// events on.
func BenchmarkEvents(b *testing.B) {
	failures := config.StringList{"deferred", "bounced", "expired", "failed", "not_queued"}
	for _, mode := range []string{"false", "true", "failures"} {
		on := mode != "false"
		var types config.StringList
		if mode == "failures" { // --events-types: nothing for mail delivered at once
			types = failures
		}
		b.Run("events="+mode, func(b *testing.B) {
			e := newEnv(b, envOptions{blob: "fs", inlineMax: daemon.DefaultInlineBodyMax, // the default: bodies in the envelope
				ingressSetup: func(in *daemon.Ingress) { in.Events.Enabled, in.Events.Types = on, types },
				workerSetup:  func(wk *daemon.Worker) { wk.Events.Enabled, wk.Events.Types = on, types },
			})
			dest := e.sinks["127.0.0.2"]
			body := message("bench", "bench@origin.test", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15))
			var next, failed atomic.Int64
			const sessions = 10
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
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
						if i > int64(b.N) {
							return
						}
						if err := c.SendMail("sender@origin.test", []string{fmt.Sprintf("r%d@alpha.test", i)}, strings.NewReader(string(body))); err != nil {
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
			if mode == "true" { // every message's received and delivered are stored
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				q, err := queue.Connect(ctx, queue.Config{URL: e.nats.URL()})
				if err != nil {
					b.Fatal(err)
				}
				defer q.Close()
				waitFor(b, "every event stored", time.Minute, func() bool {
					st, err := q.EventStream(ctx)
					if err != nil {
						b.Fatal(err)
					}
					info, err := st.Info(ctx)
					return err == nil && info.State.Msgs >= uint64(2*b.N)
				})
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
			b.ReportMetric(float64(b.N)/total.Seconds(), "delivered/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}
