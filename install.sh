#!/usr/bin/env bash
# weft setup: install build dependencies, build the suite (release), install the plugins into the
# CNI bin dir, and smoke-test what was installed. Safe to re-run.
#
#   ./install.sh [--bin-dir DIR] [--no-deps] [--no-build]      (as root: a root shell or sudo)
#
# It never writes /etc/cni/net.d: which network a node uses is the operator's call
# (example conflists ship in conf/net.d; `weft chain` will manage them).
set -euo pipefail

BIN_DIR=/opt/cni/bin
INSTALL_DEPS=1
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --no-deps) INSTALL_DEPS=0; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (a root shell, or sudo ./install.sh): it installs packages and writes $BIN_DIR" >&2
  exit 1
fi

# Build-time dependencies from Debian (clang + libbpf headers for the eBPF objects, protoc for the
# etcd client, iproute2 and the reference plugins for the smoke test): stage `build` of the one
# list, prerequisites.list.
if [ "$INSTALL_DEPS" = 1 ]; then
  ./prerequisites.sh install build
fi
PATH="$(./prerequisites.sh cargo-dir):$PATH"

if [ "$BUILD" = 1 ]; then
  say "building weft (release)"
  cargo build --release --workspace --bins --locked
fi

# Every binary the workspace builds that is a CNI plugin or the operator CLI.
BINARIES=()
for b in kmesh-cni weft-ipam weft-sriov weft; do
  [ -x "target/release/$b" ] && BINARIES+=("$b")
done
[ ${#BINARIES[@]} -gt 0 ] || { echo "install.sh: nothing built in target/release" >&2; exit 1; }

say "installing ${BINARIES[*]} into $BIN_DIR"
install -d -m 0755 "$BIN_DIR"
for b in "${BINARIES[@]}"; do
  # Copy then rename: a runtime exec'ing the old binary right now never sees a half-written file.
  install -m 0755 "target/release/$b" "$BIN_DIR/.$b.new"
  mv -f "$BIN_DIR/.$b.new" "$BIN_DIR/$b"
done
install -d -m 0700 /var/lib/cni

say "smoke test"
for b in "${BINARIES[@]}"; do
  [ "$b" = weft ] && continue
  out=$(CNI_COMMAND=VERSION "$BIN_DIR/$b" </dev/null)
  case "$out" in
    *'"supportedVersions"'*'"1.1.0"'*) printf '    %-10s VERSION ok\n' "$b" ;;
    *) echo "install.sh: $b VERSION answered: $out" >&2; exit 1 ;;
  esac
done
# A chained ADD through the installed kmesh-cni with the fast path off (no pod exists here): it
# must hand the main plugin's result back.
prev='{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/smoke"}],"ips":[{"interface":0,"address":"10.99.0.2/24","gateway":"10.99.0.1"}],"dns":{}}'
out=$(printf '{"cniVersion":"1.0.0","name":"smoke","type":"kmesh-cni","mode":"off","prevResult":%s}' "$prev" |
  CNI_COMMAND=ADD CNI_CONTAINERID=weft-smoke CNI_NETNS=/var/run/netns/smoke CNI_IFNAME=eth0 \
  CNI_PATH="$BIN_DIR" "$BIN_DIR/kmesh-cni")
case "$out" in
  *'"10.99.0.2/24"'*) printf '    %-10s chained ADD ok\n' kmesh-cni ;;
  *) echo "install.sh: kmesh-cni pass-through ADD answered: $out" >&2; exit 1 ;;
esac
# An IPAM ADD then DEL through the installed weft-ipam, in a throwaway store.
if [ -x "$BIN_DIR/weft-ipam" ]; then
  store=$(mktemp -d)
  trap 'rm -rf "$store"' EXIT
  conf=$(printf '{"cniVersion":"1.0.0","name":"smoke","type":"bridge","ipam":{"type":"weft-ipam","range":"10.99.0.0/29","store":{"type":"file","dir":"%s"}}}' "$store")
  ipam() { printf '%s' "$conf" | CNI_COMMAND=$1 CNI_CONTAINERID=weft-smoke CNI_NETNS=/var/run/netns/smoke \
    CNI_IFNAME=eth0 CNI_PATH="$BIN_DIR" "$BIN_DIR/weft-ipam"; }
  out=$(ipam ADD)
  case "$out" in
    *'"10.99.0.2/29"'*) printf '    %-10s ADD ok\n' weft-ipam ;;
    *) echo "install.sh: weft-ipam ADD answered: $out" >&2; exit 1 ;;
  esac
  ipam DEL >/dev/null || { echo "install.sh: weft-ipam DEL failed" >&2; exit 1; }
  printf '    %-10s DEL ok\n' weft-ipam
fi
# STATUS probes the kernel (bpf_redirect_peer, tcx or clsact) and opens the node's pinned maps
# under /sys/fs/bpf/weft (creating them on first use): the node can serve the fast path.
if out=$(printf '{"cniVersion":"1.1.0","name":"smoke","type":"kmesh-cni"}' |
  CNI_COMMAND=STATUS CNI_PATH="$BIN_DIR" "$BIN_DIR/kmesh-cni"); then
  printf '    %-10s STATUS ok (kernel has the fast path)\n' kmesh-cni
else
  echo "install.sh: kmesh-cni STATUS failed: $out" >&2
  exit 1
fi
say "weft installed in $BIN_DIR"
