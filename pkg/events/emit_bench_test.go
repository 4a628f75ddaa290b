package events_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/events"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEmit is the whole cost of one event in this process: encoding,
// the async publish and its PubAck, and the embedded nats-server storing
// it. Events go out paced, a few every millisecond (about the pipeline's
// rate, so acks are not all coalesced), each for its own queue id as in
// the mail path; published at once, and gathered for 10 ms (the workers'
// --events-linger). Reports CPU per event.
func BenchmarkEmit(b *testing.B) {
	for _, linger := range []time.Duration{0, 10 * time.Millisecond} {
		b.Run("linger="+linger.String(), func(b *testing.B) { benchmarkEmit(b, linger) })
	}
}

func benchmarkEmit(b *testing.B, linger time.Duration) {
	r := start(b, events.PublisherConfig{Source: "bench", Linger: linger})
	ev := events.Event{Type: events.Delivered, MessageID: "<bench-0123456789@origin.test>", Sender: "sender@origin.test",
		Recipient: "r123@alpha.test", Destination: "alpha.test", Arrived: time.Now().UTC(), Size: 1938, Attempt: 1,
		Relay: "mx.alpha.test", RelayAddr: "127.0.0.2", DSN: "2.0.0", Reply: "250 2.0.0 OK queued as 0123456789", TLS: "none", TLSVerify: "NONE"}
	qids := make([]string, b.N)
	for i := range qids {
		qids[i] = fmt.Sprintf("dcb9gghksdudsh%06d", i)
	}
	idle0 := cpuTime()
	time.Sleep(200 * time.Millisecond)
	idle := (cpuTime() - idle0) / 200 // per ms, subtracted below
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; i < b.N; {
		for j := 0; j < 2 && i < b.N; j++ {
			x := ev
			x.QueueID = qids[i]
			r.pub.Emit(x)
			i++
		}
		<-tick.C
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		info, err := r.st.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.State.Msgs >= uint64(b.N) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cpu := cpuTime() - cpu0 - idle*time.Duration(time.Since(start).Milliseconds())
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
	b.ReportMetric(0, "ns/op")
}
