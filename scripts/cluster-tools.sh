#!/usr/bin/env bash
# Builds everything `make test-cluster` runs that is not a Debian package,
# from the Go module proxy only (no Docker, no registry, no release download):
#
#   bin/kubelet-v1.32.13, kube-controller-manager-, kube-scheduler-, kube-proxy-
#                              k8s.io/kubernetes v1.32.13 (scratch module, kube-tools/node)
#   bin/coredns-v1.15.0        github.com/coredns/coredns v1.15.0
#   bin/keda-operator-v2.21.0, keda-adapter-v2.21.0
#                              github.com/kedacore/keda/v2 v2.21.0 (scratch module, kube-tools/keda)
#   bin/jaeger-v1.76.0         github.com/jaegertracing/jaeger v1.76.0 = Jaeger v2.13.0 (kube-tools/jaeger)
#   bin/nats-server-static-v2.15.2, minio-static-<version>   CGO_ENABLED=0 builds for the images
#   bin/pause-v1.32.13         build/pause/linux/pause.c of k8s.io/kubernetes, gcc -static
#   images/<name>-<version>.tar  OCI image tarballs of the above (go run ./tests/cluster/imagewrap)
#   keda-config-v2.21.0/       KEDA's config/ kustomization tree from its module
#
# Usage: scripts/cluster-tools.sh [CACHE_DIR]   (default $HOME/.cache/mailfwd)
# Every output carries its pinned version in its name and is kept once built.
# Cold: about 30 minutes on 2 idle cores; warm: seconds.
set -euo pipefail

KUBE_VERSION=v1.32.13
COREDNS_VERSION=v1.15.0
KEDA_VERSION=v2.21.0
JAEGER_VERSION=v1.76.0
NATS_SERVER_VERSION=v2.15.2
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
templates="$here/kube-tools"
cache="${1:-$HOME/.cache/mailfwd}"
bin="$cache/bin"
images="$cache/images"
go_cmd="${GO:-go}"
mkdir -p "$bin" "$images"
cache="$(cd "$cache" && pwd)" bin="$cache/bin" images="$cache/images"

log() { printf 'cluster-tools: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

scratch="$(mktemp -d "${TMPDIR:-/tmp}/mailfwd-cluster-tools.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

export GOFLAGS="-mod=mod -buildvcs=false -trimpath"
export GOWORK=off
export CGO_ENABLED=0

# build DIR PKG OUT LDFLAGS: go build PKG in module DIR into OUT, atomically; kept when present.
build() {
	local dir="$1" pkg="$2" out="$3" ldflags="$4"
	if [[ -x "$out" ]]; then log "have $(basename "$out")"; return 0; fi
	local start=$SECONDS
	log "building $(basename "$out") from $pkg ..."
	(cd "$dir" && "$go_cmd" build -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg") ||
		{ rm -f "$out.tmp.$$"; die "building $pkg failed"; }
	mv -f "$out.tmp.$$" "$out"
	log "built $out ($(du -h "$out" | cut -f1), $((SECONDS - start))s)"
}

# module DIR TEMPLATE: a scratch module from a go.mod template.
module() {
	mkdir -p "$scratch/$1"
	[[ -f "$scratch/$1/go.mod" ]] || cp "$templates/$2/go.mod.in" "$scratch/$1/go.mod"
	echo "$scratch/$1"
}

# --- Kubernetes node components ------------------------------------------
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=32"
	kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kube_ldflags="-s -w$kube_ldflags"
node="$(module node node)"
for c in kubelet kube-controller-manager kube-scheduler kube-proxy; do
	build "$node" "k8s.io/kubernetes/cmd/$c" "$bin/$c-$KUBE_VERSION" "$kube_ldflags"
done

# The pod sandbox ("pause") image's binary, from the same Kubernetes release.
pause="$bin/pause-$KUBE_VERSION"
if [[ ! -x "$pause" ]]; then
	src="$(cd "$node" && "$go_cmd" list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
	[[ -f "$src" ]] || die "no $src"
	command -v gcc >/dev/null || die "gcc is needed for the pause binary (apt-get install gcc libc6-dev)"
	gcc -Os -Wall -Werror -static -DVERSION="$KUBE_VERSION" -o "$pause.tmp" "$src"
	strip "$pause.tmp"
	mv "$pause.tmp" "$pause"
	log "built $pause"
fi

# --- CoreDNS, NATS, MinIO (plain modules) ----------------------------------
# goinstall MOD@VER NAME OUT
goinstall() {
	local mod="$1" name="$2" out="$3"
	if [[ -x "$out" ]]; then log "have $(basename "$out")"; return 0; fi
	local start=$SECONDS
	log "building $(basename "$out") from $mod ..."
	rm -rf "$scratch/gobin" && mkdir -p "$scratch/gobin"
	GOBIN="$scratch/gobin" "$go_cmd" install -ldflags "-s -w" "$mod" || die "go install $mod failed"
	mv -f "$scratch/gobin/$name" "$out"
	log "built $out ($(du -h "$out" | cut -f1), $((SECONDS - start))s)"
}
goinstall "github.com/coredns/coredns@$COREDNS_VERSION" coredns "$bin/coredns-$COREDNS_VERSION"
goinstall "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION" nats-server "$bin/nats-server-static-$NATS_SERVER_VERSION"

# --- Jaeger ------------------------------------------------------------------
jaeger="$(module jaeger jaeger)"
build "$jaeger" github.com/jaegertracing/jaeger/cmd/jaeger "$bin/jaeger-$JAEGER_VERSION" "-s -w"

# --- KEDA --------------------------------------------------------------------
keda="$(module keda keda)"
keda_ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
build "$keda" github.com/kedacore/keda/v2/cmd/operator "$bin/keda-operator-$KEDA_VERSION" "$keda_ldflags"
build "$keda" github.com/kedacore/keda/v2/cmd/adapter "$bin/keda-adapter-$KEDA_VERSION" "$keda_ldflags"
kcfg="$cache/keda-config-$KEDA_VERSION"
if [[ ! -d "$kcfg" ]]; then
	dir="$(cd "$keda" && "$go_cmd" list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)"
	rm -rf "$kcfg.tmp" && cp -r "$dir/config" "$kcfg.tmp" && chmod -R u+w "$kcfg.tmp" && mv "$kcfg.tmp" "$kcfg"
	log "copied KEDA's config/ to $kcfg"
fi

goinstall "github.com/minio/minio@$MINIO_VERSION" minio "$bin/minio-static-$MINIO_VERSION"

# --- Images --------------------------------------------------------------------
# wrap NAME VERSION BINARY [PORT...]: an image NAME:VERSION (mailfwd.local/NAME) with BINARY.
wrap() {
	local name="$1" version="$2" binary="$3"
	shift 3
	local out="$images/$name-$version.tar"
	if [[ -f "$out" ]]; then log "have $(basename "$out")"; return 0; fi
	(cd "$repo" && GOFLAGS= "$go_cmd" run ./tests/cluster/imagewrap -name "$name" -tag "$version" \
		-binary "$binary" -out "$out.tmp" "$@") || die "image $name failed"
	mv -f "$out.tmp" "$out"
}
wrap pause "$KUBE_VERSION" "$pause"
wrap coredns "$COREDNS_VERSION" "$bin/coredns-$COREDNS_VERSION" -port 53/udp -port 53/tcp
wrap nats "$NATS_SERVER_VERSION" "$bin/nats-server-static-$NATS_SERVER_VERSION" -bin nats-server -port 4222/tcp -port 6222/tcp -port 8222/tcp
wrap minio "$MINIO_VERSION" "$bin/minio-static-$MINIO_VERSION" -port 9000/tcp
wrap jaeger "$JAEGER_VERSION" "$bin/jaeger-$JAEGER_VERSION" -port 4317/tcp -port 4318/tcp -port 16686/tcp
wrap keda "$KEDA_VERSION" "$bin/keda-operator-$KEDA_VERSION" -bin keda
wrap keda-metrics-apiserver "$KEDA_VERSION" "$bin/keda-adapter-$KEDA_VERSION" -bin keda-adapter
log "done"
