package main

import (
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// mailfwd-sendmail is copied into every application image: it speaks SMTP
// to the ingress and runs mailfwdctl for the operator modes, so Kubernetes,
// OpenTelemetry and the object-store clients must not be linked in (issue
// 21: 45 MB because pkg/submit linked pkg/ctl).
func TestSendmailStaysSmall(t *testing.T) {
	for _, dep := range testenv.Deps(t, ".") {
		for _, banned := range []string{"k8s.io/", "sigs.k8s.io/", "go.opentelemetry.io/", "github.com/minio/", "google.golang.org/grpc", "github.com/mailfwd/mailfwd/pkg/ctl", "github.com/mailfwd/mailfwd/pkg/daemon"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("mailfwd-sendmail depends on %s", dep)
			}
		}
	}
	size := testenv.StrippedSize(t, ".")
	const limit = 10 << 20
	if size > limit {
		t.Errorf("mailfwd-sendmail is %d bytes built as make build does, more than %d", size, limit)
	}
	t.Logf("mailfwd-sendmail: %.1f MB", float64(size)/(1<<20))
}
