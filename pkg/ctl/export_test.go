package ctl

import (
	"context"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/queue"
)

// BootstrapQueue makes the queue's stream, consumers and buckets on the NATS
// server at url, as `mailfwdctl bootstrap` does; for the tests of ctl and
// of ctl_test.
func BootstrapQueue(t testing.TB, url string, ackWait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: url, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
}
