package testenv

import (
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/mailfwd/mailfwd/pkg/natsembed"
)

// NATS is an embedded nats-server with JetStream on disk, on loopback.
type NATS struct {
	t    testing.TB
	Port int
	Dir  string
	srv  *server.Server
}

// StartNATS starts an embedded JetStream server on a free 127.0.0.1 port
// with its store in a temp dir; t.Cleanup stops it.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := &NATS{t: t, Port: freePort(t), Dir: filepath.Join(t.TempDir(), "jetstream")}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// URL is the client URL.
func (n *NATS) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.Port) }

// Stop shuts the server down (a NATS outage for the code under test).
func (n *NATS) Stop() {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}

// Start starts it again on the same port with the same store.
func (n *NATS) Start() {
	n.t.Helper()
	var err error
	for i := 0; i < 50; i++ {
		n.srv, err = natsembed.Start(natsembed.Options{Port: n.Port, StoreDir: n.Dir})
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.t.Fatalf("start nats on port %d: %v", n.Port, err)
}

// StartNATSServer starts a nats-server made from opts as they are (users,
// no JetStream, …) and returns it once it takes connections; t.Cleanup shuts
// it down.
func StartNATSServer(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeLoopbackAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}

// FreeAddr is a 127.0.0.1:port that was free a moment ago, for a process
// whose address must be written into its configuration.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return freeLoopbackAddr(t)
}
