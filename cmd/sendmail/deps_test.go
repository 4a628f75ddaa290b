package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mailfwd-sendmail is copied into every application image: it speaks SMTP
// to the ingress and runs mailfwdctl for the operator modes, so Kubernetes,
// OpenTelemetry and the object-store clients must not be linked in (issue
// 21: 45 MB because pkg/submit linked pkg/ctl).
func TestSendmailStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"k8s.io/", "sigs.k8s.io/", "go.opentelemetry.io/", "github.com/minio/", "google.golang.org/grpc", "github.com/mailfwd/mailfwd/pkg/ctl", "github.com/mailfwd/mailfwd/pkg/daemon"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("mailfwd-sendmail depends on %s", dep)
			}
		}
	}
	bin := filepath.Join(t.TempDir(), "mailfwd-sendmail")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 10 << 20
	if st.Size() > limit {
		t.Errorf("mailfwd-sendmail is %d bytes built as make build does, more than %d", st.Size(), limit)
	}
	t.Logf("mailfwd-sendmail: %.1f MB", float64(st.Size())/(1<<20))
}
