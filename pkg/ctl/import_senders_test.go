package ctl_test

import (
	"os"
	"path/filepath"
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
