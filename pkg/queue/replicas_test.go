package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/natsembed"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// startCluster runs a 3-node JetStream cluster in this process on loopback
// and returns the client URLs.
func startCluster(t testing.TB) []string {
	t.Helper()
	ports := freePorts(t, 6)
	var routes []string
	for i := range 3 {
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(ports[3+i]))
	}
	var urls []string
	var srvs []*server.Server
	for i := range 3 {
		s, err := natsembed.Start(natsembed.Options{
			Port: ports[i], StoreDir: filepath.Join(t.TempDir(), "js"),
			ServerName: fmt.Sprintf("n%d", i+1), ClusterName: "mailfwd-test", ClusterPort: ports[3+i], Routes: routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		srvs = append(srvs, s)
		urls = append(urls, s.ClientURL())
	}
	t.Cleanup(func() {
		for _, s := range srvs {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	return urls
}

// bootstrapWith connects with replicas and runs the bootstrap, waiting for
// the cluster to elect its meta leader first.
func bootstrapWith(t *testing.T, url string, replicas int) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: url, Replicas: replicas, ClientName: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := q.Bootstrap(actx)
		acancel()
		if err == nil || errors.Is(err, queue.ErrUnsafeStream) || ctx.Err() != nil {
			return err
		}
		t.Logf("bootstrap: %v", err)
		time.Sleep(250 * time.Millisecond) // no JetStream meta leader yet
	}
}

// An entry point started with the default --replicas 1 against a cluster
// whose stream has 3 replicas must not quietly make every envelope depend
// on one node's disk.
func TestBootstrapNeverLowersReplicas(t *testing.T) {
	urls := startCluster(t)
	if err := bootstrapWith(t, urls[0], 3); err != nil {
		t.Fatalf("bootstrap R3: %v", err)
	}
	err := bootstrapWith(t, urls[1], 1)
	if !errors.Is(err, queue.ErrUnsafeStream) {
		t.Fatalf("bootstrap with replicas 1 over an R3 stream: %v; want a refusal", err)
	}
	if err != nil {
		t.Logf("refused: %v", err)
	}
	nc, err := nats.Connect(urls[2])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("stream has %d replicas after a refused bootstrap with 1; want 3", r)
	}
	if err := bootstrapWith(t, urls[2], 3); err != nil {
		t.Fatalf("bootstrap R3 again: %v", err)
	}
}
