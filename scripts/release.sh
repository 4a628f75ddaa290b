#!/usr/bin/env bash
# Builds a mailfwd release without any registry: `make release VERSION=x.y.z`.
#
#   $OUT/mailfwd-$VERSION-linux-$ARCH.tar.gz   bin/ (the four binaries, trimmed, stripped),
#                                             deploy/ (systemd units and configurations, the
#                                             quickstart), docs/, README.md, CHANGELOG.md: the
#                                             clone's layout, so the docs' commands run in it
#   $OUT/images/linux-$ARCH/<image>.tar       OCI image archives (cmd/image), tagged $VERSION
#   $OUT/mailfwd-chart-$VERSION.tgz           the chart, version and appVersion $VERSION
#   $OUT/sbom/mailfwd-$VERSION-linux-$ARCH.<binary>.cdx.json   CycloneDX SBOM per binary (cyclonedx-gomod)
#   $OUT/SHA256SUMS                           sha256sum -c SHA256SUMS checks all of the above
#
# Environment: VERSION (required, semver without "v"), OUT (default dist/release/$VERSION),
# ARCHES (default "amd64 arm64"), REGISTRY (the image references' prefix inside the
# archives, default mailfwd.local: pushing with crane/skopeo/oras names the target anyway),
# CYCLONEDX (the cyclonedx-gomod binary), GO.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
: "${VERSION:?set VERSION, e.g. make release VERSION=0.2.0}"
if ! [[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "VERSION=$VERSION: want a semantic version without v, e.g. 0.2.0 or 0.2.0-rc.1" >&2
  exit 2
fi
OUT=${OUT:-dist/release/$VERSION}
ARCHES=${ARCHES:-amd64 arm64}
REGISTRY=${REGISTRY:-mailfwd.local}
CYCLONEDX=${CYCLONEDX:?set CYCLONEDX to the cyclonedx-gomod binary (make release builds it)}
# Reproducible: every timestamp is the last commit's.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
LDFLAGS="-s -w -X github.com/mailfwd/mailfwd/pkg/control.Version=$VERSION"
BINARIES="ingress:mailfwd-ingress worker:mailfwd-worker ctl:mailfwdctl sendmail:mailfwd-sendmail"

rm -rf "$OUT"
mkdir -p "$OUT/sbom"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for arch in $ARCHES; do
  dir="$work/mailfwd-$VERSION-linux-$arch"
  mkdir -p "$dir/bin" "$dir/deploy"
  for b in $BINARIES; do
    # The same flags as cmd/image's builds: its image build below reuses the build cache.
    CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOFLAGS=-mod=readonly \
      $GO build -trimpath -buildvcs=false -ldflags "$LDFLAGS" -o "$dir/bin/${b#*:}" "./cmd/${b%%:*}"
  done
  cp -r deploy/README.md deploy/systemd deploy/quickstart "$dir/deploy/"
  cp -r docs "$dir/docs"
  cp README.md CHANGELOG.md "$dir/"
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$work" -czf "$OUT/mailfwd-$VERSION-linux-$arch.tar.gz" "mailfwd-$VERSION-linux-$arch"
  $GO run ./cmd/image -out "$OUT/images/linux-$arch" -arch "$arch" -tag "$VERSION" \
    -registry "$REGISTRY" -source-date-epoch "$SOURCE_DATE_EPOCH" >/dev/null
done

# The chart, as `helm package --version $VERSION --app-version $VERSION` makes it
# (a gzipped tar of mailfwd/), with image.tag following appVersion.
mkdir -p "$work/chart"
cp -r charts/mailfwd "$work/chart/mailfwd"
sed -i -E "s/^version: .*/version: $VERSION/; s/^appVersion: .*/appVersion: \"$VERSION\"/" "$work/chart/mailfwd/Chart.yaml"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -C "$work/chart" -czf "$OUT/mailfwd-chart-$VERSION.tgz" mailfwd

# One CycloneDX SBOM per released binary, from the module list the Go linker
# embedded in it (go version -m): exactly what is in that binary.
for arch in $ARCHES; do
  dir="$work/mailfwd-$VERSION-linux-$arch"
  for b in $BINARIES; do
    "$CYCLONEDX" bin -json -noserial -notimestamp -version "v$VERSION" \
      -output "$OUT/sbom/mailfwd-$VERSION-linux-$arch.${b#*:}.cdx.json" "$dir/bin/${b#*:}"
  done
done

(cd "$OUT" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
echo "release $VERSION in $OUT:"
(cd "$OUT" && find . -type f | LC_ALL=C sort | xargs ls -l | awk '{printf "  %10d  %s\n", $5, $9}')
