#!/usr/bin/env bash
# Builds weft's runtime image with podman from binaries built beforehand.
#
#   deploy/build-image.sh [--bin-dir DIR] [--tag TAG]
#
#   --bin-dir DIR  where weft, kmesh-cni, weft-ipam (and weft-sriov, if built) are
#                  (default: target/<host tuple>/release, what `cargo build --release` makes)
#   --tag TAG      image name (default: localhost/weft:<version>)
#
# The release binaries are static-pie (glibc linked in, .cargo/config.toml), so the plugins weft
# copies onto a node run whatever glibc the node has and the image holds just them. Should a
# binary be dynamically linked (a build without that config), the loader and libraries `ldd`
# names are copied in at their own paths. The podman command can be replaced through $PODMAN
# (e.g. "podman --root DIR" for a private image store).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
BIN_DIR=target/$(rustc --print host-tuple)/release
TAG=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG=${TAG:-localhost/weft:$version}
PODMAN=${PODMAN:-podman}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin"
for b in weft kmesh-cni weft-ipam weft-sriov; do
  if [ -x "$BIN_DIR/$b" ]; then
    cp "$BIN_DIR/$b" "$ctx/rootfs/usr/local/bin/$b"
  elif [ "$b" != weft-sriov ]; then
    echo "build-image.sh: $BIN_DIR/$b is missing (build it first)" >&2
    exit 1
  fi
done
# What the dynamic loader will open: every absolute path ldd prints.
for b in "$ctx"/rootfs/usr/local/bin/*; do
  ldd "$b" 2>/dev/null | grep -o '/[^ ]*' || true
done | sort -u | while read -r lib; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp deploy/Containerfile "$ctx/Containerfile"
$PODMAN build --quiet -f "$ctx/Containerfile" -t "$TAG" "$ctx" >/dev/null
echo "$TAG"
