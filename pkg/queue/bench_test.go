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

// BenchmarkEnqueueR3 is the same on a 3-node cluster in this process with
// the stream at 3 replicas (the chart's default): an atomic batch is staged
// in memory there, and the PubAck waits for a quorum.
func BenchmarkEnqueueR3(b *testing.B) {
	urls := startCluster(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: urls[0], Replicas: 3})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := q.Bootstrap(actx)
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			b.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, domains := range []int{1, 3} {
		b.Run(fmt.Sprintf("domains=%d", domains), func(b *testing.B) {
			doms := make([]string, domains)
			for i := range doms {
				doms[i] = fmt.Sprintf("d%d.test", i)
			}
			for range b.N {
				if err := q.Enqueue(ctx, newEnvelopes(envelope.NewQueueID(), doms...)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/msg")
		})
	}
}
