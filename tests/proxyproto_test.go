package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/daemon"
)

// requireHAProxy finds the haproxy binary (Debian package haproxy; make
// test installs it).
func requireHAProxy(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("haproxy")
	if err == nil {
		return p
	}
	if os.Getenv("MAILFWD_REQUIRE_HAPROXY") == "1" {
		t.Fatal("haproxy not found (Debian package haproxy; make haproxy installs it) [MAILFWD_REQUIRE_HAPROXY=1]")
	}
	t.Skip("haproxy not found (Debian package haproxy; make haproxy installs it)")
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHAProxy runs HAProxy in front of ingress: frontend v1 sends PROXY
// protocol v1 (send-proxy), frontend v2 sends v2 (send-proxy-v2); both
// connect to the ingress from 127.0.0.1.
func startHAProxy(t *testing.T, bin, ingress string) (v1, v2 string) {
	t.Helper()
	dir := t.TempDir()
	v1 = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	v2 = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`global
  maxconn 100
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend smtp_v1
  bind %s
  default_backend ingress_v1
frontend smtp_v2
  bind %s
  default_backend ingress_v2
backend ingress_v1
  source 127.0.0.1
  server ingress %s send-proxy
backend ingress_v2
  source 127.0.0.1
  server ingress %s send-proxy-v2
`, v1, v2, ingress, ingress)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", path)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	waitFor(t, "haproxy listening", 30*time.Second, func() bool {
		for _, a := range []string{v1, v2} {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})
	return v1, v2
}

// greeting reads the first reply line of a connection from localIP ("" any),
// or returns the error that ended it.
func greeting(addr, localIP string) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

// Behind HAProxy speaking PROXY protocol v1 and v2, the ingress sees the
// real client: relay networks, the Received: header and the logs use it.
// Connections not from --proxy-protocol-from, or from there without a
// header, are refused (issue 21: every client looked like the load balancer).
func TestProxyProtocolBehindHAProxy(t *testing.T) {
	bin := requireHAProxy(t)
	e := newEnv(t, envOptions{blob: "fs",
		// Only 127.0.0.7 may relay; HAProxy itself (127.0.0.1) may not.
		relayNetworks: config.StringList{"127.0.0.7/32"},
		ingressSetup: func(in *daemon.Ingress) {
			in.Proxy.From = config.StringList{"127.0.0.1/32"}
			in.Proxy.HeaderWait = 2 * time.Second
			in.Proxy.MaxPending = 16
		},
	})
	v1, v2 := startHAProxy(t, bin, e.smtp)
	gamma := e.sinks["127.0.0.4"]

	for _, tc := range []struct{ name, addr string }{{"v1", v1}, {"v2", v2}} {
		body := message("via "+tc.name, "<proxy-"+tc.name+"@client.test>", "through HAProxy "+tc.name+"\r\n")
		r := send(tc.addr, "127.0.0.7", "a@client.test", []string{"x@gamma.test"}, body, nil)
		if r.Err != nil || r.FinalCode != 250 {
			t.Fatalf("%s: relay from 127.0.0.7 through HAProxy: %+v\n%s", tc.name, r, e.logs.String())
		}
		waitFor(t, "the "+tc.name+" message at gamma", 30*time.Second, func() bool {
			for _, m := range gamma.Messages() {
				if bytes.HasSuffix(m.Data, body) {
					return true
				}
			}
			return false
		})
		for _, m := range gamma.Messages() {
			if bytes.HasSuffix(m.Data, body) && !bytes.HasPrefix(m.Data, []byte("Received: from client.test ([127.0.0.7])")) {
				t.Errorf("%s: Received: does not name the real client 127.0.0.7:\n%q", tc.name, m.Data[:min(len(m.Data), 200)])
			}
		}
		// Another client through the same proxy is not in the relay networks.
		r = send(tc.addr, "127.0.0.8", "a@client.test", []string{"y@gamma.test"}, message("no", "<no-"+tc.name+"@client.test>", "x\r\n"), nil)
		if se := r.RcptErrs["y@gamma.test"]; se == nil || se.Code/100 != 5 {
			t.Errorf("%s: relay from 127.0.0.8 through HAProxy: want a 5xx refusal, got %+v", tc.name, r)
		}
	}
	if !strings.Contains(e.logs.String(), "127.0.0.7") {
		t.Errorf("the logs never name the real client 127.0.0.7")
	}

	// Straight to the ingress from a network that is not a trusted proxy: refused.
	if line, err := greeting(e.smtp, "127.0.0.7"); err == nil {
		t.Errorf("a client not in --proxy-protocol-from got %q", line)
	}
	// From the trusted proxy's address but without a PROXY header: refused.
	if line, err := greeting(e.smtp, "127.0.0.1"); err == nil {
		t.Errorf("a connection without a PROXY header got %q", line)
	}
	// A forged header from an untrusted address does not help either.
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}).Dial("tcp", e.smtp)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "PROXY TCP4 127.0.0.7 127.0.0.1 40000 25\r\n")
		if line, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			t.Errorf("a forged PROXY header from 127.0.0.9 got %q", line)
		}
		c.Close()
	}
	waitFor(t, "the refusals logged", 10*time.Second, func() bool {
		l := e.logs.String()
		return strings.Contains(l, "not from a --proxy-protocol-from network") && strings.Contains(l, "no valid PROXY header")
	})
}
