package main

import (
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// mailfwdctl talks to Kubernetes about ConfigMaps, Secrets, Namespaces and
// who it is (SelfSubjectReview); every other API group is dead weight. The
// typed clients of client-go import k8s.io/client-go/kubernetes/scheme,
// which registers all of them (issue 21: 31.9 MB, 19.2 MB without).
func TestCtlLinksOnlyTheKubernetesAPIsItUses(t *testing.T) {
	used := map[string]bool{"k8s.io/api/core/v1": true, "k8s.io/api/authentication/v1": true}
	for _, dep := range testenv.Deps(t, ".") {
		switch {
		case strings.HasPrefix(dep, "k8s.io/api/") && !used[dep],
			dep == "k8s.io/client-go/kubernetes/scheme",
			strings.HasPrefix(dep, "k8s.io/client-go/kubernetes/typed/"),
			strings.HasPrefix(dep, "k8s.io/client-go/applyconfigurations/"),
			strings.HasPrefix(dep, "google.golang.org/grpc"):
			t.Errorf("mailfwdctl depends on %s", dep)
		}
	}
	// Room for growth, not for an API group's worth of it (the unused
	// groups were 12.6 MB).
	size := testenv.StrippedSize(t, ".")
	const limit = 24 << 20
	if size > limit {
		t.Errorf("mailfwdctl is %d bytes built as make build does, more than %d", size, limit)
	}
	t.Logf("mailfwdctl: %.1f MB", float64(size)/(1<<20))
}
