#!/usr/bin/env bash
# weft's fuzz targets (fuzz/fuzz_targets/*.rs) on the stable toolchain: cargo-fuzz + libFuzzer,
# built with `-s none` (sanitizer-coverage instrumentation through -C flags only, no -Z flag, so
# no nightly), release mode with debug assertions and overflow checks on.
#
#   fuzz/run.sh install                  cargo install --locked cargo-fuzz@$CARGO_FUZZ_VERSION,
#                                        skipped when that version is already installed
#   fuzz/run.sh build                    build every target
#   fuzz/run.sh smoke [SECONDS]          every target for SECONDS (default 4) from the committed
#                                        seeds and regressions, in a throwaway corpus; a crash,
#                                        a failed property or a hang fails (the test command runs this)
#   fuzz/run.sh long [SECONDS] [TARGET...]
#                                        the long campaign: each target SECONDS (default 600),
#                                        corpus kept in fuzz/corpus/<target> (grows run to run)
#   fuzz/run.sh long --runs N [TARGET...]
#                                        the same, each target until N executions (10000000 is the
#                                        goal of issue 11)
#   fuzz/run.sh list                     the targets
#
# FUZZ_JOBS=2 runs two targets at a time (long only). A crash leaves its input in
# fuzz/artifacts/<target>/; reproduce it with
#   cargo fuzz run -s none --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>
# and keep it (minimized: `cargo fuzz tmin -s none --fuzz-dir fuzz <target> <file>`) in
# fuzz/regressions/<target>/, which every smoke replays.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
fuzz=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz")
cd "$root"

targets() { (cd "$fuzz/fuzz_targets" && ls -- *.rs) | sed 's/\.rs$//'; }

install() {
  if cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    return
  fi
  echo "==> cargo install --locked cargo-fuzz@$CARGO_FUZZ_VERSION"
  cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
}

build() {
  install
  echo "==> cargo fuzz build -s none (every target)"
  cargo fuzz build -s none --fuzz-dir "$fuzz"
}

# libFuzzer's -print_final_stats value $1 in log $2.
final_stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

# One libFuzzer run of target $1 with corpus dir $2 (written) and libFuzzer options after it.
# Prints one summary line; returns libFuzzer's status.
run_one() {
  local target=$1 corpus=$2
  shift 2
  local dirs=("$corpus") log="$fuzz/target/logs/$target.log" status=0
  for d in "$fuzz/seeds/$target" "$fuzz/regressions/$target"; do
    [ -d "$d" ] && dirs+=("$d")
  done
  mkdir -p "$corpus" "$fuzz/artifacts/$target" "$(dirname "$log")"
  "$fuzz/target/x86_64-unknown-linux-gnu/release/$target" \
    -artifact_prefix="$fuzz/artifacts/$target/" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -max_len=8192 "$@" "${dirs[@]}" >"$log" 2>&1 || status=$?
  local execs rate cov
  execs=$(final_stat number_of_executed_units "$log")
  rate=$(final_stat average_exec_per_sec "$log")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-16s %12s execs %9s/s  cov %5s  corpus %5s  %s\n' "$target" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "$(find "$corpus" -type f | wc -l)" \
    "$([ "$status" = 0 ] && echo ok || echo "FAILED (exit $status, log $log)")"
  if [ "$status" != 0 ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|Running' "$log" | head -20 >&2 || true
  fi
  return "$status"
}

smoke() {
  local secs=${1:-4} passed=0 failed=0 t
  build
  echo "==> fuzz smoke: every target for ${secs}s from fuzz/seeds and fuzz/regressions"
  for t in $(targets); do
    local corpus="$fuzz/target/smoke-corpus/$t"
    rm -rf "$corpus"
    if run_one "$t" "$corpus" -max_total_time="$secs"; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
    fi
  done
  echo "fuzz: $passed passed, $failed failed"
  [ "$failed" = 0 ]
}

long() {
  local limit=(-max_total_time=600) t
  case "${1:-}" in
    --runs) limit=(-runs="${2:?--runs N}"); shift 2 ;;
    '' | -*) ;;
    *) if [[ $1 =~ ^[0-9]+$ ]]; then limit=(-max_total_time="$1"); shift; fi ;;
  esac
  local list=("$@")
  [ ${#list[@]} -gt 0 ] || mapfile -t list < <(targets)
  build
  echo "==> fuzz long run: ${limit[*]} per target, ${FUZZ_JOBS:-1} at a time; corpus in fuzz/corpus/"
  local failed=0 running=0
  for t in "${list[@]}"; do
    run_one "$t" "$fuzz/corpus/$t" "${limit[@]}" &
    running=$((running + 1))
    if [ "$running" -ge "${FUZZ_JOBS:-1}" ]; then
      wait -n || failed=$((failed + 1))
      running=$((running - 1))
    fi
  done
  while [ "$running" -gt 0 ]; do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
  done
  echo "fuzz: $((${#list[@]} - failed)) passed, $failed failed"
  [ "$failed" = 0 ]
}

case "${1:-}" in
  install) install ;;
  build) build ;;
  smoke) shift; smoke "$@" ;;
  long) shift; long "$@" ;;
  list) targets ;;
  *) sed -n '2,27p' "$0" >&2; exit 2 ;;
esac
