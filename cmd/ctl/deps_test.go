package main

import (
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// mailfwdctl talks to Kubernetes about ConfigMaps, Secrets, Namespaces and
// who it is (SelfSubjectReview); every other API is dead weight. client-go's
// typed clients import k8s.io/client-go/kubernetes/scheme, which registers
// every API group (12.6 MB), and k8s.io/api/core/v1 holds every core kind
// (3.2 MB): mailfwdctl was 31.9 MB with them, 16.0 MB without (issue 21).
func TestCtlLinksOnlyTheKubernetesAPIsItUses(t *testing.T) {
	for _, dep := range testenv.Deps(t, ".") {
		switch {
		case strings.HasPrefix(dep, "k8s.io/api/"),
			dep == "k8s.io/client-go/kubernetes/scheme",
			strings.HasPrefix(dep, "k8s.io/client-go/kubernetes/typed/"),
			strings.HasPrefix(dep, "k8s.io/client-go/applyconfigurations/"),
			strings.HasPrefix(dep, "google.golang.org/grpc"):
			t.Errorf("mailfwdctl depends on %s", dep)
		}
	}
	// Room for growth, not for an API group's worth of it.
	size := testenv.StrippedSize(t, ".")
	const limit = 20 << 20
	if size > limit {
		t.Errorf("mailfwdctl is %d bytes built as make build does, more than %d", size, limit)
	}
	t.Logf("mailfwdctl: %.1f MB", float64(size)/(1<<20))
}
