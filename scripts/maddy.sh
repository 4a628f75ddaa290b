#!/usr/bin/env bash
# Builds maddy (github.com/foxcpp/maddy), pinned, from the Go module proxy
# into $TOOLS_DIR/maddy-$MADDY_VERSION, once. `make bench` measures it as a
# third system beside Postfix and mailfwd. Nothing of maddy is kept in this
# repository: a scratch module in ~/.cache/mailfwd/maddy-src-VERSION gets
#   go get -tool github.com/foxcpp/maddy/cmd/maddy@VERSION
# with maddy's own replace lines (its go.mod points go-imap, go-smtp and
# libdns/gandi at foxcpp forks) copied from maddy's go.mod at that version,
# then go mod tidy and go install.
set -euo pipefail
GO=${GO:-go}
MADDY_VERSION=${MADDY_VERSION:-v0.8.1}
TOOLS_DIR=${TOOLS_DIR:-$HOME/.cache/mailfwd/bin}
out="$TOOLS_DIR/maddy-$MADDY_VERSION"
if [[ -x "$out" ]]; then
	echo "$out"
	exit 0
fi
src="$HOME/.cache/mailfwd/maddy-src-$MADDY_VERSION"
rm -rf "$src"
mkdir -p "$src" "$TOOLS_DIR"
cd "$src"
"$GO" mod init mailfwd.local/maddy-tool >/dev/null 2>&1
# maddy's go.mod at the pinned version, from the module proxy.
modfile=$("$GO" mod download -json "github.com/foxcpp/maddy@$MADDY_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f "$modfile" ]] || { echo "maddy.sh: no go.mod for maddy $MADDY_VERSION from the module proxy" >&2; exit 1; }
replaces=$(grep -E '^replace ' "$modfile")
n=$(wc -l <<<"$replaces")
[[ "$n" -eq 3 ]] || { echo "maddy.sh: expected maddy's 3 replace lines, found $n:" >&2; echo "$replaces" >&2; exit 1; }
printf '\n%s\n' "$replaces" >>go.mod
"$GO" get -tool "github.com/foxcpp/maddy/cmd/maddy@$MADDY_VERSION"
"$GO" mod tidy
GOBIN="$src/bin" "$GO" install github.com/foxcpp/maddy/cmd/maddy
mv "$src/bin/maddy" "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
