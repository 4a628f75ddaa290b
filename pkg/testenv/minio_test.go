package testenv

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// fakeTB records Skip/Fatal instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped, fataled string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Skip(args ...any)  { f.skipped = fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any) { f.fataled = fmt.Sprint(args...) }

func TestMinioBinaryMissing(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("MAILFWD_MINIO_BIN", empty+"/no-such-minio")
	t.Setenv("HOME", empty)
	t.Setenv("PATH", empty)

	t.Setenv("MAILFWD_REQUIRE_MINIO", "")
	f := &fakeTB{TB: t}
	if got := MinioBinary(f); got != "" {
		t.Fatalf("MinioBinary = %q, want none", got)
	}
	if !strings.Contains(f.skipped, "run make test (it builds minio)") || f.fataled != "" {
		t.Fatalf("skip=%q fatal=%q; want a skip telling to run make test", f.skipped, f.fataled)
	}

	t.Setenv("MAILFWD_REQUIRE_MINIO", "1")
	f = &fakeTB{TB: t}
	MinioBinary(f)
	if !strings.Contains(f.fataled, "run make test") || f.skipped != "" {
		t.Fatalf("skip=%q fatal=%q; want Fatal when MAILFWD_REQUIRE_MINIO=1", f.skipped, f.fataled)
	}
}

func TestMinioBinaryFromEnv(t *testing.T) {
	bin := MinioBinary(t) // skips when there is no binary at all
	t.Setenv("MAILFWD_MINIO_BIN", bin)
	t.Setenv("HOME", t.TempDir())
	t.Setenv("PATH", t.TempDir())
	if got := MinioBinary(t); got != bin {
		t.Fatalf("MinioBinary = %q, want $MAILFWD_MINIO_BIN %q", got, bin)
	}
}

func get(t *testing.T, rawURL string) (int, error) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(rawURL)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func TestMinioStopStart(t *testing.T) {
	m := StartMinio(t)
	host, _, err := net.SplitHostPort(m.Endpoint)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Endpoint %q is not a 127.0.0.1:port address (%v)", m.Endpoint, err)
	}
	u, err := url.Parse(m.URL("bodies"))
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	if u.Scheme != "s3" || u.Host != "bodies" || u.User.Username() != m.AccessKey || pw != m.SecretKey ||
		u.Query().Get("endpoint") != m.Endpoint || u.Query().Get("secure") != "false" {
		t.Fatalf("URL = %q does not describe this server", m.URL("bodies"))
	}

	live := "http://" + m.Endpoint + "/minio/health/live"
	for cycle := range 2 {
		if code, err := get(t, live); err != nil || code != http.StatusOK {
			t.Fatalf("cycle %d: health before Stop = %d, %v", cycle, code, err)
		}
		m.Stop()
		if _, err := get(t, live); err == nil {
			t.Fatalf("cycle %d: health answered after Stop", cycle)
		}
		m.Start()
		m.Start() // no-op when running
		if code, err := get(t, live); err != nil || code != http.StatusOK {
			t.Fatalf("cycle %d: health after Start = %d, %v", cycle, code, err)
		}
	}
	if !strings.Contains(m.Output(), "minio stopped") {
		t.Fatalf("output does not record the stop:\n%s", m.Output())
	}
}
