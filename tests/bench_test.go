package tests

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
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
