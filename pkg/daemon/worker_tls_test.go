package daemon

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// The outbound TLS flags are checked once, in Validate, with clear errors.
func TestWorkerTLSFlagsValidate(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, testenv.NewCA(t).PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--nats-url", "nats://127.0.0.1:4222", "--blob-store", "file://" + dir}
	parse := func(args ...string) error {
		var o Worker
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		o.Register(fs)
		if err := fs.Parse(append(append([]string{}, base...), args...)); err != nil {
			t.Fatalf("parse %v: %v", args, err)
		}
		return o.Validate()
	}
	if err := parse("--tls-ca-file", caFile, "--mta-sts", "--dane"); err != nil {
		t.Fatalf("good flags: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-ca-file", filepath.Join(dir, "missing.pem")}, "--tls-ca-file"},
		{[]string{"--tls-ca-file", junk}, "no PEM certificate"},
		{[]string{"--mta-sts-fetch-timeout", "-1s"}, "--mta-sts-fetch-timeout"},
		{[]string{"--mta-sts-max-policy-bytes", "10"}, "--mta-sts-max-policy-bytes"},
		{[]string{"--mta-sts-cache-size", "-1"}, "--mta-sts-cache-size"},
		{[]string{"--oauth2-token-timeout", "0s"}, "--oauth2-token-timeout"},
	} {
		err := parse(c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error naming %s", c.args, err, c.want)
		}
	}
}
