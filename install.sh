#!/usr/bin/env bash
# weft setup: install build dependencies, build the suite (release), then `weft install` (the
# plugins into the CNI bin dir, kmesh-cni chained into the node's primary CNI config, or weft's
# default conflist when there is none) and a real smoke test through the installed config.
# Safe to re-run: a second run changes no byte. `--uninstall` reverses it all.
#
#   ./install.sh [--bin-dir DIR] [--conf-dir DIR] [--no-deps] [--no-build]   (as root)
#   ./install.sh --uninstall [--bin-dir DIR] [--conf-dir DIR]
#
# The operator CLI goes to /usr/local/sbin/weft (weft doctor, weft inspect, weft gc, ...).
set -euo pipefail

BIN_DIR=/opt/cni/bin
CONF_DIR=/etc/cni/net.d
CLI=/usr/local/sbin/weft
INSTALL_DEPS=1
BUILD=1
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --conf-dir) CONF_DIR=$2; shift 2 ;;
    --no-deps) INSTALL_DEPS=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (a root shell, or sudo ./install.sh): it installs packages and writes $BIN_DIR and $CONF_DIR" >&2
  exit 1
fi
paths=(--bin-dir "$BIN_DIR" --conf-dir "$CONF_DIR")

# Where cargo puts the release binaries: .cargo/config.toml names the build target (static-pie
# glibc binaries, see there), so they land in target/<host tuple>/release.
release_dir() { echo "target/$(rustc --print host-tuple)/release"; }

if [ "$UNINSTALL" = 1 ]; then
  weft=$CLI
  [ -x "$weft" ] || weft=$(PATH="$(./prerequisites.sh cargo-dir):$PATH" release_dir)/weft
  [ -x "$weft" ] || { echo "install.sh: no weft binary ($CLI or $weft) to uninstall with" >&2; exit 1; }
  say "weft uninstall"
  "$weft" uninstall "${paths[@]}" | sed 's/^/    /'
  if [ -e "$CLI" ]; then
    rm -f "$CLI"
    echo "    $CLI: removed"
  fi
  say "weft removed"
  exit 0
fi

# Build-time dependencies from Debian (clang + libbpf headers for the eBPF objects, protoc for the
# etcd client, iproute2, ping and the reference plugins for the smoke test): stage `build` of the
# one list, prerequisites.list.
if [ "$INSTALL_DEPS" = 1 ]; then
  ./prerequisites.sh install build
fi
PATH="$(./prerequisites.sh cargo-dir):$PATH"

if [ "$BUILD" = 1 ]; then
  say "building weft (release)"
  cargo build --release --workspace --bins --locked
fi
release=$(release_dir)
[ -x "$release/weft" ] || { echo "install.sh: $release/weft was not built" >&2; exit 1; }

say "weft install"
"$release/weft" install --source-dir "$release" "${paths[@]}" | sed 's/^/    /'
# The operator CLI, copied then renamed (never a half-written binary on PATH).
install -m 0755 "$release/weft" "$CLI.new"
mv -f "$CLI.new" "$CLI"
echo "    $CLI: installed"

say "smoke test: two throwaway pods through the installed config"
"$CLI" smoke "${paths[@]}" | sed 's/^/    /'
say "weft installed (weft doctor: what this host supports; weft inspect: what weft holds)"
