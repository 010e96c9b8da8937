#!/usr/bin/env bash
# Build cnitool from Debian's libcni (apt golang-github-appc-cni-dev), offline.
# Usage: integration/cnitool/build.sh OUTDIR   -> OUTDIR/cnitool
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# GOPATH mode (no modules, no network): our source lives in a throw-away GOPATH,
# libcni and its packages come from /usr/share/gocode.
gopath=$(mktemp -d)
gocache=${GOCACHE:-${HOME:+$HOME/.cache/go-build}}
gocache=${gocache:-$gopath/cache}
trap 'chmod -R u+w "$gopath" 2>/dev/null || true; rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/weft/cnitool"
cp "$here/cnitool.go" "$gopath/src/weft/cnitool/"

cd "$gopath/src/weft/cnitool"
# Build next to the target and rename: concurrent builders never see a half-written binary.
GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE="$gocache" \
    go build -o "$out/.cnitool.$$" .
mv -f "$out/.cnitool.$$" "$out/cnitool"
echo "built $out/cnitool"
