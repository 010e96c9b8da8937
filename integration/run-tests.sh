#!/usr/bin/env bash
# The project's one test command: install test-only deps, build everything, run every test.
#   integration/run-tests.sh [extra cargo test args...]
# Run it as root (a root shell, or sudo): it installs packages and the tests create network
# namespaces. Under CI=true a missing prerequisite fails the test run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "$(id -u)" -ne 0 ]; then
  echo "run-tests.sh: run as root (a root shell, or sudo): it installs packages and creates network namespaces" >&2
  exit 1
fi
PATH="$(./prerequisites.sh cargo-dir):$PATH"

# Build and test dependencies from Debian, from the one list (prerequisites.list): the tests'
# prerequisite helper accepts nothing else, and integration/tests/prerequisites.rs fails when a
# test needs something the list does not install.
./prerequisites.sh install build test
# Test tools from PyPI (kubernetes-validate), into weft's own venv: prerequisites-pypi.list.
./prerequisites.sh pypi-install test

echo "==> building cnitool (libcni $(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev))"
integration/cnitool/build.sh target/cnitool

echo "==> cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build --workspace"
cargo build --workspace

# Fuzz smoke (issue 11): cargo-fuzz from crates.io, pinned, installed by fuzz/run.sh (skipped when
# that version is present); every target a few seconds from fuzz/seeds + fuzz/regressions on the
# stable toolchain. A crash or a failed property fails the run. Long runs: fuzz/run.sh long.
fuzz/run.sh install
fuzz/run.sh smoke "${WEFT_FUZZ_SMOKE_SECS:-4}"

echo "==> cargo test --workspace"
export WEFT_CNITOOL="$root/target/cnitool/cnitool"
cargo test --workspace "$@"
