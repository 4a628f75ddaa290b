package queue

import (
	"context"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// ConnectTest starts NATS and connects a client made with cfg (its URL set
// to the server's) for the tests of this package and of queue_test; the
// client closes with the test.
func ConnectTest(t testing.TB, ctx context.Context, cfg Config) (*Queue, *testenv.NATS) {
	t.Helper()
	n := testenv.StartNATS(t)
	cfg.URL = n.URL()
	q, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(q.Close)
	return q, n
}

// BootstrapTest is ConnectTest with the stream, consumers and buckets made.
func BootstrapTest(t testing.TB, ctx context.Context, cfg Config) (*Queue, *testenv.NATS) {
	t.Helper()
	q, n := ConnectTest(t, ctx, cfg)
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return q, n
}
