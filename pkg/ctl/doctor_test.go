package ctl_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

type doctorOut struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Check, Status, Detail, Fix string
	} `json:"checks"`
}

// loopbackOnly keeps a doctor run on this machine: a DNS server on
// loopback instead of /etc/resolv.conf's, an empty policy directory
// instead of a kubeconfig's cluster.
func loopbackOnly(t *testing.T) []string {
	t.Helper()
	return []string{"--dns-server", testenv.StartDNS(t, "$ORIGIN x.test.\n@ 60 IN A 127.0.0.1\n").Addr, "--dir", t.TempDir()}
}

// doctor runs mailfwdctl doctor -o json and returns the status per check.
// Every run names its DNS servers and policy (no traffic off this machine).
func doctor(t *testing.T, args ...string) (int, map[string]string, doctorOut) {
	t.Helper()
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "--dns-server") || !strings.Contains(joined, "--dir") {
		t.Fatalf("doctor %s: give --dns-server and --dir (loopbackOnly) so that nothing leaves this machine", joined)
	}
	r := runCtl(t, append(args[:len(args):len(args)], "doctor", "-o", "json")...)
	var rep doctorOut
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil {
		t.Fatalf("doctor output is not JSON: %v\n%s", err, r)
	}
	st := map[string]string{}
	for _, c := range rep.Checks {
		st[c.Check] = c.Status
		if c.Status != "OK" && c.Fix == "" && !strings.HasPrefix(c.Detail, "not applicable") {
			t.Errorf("%s %s without a fix: %s", c.Status, c.Check, c.Detail)
		}
	}
	if (r.code == 0) != rep.OK {
		t.Errorf("exit %d but ok=%v", r.code, rep.OK)
	}
	return r.code, st, rep
}

func detail(rep doctorOut, check string) string {
	for _, c := range rep.Checks {
		if c.Check == check {
			return c.Detail + " → " + c.Fix
		}
	}
	return ""
}

func bootstrap(t *testing.T, url string, ackWait time.Duration) {
	t.Helper()
	ctl.BootstrapQueue(t, url, ackWait)
}

// startQueue starts NATS with the queue bootstrapped (ack wait 30 s) and
// connects a queue client named name; ctx ends after timeout or with the test.
func startQueue(t *testing.T, name string, timeout time.Duration) (*testenv.NATS, *queue.Queue, context.Context) {
	t.Helper()
	n := testenv.StartNATS(t)
	bootstrap(t, n.URL(), 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL(), ClientName: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return n, q, ctx
}

// smallMessage is a small message to r@domain with its body inline.
func smallMessage(domain string) *envelope.Envelope {
	return &envelope.Envelope{QueueID: envelope.NewQueueID(), From: "s@src.test", Domain: domain,
		Recipients: []envelope.Recipient{{Addr: "r@" + domain}}, Body: []byte("x\r\n"), Size: 3, Parts: 1,
		Arrived: time.Now().UTC()}
}

// TestDoctor runs every check against real things on loopback (NATS,
// MinIO, a DNS server, an SMTP sink) and makes each fail once.
func TestDoctor(t *testing.T) {
	n := testenv.StartNATS(t)
	dns := testenv.StartDNS(t, `
$ORIGIN up.test.
@   60 IN MX 10 mx1.up.test.
@   60 IN MX 20 mx2.up.test.
mx1 60 IN A 127.0.0.1
mx2 60 IN A 127.0.0.1
`)
	mx := sink.New(sink.Config{Hostname: "mx.up.test"})
	mxAddr := mx.Start(t, "127.0.0.1:0")
	_, mxPort, _ := net.SplitHostPort(mxAddr)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	_, closedPort, _ := net.SplitHostPort(closed.Addr().String())
	closed.Close()
	polDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(polDir, "access"), []byte("Connect:127.0.0.1 RELAY\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "mailertable"), []byte("routed.test smtp:[127.0.0.1]:"+mxPort+"\ndown.test smtp:[127.0.0.1]:"+closedPort+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	blobDir := filepath.Join(t.TempDir(), "bodies")
	nats := []string{"--nats-url", n.URL()}
	base := []string{"--blob-store", "file://" + blobDir, "--dir", polDir, "--min-free-bytes", "1024", "--min-free-inodes", "10"}
	good := append(base[:len(base):len(base)], "--dns-server", dns.Addr)

	// Before bootstrap: no stream, consumer or buckets.
	code, st, rep := doctor(t, append(nats, good...)...)
	if code != 1 || st["stream"] != "FAIL" || st["consumer"] != "FAIL" || st["buckets"] != "FAIL" {
		t.Fatalf("before bootstrap: exit %d %v", code, st)
	}
	if !strings.Contains(detail(rep, "stream"), "mailfwdctl bootstrap") {
		t.Errorf("stream FAIL does not say what to do: %s", detail(rep, "stream"))
	}
	if st["clock"] != "WARN" {
		t.Errorf("clock without a stream: %s, want WARN (no server time)", st["clock"])
	}

	bootstrap(t, n.URL(), 2*time.Minute)
	code, st, rep = doctor(t, append(append(nats, good...), "--to", "someone@routed.test")...)
	for _, c := range []string{"jetstream", "stream", "consumer", "buckets", "clock", "body-store", "disk", "policy", "dns", "next-hop"} {
		if st[c] != "OK" {
			t.Errorf("healthy setup: %s is %s: %s", c, st[c], detail(rep, c))
		}
	}
	if st["nats"] != "WARN" || code != 0 {
		t.Errorf("no credentials: nats %s (want WARN), exit %d (want 0)", st["nats"], code)
	}

	// Pods run with another ack wait than doctor was told: a WARN naming it.
	_, st, rep = doctor(t, append(append(nats, good...), "--ack-wait", "5m")...)
	if st["consumer"] != "WARN" || !strings.Contains(detail(rep, "consumer"), "ack_wait 2m0s, want 5m0s") {
		t.Errorf("consumer with another ack wait: %s %s", st["consumer"], detail(rep, "consumer"))
	}

	// Each check that can fail, failing.
	for _, tc := range []struct {
		name  string
		args  []string
		check string
		want  string
	}{
		{"next hop refuses", []string{"--to", "x@down.test"}, "next-hop", "FAIL"},
		{"no route", []string{"--to", "x@nowhere.test"}, "next-hop", "FAIL"},
		{"disk below the minimum", []string{"--min-free-bytes", strconv.FormatUint(1<<62, 10)}, "disk", "FAIL"},
		{"resolver never answers", []string{"--dns-server", testenv.StartBlackholeDNS(t), "--check-timeout", "500ms"}, "dns", "FAIL"},
		{"one resolver of two dead", []string{"--dns-server", dns.Addr + "," + testenv.StartBlackholeDNS(t), "--check-timeout", "500ms"}, "dns", "WARN"},
		{"body store unusable", []string{"--blob-store", "file://" + filepath.Join(polDir, "access", "bodies")}, "body-store", "FAIL"},
		{"policy does not parse", []string{"--dir", badPolicy(t)}, "policy", "FAIL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := good
			if strings.Contains(strings.Join(tc.args, " "), "--dns-server") {
				args = base
			}
			code, st, rep := doctor(t, append(append(nats, args...), tc.args...)...)
			if st[tc.check] != tc.want || (tc.want == "FAIL") != (code == 1) {
				t.Errorf("%s: %s (exit %d), want %s: %s", tc.check, st[tc.check], code, tc.want, detail(rep, tc.check))
			}
		})
	}
	// A MX whose first host is dead and second alive: WARN.
	dns.Set(`
$ORIGIN up.test.
@   60 IN MX 10 mx1.up.test.
@   60 IN MX 20 mx2.up.test.
mx1 60 IN A 127.0.0.9
mx2 60 IN A 127.0.0.1
`)
	_, st, rep = doctor(t, append(append(nats, good...), "--to", "x@up.test", "--smtp-port", mxPort, "--check-timeout", "1s")...)
	if st["next-hop"] != "WARN" || !strings.Contains(detail(rep, "next-hop"), "mx2.up.test") {
		t.Errorf("backup MX only: %s %s", st["next-hop"], detail(rep, "next-hop"))
	}

	// NATS down: FAIL, and the checks that need it say so.
	down := []string{"--nats-url", "nats://127.0.0.1:" + closedPort}
	code, st, rep = doctor(t, append(down, good...)...)
	if code != 1 || st["nats"] != "FAIL" || st["stream"] != "WARN" || !strings.Contains(detail(rep, "nats"), "--nats-url") {
		t.Errorf("NATS down: exit %d %v %s", code, st, detail(rep, "nats"))
	}
}

func badPolicy(t *testing.T) string {
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "access"), []byte("Connect:10.0.0.0/8 RELAY\nTo:example.com FROBNICATE\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDoctorNATSAuth: a server with users; the right password is OK, a
// wrong one a FAIL that says to check the credentials.
func TestDoctorNATSAuth(t *testing.T) {
	s := testenv.StartNATSServer(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		Users: []*server.User{{Username: "ctl", Password: "s3cret"}}})
	port := strconv.Itoa(s.Addr().(*net.TCPAddr).Port)
	lo := loopbackOnly(t)
	_, st, rep := doctor(t, append([]string{"--nats-url", "nats://ctl:s3cret@127.0.0.1:" + port}, lo...)...)
	if st["nats"] != "OK" || !strings.Contains(detail(rep, "nats"), "as user ctl") {
		t.Errorf("right password: %s %s", st["nats"], detail(rep, "nats"))
	}
	code, st, rep := doctor(t, append([]string{"--nats-url", "nats://ctl:wrong@127.0.0.1:" + port}, lo...)...)
	if code != 1 || st["nats"] != "FAIL" || !strings.Contains(detail(rep, "nats"), "credentials") {
		t.Errorf("wrong password: exit %d %s %s", code, st["nats"], detail(rep, "nats"))
	}
	if strings.Contains(detail(rep, "nats"), "wrong") {
		t.Errorf("the password shows in the report: %s", detail(rep, "nats"))
	}
}

// TestDoctorS3: a MinIO store is written and read back; stopped, it fails.
func TestDoctorS3(t *testing.T) {
	m := testenv.StartMinio(t)
	n := testenv.StartNATS(t)
	bootstrap(t, n.URL(), 2*time.Minute)
	url := m.URL("doctor-bodies")
	runCtl(t, "--nats-url", n.URL(), "bootstrap", "--blob-store", url)
	lo := loopbackOnly(t)
	_, st, rep := doctor(t, append([]string{"--nats-url", n.URL(), "--blob-store", url}, lo...)...)
	if st["body-store"] != "OK" || st["disk"] != "OK" {
		t.Errorf("MinIO up: body-store %s, disk %s: %s", st["body-store"], st["disk"], detail(rep, "body-store"))
	}
	m.Stop()
	code, st, rep := doctor(t, append([]string{"--nats-url", n.URL(), "--blob-store", url, "--check-timeout", "2s"}, lo...)...)
	if code != 1 || st["body-store"] != "FAIL" {
		t.Errorf("MinIO down: exit %d, body-store %s: %s", code, st["body-store"], detail(rep, "body-store"))
	}
}

// TestDoctorNoJetStream: a NATS server without JetStream: the jetstream
// check fails and says so, the layout checks are not attempted.
func TestDoctorNoJetStream(t *testing.T) {
	s := testenv.StartNATSServer(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true})
	code, st, rep := doctor(t, append([]string{"--nats-url", "nats://" + s.Addr().String(), "--check-timeout", "2s"}, loopbackOnly(t)...)...)
	if code != 1 || st["jetstream"] != "FAIL" || st["stream"] != "WARN" || !strings.Contains(detail(rep, "jetstream"), "enable JetStream") {
		t.Errorf("no JetStream: exit %d %v %s", code, st, detail(rep, "jetstream"))
	}
}

// TestVersionWithoutNATS: the client's own version is always shown; an
// unreachable NATS is an error after it, --client needs no NATS.
func TestVersionWithoutNATS(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	url := "nats://" + ln.Addr().String()
	ln.Close()
	r := runCtl(t, "--nats-url", url, "version")
	if r.code != 1 || !strings.Contains(r.out, "mailfwdctl") || !strings.Contains(r.errOut, "--nats-url") {
		t.Errorf("NATS down: %s", r)
	}
	r = runCtl(t, "--nats-url", url, "version", "--client", "-o", "yaml")
	if r.code != 0 || !strings.Contains(r.out, "component: mailfwdctl") || !strings.Contains(r.out, "go_version: go") {
		t.Errorf("--client: %s", r)
	}
}

// TestDoctorUnsafeStream: a stream on which a daemon's publish right can
// remove or multiply mail (an earlier release's: schedules, hence roll-ups
// and purge) fails the stream check with the way out; so does a refs
// bucket with roll-ups.
func TestDoctorUnsafeStream(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	sc := q.Expected().Stream
	sc.AllowMsgSchedules, sc.DenyPurge = true, false
	if _, err := js.CreateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	for _, b := range q.Expected().Buckets {
		if _, err := js.CreateKeyValue(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	code, st, rep := doctor(t, append([]string{"--nats-url", n.URL()}, loopbackOnly(t)...)...)
	d := detail(rep, "stream")
	if code != 1 || st["stream"] != "FAIL" || !strings.Contains(d, "allow_rollup_hdrs") || !strings.Contains(d, "bootstrap --migrate") {
		t.Errorf("unsafe stream: exit %d, stream %s: %s", code, st["stream"], d)
	}
	if st["buckets"] != "FAIL" || !strings.Contains(detail(rep, "buckets"), "MAIL_REFS") {
		t.Errorf("refs bucket with roll-ups: buckets %s: %s", st["buckets"], detail(rep, "buckets"))
	}
}
