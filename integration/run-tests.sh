#!/usr/bin/env bash
# The project's one test command: install test-only deps, build everything, run every test.
#   integration/run-tests.sh [extra cargo test args...]
# Needs root (network namespaces). Under CI=true a missing prerequisite fails the test run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Build dependencies (as install.sh: clang/llvm/libbpf for eBPF, protoc for etcd-client) and
# test-only packages: the reference plugins (chain partners and bench references), Go + libcni
# for cnitool, iproute2 for netns fixtures, iptables for bridge, etcd for the cluster store,
# bpftool to inspect pins, jq/hyperfine/time/iperf3 for benches.
packages=(clang llvm libbpf-dev protobuf-compiler pkg-config
          containernetworking-plugins golang-go golang-github-appc-cni-dev iproute2 iptables
          etcd-server bpftool iputils-ping jq hyperfine time iperf3 sockperf)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

echo "==> building cnitool (libcni $(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev))"
integration/cnitool/build.sh target/cnitool

echo "==> cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build --workspace"
cargo build --workspace

echo "==> cargo test --workspace"
export WEFT_CNITOOL="$root/target/cnitool/cnitool"
cargo test --workspace "$@"
