//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/bench/rig"
)

// natsCluster is a 3-node JetStream cluster of nats-server processes on
// loopback.
type natsCluster struct {
	nodes   []*rig.Proc
	ports   []int
	names   []string
	clients string // comma-separated client URLs
}

func startNATSCluster(t *testing.T, dir string) *natsCluster {
	t.Helper()
	c := &natsCluster{}
	var routes []string
	cports := make([]int, 3)
	for i := range 3 {
		p, err := rig.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		cp, err := rig.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		c.ports = append(c.ports, p)
		cports[i] = cp
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(cp))
	}
	var urls []string
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		nd := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Join(nd, "js"), 0o755); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\njetstream {\n  store_dir: %q\n}\n"+
			"cluster {\n  name: chaos\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			name, c.ports[i], filepath.Join(nd, "js"), cports[i], strings.Join(routes, ", "))
		confPath := filepath.Join(nd, "nats.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := rig.StartProc("nats-"+name, filepath.Join(nd, "nats.log"), nil, tools.NATSServer, "-c", confPath)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, p)
		c.names = append(c.names, name)
		urls = append(urls, "nats://127.0.0.1:"+strconv.Itoa(c.ports[i]))
	}
	c.clients = strings.Join(urls, ",")
	t.Cleanup(func() {
		for _, p := range c.nodes {
			_ = p.Stop(5 * time.Second)
		}
	})
	for i := range 3 {
		if err := rig.WaitTCP("127.0.0.1:"+strconv.Itoa(c.ports[i]), 20*time.Second, false); err != nil {
			t.Fatalf("nats %s: %v", c.names[i], err)
		}
	}
	return c
}

// streamInfo asks the cluster about the MAIL stream.
func streamInfo(ctx context.Context, urls string) (*jetstream.StreamInfo, error) {
	// Bounded on its own: right after a node restart an API request can go
	// unanswered until the caller's deadline (once: the whole 10 minutes).
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	nc, err := nats.Connect(urls, nats.Timeout(2*time.Second))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, "MAIL")
	if err != nil {
		return nil, err
	}
	return st.Info(ctx)
}

// TestStreamLeaderSIGKILLed: a 3-node JetStream cluster with the stream at
// 3 replicas (the chart's default); the node leading the MAIL stream is
// SIGKILLed in the middle of a 10k-message run (CHAOS_N) and started again
// a few seconds later. Every message that got a 250 must be delivered, and
// duplicates stay within what was in flight (the client sessions whose
// 250 may have been lost, plus the envelopes handed to workers and not yet
// acked).
func TestStreamLeaderSIGKILLed(t *testing.T) {
	n := envN("CHAOS_N", 10000)
	dir := t.TempDir()
	cl := startNATSCluster(t, dir)
	d := startDest(t)
	const workers, concurrency, sessions = 2, 64, 20
	cluster := []string{"--nats-url", cl.clients, "--replicas", "3"}
	m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{
		Dir: filepath.Join(dir, "mailfwd"), Workers: workers, Route: d.Addr,
		NATS:        &rig.NATS{Proc: cl.nodes[0], Port: cl.ports[0], Dir: dir},
		IngressArgs: append(append([]string{}, fastIngress...), cluster...),
		WorkerArgs:  append(append([]string{}, fastWorker...), append(cluster, "--concurrency", strconv.Itoa(concurrency))...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append(m.Procs(), cl.nodes...) {
				t.Logf("--- %s log (tail) ---\n%s", p.Name, tail(p.LogPath, 3000))
			}
		}
		m.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	info, err := streamInfo(ctx, cl.clients)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil {
		t.Fatalf("stream has %d replicas (cluster %+v); want 3", info.Config.Replicas, info.Cluster)
	}

	l := newLedger()
	ld := &load{name: "leaderkill", n: n, sessions: sessions, size: 1024, addr: func() string { return m.SMTPAddr }, deadline: 6 * time.Minute}
	done := runLoad(ld, l)
	waitAccepted(t, l, n/3, 3*time.Minute)

	info, err = streamInfo(ctx, cl.clients)
	if err != nil {
		t.Fatalf("stream info before the kill: %v", err)
	}
	leader := info.Cluster.Leader
	idx := -1
	for i, name := range cl.names {
		if name == leader {
			idx = i
		}
	}
	if idx < 0 {
		t.Fatalf("stream leader %q is none of %v", leader, cl.names)
	}
	acceptedAtKill := l.Accepted()
	if err := cl.nodes[idx].Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILLed stream leader %s after %d accepted", leader, acceptedAtKill)
	time.Sleep(5 * time.Second)
	if err := cl.nodes[idx].Start(); err != nil {
		t.Fatal(err)
	}
	recovered := time.Now()
	if info, err := streamInfo(ctx, cl.clients); err == nil && info.Cluster != nil {
		t.Logf("stream leader now %s", info.Cluster.Leader)
	}
	<-done
	drained := drain(t, l, d, recovered, 4*time.Minute)
	report(t, "NATS stream leader SIGKILLed (R3)", l, d, drained)
	a := l.Account(d.Sink)
	inFlight := sessions + workers*concurrency
	if a.Duplicates > inFlight {
		t.Errorf("%d duplicate deliveries; at most %d were in flight (%d client sessions + %d workers x %d)",
			a.Duplicates, inFlight, sessions, workers, concurrency)
	}
	if l.Accepted() != n {
		t.Errorf("only %d of %d messages accepted within the load's deadline (the cluster kept a quorum)", l.Accepted(), n)
	}
}
