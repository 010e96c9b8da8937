#!/usr/bin/env bash
# Regenerates the link-order.txt of each per-pod binary (ipam/, plugins/kmesh-cni/,
# plugins/sriov/): the order in which rust-lld lays out its functions (see
# .cargo/link-order-build.rs for why). As root, from anywhere:
#
#   .cargo/link-order.sh
#
# Run it after a toolchain or dependency bump, or when weft-bench exec / ipam-exec show peak RSS
# rising: symbol names carry each crate's hash, so a stale file orders fewer functions (the
# binaries stay correct, only bigger in memory). It prints how many listed symbols each binary
# has. Takes ~5 minutes on 2 cores.
#
# How: the binaries are built exactly as install.sh builds them (the same command: a crate's
# symbol hash depends on the features cargo unifies for the packages it builds, so
# `cargo rustc -p weft-ipam` names weft-ipam's own functions differently from the shipped
# `--workspace` build and a list made from it orders only std's and glibc's functions), keeping
# their symbol tables (Cargo.toml: strip = "debuginfo"). Each is run under valgrind's callgrind
# through the verbs a runtime execs, and every function callgrind saw is listed in the order the
# verbs first need it (see below). Needs valgrind, the Debian reference plugins (bridge,
# host-local), a bpffs at /sys/fs/bpf and root (kmesh-cni attaches to a real veth in a throwaway
# netns).
set -euo pipefail
export LC_ALL=C # one collation for sort and comm

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tuple=$(rustc --print host-tuple)
out=target/$tuple/release
ref=/usr/lib/cni
work=$(mktemp -d /tmp/weft-link-order.XXXXXX)
ns=weft-linkorder-$$
bridge=wlo$$
pins=/sys/fs/bpf/weft-linkorder-$$

cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$pins" "$work"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "link-order.sh: run as root" >&2; exit 1; }
for need in valgrind "$ref/bridge" "$ref/host-local"; do
  command -v "$need" >/dev/null || { echo "link-order.sh: $need missing" >&2; exit 1; }
done

bins=(weft-ipam kmesh-cni weft-sriov)
echo "==> release build, as install.sh builds it"
cargo build --release --quiet --workspace --bins --locked
for bin in "${bins[@]}"; do
  nm "$out/$bin" >/dev/null 2>&1 || { echo "link-order.sh: $out/$bin has no symbol table" >&2; exit 1; }
  cp "$out/$bin" "$work/$bin"
done

# One verb of binary $1 under callgrind: CNI_COMMAND $2, config on stdin, CNI_* from the env.
n=0
traced() {
  local bin=$1 verb=$2
  n=$((n + 1))
  CNI_COMMAND=$verb valgrind -q --tool=callgrind --demangle=no \
    --callgrind-out-file="$work/cg.$(printf %03d $n).$bin.$verb" "$work/$bin" >"$work/out" || {
    echo "link-order.sh: $bin $verb failed: $(cat "$work/out")" >&2
    exit 1
  }
}

export CNI_CONTAINERID=link-order CNI_IFNAME=eth0 CNI_PATH=$ref WEFT_STATE_DIR=$work/state
export CNI_NETNS=/var/run/netns/$ns
ip netns add "$ns"

echo "==> weft-ipam: VERSION ADD DEL CHECK STATUS GC (file store)"
ipam="{\"cniVersion\":\"1.1.0\",\"name\":\"link-order\",\"type\":\"bridge\",\"ipam\":{\"type\":\"weft-ipam\",\"range\":\"10.254.77.0/24\",\"store\":{\"type\":\"file\",\"dir\":\"$work/ipam\"}}}"
gc="${ipam%\}},\"cni.dev/valid-attachments\":[]}"
# A node's pool holds other pods' addresses: the verbs then compare and search them too.
for held in held-1 held-2 held-3; do
  CNI_CONTAINERID=$held CNI_COMMAND=ADD "$work/weft-ipam" <<<"$ipam" >/dev/null
done
traced weft-ipam VERSION <<<'{"cniVersion":"1.1.0"}'
for verb in ADD DEL ADD CHECK STATUS; do traced weft-ipam $verb <<<"$ipam"; done
traced weft-ipam GC <<<"$gc"

echo "==> kmesh-cni: VERSION, pass-through ADD DEL, fast path ADD CHECK DEL (after bridge)"
# Debian's bridge speaks up to 1.0.0.
br="{\"cniVersion\":\"1.0.0\",\"name\":\"link-order\",\"type\":\"bridge\",\"bridge\":\"$bridge\",\"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.254.78.0/24\",\"dataDir\":\"$work/host-local\"}}"
prev=$(CNI_COMMAND=ADD "$ref/bridge" <<<"$br") || {
  echo "link-order.sh: bridge ADD failed: $prev" >&2
  exit 1
}
kmesh() {
  echo "{\"cniVersion\":\"${2:-1.0.0}\",\"name\":\"link-order\",\"type\":\"kmesh-cni\",\"mode\":\"$1\",\"pinRoot\":\"$pins\",\"prevResult\":$prev}"
}
traced kmesh-cni VERSION <<<'{"cniVersion":"1.1.0"}'
for verb in ADD DEL; do traced kmesh-cni $verb <<<"$(kmesh off)"; done
for verb in ADD DEL ADD CHECK DEL; do traced kmesh-cni $verb <<<"$(kmesh auto)"; done
traced kmesh-cni STATUS <<<"$(kmesh auto 1.1.0)"
CNI_COMMAND=DEL "$ref/bridge" <<<"$br" >/dev/null

echo "==> weft-sriov: VERSION (a VF attach needs SR-IOV hardware)"
traced weft-sriov VERSION <<<'{"cniVersion":"1.1.0"}'

# The functions each profile names (callgrind writes a name once per file as "fn=(id) name",
# recursion as "name'2"; unnamed code is skipped), profile by profile in the order the verbs
# ran, each profile's new functions sorted by name (keeping a crate's, a module's and glibc's
# functions together). So VERSION's functions come first, then what a pass-through ADD adds,
# then the fast path's: a cheap verb touches only the front of the list. Measured on kmesh-cni
# VERSION: 1692 KiB peak RSS with one list of every verb's functions sorted by name, since
# VERSION's few functions were spread over ~900 KiB of it.
declare -A list=([weft-ipam]=ipam [kmesh-cni]=plugins/kmesh-cni [weft-sriov]=plugins/sriov)
names() {
  sed -nE "s/^c?fn=\([0-9]+\) (.*)$/\1/p" "$1" |
    sed -E "s/'[0-9]+$//" |
    grep -vE '^(0x[0-9a-f]+|\(below main\))$' |
    sort -u
}
for bin in "${bins[@]}"; do
  file=${list[$bin]}/link-order.txt
  for profile in "$work"/cg.*."$bin".*; do # the glob sorts: cg.001, cg.002, ... = run order
    names "$profile"
  done | awk '!seen[$0]++' >"$file"
  have=$({ nm "$work/$bin" || true; } | awk '{print $NF}' | sort -u | comm -12 - <(sort -u "$file") | wc -l)
  echo "==> $file: $(wc -l <"$file") symbols, $have of them in $bin"
done

# build.rs names link-order.txt with rerun-if-changed: the release build relinks.
echo "==> release build with the new order"
cargo build --release --quiet --workspace --bins --locked
