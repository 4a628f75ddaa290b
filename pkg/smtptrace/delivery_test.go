package smtptrace_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/smtptrace"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// The worker's side of the trace, through the delivery client as the
// worker runs it (pooled connections, STARTTLS, host-down memory), against
// go-smtp servers on loopback. Issue 21: what the trace missed.

// startTLSServer runs a go-smtp server offering STARTTLS with a fresh
// certificate for localhost; it returns its address and the certificate's
// pool.
func startTLSServer(t *testing.T) (netip.AddrPort, *x509.CertPool, *backend) {
	t.Helper()
	be := &backend{}
	cfg := testenv.TLSConfig(t)
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	srv.TLSConfig = cfg
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String()), certPool(t, cfg), be
}

func newDeliveryClient(t *testing.T, w *smtptrace.Watcher, mod func(*delivery.Config)) *delivery.Client {
	t.Helper()
	cfg := delivery.Config{
		HeloName:       "worker.test",
		StartTLS:       true,
		ConnectTimeout: 10 * time.Second,
		IdleTimeout:    10 * time.Minute, // the pooled connection outlives a slow machine
		Trace:          func() *smtptrace.Watcher { return w },
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := delivery.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func deliverOne(t *testing.T, c *delivery.Client, hop delivery.Hop, from string) *delivery.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := c.Deliver(ctx, []delivery.Hop{hop}, &delivery.Message{
		QueueID: "q1", From: from, Recipients: []string{"rcpt@dest.test"},
		Body: []byte("Subject: pooled\r\n\r\nsecret body 5e1f\r\n"),
	})
	return out
}

// recordsOf returns the records whose msg is msg.
func recordsOf(t *testing.T, lb *logBuf, msg string) []map[string]any {
	var out []map[string]any
	for _, r := range lb.records(t) {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// A trace started while a connection sits in the pool records the next
// transaction on it, inside TLS (decrypted, the TLS state noted), marked as
// a reused connection, and the later ones; the trace's stop ends the
// recording at the next reuse.
func TestDeliveryTracePooledConnectionInsideTLS(t *testing.T) {
	e := newEnv(t)
	w, lb := e.watcher(t, "worker", smtptrace.DefaultLimits())
	addr, pool, _ := startTLSServer(t)
	c := newDeliveryClient(t, w, func(cfg *delivery.Config) {
		cfg.TLSConfig = &tls.Config{RootCAs: pool}
	})
	hop := delivery.Hop{Name: "localhost", Addr: addr}

	// Before the trace: a connection over STARTTLS, left in the pool.
	if out := deliverOne(t, c, hop, "before@src.test"); out.Statuses[0].Code != 250 || !strings.HasPrefix(out.TLS, "tls=TLSv1.3") {
		t.Fatalf("first delivery: %+v %s", out.Statuses, out.TLS)
	}
	e.start(t, smtptrace.Setting{ID: "pool", Destination: "localhost"}, time.Minute)
	eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "pool") })

	if out := deliverOne(t, c, hop, "traced@src.test"); out.Statuses[0].Code != 250 {
		t.Fatalf("second delivery: %+v", out.Statuses)
	}
	starts := recordsOf(t, lb, "smtp trace: session start")
	if len(starts) != 1 || starts[0]["reused"] != true || starts[0]["transactions_before"] != 1.0 {
		t.Fatalf("want one session start with reused=true transactions_before=1: %v", starts)
	}
	if r := recordsOf(t, lb, "smtp trace: reusing a pooled connection"); len(r) != 1 || r[0]["transaction"] != 2.0 {
		t.Errorf("the reuse is not noted (transaction 2): %v", r)
	}
	if r := recordsOf(t, lb, "smtp trace: TLS established"); len(r) != 1 || r[0]["tls_version"] != "TLS 1.3" {
		t.Errorf("the pooled connection's TLS state is not noted: %v", r)
	}
	d := lb.dialog(t)
	if !slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "client: MAIL FROM:<traced@src.test>") }) ||
		!slices.Contains(d, "client: RCPT TO:<rcpt@dest.test>") ||
		!slices.ContainsFunc(d, func(l string) bool { return strings.HasPrefix(l, "server: 250 2.0.0 ") }) {
		t.Errorf("the transaction over the pooled connection is not recorded:\n%s", strings.Join(d, "\n"))
	}
	for _, l := range d {
		if strings.Contains(l, "STARTTLS") || strings.Contains(l, "before@src.test") || strings.Contains(l, "secret body") {
			t.Errorf("recorded %q: not part of this transaction, or the body", l)
		}
		for _, b := range []byte(l) {
			if b < 0x20 || b > 0x7e {
				t.Fatalf("recorded a line that is not text (ciphertext?): %q", l)
			}
		}
	}

	// Another name on the same address (its own connection: the pool keys
	// connections by the name checked too) is not recorded.
	other := delivery.Hop{Name: "other.test", Addr: addr}
	if out := deliverOne(t, c, other, "other@src.test"); out.Statuses[0].Code != 250 {
		t.Fatalf("delivery to other.test: %+v", out.Statuses)
	}
	if strings.Contains(lb.String(), "other@src.test") {
		t.Errorf("a delivery to other.test was recorded:\n%s", strings.Join(lb.dialog(t), "\n"))
	}
	// The traced connection again: the same session goes on, marked.
	if out := deliverOne(t, c, hop, "again@src.test"); out.Statuses[0].Code != 250 {
		t.Fatalf("delivery: %+v", out.Statuses)
	}
	if r := recordsOf(t, lb, "smtp trace: reusing a pooled connection"); len(r) != 2 || r[1]["transaction"] != 3.0 {
		t.Errorf("want the reuse noted again (transaction 3): %v", r)
	}
	if n := len(recordsOf(t, lb, "smtp trace: session start")); n != 1 {
		t.Errorf("%d session starts, want 1", n)
	}
	if !slices.ContainsFunc(lb.dialog(t), func(l string) bool { return strings.HasPrefix(l, "client: MAIL FROM:<again@src.test>") }) {
		t.Errorf("the third transaction is not recorded")
	}

	// The trace stops: the next reuse ends the recording and records nothing.
	if ok, err := e.store.Stop(context.Background(), "pool"); err != nil || !ok {
		t.Fatalf("stop: %v %v", ok, err)
	}
	eventually(t, "the watcher drops the trace", func() bool { return !hasTrace(w, "pool") })
	if out := deliverOne(t, c, hop, "after@src.test"); out.Statuses[0].Code != 250 {
		t.Fatalf("delivery after stop: %+v", out.Statuses)
	}
	if n := sessionEnds(lb); n != 1 {
		t.Errorf("%d session ends, want 1 (the reuse after the stop ends the recording)", n)
	}
	if strings.Contains(lb.String(), "after@src.test") {
		t.Errorf("a delivery after the trace's stop was recorded")
	}
	if got := w.Stats().TracedSessions; got != 0 {
		t.Errorf("%d sessions counted as traced after both recordings ended", got)
	}
}

// A connect the next hop refuses is recorded (address, error), and so is a
// delivery that does not dial because that address failed a moment ago;
// a STARTTLS handshake that fails notes why the connection was given up.
func TestDeliveryTraceRefusedAndFailedConnections(t *testing.T) {
	e := newEnv(t)
	w, lb := e.watcher(t, "worker", smtptrace.DefaultLimits())
	e.start(t, smtptrace.Setting{ID: "conn", Destination: ".dest.test"}, time.Minute)
	eventually(t, "the watcher sees the trace", func() bool { return hasTrace(w, "conn") })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // nothing listens: the connect is refused
	c := newDeliveryClient(t, w, func(cfg *delivery.Config) { cfg.HostDownTTL = 10 * time.Minute })
	refused := delivery.Hop{Name: "mx1.dest.test", Addr: closed}
	if out := deliverOne(t, c, refused, "a@src.test"); out.Statuses[0].Code == 250 {
		t.Fatal("delivered to a closed port")
	}
	r := recordsOf(t, lb, "smtp trace: connect failed")
	if len(r) != 1 || r[0]["trace"] != "conn" || r[0]["peer"] != closed.String() || r[0]["peer_name"] != "mx1.dest.test" ||
		!strings.Contains(r[0]["err"].(string), "connection refused") {
		t.Fatalf("the refused connect is not recorded as such: %v", r)
	}
	// Within the host-down time the client does not dial: recorded too.
	if out := deliverOne(t, c, refused, "b@src.test"); out.Statuses[0].Code == 250 {
		t.Fatal("delivered to a closed port")
	}
	if r := recordsOf(t, lb, "smtp trace: not connecting, the address failed a moment ago"); len(r) != 1 ||
		r[0]["peer"] != closed.String() || !strings.Contains(r[0]["err"].(string), "connection refused") {
		t.Fatalf("the skipped connect is not recorded: %v", r)
	}
	// A hop no trace matches: nothing recorded.
	before := len(lb.records(t))
	deliverOne(t, c, delivery.Hop{Name: "mx.elsewhere.test", Addr: closed}, "c@src.test")
	if n := len(lb.records(t)); n != before {
		t.Errorf("a connect to an untraced hop was recorded: %d records, want %d", n, before)
	}

	// STARTTLS whose certificate the client does not trust (may: one
	// plaintext retry): the first session notes why it ended.
	addr, _, _ := startTLSServer(t)
	c2 := newDeliveryClient(t, w, func(cfg *delivery.Config) { cfg.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()} })
	if out := deliverOne(t, c2, delivery.Hop{Name: "mx2.dest.test", Addr: addr}, "tls@src.test"); out.Statuses[0].Code != 250 || out.TLS != "tls=none" {
		t.Fatalf("want a plaintext delivery after the failed handshake: %+v %s", out.Statuses, out.TLS)
	}
	given := recordsOf(t, lb, "smtp trace: connection given up")
	if len(given) != 1 || !strings.Contains(given[0]["status"].(string), "STARTTLS") {
		t.Fatalf("the failed handshake is not noted: %v", given)
	}
	var upgraded string
	for _, r := range recordsOf(t, lb, "smtp trace: STARTTLS accepted, TLS handshake follows") {
		upgraded = r["session"].(string)
	}
	if upgraded == "" || given[0]["session"] != upgraded {
		t.Errorf("the note is not in the session that tried STARTTLS: %v vs %q", given, upgraded)
	}
	if !slices.ContainsFunc(lb.dialog(t), func(l string) bool { return strings.HasPrefix(l, "client: MAIL FROM:<tls@src.test>") }) {
		t.Errorf("the plaintext retry is not recorded:\n%s", strings.Join(lb.dialog(t), "\n"))
	}
}
