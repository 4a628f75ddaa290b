#!/usr/bin/env bash
# Builds the pinned Kubernetes test tools from source with the Go toolchain and
# the Go module proxy only (no Docker, no release downloads):
#
#   kube-apiserver-v1.32.13, kubectl-v1.32.13   from k8s.io/kubernetes v1.32.13
#   etcd-v3.5.21                                from go.etcd.io/etcd/server/v3 v3.5.21
#
# Usage: scripts/kube-tools.sh [BIN_DIR]   (default $HOME/.cache/mailfwd/bin)
#
# A binary that is already in BIN_DIR and reports the pinned version is kept.
# The scratch Go modules (templates in scripts/kube-tools/) are built in a
# temporary directory outside the repo and removed afterwards. A cold build
# takes several minutes on 2 cores; later builds reuse Go's build cache.
set -euo pipefail

KUBE_VERSION=v1.32.13
ETCD_VERSION=v3.5.21

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
templates="$here/kube-tools"
bin_dir="${1:-$HOME/.cache/mailfwd/bin}"
go_cmd="${GO:-go}"

kube_apiserver="$bin_dir/kube-apiserver-$KUBE_VERSION"
kubectl="$bin_dir/kubectl-$KUBE_VERSION"
etcd="$bin_dir/etcd-$ETCD_VERSION"

log() { printf 'kube-tools: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$go_cmd" >/dev/null 2>&1 || die "go not found on PATH"
for f in kube/go.mod.in etcd/go.mod.in etcd/main.go.in; do
	[[ -f "$templates/$f" ]] || die "missing template $templates/$f"
done
mkdir -p "$bin_dir" || die "cannot create $bin_dir"
bin_dir="$(cd "$bin_dir" && pwd)"

# have BIN WANT ARGS...: BIN exists, runs, and its output of ARGS contains WANT.
have() {
	local bin="$1" want="$2"
	shift 2
	[[ -x "$bin" ]] || return 1
	local out
	out="$("$bin" "$@" 2>&1)" || return 1
	[[ "$out" == *"$want"* ]]
}

need_apiserver=1 need_kubectl=1 need_etcd=1
if have "$kube_apiserver" "Kubernetes $KUBE_VERSION" --version; then need_apiserver=0; log "have $kube_apiserver"; fi
if have "$kubectl" "$KUBE_VERSION" version --client; then need_kubectl=0; log "have $kubectl"; fi
if have "$etcd" "etcd Version: ${ETCD_VERSION#v}" --version; then need_etcd=0; log "have $etcd"; fi
if ((need_apiserver + need_kubectl + need_etcd == 0)); then
	log "all tools present in $bin_dir"
	exit 0
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/mailfwd-kube-tools.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

# The scratch modules resolve their own dependencies (-mod=mod writes their
# go.sum); no go.work or vendor directory of the caller may interfere.
export GOFLAGS="-mod=mod -buildvcs=false -trimpath"
export GOWORK=off
export CGO_ENABLED=0

# Version stamping as Kubernetes' hack/lib/version.sh does, so that
# `--version`, /version and kubectl's version-skew checks see the release.
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION"
	kube_ldflags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=32"
	kube_ldflags+=" -X $pkg.gitTreeState=clean"
	kube_ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kube_ldflags="-s -w$kube_ldflags"

# build DIR PKG OUT LDFLAGS: go build PKG in module DIR into OUT, atomically.
build() {
	local dir="$1" pkg="$2" out="$3" ldflags="$4"
	local start=$SECONDS
	log "building $(basename "$out") from $pkg (cold: several minutes) ..."
	(cd "$dir" && "$go_cmd" build -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg") ||
		{ rm -f "$out.tmp.$$"; die "building $pkg failed"; }
	mv -f "$out.tmp.$$" "$out"
	log "built $out ($(du -h "$out" | cut -f1), $((SECONDS - start))s)"
}

if ((need_apiserver + need_kubectl > 0)); then
	mkdir -p "$scratch/kube"
	cp "$templates/kube/go.mod.in" "$scratch/kube/go.mod"
	if ((need_apiserver)); then
		build "$scratch/kube" k8s.io/kubernetes/cmd/kube-apiserver "$kube_apiserver" "$kube_ldflags"
		have "$kube_apiserver" "Kubernetes $KUBE_VERSION" --version || die "$kube_apiserver does not report $KUBE_VERSION"
	fi
	if ((need_kubectl)); then
		build "$scratch/kube" k8s.io/kubernetes/cmd/kubectl "$kubectl" "$kube_ldflags"
		have "$kubectl" "$KUBE_VERSION" version --client || die "$kubectl does not report $KUBE_VERSION"
	fi
fi

if ((need_etcd)); then
	mkdir -p "$scratch/etcd"
	cp "$templates/etcd/go.mod.in" "$scratch/etcd/go.mod"
	cp "$templates/etcd/main.go.in" "$scratch/etcd/main.go"
	build "$scratch/etcd" . "$etcd" "-s -w"
	have "$etcd" "etcd Version: ${ETCD_VERSION#v}" --version || die "$etcd does not report $ETCD_VERSION"
fi

log "done: $kube_apiserver $etcd $kubectl"
