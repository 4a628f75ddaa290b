#!/usr/bin/env bash
# Builds the pinned Helm 3 binary from source with the Go toolchain and the Go
# module proxy only (no release downloads, no package manager):
#
#   helm-v3.22.0   from helm.sh/helm/v3 v3.22.0 (go install)
#
# Usage: deploy/scripts/helm-tool.sh [BIN_DIR]   (default $HOME/.cache/mailfwd/bin)
#
# A binary already in BIN_DIR that reports the pinned version is kept, so only
# the first run pays for the build (about 1-3 minutes cold on 2 cores; seconds
# with a warm Go build cache). Prints the path of the binary on stdout.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Kubernetes version helm assumes without a cluster (helm's Makefile derives it
# from its k8s.io/client-go version: v0.37 -> 1.37); without it helm says v1.20.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
bin_dir="${1:-$HOME/.cache/mailfwd/bin}"
go_cmd="${GO:-go}"
helm="$bin_dir/helm-$HELM_VERSION"

log() { printf 'helm-tool: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$go_cmd" >/dev/null 2>&1 || die "go not found on PATH"
mkdir -p "$bin_dir" || die "cannot create $bin_dir"

if [[ -x "$helm" ]] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
	log "have $helm"
	echo "$helm"
	exit 0
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/mailfwd-helm-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

log "building helm $HELM_VERSION (first time only, a few minutes)"
# Outside any module so the repo's go.mod is not touched; the -X flags give
# `helm version` the release string instead of a development one.
(
	cd "$scratch"
	GOFLAGS= GOBIN="$scratch/bin" CGO_ENABLED=0 "$go_cmd" install \
		-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
			-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$HELM_K8S_MAJOR -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR \
			-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$HELM_K8S_MAJOR -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
) || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"

mv "$scratch/bin/helm" "$helm.tmp"
mv "$helm.tmp" "$helm"
"$helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" || die "$helm does not report $HELM_VERSION"
log "built $helm"
echo "$helm"
