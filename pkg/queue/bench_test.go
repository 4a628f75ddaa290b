package queue_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/natsembed"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// BenchmarkEnqueueSync measures what syncing every JetStream write (the dev
// and single-node promise that a 250 survives a crash of the machine)
// costs per accepted message, one at a time (one SMTP session) and from
// 16×GOMAXPROCS sessions at once, against nats-server's default periodic
// sync. µs/msg is wall time per message (throughput); with one session it
// is also the latency one accept adds. Run: make bench, or
// go test ./pkg/queue -run '^$' -bench EnqueueSync -benchtime 2000x
func BenchmarkEnqueueSync(b *testing.B) {
	for _, sync := range []bool{false, true} {
		for _, tc := range []struct{ domains, sessions int }{{1, 1}, {3, 1}, {1, 16}, {3, 16}} {
			domains := tc.domains
			name := fmt.Sprintf("sync_always=%v/domains=%d/sessions=%d", sync, domains, tc.sessions)
			b.Run(name, func(b *testing.B) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				port := ln.Addr().(*net.TCPAddr).Port
				ln.Close()
				srv, err := natsembed.Start(natsembed.Options{Port: port, StoreDir: b.TempDir(), SyncAlways: sync})
				if err != nil {
					b.Fatal(err)
				}
				defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				q, err := queue.Connect(ctx, queue.Config{URL: srv.ClientURL()})
				if err != nil {
					b.Fatal(err)
				}
				defer q.Close()
				if err := q.Bootstrap(ctx); err != nil {
					b.Fatal(err)
				}
				doms := make([]string, domains)
				for i := range doms {
					doms[i] = fmt.Sprintf("d%d.test", i)
				}
				b.ResetTimer()
				b.SetParallelism(tc.sessions) // × GOMAXPROCS goroutines; 1 below means one at a time
				if tc.sessions == 1 {
					for range b.N {
						if err := q.Enqueue(ctx, newEnvelopes(envelope.NewQueueID(), doms...)); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := q.Enqueue(ctx, newEnvelopes(envelope.NewQueueID(), doms...)); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/msg")
			})
		}
	}
}
