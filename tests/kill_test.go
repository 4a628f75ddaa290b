package tests

import (
	"context"
	"flag"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// TestWorkerKilledMidDelivery kills a worker process with SIGKILL while the
// destination holds its DATA reply; another worker process must deliver the
// message once the ack wait has passed.
func TestWorkerKilledMidDelivery(t *testing.T) {
	workerBin := buildBinary(t, "worker")
	nats := testenv.StartNATS(t)
	blobURL := "file://" + filepath.Join(t.TempDir(), "bodies")

	inData := make(chan struct{})
	var firstDelayStarted atomic.Int64
	var calls atomic.Int32
	const holdFirst = 25 * time.Second
	sk := sink.New(sink.Config{Hostname: "dest.test", DataDelay: func() time.Duration {
		if calls.Add(1) == 1 {
			firstDelayStarted.Store(time.Now().UnixNano())
			close(inData)
			return holdFirst
		}
		return 0
	}})
	sinkAddr := sk.Start(t, "127.0.0.1:0")

	logs := &syncBuffer{}
	var in daemon.Ingress
	in.Register(flag.NewFlagSet("t", flag.ContinueOnError))
	in.Common = daemon.Common{NATSURL: nats.URL(), BlobStore: blobURL, Bootstrap: true, AckWait: 5 * time.Second, Replicas: 1}
	in.Listen, in.SMTP.Hostname, in.RelayNetworks = "127.0.0.1:0", "mx.mailfwd.test", config.StringList{"127.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- daemon.RunIngress(ctx, in, slog.New(slog.NewTextHandler(logs, nil)), noop.NewTracerProvider(), func(a string) { ready <- a })
	}()
	t.Cleanup(func() { cancel(); <-done })
	var smtpAddr string
	select {
	case smtpAddr = <-ready:
	case err := <-done:
		t.Fatalf("ingress: %v", err)
	}

	startWorker := func(name string) (*exec.Cmd, *syncBuffer) {
		out := &syncBuffer{}
		cmd := exec.Command(workerBin,
			"--nats-url", nats.URL(), "--blob-store", blobURL, "--ack-wait", "5s", "--http-addr", "",
			"--route", ".=smtp:["+strings.Replace(sinkAddr, ":", "]:", 1), "--helo-name", name+".test",
			"--retry-first", "1s")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start worker: %v", err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd, out
	}

	a, aLog := startWorker("worker-a")
	body := message("kill", "kill@origin.test", "survive a SIGKILL\r\n")
	res := send(smtpAddr, "", "sender@origin.test", []string{"victim@dest.test"}, body, nil)
	if res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	select {
	case <-inData:
	case <-time.After(30 * time.Second):
		t.Fatalf("worker A never reached DATA\n%s", aLog.String())
	}
	if err := a.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	killedAt := time.Now()

	_, bLog := startWorker("worker-b")
	waitFor(t, "redelivery by worker B", 60*time.Second, func() bool { return sk.Count() >= 1 })
	first := sk.Messages()[0]
	if !first.At.Before(time.Unix(0, firstDelayStarted.Load()).Add(holdFirst)) || first.At.Before(killedAt) {
		t.Fatalf("the recorded delivery (at %v) is not worker B's (A killed at %v)", first.At, killedAt)
	}
	if !strings.HasSuffix(string(first.Data), string(body)) || first.Recipients[0] != "victim@dest.test" {
		t.Fatalf("wrong message delivered: %v %q", first.Recipients, first.Data)
	}
	waitFor(t, "worker B's log line", 10*time.Second, func() bool {
		return strings.Contains(bLog.String(), res.QueueID+": to=<victim@dest.test>") && strings.Contains(bLog.String(), "stat=Sent")
	})
}
