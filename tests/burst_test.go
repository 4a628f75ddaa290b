package tests

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// BenchmarkBurstSlowDestination: a burst of 1 KiB messages to a destination
// that takes 20 ms to answer each DATA. The ingress accepts at its own pace
// (not the destination's), the lag that KEDA reads (num_pending +
// num_ack_pending of the workers' consumer) rises, and 1, 2 or 4 worker
// processes drain it. b.N messages per run (bounded to 5 minutes).
func BenchmarkBurstSlowDestination(b *testing.B) {
	workerBin := buildBinary(b, "worker")
	for _, workers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			nats := testenv.StartNATS(b)
			blobURL := "file://" + filepath.Join(b.TempDir(), "bodies")
			sk := sink.New(sink.Config{Hostname: "slow.test", DataDelay: func() time.Duration { return 20 * time.Millisecond }})
			sinkAddr := sk.Start(b, "127.0.0.1:0")

			var in daemon.Ingress
			in.Register(flag.NewFlagSet("b", flag.ContinueOnError))
			in.Common = daemon.Common{NATSURL: nats.URL(), BlobStore: blobURL, Bootstrap: true, AckWait: 30 * time.Second, Replicas: 1}
			in.Listen, in.SMTP.Hostname, in.RelayNetworks = "127.0.0.1:0", "mx.mailfwd.test", config.StringList{"127.0.0.1"}
			ctx, cancel := context.WithCancel(context.Background())
			ready, done := make(chan string, 1), make(chan error, 1)
			go func() {
				done <- daemon.RunIngress(ctx, in, slog.New(slog.DiscardHandler), noop.NewTracerProvider(), func(a string) { ready <- a })
			}()
			b.Cleanup(func() { cancel(); <-done })
			smtpAddr := <-ready

			// The burst goes in with no worker running: accept rate alone.
			body := message("burst", "burst@x", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15))
			b.ResetTimer()
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(smtpAddr)
					if err != nil {
						b.Error(err)
						return
					}
					defer c.Close()
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						if err := c.SendMail("s@origin.test", []string{fmt.Sprintf("r%d@slow.test", i)}, bytes.NewReader(body)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			accepted := time.Since(start)
			lag := consumerLag(b, nats.URL())

			drainStart := time.Now()
			for w := range workers {
				cmd := exec.Command(workerBin, "--nats-url", nats.URL(), "--blob-store", blobURL, "--http-addr", "",
					"--route", ".=smtp:["+strings.Replace(sinkAddr, ":", "]:", 1), "--helo-name", fmt.Sprintf("w%d.test", w),
					"--bootstrap=false", "--log-level", "warn")
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			}
			waitFor(b, "burst drained", 5*time.Minute, func() bool { return sk.Count() >= b.N })
			drain := time.Since(drainStart)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted/s")
			b.ReportMetric(float64(lag), "peak-lag")
			b.ReportMetric(float64(b.N)/drain.Seconds(), "drained/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// consumerLag is what KEDA's nats-jetstream trigger reads.
func consumerLag(b *testing.B, url string) uint64 {
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	c, err := js.Consumer(context.Background(), "MAIL", "workers")
	if err != nil {
		b.Fatal(err)
	}
	ci, err := c.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return ci.NumPending + uint64(ci.NumAckPending)
}
