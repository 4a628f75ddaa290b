//go:build chaos

package chaos

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/bench/rig"
)

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
	cl, err := rig.StartNATSCluster(tools.NATSServer, filepath.Join(dir, "nats"), 3, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	d := startDest(t)
	const workers, concurrency, sessions = 2, 64, 20
	m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{
		Dir: filepath.Join(dir, "mailfwd"), Workers: workers, Route: d.Addr, Cluster: cl, Replicas: 3,
		IngressArgs: fastIngress,
		WorkerArgs:  append(append([]string{}, fastWorker...), "--concurrency", strconv.Itoa(concurrency)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range m.Procs() { // the cluster's nodes too
				t.Logf("--- %s log (tail) ---\n%s", p.Name, tail(p.LogPath, 3000))
			}
		}
		m.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	info, err := streamInfo(ctx, cl.URLs())
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

	info, err = streamInfo(ctx, cl.URLs())
	if err != nil {
		t.Fatalf("stream info before the kill: %v", err)
	}
	leader := info.Cluster.Leader
	idx := slices.IndexFunc(cl.Nodes, func(n *rig.NATS) bool { return n.Name == "nats-"+leader })
	if idx < 0 {
		t.Fatalf("stream leader %q is none of the nodes", leader)
	}
	acceptedAtKill := l.Accepted()
	if err := cl.Nodes[idx].Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILLed stream leader %s after %d accepted", leader, acceptedAtKill)
	time.Sleep(5 * time.Second)
	if err := cl.Nodes[idx].Start(); err != nil {
		t.Fatal(err)
	}
	recovered := time.Now()
	if info, err := streamInfo(ctx, cl.URLs()); err == nil && info.Cluster != nil {
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
