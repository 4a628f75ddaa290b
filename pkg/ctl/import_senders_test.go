package ctl_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/policy"
)

// The import command takes genericstable and sendmail.mc from /etc/mail.
func TestPolicyImportSenders(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(src, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("local-host-names", "d1pr0004.cpships.com\n")
	write("genericstable", "root@server17.internal ops@cpships.com\n")
	write("sendmail.mc", "MASQUERADE_AS(`cpships.com')dnl\nMASQUERADE_DOMAIN(`internal')dnl\nFEATURE(`masquerade_entire_domain')dnl\n")
	r := mustCtl(t, 0, "policy", "import", src, "--dir", dst)
	mustContain(t, "import stderr", r.errOut, filepath.Join(src, "sendmail.mc"), "masquerade_envelope")
	files := readFiles(t, dst)
	p, err := policy.Parse(toPolicyFiles(files))
	if err != nil {
		t.Fatalf("imported policy: %v", err)
	}
	if got := p.RewriteSender("root@server17.internal"); got.Addr != "ops@cpships.com" || !got.Headers {
		t.Errorf("genericstable: %+v", got)
	}
	if got := p.RewriteSender("cron@web3.internal"); got.Addr != "cron@cpships.com" {
		t.Errorf("masquerade: %+v", got)
	}
}

func toPolicyFiles(m map[string]string) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

// srs rotate puts a new secret first and keeps the previous one verifying.
func TestSRSRotate(t *testing.T) {
	dir := t.TempDir()
	mustCtl(t, 0, "srs", "rotate", "--dir", dir)
	first := readFiles(t, dir)["srs"]
	mustCtl(t, 0, "srs", "rotate", "--dir", dir)
	second := readFiles(t, dir)["srs"]
	lines := strings.Split(strings.TrimSpace(second), "\n")
	if len(lines) != 2 || lines[1] != strings.TrimSpace(first) || lines[0] == lines[1] || len(lines[0]) < 16 {
		t.Fatalf("after two rotations: %q (first was %q)", second, first)
	}
	mustCtl(t, 0, "srs", "rotate", "--dir", dir, "--keep", "0")
	if third := strings.TrimSpace(readFiles(t, dir)["srs"]); strings.Contains(third, "\n") {
		t.Fatalf("--keep 0 kept old secrets: %q", third)
	}
	r := mustCtl(t, 0, "srs", "list", "--dir", dir)
	mustContain(t, "srs list", r.out, "1\t", "signs")
	if strings.Contains(r.out, strings.TrimSpace(readFiles(t, dir)["srs"])) {
		t.Fatal("srs list printed the secret")
	}
}

// mailfwdctl route shows the sender a target leaves with (masquerade, SRS)
// and the relay a sender route picks.
func TestRouteShowsSenders(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"access":           "Connect:127.0.0.1 RELAY\n",
		"aliases":          "fwd: someone@elsewhere.example\n",
		"local-host-names": "example.com\n",
		"masquerade":       ".internal example.com headers\n",
		"senderroutes":     "@example.com smtp:[192.0.2.25]:587\n",
		"settings":         "srs_domain = fwd.example.com\n",
		"srs":              "0123456789abcdef0123\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := mustCtl(t, 0, "route", "--dir", dir, "--dns-server", "127.0.0.1:9", "--from", "root@server17.internal", "-o", "json", "x@dest.example")
	mustContain(t, "masqueraded", r.out, `"sender": "root@example.com"`, "masquerade:1", `"via": "senderroutes"`, "192.0.2.25:587")
	r = mustCtl(t, 0, "route", "--dir", dir, "--dns-server", "127.0.0.1:9", "--route", "elsewhere.example=[192.0.2.9]", "--from", "alice@sender.example", "fwd@example.com")
	mustContain(t, "forwarded", r.out, "someone@elsewhere.example", "SRS0=", "@fwd.example.com", "SRS: forwarded")
}
